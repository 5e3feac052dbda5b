//! `test-naive` as a second version that writes different rows: it inserts
//! `PAYLOAD-v2` instead of `PAYLOAD` (a shadow test's "bug").

const SUFFIX: &str = "-v2";
include!("../../test-naive/src/naive.rs");
