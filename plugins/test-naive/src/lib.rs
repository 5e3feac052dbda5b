//! A deliberately naive handler, as a team writes one without thinking
//! about redelivery: for every message it inserts a row into `orders`,
//! adds one to `stock.n` and publishes `out.<subject>` with the payload.
//! No keys, no `ON CONFLICT`, no ledger: in `effects = "at-least-once"`
//! every redelivery repeats all three; in `"exactly-once"` the host makes
//! them happen once.
//!
//! Payloads steer it: `retry` asks for a retry (after its effects), `trap`
//! traps after the first statement, `term:REASON` terminates, `sleep:MS`
//! sleeps before deciding. Config: `database` (default `db`).

const SUFFIX: &str = "";
include!("naive.rs");
