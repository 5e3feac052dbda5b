//! jetplug: a NATS JetStream consumer host that runs sandboxed, WIT-typed
//! WebAssembly components (plugins).
//!
//! Data flows one way: configuration → JetStream consumer → dispatch →
//! plugin → decisions → settle. This crate is the library behind the
//! `jetplug` binary; `cli` is the thin command-line layer on top.

pub mod admin;
pub mod authoring;
pub mod bindings;
pub mod capability;
pub mod capture;
pub mod cli;
pub mod config;
pub mod deadletter;
pub mod engine;
pub mod host;
pub mod hotswap;
pub mod jetstream;
pub mod metrics;
pub mod pipeline;
pub mod plugin;
pub mod redact;
pub mod replay;
pub mod subject;
pub mod telemetry;
pub mod units;
pub mod wit;

pub use bindings::{Decision, Message};
