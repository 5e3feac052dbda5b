// Shared by test-v1 and test-v2 (each defines VERSION first): a plugin that
// terminates every message with the reason `handled-by:VERSION`, so a test
// can tell from the dead letters which version handled each message.
// Payload `sleep:MS` sleeps first (to keep batches in flight).
// Config `refuse_version = VERSION` makes `init` fail (a broken new version).

wit_bindgen::generate!({ path: "../../wit", world: "event-plugin" });

use exports::jetplug::plugin::handler::{Decision, Guest, Message};

struct Tagged;

impl Guest for Tagged {
    fn init(config: Vec<(String, String)>) -> Result<(), String> {
        if config
            .iter()
            .any(|(k, v)| k == "refuse_version" && v == VERSION)
        {
            return Err(format!("version {VERSION} refuses to start (refuse_version)"));
        }
        Ok(())
    }

    fn handle(batch: Vec<Message>) -> Vec<Decision> {
        batch
            .iter()
            .map(|m| {
                let text = std::str::from_utf8(&m.payload).unwrap_or("");
                if let Some(ms) = text.strip_prefix("sleep:") {
                    let ms = ms.parse().unwrap_or(0);
                    std::thread::sleep(std::time::Duration::from_millis(ms));
                }
                Decision::Term(format!("handled-by:{VERSION}"))
            })
            .collect()
    }
}

export!(Tagged);
