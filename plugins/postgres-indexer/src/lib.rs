//! The Postgres indexer: writes every event of a batch to the `events` table
//! in one statement (one transaction), idempotent on the event's origin
//! (stream, stream_seq where it was first stored), so neither a redelivered
//! nor a redriven message ever adds a row. `stream`, `stream_seq` and
//! `published_at` are the origin's.
//!
//! Subjects are `<domain>.<entity>.<action>`. A payload that is not JSON is
//! terminated with the reason (→ dead letter). A database that is down makes
//! the whole batch `retry`. If the batch statement is rejected, rows are
//! written one by one so only the offending events are terminated.
//!
//! Config: `database` (default `events`), `table` (default `events`).
//! The table is created on first use if missing.

use std::collections::BTreeMap;

use jetplug_sdk::sql::{self, Value};
use jetplug_sdk::{Config, ConfigError, Decision, Error, Message, Plugin, log};

struct Indexer {
    database: String,
    table: String,
    schema_ready: bool,
}

impl Plugin for Indexer {
    fn init(config: &Config) -> Result<Self, ConfigError> {
        config.deny_unknown(&["database", "table"])?;
        let table = config.get_or("table", "events");
        if table.is_empty() || !table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(ConfigError::key(
                "table",
                format!("`{table}`: use letters, digits and `_`"),
            ));
        }
        Ok(Indexer {
            database: config.get_or("database", "events").to_owned(),
            table: table.to_owned(),
            schema_ready: false,
        })
    }

    fn handle_batch(&mut self, batch: &[Message]) -> Vec<Decision> {
        let mut decisions: Vec<Option<Decision>> = vec![None; batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            match row(m) {
                Ok(r) => rows.push((i, r)),
                Err(reason) => decisions[i] = Some(Decision::term(reason)),
            }
        }
        if !rows.is_empty() {
            if let Err(e) = self.ensure_schema() {
                return retry_all(batch.len(), &e);
            }
            match self.insert(&rows) {
                Ok(()) => rows
                    .iter()
                    .for_each(|(i, _)| decisions[*i] = Some(Decision::ack())),
                Err(Error::Invalid(_)) => {
                    // Find the rows the database rejects; write the others.
                    for (i, r) in &rows {
                        decisions[*i] = Some(match self.insert(&[(*i, r.clone())]) {
                            Ok(()) => Decision::ack(),
                            Err(Error::Invalid(m)) => {
                                Decision::term(format!("rejected by the database: {m}"))
                            }
                            Err(e) => {
                                log::warn(format!("indexer: {e}"));
                                Decision::retry()
                            }
                        });
                    }
                }
                Err(e) => return retry_all(batch.len(), &e),
            }
        }
        decisions
            .into_iter()
            .map(|d| d.unwrap_or(Decision::retry()))
            .collect()
    }
}

fn retry_all(n: usize, e: &Error) -> Vec<Decision> {
    log::warn(format!("indexer: batch of {n} will be retried: {e}"));
    vec![Decision::retry(); n]
}

/// One event as a JSON object of the table's columns (text), or why it
/// cannot be indexed. The payload is checked to be JSON and embedded as it
/// is, without being parsed into a tree and written out again.
fn row(m: &Message) -> Result<String, String> {
    let text = m.text().map_err(|e| e.to_string())?;
    let payload: &serde_json::value::RawValue =
        serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    let mut parts = m.subject.splitn(3, '.');
    let domain = parts.next().unwrap_or("");
    let entity = parts.next().unwrap_or("");
    let action = parts.next().unwrap_or("");
    let headers: BTreeMap<&str, &str> = m
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let s = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    let origin = m.origin();
    Ok(format!(
        r#"{{"stream":{},"stream_seq":{},"subject":{},"domain":{},"entity":{},"action":{},"payload":{},"headers":{},"published_at_ms":{}}}"#,
        s(&origin.stream),
        origin.sequence,
        s(&m.subject),
        s(domain),
        s(entity),
        s(action),
        payload.get(),
        serde_json::to_string(&headers).unwrap_or_else(|_| "{}".into()),
        origin.published_at_ms,
    ))
}

impl Indexer {
    fn ensure_schema(&mut self) -> Result<(), Error> {
        if self.schema_ready {
            return Ok(());
        }
        let t = &self.table;
        // Instances (workers, hosts) starting together would race on CREATE
        // TABLE IF NOT EXISTS (PostgreSQL can then fail one of them with a
        // unique violation): a transaction-scoped advisory lock serialises them.
        let tx = sql::begin(&self.database)?;
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
        tx.commit()?;
        self.schema_ready = true;
        Ok(())
    }

    /// One statement for the whole batch: the rows travel as one JSON array
    /// (a single parameter) that PostgreSQL expands with `jsonb_to_recordset`,
    /// which is far cheaper to bind and parse than thousands of parameters.
    fn insert(&self, rows: &[(usize, String)]) -> Result<(), Error> {
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
            self.table
        );
        sql::execute(&self.database, &stmt, &[Value::Text(json)]).map(|_| ())
    }
}

jetplug_sdk::export!(Indexer);
