//! `test-capture` changed to ask a different query: replayed against a
//! capture of `test-capture`, it diverges at its first call.

const FIXED: bool = false;
const QUERY: &str = "SELECT status FROM accounts WHERE id = $1 AND NOT deleted";
include!("../../test-capture/src/account.rs");
