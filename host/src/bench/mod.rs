//! Benchmarks behind `jetplug bench`. Timing goals live here, not in tests.
//!
//! `dispatch` needs no servers; `throughput` and `indexer` run against a
//! local nats-server (and PostgreSQL), with the host as a child process.

pub mod dispatch;
pub mod env;
pub mod indexer;
pub mod throughput;
