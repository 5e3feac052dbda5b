//! What [`crate::export!`] expands to call: keeps the plugin value between
//! calls and converts between the WIT types and the SDK's. Not public API.

use std::any::Any;
use std::cell::RefCell;

pub use crate::bindings::exports::jetplug::plugin::handler::{
    Decision as RawDecision, Guest, Message as RawMessage,
};
use crate::{Config, Message, Plugin};

thread_local! {
    // One plugin value per instance (a component instance is single-threaded).
    static PLUGIN: RefCell<Option<Box<dyn Any>>> = const { RefCell::new(None) };
}

/// `init`: builds the plugin from its config and keeps it.
pub fn init<P: Plugin>(config: Vec<(String, String)>) -> Result<(), String> {
    let config = Config::new(config);
    let plugin = P::init(&config).map_err(|e| e.to_string())?;
    PLUGIN.with_borrow_mut(|slot| *slot = Some(Box::new(plugin)));
    Ok(())
}

/// `handle`: one decision per message, in order, whatever the plugin returns.
pub fn handle<P: Plugin>(batch: Vec<RawMessage>) -> Vec<RawDecision> {
    let messages: Vec<Message> = batch.into_iter().map(Message::from).collect();
    PLUGIN.with_borrow_mut(|slot| {
        let plugin = slot
            .as_mut()
            .and_then(|p| p.downcast_mut::<P>())
            .expect("jetplug-sdk: `handle` called before a successful `init`");
        plugin
            .handle_batch(&messages)
            .into_iter()
            .map(RawDecision::from)
            .collect()
    })
}
