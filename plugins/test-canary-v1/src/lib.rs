//! Canary test plugin, version 1 of 2 (see `../test-canary-v1/src/canary.rs`).

const VERSION: &str = "v1";
include!("canary.rs");
