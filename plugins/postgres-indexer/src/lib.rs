//! The Postgres indexer: writes every event of a batch to the `events` table
//! in one statement (one transaction), idempotent on (stream, stream_seq) so a
//! redelivered message never adds a row.
//!
//! Subjects are `<domain>.<entity>.<action>`. A payload that is not JSON is
//! terminated with the reason (→ dead letter). A database that is down makes
//! the whole batch `retry`. If the batch statement is rejected, rows are
//! written one by one so only the offending events are terminated.
//!
//! Config: `database` (default `events`), `table` (default `events`).
//! The table is created on first use if missing.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use std::cell::RefCell;

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::log::{Level, log};
use jetplug::plugin::sql::{self, Value};
use jetplug::plugin::types::Error;

struct Settings {
    database: String,
    table: String,
    schema_ready: bool,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings {
        database: "events".into(),
        table: "events".into(),
        schema_ready: false,
    });
}

struct Indexer;

impl Guest for Indexer {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        SETTINGS.with_borrow_mut(|s| {
            for (k, v) in config {
                match k.as_str() {
                    "database" => s.database = v,
                    "table" => {
                        if v.is_empty() || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                        {
                            return Err(format!("table `{v}`: use letters, digits and `_`"));
                        }
                        s.table = v;
                    }
                    other => {
                        return Err(format!(
                            "unknown config key `{other}` (known: database, table)"
                        ));
                    }
                }
            }
            Ok(())
        })
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        SETTINGS.with_borrow_mut(|s| index(s, &batch))
    }
}

fn index(s: &mut Settings, batch: &[Message]) -> Vec<Decision> {
    let mut decisions: Vec<Option<Decision>> = vec![None; batch.len()];
    let mut rows = Vec::with_capacity(batch.len());
    for (i, m) in batch.iter().enumerate() {
        match row(m) {
            Ok(r) => rows.push((i, r)),
            Err(reason) => decisions[i] = Some(Decision::Term(reason)),
        }
    }
    if !rows.is_empty() {
        if let Err(e) = ensure_schema(s) {
            return retry_all(batch.len(), &e);
        }
        match insert(s, &rows) {
            Ok(()) => rows
                .iter()
                .for_each(|(i, _)| decisions[*i] = Some(Decision::Ack)),
            Err(Error::Invalid(_)) => {
                // Find the rows the database rejects; write the others.
                for (i, r) in &rows {
                    decisions[*i] = Some(match insert(s, std::slice::from_ref(&(*i, r.clone()))) {
                        Ok(()) => Decision::Ack,
                        Err(Error::Invalid(m)) => {
                            Decision::Term(format!("rejected by the database: {m}"))
                        }
                        Err(e) => Decision::Retry(None).tap_log(&e),
                    });
                }
            }
            Err(e) => return retry_all(batch.len(), &e),
        }
    }
    decisions
        .into_iter()
        .map(|d| d.unwrap_or(Decision::Retry(None)))
        .collect()
}

trait TapLog {
    fn tap_log(self, e: &Error) -> Self;
}

impl TapLog for Decision {
    fn tap_log(self, e: &Error) -> Self {
        log(Level::Warn, &format!("indexer: {}", describe(e)));
        self
    }
}

fn retry_all(n: usize, e: &Error) -> Vec<Decision> {
    log(
        Level::Warn,
        &format!("indexer: batch of {n} will be retried: {}", describe(e)),
    );
    vec![Decision::Retry(None); n]
}

fn describe(e: &Error) -> String {
    match e {
        Error::AccessDenied(m) => format!("access denied: {m}"),
        Error::NotFound => "not found".into(),
        Error::Unavailable(m) => format!("unavailable: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Other(m) => m.clone(),
    }
}

/// One event as a JSON object of the table's columns (text), or why it
/// cannot be indexed. The payload is checked to be JSON and embedded as it
/// is, without being parsed into a tree and written out again.
fn row(m: &Message) -> Result<String, String> {
    let text =
        std::str::from_utf8(&m.payload).map_err(|e| format!("payload is not UTF-8 text: {e}"))?;
    let payload: &serde_json::value::RawValue =
        serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    let mut parts = m.subject.splitn(3, '.');
    let domain = parts.next().unwrap_or("");
    let entity = parts.next().unwrap_or("");
    let action = parts.next().unwrap_or("");
    let headers: std::collections::BTreeMap<&str, &str> = m
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    Ok(format!(
        r#"{{"stream":{},"stream_seq":{},"subject":{},"domain":{},"entity":{},"action":{},"payload":{},"headers":{},"published_at_ms":{}}}"#,
        s(&m.stream),
        m.stream_seq,
        s(&m.subject),
        s(domain),
        s(entity),
        s(action),
        payload.get(),
        serde_json::to_string(&headers).unwrap_or_else(|_| "{}".into()),
        m.published_at_ms,
    ))
}

fn ensure_schema(s: &mut Settings) -> Result<(), Error> {
    if s.schema_ready {
        return Ok(());
    }
    let t = &s.table;
    // Instances (workers, hosts) starting together would race on CREATE
    // TABLE IF NOT EXISTS (PostgreSQL can then fail one of them with a
    // unique violation): a transaction-scoped advisory lock serialises them.
    let tx = sql::begin(&s.database)?;
    tx.execute(
        "SELECT pg_advisory_xact_lock(hashtext($1))",
        &[Value::Text(format!("jetplug-indexer:{t}"))],
    )?;
    tx.execute(
        &format!(
            "CREATE TABLE IF NOT EXISTS {t} (
                id bigserial PRIMARY KEY,
                stream text NOT NULL,
                stream_seq bigint NOT NULL,
                subject text NOT NULL,
                domain text NOT NULL,
                entity text NOT NULL,
                action text NOT NULL,
                payload jsonb NOT NULL,
                headers jsonb NOT NULL,
                published_at timestamptz NOT NULL,
                indexed_at timestamptz NOT NULL DEFAULT now(),
                UNIQUE (stream, stream_seq)
            )"
        ),
        &[],
    )?;
    sql::Transaction::commit(tx)?;
    s.schema_ready = true;
    Ok(())
}

/// One statement for the whole batch: the rows travel as one JSON array
/// (a single parameter) that PostgreSQL expands with `jsonb_to_recordset`,
/// which is far cheaper to bind and parse than thousands of parameters.
fn insert(s: &Settings, rows: &[(usize, String)]) -> Result<(), Error> {
    let mut json = String::with_capacity(rows.len() * 256);
    json.push('[');
    for (n, (_, r)) in rows.iter().enumerate() {
        if n > 0 {
            json.push(',');
        }
        json.push_str(r);
    }
    json.push(']');
    let stmt = format!(
        "INSERT INTO {} (stream, stream_seq, subject, domain, entity, action, payload, headers, published_at) \
         SELECT stream, stream_seq, subject, domain, entity, action, payload, headers, \
                to_timestamp(published_at_ms / 1000.0) \
         FROM jsonb_to_recordset($1::text::jsonb) AS r(stream text, stream_seq bigint, subject text, \
              domain text, entity text, action text, payload jsonb, headers jsonb, published_at_ms bigint) \
         ON CONFLICT (stream, stream_seq) DO NOTHING",
        s.table
    );
    sql::execute(&s.database, &stmt, &[Value::Text(json)]).map(|_| ())
}

export!(Indexer);
