//! The Postgres indexer: writes every event of a batch to the `events` table
//! in one bulk load (`sql.insert-rows`: COPY, one transaction), idempotent on the event's origin
//! (stream, stream_seq where it was first stored), so neither a redelivered
//! nor a redriven message ever adds a row. `stream`, `stream_seq` and
//! `published_at` are the origin's.
//!
//! Subjects are `<domain>.<entity>.<action>`; a two-token subject such as
//! `focus.ping` is `<domain>.<action>` and stored with the domain as its
//! entity (`focus`, `focus`, `ping`), a longer one keeps the rest in the
//! action (`Message::subject_parts`). A payload that is not JSON is
//! terminated with the reason (→ dead letter). A database that is down makes
//! the whole batch `retry`. If the batch statement is rejected, rows are
//! written one by one so only the offending events are terminated.
//!
//! Config: `database` (default `events`), `table` (default `events`).
//! The table is created on first use if missing.

use std::collections::BTreeMap;

use jetplug_sdk::sql::{self, OnConflict, Value};
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
        // The rows to write and, in the same order, their messages' indexes.
        let (mut at, mut rows) = (
            Vec::with_capacity(batch.len()),
            Vec::with_capacity(batch.len()),
        );
        for (i, m) in batch.iter().enumerate() {
            match row(m) {
                Ok(r) => {
                    at.push(i);
                    rows.push(r);
                }
                Err(reason) => decisions[i] = Some(Decision::term(reason)),
            }
        }
        if !rows.is_empty() {
            if let Err(e) = self.ensure_schema() {
                return retry_all(batch.len(), &e);
            }
            match self.insert(&rows) {
                Ok(()) => at
                    .iter()
                    .for_each(|i| decisions[*i] = Some(Decision::ack())),
                Err(Error::Invalid(_)) => {
                    // Find the rows the database rejects; write the others.
                    for (i, r) in at.iter().zip(rows) {
                        decisions[*i] = Some(match self.insert(&[r]) {
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

/// One event as the table's column values, or why it cannot be indexed.
/// The payload is checked to be JSON and passed on as it is, without being
/// parsed into a tree and written out again.
fn row(m: &Message) -> Result<Vec<Value>, String> {
    let text = m.text().map_err(|e| e.to_string())?;
    let _: &serde_json::value::RawValue =
        serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    let parts = m.subject_parts();
    let text_of = |s: &str| Value::Text(s.to_owned());
    let (domain, entity, action) = (
        text_of(parts.domain),
        text_of(parts.entity),
        text_of(parts.action),
    );
    let headers: BTreeMap<&str, &str> = m
        .headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let origin = m.origin();
    Ok(vec![
        Value::Text(origin.stream.clone()),
        Value::Int(origin.sequence as i64),
        Value::Text(m.subject.clone()),
        domain,
        entity,
        action,
        Value::Json(text.to_owned()),
        Value::Json(serde_json::to_string(&headers).unwrap_or_else(|_| "{}".into())),
        Value::Timestamp(origin.published_at_ms.saturating_mul(1000)),
    ])
}

const COLUMNS: [&str; 9] = [
    "stream",
    "stream_seq",
    "subject",
    "domain",
    "entity",
    "action",
    "payload",
    "headers",
    "published_at",
];

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

    /// The whole batch in one call: `COPY` in one transaction, skipping
    /// known `(stream, stream_seq)`, so an event already indexed
    /// (redelivered, redriven) adds no row.
    fn insert(&self, rows: &[Vec<Value>]) -> Result<(), Error> {
        sql::insert_rows(
            &self.database,
            &self.table,
            &COLUMNS,
            rows,
            &OnConflict::Skip(vec!["stream".into(), "stream_seq".into()]),
        )
        .map(|_| ())
    }
}

jetplug_sdk::export!(Indexer);
