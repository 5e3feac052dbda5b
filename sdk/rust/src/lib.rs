//! jetplug-sdk: write a jetplug plugin as a type that implements [`Plugin`]
//! plus one [`export!`] line.
//!
//! Why a crate: every plugin used to repeat the same `wit_bindgen` setup,
//! thread-local state, config loop and error formatting. Here that lives
//! once, so plugins hold only their business logic, and helpers are typed:
//! payloads as JSON into serde types ([`Message::json`]), header lookup,
//! [`Decision`] constructors ([`Decision::retry_after`]), config parsing
//! whose errors name the key ([`Config`]), and the host capabilities
//! ([`log`], [`publish`], [`sql`], [`kv`]) returning `Result<_, Error>`.
//!
//! ```ignore
//! use jetplug_sdk::{Config, ConfigError, Decision, Message, Plugin};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn init(_config: &Config) -> Result<Self, ConfigError> {
//!         Ok(Hello)
//!     }
//!     fn handle(&mut self, message: &Message) -> Decision {
//!         match message.json::<serde_json::Value>() {
//!             Ok(_) => Decision::ack(),
//!             Err(e) => Decision::term(e.to_string()),
//!         }
//!     }
//! }
//!
//! jetplug_sdk::export!(Hello);
//! ```
//!
//! The crate targets the WIT package `jetplug:plugin@0.1.1` (`jetplug wit`
//! prints it); a component built with it loads in every host that ships
//! that version.

mod config;
mod decision;
mod error;
mod message;

pub mod kv;
pub mod log;
pub mod publish;
pub mod sql;

#[doc(hidden)]
pub mod __private;

pub use config::{Config, ConfigError};
pub use decision::Decision;
pub use error::Error;
pub use message::{Message, Origin, PayloadError, SubjectParts, subject_parts};

/// Re-exported so plugins need not depend on them separately.
pub use serde;
pub use serde_json;

/// The bindings generated from the WIT package. Plugins rarely need them:
/// the SDK's own types wrap everything a handler sees.
#[allow(missing_docs, clippy::all, unsafe_code)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "event-plugin",
        default_bindings_module: "jetplug_sdk::bindings",
        pub_export_macro: true,
        export_macro_name: "__export_event_plugin",
    });
}

/// A plugin: built once per instance from its configuration, then handed
/// batches of messages.
///
/// Implement [`Plugin::handle`] for one decision per message, or
/// [`Plugin::handle_batch`] to see the whole batch at once (for example to
/// write it in one SQL statement). The host may create several instances
/// (one per worker) and replaces an instance after a failed batch, calling
/// `init` again each time.
pub trait Plugin: Sized + 'static {
    /// Builds the plugin from its `config` table (`[plugin.NAME.config]` in
    /// the host's configuration). An error refuses the plugin at load or hot
    /// swap, with the message shown to the operator.
    fn init(config: &Config) -> Result<Self, ConfigError>;

    /// Decides about one message. The default implementation panics (which
    /// fails the batch): implement this or [`Plugin::handle_batch`].
    fn handle(&mut self, message: &Message) -> Decision {
        let _ = message;
        panic!("jetplug-sdk: the plugin implements neither `handle` nor `handle_batch`")
    }

    /// Decides about a whole batch: exactly one decision per message, in
    /// order. The default calls [`Plugin::handle`] for each message.
    fn handle_batch(&mut self, batch: &[Message]) -> Vec<Decision> {
        batch.iter().map(|m| self.handle(m)).collect()
    }
}

/// Exports a [`Plugin`] type as the component's `handler`. Use it once, at
/// the crate root of a `cdylib` crate: `jetplug_sdk::export!(MyPlugin);`.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub struct __JetplugHandler;

        impl $crate::__private::Guest for __JetplugHandler {
            fn init(
                config: ::std::vec::Vec<(::std::string::String, ::std::string::String)>,
            ) -> ::std::result::Result<(), ::std::string::String> {
                $crate::__private::init::<$plugin>(config)
            }

            fn handle(
                batch: ::std::vec::Vec<$crate::__private::RawMessage>,
            ) -> ::std::vec::Vec<$crate::__private::RawDecision> {
                $crate::__private::handle::<$plugin>(batch)
            }
        }

        $crate::bindings::__export_event_plugin!(__JetplugHandler with_types_in $crate::bindings);
    };
}
