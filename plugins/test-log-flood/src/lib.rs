//! Hostile test plugin: writes 100000 log lines per batch, then acks. The
//! host's per-instance log rate limit drops (and counts) the flood.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::log::{Level, log};

struct Flood;

impl Guest for Flood {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        for i in 0..100_000 {
            log(Level::Error, &format!("flood line {i}"));
        }
        batch.iter().map(|_| Decision::Ack).collect()
    }
}

export!(Flood);
