//! The analytics aggregator: per-minute event counts by (domain, entity,
//! action) in `event_counts`, exact under redelivery and restarts.
//!
//! It has no dedupe code: it runs with `effects = "exactly-once"` (see
//! examples/aivo), where the host runs each batch's statements in one
//! transaction together with a ledger of the messages it handled, so a
//! redelivered or redriven message is never counted twice and a crash
//! never loses a count. The plugin just adds the batch's counts. (In the
//! default at-least-once mode a redelivery would count again.) The minute
//! is the origin's publish time (kept across a redrive), truncated.
//!
//! A payload that is not JSON is terminated (→ dead letter), as in the
//! indexer, so malformed events are neither indexed nor counted.
//! Config: `database` (default `events`).

use jetplug_sdk::sql::{self, Value};
use jetplug_sdk::{Config, ConfigError, Decision, Error, Message, Plugin, log};

use std::collections::BTreeMap;

/// Counts per statement (5 parameters each).
const CHUNK: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event_counts (
    minute timestamptz NOT NULL,
    domain text NOT NULL,
    entity text NOT NULL,
    action text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (minute, domain, entity, action)
)";

/// (minute in ms, domain, entity, action).
type Key = (i64, String, String, String);

struct Aggregator {
    database: String,
    schema_ready: bool,
}

impl Plugin for Aggregator {
    fn init(config: &Config) -> Result<Self, ConfigError> {
        config.deny_unknown(&["database"])?;
        Ok(Aggregator {
            database: config.get_or("database", "events").to_owned(),
            schema_ready: false,
        })
    }

    fn handle_batch(&mut self, batch: &[Message]) -> Vec<Decision> {
        let mut decisions = vec![Decision::ack(); batch.len()];
        let mut rows = Vec::with_capacity(batch.len());
        for (i, m) in batch.iter().enumerate() {
            match row(m) {
                Ok(r) => rows.push(r),
                Err(reason) => decisions[i] = Decision::term(reason),
            }
        }
        if rows.is_empty() {
            return decisions;
        }
        match self.count(&rows) {
            Ok(()) => decisions,
            Err(e) => {
                log::warn(format!("aggregator: batch will be retried: {e}"));
                // Terminated ones stay terminated; the rest is retried.
                decisions
                    .into_iter()
                    .map(|d| match d {
                        Decision::Ack => Decision::retry(),
                        other => other,
                    })
                    .collect()
            }
        }
    }
}

fn row(m: &Message) -> Result<Key, String> {
    let text = m.text().map_err(|e| e.to_string())?;
    serde_json::from_str::<jetplug_sdk::serde::de::IgnoredAny>(text)
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let p = m.subject_parts();
    let (domain, entity, action) = (
        p.domain.to_owned(),
        p.entity.to_owned(),
        p.action.to_owned(),
    );
    let at = m.origin().published_at_ms;
    Ok((at - at.rem_euclid(60_000), domain, entity, action))
}

impl Aggregator {
    fn count(&mut self, rows: &[Key]) -> Result<(), Error> {
        if !self.schema_ready {
            let tx = sql::begin(&self.database)?;
            // Instances starting together race on CREATE TABLE IF NOT
            // EXISTS (one fails with 42P07): an advisory lock serialises them.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('jetplug-aggregator'))",
                &[],
            )?;
            tx.execute(SCHEMA, &[])?;
            tx.commit()?;
            self.schema_ready = true;
        }
        let mut counts: BTreeMap<&Key, i64> = BTreeMap::new();
        for r in rows {
            *counts.entry(r).or_insert(0) += 1;
        }
        let counts: Vec<(&Key, i64)> = counts.into_iter().collect();
        for chunk in counts.chunks(CHUNK) {
            let mut values = String::new();
            let mut params = Vec::with_capacity(chunk.len() * 5);
            for (n, ((minute, domain, entity, action), count)) in chunk.iter().enumerate() {
                if n > 0 {
                    values.push(',');
                }
                let b = n * 5;
                values.push_str(&format!(
                    "(${}::timestamptz,${}::text,${}::text,${}::text,${}::int8)",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5
                ));
                params.extend([
                    Value::Timestamp(minute.saturating_mul(1000)),
                    Value::Text(domain.clone()),
                    Value::Text(entity.clone()),
                    Value::Text(action.clone()),
                    Value::Int(*count),
                ]);
            }
            sql::execute(
                &self.database,
                &format!(
                    "INSERT INTO event_counts (minute, domain, entity, action, count)
                     VALUES {values}
                     ON CONFLICT (minute, domain, entity, action)
                     DO UPDATE SET count = event_counts.count + EXCLUDED.count"
                ),
                &params,
            )?;
        }
        Ok(())
    }
}

jetplug_sdk::export!(Aggregator);
