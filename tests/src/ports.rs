//! Free TCP ports on loopback.

use std::net::TcpListener;

/// A port that was free a moment ago on 127.0.0.1. The OS hands out ports
/// round-robin, so a fresh one is not reused soon by another test.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}
