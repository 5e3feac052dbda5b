//! Hostile test plugin: allocates memory until it runs out on any payload other than `ok`
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
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 1 << 20]);
            std::hint::black_box(&hoard);
        }
    }
}

export!(Hostile);
