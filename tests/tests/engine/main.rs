//! The JetStream engine against a real nats-server: every decision reaches
//! JetStream as intended, retries wait, failures end in the dead-letter
//! stream exactly once, and the host survives NATS being down or restarted.

mod decisions;
mod flow;
mod lifecycle;
mod stranded;
mod tenants;
