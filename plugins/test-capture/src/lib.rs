//! The plugin of the capture and replay proof (docs/plugins/testing.md):
//! for each message (payload: an account id) it reads the account's status
//! from PostgreSQL and the time of day from the clock, and fails — `term` —
//! only when the account is `frozen` *and* it is past the `cutoff`. Nothing
//! in the dead letter says which row or which time made it fail; a capture
//! does. It logs the `api_key` of its config (a secret that a capture must
//! never hold).
//!
//! Config: `database` (default `db`), `cutoff` (`HH:MM` UTC, default
//! `17:00`), `api_key`.

const FIXED: bool = false;
const QUERY: &str = "SELECT status FROM accounts WHERE id = $1";
include!("account.rs");
