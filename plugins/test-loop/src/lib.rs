//! Hostile test plugin: loops forever on any payload other than `ok`
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
        let mut n: u64 = 0;
        loop {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    }
}

export!(Hostile);
