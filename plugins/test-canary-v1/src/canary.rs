// Shared by test-canary-v1 and test-canary-v2 (each defines VERSION first):
// a plugin for canary tests. Config `VERSION = "ack"` (the default) acks
// every message; `VERSION = "term-percent:N"` terminates N % of the
// payloads (by a hash of the payload, reason `canary-term:VERSION`) and
// acks the rest; `VERSION = "slow:MS"` sleeps MS per message, then acks.
// Config `tag = PREFIX` publishes every handled payload to
// `PREFIX.VERSION` (needs a publish grant), so a test can count which
// version handled each message.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use std::cell::RefCell;

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::publish::{Outgoing, publish};

thread_local! {
    static MODE: RefCell<String> = const { RefCell::new(String::new()) };
    static TAG: RefCell<Option<String>> = const { RefCell::new(None) };
}

struct Canary;

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Guest for Canary {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        for (k, v) in &config {
            if k == VERSION {
                MODE.with(|m| *m.borrow_mut() = v.clone());
            }
            if k == "tag" {
                TAG.with(|t| *t.borrow_mut() = Some(v.clone()));
            }
        }
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        batch
            .iter()
            .map(|m| {
                if let Some(tag) = TAG.with(|t| t.borrow().clone()) {
                    let out = Outgoing {
                        subject: format!("{tag}.{VERSION}"),
                        headers: vec![],
                        payload: m.payload.clone(),
                        message_id: None,
                    };
                    if publish(&out).is_err() {
                        return Decision::Retry(Some(100));
                    }
                }
                let mode = MODE.with(|m| m.borrow().clone());
                if let Some(ms) = mode.strip_prefix("slow:") {
                    let ms = ms.parse().unwrap_or(0);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                    return Decision::Ack;
                }
                if let Some(n) = mode.strip_prefix("term-percent:") {
                    let n: u64 = n.parse().unwrap_or(0);
                    return if fnv(&m.payload) % 100 < n {
                        Decision::Term(format!("canary-term:{VERSION}"))
                    } else {
                        Decision::Ack
                    };
                }
                Decision::Ack
            })
            .collect()
    }
}

export!(Canary);
