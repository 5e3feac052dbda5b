//! The no-op plugin: acks everything unless the payload asks otherwise.
//! `retry` → retry with host backoff, `retry:MS` → retry after MS ms,
//! `term:REASON` → terminate, `sleep:MS` → sleep MS milliseconds then ack.
//! Config `fail_init = <message>` makes `init` fail.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::log::{Level, log};

struct Noop;

impl Guest for Noop {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        match config.iter().find(|(k, _)| k == "fail_init") {
            Some((_, why)) => Err(why.clone()),
            None => Ok(()),
        }
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        log(Level::Debug, &format!("handling {} messages", batch.len()));
        batch.iter().map(|m| decide(&m.payload)).collect()
    }
}

fn decide(payload: &[u8]) -> Decision {
    let text = std::str::from_utf8(payload).unwrap_or("");
    if text == "retry" {
        Decision::Retry(None)
    } else if let Some(ms) = text.strip_prefix("retry:") {
        Decision::Retry(ms.parse().ok())
    } else if let Some(ms) = text.strip_prefix("sleep:") {
        std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
        Decision::Ack
    } else if let Some(reason) = text.strip_prefix("term:") {
        Decision::Term(reason.to_owned())
    } else {
        Decision::Ack
    }
}

export!(Noop);
