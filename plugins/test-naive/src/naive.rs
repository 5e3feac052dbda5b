// Shared by test-naive and test-naive-v2 (each defines SUFFIX first: what
// it appends to the payload it inserts). See test-naive's lib.rs.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use std::cell::RefCell;

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::publish::{Outgoing, publish};
use jetplug::plugin::sql::{Value, execute};

thread_local! {
    static DATABASE: RefCell<String> = RefCell::new("db".to_owned());
}

struct Naive;

impl Guest for Naive {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if let Some((_, db)) = config.iter().find(|(k, _)| k == "database") {
            DATABASE.with(|d| *d.borrow_mut() = db.clone());
        }
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        let db = DATABASE.with(|d| d.borrow().clone());
        batch.iter().map(|m| handle_one(&db, m)).collect()
    }
}

fn handle_one(db: &str, m: &Message) -> Decision {
    let text = String::from_utf8_lossy(&m.payload).into_owned();
    if let Some(ms) = text.strip_prefix("sleep:") {
        std::thread::sleep(std::time::Duration::from_millis(ms.parse().unwrap_or(0)));
    }
    if let Err(e) = execute(
        db,
        "INSERT INTO orders (payload) VALUES ($1)",
        &[Value::Text(format!("{text}{SUFFIX}"))],
    ) {
        return Decision::Retry(Some(retry_ms(&e)));
    }
    if text == "trap" {
        panic!("trapped after the first statement");
    }
    if let Err(e) = execute(db, "UPDATE stock SET n = n + 1", &[]) {
        return Decision::Retry(Some(retry_ms(&e)));
    }
    let out = Outgoing {
        subject: format!("out.{}", m.subject),
        headers: vec![],
        payload: m.payload.clone(),
        message_id: None,
    };
    if let Err(e) = publish(&out) {
        return Decision::Retry(Some(retry_ms(&e)));
    }
    if text == "retry" {
        return Decision::Retry(Some(100));
    }
    if let Some(reason) = text.strip_prefix("term:") {
        return Decision::Term(reason.to_owned());
    }
    Decision::Ack
}

fn retry_ms<E: std::fmt::Debug>(_e: &E) -> u32 {
    200
}

export!(Naive);
