//! Benchmark plugin for `jetplug-bench languages`, with twins in Python
//! (`bench-py`) and JavaScript (`bench-js`) doing the same work: config
//! `mode = "noop"` (default) acks every message; `mode = "json"` parses each
//! payload as JSON first (terminating what does not parse).

use jetplug_sdk::{Config, ConfigError, Decision, Message, Plugin};

struct Bench {
    parse: bool,
}

impl Plugin for Bench {
    fn init(config: &Config) -> Result<Self, ConfigError> {
        config.deny_unknown(&["mode"])?;
        let parse = match config.get_or("mode", "noop") {
            "noop" => false,
            "json" => true,
            other => {
                return Err(ConfigError::key(
                    "mode",
                    format!("`{other}`: use noop or json"),
                ));
            }
        };
        Ok(Bench { parse })
    }

    fn handle(&mut self, msg: &Message) -> Decision {
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
