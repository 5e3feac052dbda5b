//! Benchmark plugin for `jetplug-bench latency`: publishes each message's
//! payload on to the subject named by config `to` (acknowledged), then acks
//! it; a failed publish is retried after 100 ms.

use std::time::Duration;

use jetplug_sdk::{Config, ConfigError, Decision, Message, Plugin};

struct Forward {
    to: String,
}

impl Plugin for Forward {
    fn init(config: &Config) -> Result<Self, ConfigError> {
        config.deny_unknown(&["to"])?;
        Ok(Forward {
            to: config.require("to")?.to_owned(),
        })
    }

    fn handle(&mut self, msg: &Message) -> Decision {
        match jetplug_sdk::publish::bytes(&self.to, msg.payload.clone()) {
            Ok(_) => Decision::ack(),
            Err(_) => Decision::retry_after(Duration::from_millis(100)),
        }
    }
}

jetplug_sdk::export!(Forward);
