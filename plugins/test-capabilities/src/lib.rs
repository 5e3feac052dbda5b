//! Calls the capability named by each message's payload and reports the
//! outcome as `term("<result>")` (a free-text channel tests can read), or
//! `ack` for the plain probes. Payloads (fields separated by `|`):
//!
//! - `sql:DB` (`select 1`), `publish:SUBJECT`, `kv:BUCKET` (get `key`): `ack`
//!   on success, `term("<error>")` otherwise;
//! - `sql-exec|DB|STATEMENT` → `ok:<rows>`;
//! - `sql-roundtrip|DB` → every value type through a table and back → `ok`;
//! - `sql-tx|DB|commit` / `sql-tx|DB|drop` → insert into `tx_probe` in a
//!   transaction, then commit or drop it → `ok`;
//! - `sql-batch|DB|N` → insert N rows into `batch_probe` in one call → `ok:<rows>`;
//! - `sql-bulk|DB|TABLE|FROM|TO|skip|fail` → `insert-rows` of keys FROM..TO
//!   (columns `k`, `doc`, `at`) into TABLE (created as `bulk_probe` is),
//!   duplicates skipped or failing → `ok:<rows inserted>`;
//! - `sql-bulk-roundtrip|DB` → every value type (and text full of tabs,
//!   newlines and backslashes) through `insert-rows` and back → `ok`;
//! - `publish|SUBJECT|ID` → `ok:<stream>:<seq>:<duplicate>`;
//! - `kv-put|BUCKET|KEY|VALUE` → `ok:<revision>`; `kv-get|BUCKET|KEY` →
//!   `ok:<value>:<revision>` or `none`; `kv-cas|BUCKET|KEY|VALUE|REV` (REV
//!   `none` = must not exist) → `ok:<revision>`; `kv-del|BUCKET|KEY` → `ok`;
//! - `all|DB|SUBJECT|BUCKET` → logs a line, `select 1`, publishes to
//!   SUBJECT, puts `key` in BUCKET → `ok` (every capability in one call);
//! - `ambient`: tries files, environment and sockets → `fs=.. env=.. net=..`;
//! - anything else is logged and acked.
//!
//! Config `tag = T` prefixes every `term` reason with `[T] ` and replaces
//! `{tag}` in `sql-exec` statements (a test can tell which configuration —
//! which loaded version — ran); `on_unavailable = retry` answers `retry`
//! instead of `term` when a command fails with `unavailable` (as plugins
//! that ride out a downstream outage do).

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::sql::Value;
use jetplug::plugin::types::Error;
use jetplug::plugin::{kv, log, publish, sql};

struct Caps;

static TAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
static RETRY_UNAVAILABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

impl Guest for Caps {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if let Some((_, tag)) = config.iter().find(|(k, _)| k == "tag") {
            let _ = TAG.set(tag.clone());
        }
        let retry = config
            .iter()
            .any(|(k, v)| k == "on_unavailable" && v == "retry");
        let _ = RETRY_UNAVAILABLE.set(retry);
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        batch
            .iter()
            .map(|m| match (run(&m.payload), TAG.get()) {
                (Decision::Term(r), Some(tag)) => Decision::Term(format!("[{tag}] {r}")),
                (d, _) => d,
            })
            .collect()
    }
}

fn run(payload: &[u8]) -> Decision {
    let text = String::from_utf8_lossy(payload).into_owned();
    if text == "ambient" {
        return Decision::Term(ambient());
    }
    if text.contains('|') {
        let f: Vec<&str> = text.split('|').collect();
        return match command(&f) {
            Ok(s) => Decision::Term(s),
            Err(Error::Unavailable(_)) if RETRY_UNAVAILABLE.get() == Some(&true) => {
                Decision::Retry(None)
            }
            Err(e) => Decision::Term(describe(&e)),
        };
    }
    let result = if let Some(db) = text.strip_prefix("sql:") {
        sql::execute(db, "select 1", &[]).map(|_| ())
    } else if let Some(subject) = text.strip_prefix("publish:") {
        publish::publish(&outgoing(subject, None)).map(|_| ())
    } else if let Some(bucket) = text.strip_prefix("kv:") {
        kv::get(bucket, "key").map(|_| ())
    } else {
        log::log(log::Level::Info, &text);
        Ok(())
    };
    match result {
        Ok(()) => Decision::Ack,
        Err(e) => Decision::Term(describe(&e)),
    }
}

fn outgoing(subject: &str, id: Option<&str>) -> publish::Outgoing {
    publish::Outgoing {
        subject: subject.to_owned(),
        headers: vec![("x-probe".into(), "1".into())],
        payload: b"hello".to_vec(),
        message_id: id.map(str::to_owned),
    }
}

fn command(f: &[&str]) -> Result<String, Error> {
    let arg = |i: usize| f.get(i).copied().unwrap_or("");
    match arg(0) {
        "sql-exec" => {
            let statement = arg(2).replace("{tag}", TAG.get().map_or("", String::as_str));
            sql::execute(arg(1), &statement, &[]).map(|n| format!("ok:{n}"))
        }
        "sql-roundtrip" => roundtrip(arg(1)),
        "sql-tx" => {
            let db = arg(1);
            sql::execute(db, "create table if not exists tx_probe (v int8)", &[])?;
            let tx = sql::begin(db)?;
            tx.execute("insert into tx_probe values ($1)", &[Value::Int(1)])?;
            if arg(2) == "commit" {
                sql::Transaction::commit(tx)?;
            } else {
                drop(tx);
            }
            Ok("ok".into())
        }
        "sql-batch" => {
            let db = arg(1);
            sql::execute(
                db,
                "create table if not exists batch_probe (v int8 primary key)",
                &[],
            )?;
            let n: i64 = arg(2).parse().unwrap_or(0);
            let rows: Vec<Vec<Value>> = (0..n).map(|i| vec![Value::Int(i)]).collect();
            sql::execute_batch(db, "insert into batch_probe values ($1)", &rows)
                .map(|n| format!("ok:{n}"))
        }
        "sql-bulk" => {
            let (db, table) = (arg(1), arg(2));
            if table == "bulk_probe" {
                sql::execute(
                    db,
                    "create table if not exists bulk_probe (id bigserial primary key, k int8 not null unique, doc jsonb not null, at timestamptz not null)",
                    &[],
                )?;
            }
            let (from, to): (i64, i64) = (arg(3).parse().unwrap_or(0), arg(4).parse().unwrap_or(0));
            let rows: Vec<Vec<Value>> = (from..to)
                .map(|k| {
                    vec![
                        Value::Int(k),
                        Value::Json(format!(r#"{{"k":{k}}}"#)),
                        Value::Timestamp(k * 1_000_000),
                    ]
                })
                .collect();
            let on_conflict = match arg(5) {
                "skip" => sql::OnConflict::Skip(vec!["k".into()]),
                _ => sql::OnConflict::Fail,
            };
            let columns = ["k", "doc", "at"].map(String::from);
            sql::insert_rows(db, table, &columns, &rows, &on_conflict).map(|n| format!("ok:{n}"))
        }
        "sql-bulk-roundtrip" => bulk_roundtrip(arg(1)),
        "publish" => {
            let id = Some(arg(2)).filter(|s| !s.is_empty());
            publish::publish(&outgoing(arg(1), id))
                .map(|r| format!("ok:{}:{}:{}", r.stream, r.sequence, r.duplicate))
        }
        "kv-put" => kv::put(arg(1), arg(2), arg(3).as_bytes()).map(|r| format!("ok:{r}")),
        "kv-get" => kv::get(arg(1), arg(2)).map(|e| match e {
            Some(e) => format!("ok:{}:{}", String::from_utf8_lossy(&e.value), e.revision),
            None => "none".into(),
        }),
        "kv-cas" => {
            let expected = arg(4).parse().ok();
            kv::compare_and_set(arg(1), arg(2), arg(3).as_bytes(), expected)
                .map(|r| format!("ok:{r}"))
        }
        "kv-del" => kv::delete(arg(1), arg(2)).map(|()| "ok".into()),
        "all" => {
            log::log(log::Level::Info, "all: sql, publish, kv");
            sql::execute(arg(1), "select 1", &[])?;
            publish::publish(&outgoing(arg(2), None))?;
            kv::put(arg(3), "key", b"v")?;
            Ok("ok".into())
        }
        other => Ok(format!("unknown command {other}")),
    }
}

/// Writes one value of every type and reads it back.
fn roundtrip(db: &str) -> Result<String, Error> {
    sql::execute(
        db,
        "create table if not exists roundtrip (b bool, i int8, n int4, f float8, t text, by bytea, j jsonb, ts timestamptz, z text)",
        &[],
    )?;
    let values = vec![
        Value::Boolean(true),
        Value::Int(-42),
        Value::Int(7),
        Value::Float(2.5),
        Value::Text("héllo".into()),
        Value::Bytes(vec![0, 1, 255]),
        Value::Json(r#"{"a":[1,2]}"#.into()),
        Value::Timestamp(1_700_000_000_123_456),
        Value::Null,
    ];
    sql::execute(
        db,
        "insert into roundtrip values ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &values,
    )?;
    let rows = sql::query(
        db,
        "select b, i, n, f, t, by, j, ts, z from roundtrip limit 1",
        &[],
    )?;
    if rows.columns != ["b", "i", "n", "f", "t", "by", "j", "ts", "z"] {
        return Ok(format!("columns differ: {:?}", rows.columns));
    }
    let got = rows.rows.first().cloned().unwrap_or_default();
    if format!("{got:?}") == format!("{values:?}") {
        Ok("ok".into())
    } else {
        Ok(format!("mismatch: sent {values:?}, got {got:?}"))
    }
}

/// Writes every value type with `insert-rows` (COPY text) and reads it back.
fn bulk_roundtrip(db: &str) -> Result<String, Error> {
    sql::execute(
        db,
        "create table if not exists bulk_roundtrip (b bool, i int8, n int4, f float8, t text, by bytea, j jsonb, ts timestamptz, z text)",
        &[],
    )?;
    let values = vec![
        Value::Boolean(false),
        Value::Int(i64::MIN),
        Value::Int(-7),
        Value::Float(-0.1),
        Value::Text("tab\there\nnewline\r back\\slash \\. é \u{1F600}".into()),
        Value::Bytes(vec![0, 9, 10, 92, 255]),
        Value::Json(r#"{"s":"a\tb\nc","n":[1,2.5]}"#.into()),
        Value::Timestamp(-86_400_000_001),
        Value::Null,
    ];
    let columns = ["b", "i", "n", "f", "t", "by", "j", "ts", "z"].map(String::from);
    let n = sql::insert_rows(
        db,
        "public.bulk_roundtrip",
        &columns,
        std::slice::from_ref(&values),
        &sql::OnConflict::Fail,
    )?;
    if n != 1 {
        return Ok(format!("inserted {n} rows"));
    }
    let rows = sql::query(
        db,
        "select b, i, n, f, t, by, j, ts, z from bulk_roundtrip limit 1",
        &[],
    )?;
    let got = rows.rows.first().cloned().unwrap_or_default();
    // jsonb keeps the document, not its spelling: keys come back sorted.
    let want: Vec<Value> = values
        .into_iter()
        .map(|v| match v {
            Value::Json(_) => Value::Json(r#"{"n":[1,2.5],"s":"a\tb\nc"}"#.into()),
            v => v,
        })
        .collect();
    if format!("{got:?}") == format!("{want:?}") {
        Ok("ok".into())
    } else {
        Ok(format!("mismatch: sent {want:?}, got {got:?}"))
    }
}

/// What the sandbox lets through of files, environment and network.
fn ambient() -> String {
    let fs = match std::fs::read_dir("/") {
        Ok(_) => "open",
        Err(_) => "denied",
    };
    let env = std::env::vars().count();
    let net = match std::net::TcpStream::connect("127.0.0.1:4222") {
        Ok(_) => "open",
        Err(_) => "denied",
    };
    format!("fs={fs} env={env} net={net}")
}

fn describe(e: &Error) -> String {
    match e {
        Error::AccessDenied(m) => format!("access-denied: {m}"),
        Error::NotFound => "not-found".into(),
        Error::Unavailable(m) => format!("unavailable: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Other(m) => format!("other: {m}"),
    }
}

export!(Caps);
