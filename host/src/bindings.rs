//! The one `bindgen!` site: Rust types and traits generated from `wit/world.wit`.
//!
//! Keeping a single site means every module agrees on one set of types
//! (`Message`, `Decision`, capability `Host` traits). Capabilities that talk to
//! the network are `async`; `log` is synchronous so it never yields.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "event-plugin",
    imports: {
        "jetplug:plugin/log": trappable,
        default: async,
    },
    exports: { default: async },
    // Capture and replay keep capability arguments and answers as JSON.
    additional_derives: [PartialEq, serde::Serialize, serde::Deserialize],
});

pub use self::exports::jetplug::plugin::handler::{Decision, Message};
pub use self::jetplug::plugin::types::Error as CapabilityError;
