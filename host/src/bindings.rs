//! The one `bindgen!` site: Rust types and traits generated from `wit/world.wit`.
//!
//! Keeping a single site means every module agrees on one set of types
//! (`Message`, `Decision`, capability `Host` traits). Capabilities that talk to
//! the network are `async`; `log` is synchronous so it never yields.
//!
//! [`Message`] alone is written by hand: bindgen would make its payload a
//! `Vec<u8>`, a copy of every delivered payload; this one keeps the
//! delivery's `Bytes`, lowered straight into the guest (the handler is
//! called through [`HandleFunc`], type-checked against the component when
//! an instance is made).

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

pub use self::exports::jetplug::plugin::handler::Decision;
pub use self::jetplug::plugin::types::Error as CapabilityError;

/// `jetplug:plugin/types.message`, field for field and in its order (the
/// component's own type is checked against it at instantiation).
#[derive(
    Debug,
    Clone,
    PartialEq,
    wasmtime::component::ComponentType,
    wasmtime::component::Lift,
    wasmtime::component::Lower,
)]
#[component(record)]
pub struct Message {
    #[component(name = "stream")]
    pub stream: String,
    pub consumer: String,
    pub subject: String,
    pub headers: Vec<(String, String)>,
    /// Shared with the delivery it came in, not copied.
    pub payload: bytes::Bytes,
    #[component(name = "stream-seq")]
    pub stream_seq: u64,
    pub delivered: u32,
    #[component(name = "published-at-ms")]
    pub published_at_ms: i64,
    pub tenant: String,
}

/// The handler's `handle`, typed with [`Message`].
pub type HandleFunc =
    wasmtime::component::TypedFunc<(std::sync::Arc<[Message]>,), (Vec<Decision>,)>;
