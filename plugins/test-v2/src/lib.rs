//! Test plugin version 2 of 2 for hot-swap tests (see `../test-v1/src/tagged.rs`).

const VERSION: &str = "v2";
include!("../../test-v1/src/tagged.rs");
