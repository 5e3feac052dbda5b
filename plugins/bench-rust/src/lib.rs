//! Benchmark plugin for `jetplug bench languages`, with twins in Python
//! (`bench-py`) and JavaScript (`bench-js`) doing the same work: config
//! `mode = "noop"` (default) acks every message; `mode = "json"` parses each
//! payload as JSON first (terminating what does not parse).

use jetplug_sdk::{Config, ConfigError, Decision, Message, Plugin};

struct Bench {
    parse: bool,
    forward: Option<String>,
}

impl Plugin for Bench {
    fn init(config: &Config) -> Result<Self, ConfigError> {
        config.deny_unknown(&["mode", "to"])?;
        let (parse, forward) = match config.get_or("mode", "noop") {
            "noop" => (false, None),
            "json" => (true, None),
            "forward" => (false, Some(config.require("to")?.to_owned())),
            other => {
                return Err(ConfigError::key(
                    "mode",
                    format!("`{other}`: use noop, json or forward"),
                ));
            }
        };
        Ok(Bench { parse, forward })
    }

    fn handle(&mut self, msg: &Message) -> Decision {
        if let Some(to) = &self.forward {
            return match jetplug_sdk::publish::bytes(to, msg.payload.clone()) {
                Ok(_) => Decision::ack(),
                Err(_) => Decision::retry_after(std::time::Duration::from_millis(100)),
            };
        }
        if !self.parse {
            return Decision::ack();
        }
        match msg.json::<serde_json::Value>() {
            Ok(_) => Decision::ack(),
            Err(e) => Decision::term(e.to_string()),
        }
    }
}

jetplug_sdk::export!(Bench);
