//! Hostile test plugin: returns one decision too many on any payload other than `ok`
//! (payload `ok` is acked, so tests can show the next batch succeeds).

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};

struct Hostile;

impl Guest for Hostile {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        if batch.iter().all(|m| m.payload == b"ok") {
            return batch.iter().map(|_| Decision::Ack).collect();
        }
        batch
            .iter()
            .map(|_| Decision::Ack)
            .chain([Decision::Ack])
            .collect()
    }
}

export!(Hostile);
