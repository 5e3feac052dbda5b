//! Canary test plugin, version 2 of 2 (see `../test-canary-v1/src/canary.rs`).

const VERSION: &str = "v2";
include!("../../test-canary-v1/src/canary.rs");
