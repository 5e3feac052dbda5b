//! {{name}}: a jetplug plugin. One example of each decision:
//! `ack` (done), `retry` (not now), `term` (never: dead-letter it).

use std::time::Duration;

use jetplug_sdk::{Config, ConfigError, Decision, Message, Plugin, log};
use serde::Deserialize;

/// The event this plugin expects as payload.
#[derive(Deserialize)]
struct Order {
    id: String,
    amount: f64,
}

struct MyPlugin {
    max_amount: f64,
}

impl Plugin for MyPlugin {
    /// Config keys: `max_amount` (default 1000).
    fn init(config: &Config) -> Result<Self, ConfigError> {
        config.deny_unknown(&["max_amount"])?;
        Ok(MyPlugin {
            max_amount: config.parse_or("max_amount", 1000.0)?,
        })
    }

    fn handle(&mut self, msg: &Message) -> Decision {
        // Not JSON, or not an order: it will never work, dead-letter it.
        let order: Order = match msg.json() {
            Ok(order) => order,
            Err(e) => return Decision::term(e.to_string()),
        };
        if order.amount < 0.0 {
            return Decision::term(format!("order {}: negative amount", order.id));
        }
        // Too big to take now: ask for it again in five seconds.
        if order.amount > self.max_amount {
            return Decision::retry_after(Duration::from_secs(5));
        }
        log::info(format!("order {} accepted", order.id));
        Decision::ack()
    }
}

jetplug_sdk::export!(MyPlugin);
