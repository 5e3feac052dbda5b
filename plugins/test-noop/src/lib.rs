//! The no-op plugin: acks everything unless the payload asks otherwise.
//! `retry` → retry with host backoff, `retry:MS` → retry after MS ms,
//! `term:REASON` → terminate, `sleep:MS` → sleep MS milliseconds then ack,
//! `spin:N` → compute for N million loop rounds then ack (CPU, not waiting),
//! `burn:MS` → compute for MS milliseconds by the clock then ack (the same
//! CPU time on any machine).
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

/// Words that make a payload a command; anything else is acked unread.
const COMMANDS: [&[u8]; 5] = [b"retry", b"sleep:", b"spin:", b"burn:", b"term:"];

fn decide(payload: &[u8]) -> Decision {
    // Only a payload starting with a command is read as text: a no-op must
    // not scan every byte of a large payload (the benchmarks' 1 MiB ones).
    if !COMMANDS.iter().any(|c| payload.starts_with(c)) {
        return Decision::Ack;
    }
    let text = std::str::from_utf8(payload).unwrap_or("");
    if text == "retry" {
        Decision::Retry(None)
    } else if let Some(ms) = text.strip_prefix("retry:") {
        Decision::Retry(ms.parse().ok())
    } else if let Some(ms) = text.strip_prefix("sleep:") {
        std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
        Decision::Ack
    } else if let Some(n) = text.strip_prefix("spin:") {
        let rounds = n.parse::<u64>().unwrap_or(0).saturating_mul(1_000_000);
        let mut x: u64 = 0;
        for _ in 0..rounds {
            x = std::hint::black_box(x.wrapping_add(1));
        }
        Decision::Ack
    } else if let Some(ms) = text.strip_prefix("burn:") {
        let until =
            std::time::Instant::now() + std::time::Duration::from_millis(ms.parse().unwrap_or(0));
        let mut x: u64 = 0;
        while std::time::Instant::now() < until {
            for _ in 0..1000 {
                x = std::hint::black_box(x.wrapping_add(1));
            }
        }
        Decision::Ack
    } else if let Some(reason) = text.strip_prefix("term:") {
        Decision::Term(reason.to_owned())
    } else {
        Decision::Ack
    }
}

export!(Noop);
