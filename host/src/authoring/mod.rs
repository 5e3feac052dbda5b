//! Writing plugins without servers: the files of a new project
//! ([`scaffold`], `jetplug new`), messages from a JSONL file ([`input`],
//! `jetplug run-plugin` and `jetplug test`), and what a fixture expects the
//! plugin to answer ([`expect`]), and running a batch of fixture lines on
//! declared capability answers ([`fixture`], `jetplug test`).

pub mod expect;
pub mod fixture;
pub mod input;
pub mod scaffold;
