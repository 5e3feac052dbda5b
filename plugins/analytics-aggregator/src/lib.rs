//! The analytics aggregator: per-minute event counts by (domain, entity,
//! action) in `event_counts`, exact under redelivery and restarts.
//!
//! Exactness comes from one statement per batch: it records the batch's
//! origins (stream, stream_seq where each event was first stored; the same
//! after a redrive from the dead-letter queue) in `event_counted` and adds
//! to the counts only the origins not recorded before, both in the same
//! transaction, so a redelivered or redriven message is never counted twice
//! and a crash never loses a count. The minute is the origin's publish time, truncated.
//!
//! A payload that is not JSON is terminated (→ dead letter), as in the
//! indexer, so malformed events are neither indexed nor counted.
//! Config: `database` (default `events`).

use jetplug_sdk::sql::{self, Value};
use jetplug_sdk::{Config, ConfigError, Decision, Error, Message, Plugin, log};

/// Rows per statement (6 parameters each).
const CHUNK: usize = 1000;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS event_counts (
    minute timestamptz NOT NULL,
    domain text NOT NULL,
    entity text NOT NULL,
    action text NOT NULL,
    count bigint NOT NULL,
    PRIMARY KEY (minute, domain, entity, action)
);
CREATE TABLE IF NOT EXISTS event_counted (
    stream text NOT NULL,
    stream_seq bigint NOT NULL,
    PRIMARY KEY (stream, stream_seq)
)";

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

fn row(m: &Message) -> Result<[Value; 6], String> {
    let text = m.text().map_err(|e| e.to_string())?;
    serde_json::from_str::<jetplug_sdk::serde::de::IgnoredAny>(text)
        .map_err(|e| format!("payload is not JSON: {e}"))?;
    let mut parts = m.subject.splitn(3, '.');
    let mut next = || Value::Text(parts.next().unwrap_or("").to_owned());
    let (domain, entity, action) = (next(), next(), next());
    let origin = m.origin();
    let at = origin.published_at_ms;
    let minute_ms = at - at.rem_euclid(60_000);
    Ok([
        Value::Text(origin.stream),
        Value::Int(i64::try_from(origin.sequence).unwrap_or(i64::MAX)),
        Value::Timestamp(minute_ms.saturating_mul(1000)),
        domain,
        entity,
        action,
    ])
}

impl Aggregator {
    fn count(&mut self, rows: &[[Value; 6]]) -> Result<(), Error> {
        if !self.schema_ready {
            let tx = sql::begin(&self.database)?;
            // Instances starting together race on CREATE TABLE IF NOT
            // EXISTS (one fails with 42P07): an advisory lock serialises them.
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtext('jetplug-aggregator'))",
                &[],
            )?;
            for stmt in SCHEMA.split(';') {
                tx.execute(stmt, &[])?;
            }
            tx.commit()?;
            self.schema_ready = true;
        }
        let tx = sql::begin(&self.database)?;
        for chunk in rows.chunks(CHUNK) {
            let mut values = String::new();
            let mut params = Vec::with_capacity(chunk.len() * 6);
            for (n, r) in chunk.iter().enumerate() {
                if n > 0 {
                    values.push(',');
                }
                let b = n * 6;
                values.push_str(&format!(
                    "(${}::text,${}::int8,${}::timestamptz,${}::text,${}::text,${}::text)",
                    b + 1,
                    b + 2,
                    b + 3,
                    b + 4,
                    b + 5,
                    b + 6
                ));
                params.extend(r.iter().cloned());
            }
            let stmt = format!(
            "WITH input(stream, seq, minute, domain, entity, action) AS (SELECT DISTINCT * FROM (VALUES {values}) v),
             fresh AS (
                 INSERT INTO event_counted (stream, stream_seq)
                 SELECT stream, seq FROM input
                 ON CONFLICT DO NOTHING
                 RETURNING stream, stream_seq
             ),
             agg AS (
                 SELECT i.minute, i.domain, i.entity, i.action, count(*) AS n
                 FROM input i JOIN fresh f ON f.stream = i.stream AND f.stream_seq = i.seq
                 GROUP BY 1, 2, 3, 4
             )
             INSERT INTO event_counts (minute, domain, entity, action, count)
             SELECT minute, domain, entity, action, n FROM agg
             ON CONFLICT (minute, domain, entity, action)
             DO UPDATE SET count = event_counts.count + EXCLUDED.count"
        );
            tx.execute(&stmt, &params)?;
        }
        tx.commit()
    }
}

jetplug_sdk::export!(Aggregator);
