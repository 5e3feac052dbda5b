// Shared by test-capture, test-capture-fixed and test-capture-query (each
// defines FIXED and QUERY first). See test-capture's lib.rs.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::log::{Level, log};
use jetplug::plugin::sql::{Value, query};
use jetplug::plugin::types::Error;

struct Settings {
    database: String,
    /// Minutes after midnight, UTC.
    cutoff: u64,
    api_key: String,
}

thread_local! {
    static SETTINGS: RefCell<Settings> = RefCell::new(Settings {
        database: "db".into(),
        cutoff: 17 * 60,
        api_key: String::new(),
    });
}

struct Accounts;

impl Guest for Accounts {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        SETTINGS.with(|s| {
            let mut s = s.borrow_mut();
            for (k, v) in config {
                match k.as_str() {
                    "database" => s.database = v,
                    "api_key" => s.api_key = v,
                    "cutoff" => s.cutoff = minutes(&v).ok_or(format!("cutoff `{v}` is not HH:MM"))?,
                    _ => {}
                }
            }
            Ok(())
        })
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        SETTINGS.with(|s| batch.iter().map(|m| handle_one(&s.borrow(), m)).collect())
    }
}

fn minutes(hhmm: &str) -> Option<u64> {
    let (h, m) = hhmm.split_once(':')?;
    Some(h.parse::<u64>().ok()? * 60 + m.parse::<u64>().ok()?)
}

fn handle_one(s: &Settings, m: &Message) -> Decision {
    let account = String::from_utf8_lossy(&m.payload).trim().to_owned();
    let rows = match query(&s.database, QUERY, &[Value::Text(account.clone())]) {
        Ok(rows) => rows,
        Err(Error::Unavailable(_)) => return Decision::Retry(Some(100)),
        Err(e) => return Decision::Term(format!("query failed: {e:?}")),
    };
    let status = match rows.rows.first().and_then(|r| r.first()) {
        Some(Value::Text(t)) => t.clone(),
        _ => return Decision::Term(format!("unknown account {account}")),
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let minute = now % 86_400 / 60;
    let at = format!("{:02}:{:02}", minute / 60, minute % 60);
    log(
        Level::Info,
        &format!("account {account} is {status} at {at} (key {})", s.api_key),
    );
    if status == "frozen" && minute >= s.cutoff {
        if FIXED {
            log(Level::Warn, &format!("frozen account {account} after cutoff: acknowledged"));
            return Decision::Ack;
        }
        return Decision::Term(format!("cannot settle account {account} at {at}"));
    }
    Decision::Ack
}

export!(Accounts);
