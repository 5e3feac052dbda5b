//! `test-capture` with its bug fixed: a frozen account past the cutoff is
//! acknowledged (and logged), not terminated.

const FIXED: bool = true;
const QUERY: &str = "SELECT status FROM accounts WHERE id = $1";
include!("../../test-capture/src/account.rs");
