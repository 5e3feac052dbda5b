//! Everything that talks to JetStream: connecting (with startup retry and
//! runtime reconnect), stream provisioning and reconciliation, durable
//! consumers, and turning delivered messages into the plugin's `message`.

pub mod buckets;
pub mod connect;
pub mod consumer;
pub mod convert;
pub mod figures;
pub mod inboxes;
pub mod leaders;
pub mod raw_get;
pub mod streams;

pub use connect::{ConnectError, Health, connect};
