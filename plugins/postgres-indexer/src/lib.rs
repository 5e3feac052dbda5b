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

/// Rows per INSERT statement (9 parameters each, far below PostgreSQL's 65535).
const CHUNK: usize = 1000;

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

/// The nine column values of one event, or why it cannot be indexed.
fn row(m: &Message) -> Result<Vec<Value>, String> {
    let text =
        std::str::from_utf8(&m.payload).map_err(|e| format!("payload is not UTF-8 text: {e}"))?;
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("payload is not JSON: {e}"))?;
    let mut parts = m.subject.splitn(3, '.');
    let domain = parts.next().unwrap_or("").to_owned();
    let entity = parts.next().unwrap_or("").to_owned();
    let action = parts.next().unwrap_or("").to_owned();
    let headers: serde_json::Map<String, serde_json::Value> = m
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    Ok(vec![
        Value::Text(m.stream.clone()),
        Value::Int(i64::try_from(m.stream_seq).unwrap_or(i64::MAX)),
        Value::Text(m.subject.clone()),
        Value::Text(domain),
        Value::Text(entity),
        Value::Text(action),
        Value::Json(json.to_string()),
        Value::Json(serde_json::Value::Object(headers).to_string()),
        Value::Timestamp(m.published_at_ms.saturating_mul(1000)),
    ])
}

fn ensure_schema(s: &mut Settings) -> Result<(), Error> {
    if s.schema_ready {
        return Ok(());
    }
    let t = &s.table;
    sql::execute(
        &s.database,
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
    s.schema_ready = true;
    Ok(())
}

/// One multi-row INSERT per chunk, all chunks in one transaction.
fn insert(s: &Settings, rows: &[(usize, Vec<Value>)]) -> Result<(), Error> {
    let tx = sql::begin(&s.database)?;
    for chunk in rows.chunks(CHUNK) {
        let mut stmt = format!(
            "INSERT INTO {} (stream, stream_seq, subject, domain, entity, action, payload, headers, published_at) VALUES ",
            s.table
        );
        let mut params = Vec::with_capacity(chunk.len() * 9);
        for (n, (_, r)) in chunk.iter().enumerate() {
            if n > 0 {
                stmt.push(',');
            }
            let b = n * 9;
            stmt.push_str(&format!(
                "(${},${},${},${},${},${},${},${},${})",
                b + 1,
                b + 2,
                b + 3,
                b + 4,
                b + 5,
                b + 6,
                b + 7,
                b + 8,
                b + 9
            ));
            params.extend(r.iter().cloned());
        }
        stmt.push_str(" ON CONFLICT (stream, stream_seq) DO NOTHING");
        tx.execute(&stmt, &params)?;
    }
    sql::Transaction::commit(tx)
}

export!(Indexer);
