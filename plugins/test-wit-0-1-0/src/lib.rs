//! A plugin built against the first shipped WIT package, `wit/0.1.0`, and
//! never against a later one: the host must keep loading it (and linking
//! its `sql@0.1.0` import) however far the contract moves on.
//! Payload `sql:DB` runs `SELECT 1` on database DB (ack on success, retry on
//! error); anything else is acked.

wit_bindgen::generate!({ path: "../../wit/0.1.0", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::sql;

struct Frozen;

impl Guest for Frozen {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        batch.iter().map(|m| decide(&m.payload)).collect()
    }
}

fn decide(payload: &[u8]) -> Decision {
    let text = std::str::from_utf8(payload).unwrap_or("");
    match text.strip_prefix("sql:") {
        Some(db) => match sql::query(db, "SELECT 1", &[]) {
            Ok(_) => Decision::Ack,
            Err(_) => Decision::Retry(None),
        },
        None => Decision::Ack,
    }
}

export!(Frozen);
