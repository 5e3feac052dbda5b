//! Test plugin version 1 of 2 for hot-swap tests (see `tagged.rs`).

const VERSION: &str = "v1";
include!("tagged.rs");
