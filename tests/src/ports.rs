//! Free TCP ports on loopback.
//!
//! Why not simply bind port 0: the OS hands those out from its ephemeral
//! range, the same range every client connection's local port comes from,
//! so the port of a server a fault test has just killed can be taken by
//! some other test's connection (or `bind(0)`) before the server restarts
//! on it ("address already in use"). Ports here come from below that range
//! (20000–31999), walked in a per-process order, and are checked free.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const FIRST: u32 = 20_000;
const SPAN: u32 = 12_000;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A port that was free a moment ago on 127.0.0.1, outside the ephemeral
/// range and not handed out before by this process.
pub fn free_port() -> anyhow::Result<u16> {
    // Processes start at different points of the span.
    let offset = std::process::id().wrapping_mul(2_654_435_761) % SPAN;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + (offset + n.wrapping_mul(7)) % SPAN;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ports_are_distinct_bindable_and_below_the_ephemeral_range() {
        let ports: Vec<u16> = (0..50)
            .map(|_| super::free_port().expect("a port"))
            .collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
        assert!(
            ports.iter().all(|p| (20_000..32_000).contains(p)),
            "{ports:?}"
        );
    }
}
