//! Calls the capability named by each message's payload and reports the
//! outcome: `ack` on success, `term("<error>")` on a capability error.
//! Payloads: `sql:DB`, `publish:SUBJECT`, `kv:BUCKET`, `ambient` (tries files,
//! environment and sockets; answers `term("fs=.. env=.. net=..")`), else logs.

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};
use jetplug::plugin::types::Error;
use jetplug::plugin::{kv, log, publish, sql};

struct Caps;

impl Guest for Caps {
    fn init(_config: Vec<(String, String)>) -> Result<(), String> {
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        batch.iter().map(|m| run(&m.payload)).collect()
    }
}

fn run(payload: &[u8]) -> Decision {
    let text = String::from_utf8_lossy(payload);
    if text == "ambient" {
        return Decision::Term(ambient());
    }
    let result = if let Some(db) = text.strip_prefix("sql:") {
        sql::execute(db, "select 1", &[]).map(|_| ())
    } else if let Some(subject) = text.strip_prefix("publish:") {
        publish::publish(&publish::Outgoing {
            subject: subject.to_owned(),
            headers: vec![],
            payload: b"hello".to_vec(),
            message_id: None,
        })
        .map(|_| ())
    } else if let Some(bucket) = text.strip_prefix("kv:") {
        kv::get(bucket, "key").map(|_| ())
    } else {
        log::log(log::Level::Info, &text);
        Ok(())
    };
    match result {
        Ok(()) => Decision::Ack,
        Err(e) => Decision::Term(describe(&e)),
    }
}

/// What the sandbox lets through of files, environment and network.
fn ambient() -> String {
    let fs = match std::fs::read_dir("/") {
        Ok(_) => "open",
        Err(_) => "denied",
    };
    let env = std::env::vars().count();
    let net = match std::net::TcpStream::connect("127.0.0.1:4222") {
        Ok(_) => "open",
        Err(_) => "denied",
    };
    format!("fs={fs} env={env} net={net}")
}

fn describe(e: &Error) -> String {
    match e {
        Error::AccessDenied(m) => format!("access-denied: {m}"),
        Error::NotFound => "not-found".into(),
        Error::Unavailable(m) => format!("unavailable: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Other(m) => format!("other: {m}"),
    }
}

export!(Caps);
