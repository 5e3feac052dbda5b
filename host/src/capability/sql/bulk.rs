//! `sql.insert-rows`: bulk load through `COPY`.
//!
//! Why: a batch written as one statement still makes PostgreSQL parse and
//! plan every row's values (or a JSON document holding them); `COPY` streams
//! rows in its text format, which the server reads column by column with no
//! planning at all. The rows go straight into the target table, in one
//! transaction, so the call is all or nothing.
//!
//! Plain `COPY` cannot skip rows that are already there, though, and
//! idempotent writes (one row per event, however often it is delivered) need
//! exactly that. Skipping known keys is optimistic: the `COPY` runs under a
//! savepoint, and only if it hits a unique violation is it rolled back and
//! the same rows sent again into a per-session temporary staging table, from
//! which one `INSERT … SELECT … ON CONFLICT DO NOTHING` moves them. Known
//! keys are rare (redeliveries, redrives); staging every batch cost
//! PostgreSQL twice the writes, and `ON CONFLICT`'s speculative insertion a
//! fifth more per row.

use std::fmt::Write as _;

use bytes::Bytes;
use deadpool_postgres::Object;
use futures::SinkExt;
use sha2::{Digest, Sha256};
use tokio_postgres::error::SqlState;

use super::{Value, pg_error, quote_ident};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::sql::OnConflict;

/// Rows are sent to the server in chunks of about this many bytes.
const CHUNK: usize = 256 * 1024;

/// The statements of one `insert-rows` call, built from checked names.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Plan {
    /// Rows straight into the target table.
    pub copy: String,
    /// With `skip`: what runs after `copy` failed on a known key.
    pub skipping: Option<Skipping>,
}

/// The way round a known key: stage the rows, move the new ones.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Skipping {
    /// Creates the staging table if this session does not have it yet.
    pub stage: String,
    pub copy: String,
    pub insert: String,
}

/// Checks the names and builds the statements. `role` (the plugin's
/// `sql_role`) is part of the staging table's name: a pooled connection
/// may serve plugins under different roles, and each needs a table it owns.
pub(super) fn plan(
    table: &str,
    columns: &[String],
    on_conflict: &OnConflict,
    role: Option<&str>,
) -> Result<Plan, CapabilityError> {
    let invalid = |m: String| Err(CapabilityError::Invalid(m));
    let parts: Vec<&str> = table.split('.').collect();
    if parts.len() > 2 || parts.iter().any(|p| p.is_empty()) {
        return invalid(format!("table `{table}`: expected `name` or `schema.name`"));
    }
    if columns.is_empty() {
        return invalid(format!("insert into `{table}`: no columns named"));
    }
    for (i, c) in columns.iter().enumerate() {
        if c.is_empty() {
            return invalid(format!(
                "insert into `{table}`: column {i} has an empty name"
            ));
        }
        if columns[..i].contains(c) {
            return invalid(format!(
                "insert into `{table}`: column `{c}` is named twice"
            ));
        }
    }
    let target = parts
        .iter()
        .map(|p| quote_ident(p))
        .collect::<Vec<_>>()
        .join(".");
    let cols = columns
        .iter()
        .map(|c| quote_ident(c))
        .collect::<Vec<_>>()
        .join(", ");
    let conflict = match on_conflict {
        OnConflict::Fail => None,
        OnConflict::Skip(keys) if keys.is_empty() => Some(" ON CONFLICT DO NOTHING".to_owned()),
        OnConflict::Skip(keys) => {
            if let Some(k) = keys.iter().find(|k| k.is_empty()) {
                return invalid(format!(
                    "insert into `{table}`: empty conflict column `{k}`"
                ));
            }
            let keys = keys
                .iter()
                .map(|k| quote_ident(k))
                .collect::<Vec<_>>()
                .join(", ");
            Some(format!(" ON CONFLICT ({keys}) DO NOTHING"))
        }
    };
    let mut hash = Sha256::new();
    for part in [target.as_str(), cols.as_str(), role.unwrap_or("")] {
        hash.update(part.as_bytes());
        hash.update([0]);
    }
    let digest = hash.finalize();
    let stage = format!(
        "pg_temp.jetplug_stage_{}",
        digest[..8].iter().fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    );
    Ok(Plan {
        copy: format!("COPY {target} ({cols}) FROM STDIN"),
        skipping: conflict.map(|c| Skipping {
            // The session keeps the table; `ON COMMIT DELETE ROWS` empties it
            // at every commit, so each call starts from an empty stage.
            stage: format!(
                "SET LOCAL client_min_messages = warning; \
                 CREATE TEMP TABLE IF NOT EXISTS {stage} ON COMMIT DELETE ROWS AS \
                 SELECT {cols} FROM {target} WITH NO DATA"
            ),
            copy: format!("COPY {stage} ({cols}) FROM STDIN"),
            insert: format!("INSERT INTO {target} ({cols}) SELECT {cols} FROM {stage}{c}"),
        }),
    })
}

/// Where [`run`] loads its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Within {
    /// A transaction of its own, opened here; the caller commits (or, on
    /// error, closes the connection, which rolls back).
    Own,
    /// The transaction already open on the connection (an exactly-once
    /// batch's): no `BEGIN`, which PostgreSQL would answer with a warning.
    Open,
}

/// Runs `plan` with `rows` on `client`, `within` a transaction; returns
/// the rows inserted.
pub(super) async fn run(
    client: &Object,
    plan: &Plan,
    width: usize,
    rows: &[Vec<Value>],
    within: Within,
) -> Result<u64, CapabilityError> {
    if let Some((i, row)) = rows.iter().enumerate().find(|(_, r)| r.len() != width) {
        return Err(CapabilityError::Invalid(format!(
            "row {i} has {} values for {width} columns",
            row.len()
        )));
    }
    let chunks = encode(rows);
    let begin = match (within, plan.skipping.is_some()) {
        (Within::Own, true) => "BEGIN; SAVEPOINT jetplug_bulk",
        (Within::Own, false) => "BEGIN",
        (Within::Open, true) => "SAVEPOINT jetplug_bulk",
        (Within::Open, false) => "",
    };
    if !begin.is_empty() {
        client.batch_execute(begin).await.map_err(pg_error)?;
    }
    match (copy(client, &plan.copy, &chunks).await, &plan.skipping) {
        (Err(e), Some(skipping)) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            let stage = format!("ROLLBACK TO SAVEPOINT jetplug_bulk; {}", skipping.stage);
            client.batch_execute(&stage).await.map_err(pg_error)?;
            copy(client, &skipping.copy, &chunks)
                .await
                .map_err(pg_error)?;
            let insert = client
                .prepare_cached(&skipping.insert)
                .await
                .map_err(pg_error)?;
            client.execute(&insert, &[]).await.map_err(pg_error)
        }
        (r, _) => r.map_err(pg_error),
    }
}

/// Streams `chunks` into `COPY … FROM STDIN`; returns the rows copied.
async fn copy(
    client: &Object,
    statement: &str,
    chunks: &[Bytes],
) -> Result<u64, tokio_postgres::Error> {
    let sink = client.copy_in(statement).await?;
    futures::pin_mut!(sink);
    for chunk in chunks {
        sink.feed(chunk.clone()).await?;
    }
    sink.finish().await
}

/// The rows in `COPY` text format, in chunks of about [`CHUNK`] bytes (kept,
/// so that the rows can be sent again into the staging table).
fn encode(rows: &[Vec<Value>]) -> Vec<Bytes> {
    let mut chunks = Vec::new();
    let mut text = String::with_capacity(CHUNK + 4096);
    for row in rows {
        encode_row(row, &mut text);
        if text.len() >= CHUNK {
            let full = std::mem::replace(&mut text, String::with_capacity(CHUNK + 4096));
            chunks.push(Bytes::from(full));
        }
    }
    if !text.is_empty() {
        chunks.push(Bytes::from(text));
    }
    chunks
}

/// One row in `COPY` text format: tab-separated, `\N` for null, newline.
fn encode_row(row: &[Value], out: &mut String) {
    for (i, v) in row.iter().enumerate() {
        if i > 0 {
            out.push('\t');
        }
        encode_value(v, out);
    }
    out.push('\n');
}

fn encode_value(v: &Value, out: &mut String) {
    match v {
        Value::Null => out.push_str("\\N"),
        Value::Boolean(b) => out.push(if *b { 't' } else { 'f' }),
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Float(f) if f.is_nan() => out.push_str("NaN"),
        Value::Float(f) if f.is_infinite() => {
            out.push_str(if *f > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        Value::Text(s) | Value::Json(s) => escape(s, out),
        // bytea hex input (`\x…`), its backslash escaped for COPY.
        Value::Bytes(b) => {
            out.push_str("\\\\x");
            for byte in b {
                let _ = write!(out, "{byte:02x}");
            }
        }
        Value::Timestamp(us) => timestamp(*us, out),
    }
}

/// Backslash, tab, newline and carriage return escaped as `COPY` text
/// wants; the runs between them are copied whole.
fn escape(s: &str, out: &mut String) {
    let mut from = 0;
    for (i, b) in s.bytes().enumerate() {
        let esc = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&s[from..i]);
        out.push_str(esc);
        from = i + 1;
    }
    out.push_str(&s[from..]);
}

/// Microseconds since the epoch as an ISO 8601 UTC timestamp.
fn timestamp(us: i64, out: &mut String) {
    match time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000) {
        Ok(t) => {
            let _ = write!(
                out,
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}+00",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.microsecond()
            );
        }
        // Out of `time`'s range (±9999 years): PostgreSQL rejects it too.
        Err(_) => {
            let _ = write!(out, "out of range: {us} µs");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(row: &[Value]) -> String {
        let mut text = String::new();
        encode_row(row, &mut text);
        text
    }

    #[test]
    fn values_are_encoded_as_copy_text() {
        let row = [
            Value::Null,
            Value::Boolean(true),
            Value::Int(-42),
            Value::Float(0.1),
            Value::Float(f64::NEG_INFINITY),
            Value::Text("a\tb\nc\\d\re".into()),
            Value::Json(r#"{"k":"v\n"}"#.into()),
            Value::Bytes(vec![0, 255]),
            Value::Timestamp(1_700_000_000_123_456),
            Value::Timestamp(-1),
        ];
        assert_eq!(
            line(&row),
            "\\N\tt\t-42\t0.1\t-Infinity\ta\\tb\\nc\\\\d\\re\t{\"k\":\"v\\\\n\"}\t\\\\x00ff\t\
             2023-11-14 22:13:20.123456+00\t1969-12-31 23:59:59.999999+00\n"
        );
    }

    #[test]
    fn plans_quote_names_and_name_the_conflict_columns() {
        let cols = vec!["stream".to_owned(), "seq".to_owned()];
        let p = plan(
            "app.events",
            &cols,
            &OnConflict::Skip(vec!["stream".into(), "seq".into()]),
            None,
        )
        .expect("valid names");
        assert_eq!(
            p.copy,
            r#"COPY "app"."events" ("stream", "seq") FROM STDIN"#
        );
        let skipping = p.skipping.expect("skip plans a way round known keys");
        assert!(
            skipping.copy.starts_with("COPY pg_temp.jetplug_stage_"),
            "{}",
            skipping.copy
        );
        assert!(
            skipping.insert.starts_with(r#"INSERT INTO "app"."events" ("stream", "seq") SELECT "stream", "seq" FROM pg_temp.jetplug_stage_"#),
            "{}",
            skipping.insert
        );
        assert!(
            skipping
                .insert
                .ends_with(r#" ON CONFLICT ("stream", "seq") DO NOTHING"#)
        );
        assert!(skipping.stage.contains("ON COMMIT DELETE ROWS"));
        let fail = plan("events", &cols, &OnConflict::Fail, None).expect("valid");
        assert_eq!(fail.skipping, None);
        // A role gets a staging table of its own.
        let skip = OnConflict::Skip(vec![]);
        let own = plan("app.events", &cols, &skip, Some("r")).expect("valid");
        let shared = plan("app.events", &cols, &skip, None).expect("valid");
        assert_ne!(own.skipping, shared.skipping);
        // A quote in a name stays inside the identifier.
        let odd = plan(r#"we"ird"#, &cols, &OnConflict::Fail, None).expect("valid");
        assert!(odd.copy.contains(r#""we""ird""#), "{}", odd.copy);
    }

    #[test]
    fn bad_names_are_refused_with_what_is_wrong() {
        let cols = vec!["a".to_owned()];
        for (table, columns, want) in [
            ("a.b.c", cols.clone(), "`name` or `schema.name`"),
            ("", cols.clone(), "`name` or `schema.name`"),
            ("t", vec![], "no columns"),
            ("t", vec!["a".into(), "a".into()], "`a` is named twice"),
            ("t", vec!["".into()], "empty name"),
        ] {
            let err = plan(table, &columns, &OnConflict::Fail, None).expect_err(table);
            assert!(
                matches!(&err, CapabilityError::Invalid(m) if m.contains(want)),
                "{table}: {err:?}"
            );
        }
    }
}
