//! The data held by each plugin instance's store: WASI context (with no
//! ambient authority), the memory budget, and the instance's capabilities
//! (which this module does not look inside).

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use wasmtime::component::ResourceTable;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::PluginSpec;
use super::limits::MemoryBudget;
use crate::capability::log::LogBudget;
use crate::capability::{Backends, Capabilities, HasCapabilities, Owner};

/// How much of a plugin's stderr is kept to explain a trap (a panic message).
const STDERR_TAIL: usize = 2048;

/// Store data for one plugin instance.
pub struct PluginState {
    wasi: WasiCtx,
    table: ResourceTable,
    pub(crate) limiter: MemoryBudget,
    pub(crate) stderr: OutputTail,
    pub(crate) caps: Capabilities,
    /// Clock reads and random bytes, recorded or played back (see `tape`).
    pub(crate) tape: super::tape::Tape,
    /// The seed `wasi:random/insecure-seed` hands out (part of a capture).
    pub(crate) seed: u128,
    /// When the running call started and when it must stop (see `instance::start_clock`).
    pub(crate) clock: Option<(std::time::Instant, std::time::Instant)>,
}

impl std::fmt::Debug for PluginState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginState")
            .field("limiter", &self.limiter)
            .finish_non_exhaustive()
    }
}

impl PluginState {
    /// `seed`: the insecure-random seed to hand out (a replay's is the
    /// captured one); None draws one.
    pub fn new(
        spec: &PluginSpec,
        backends: &Arc<Backends>,
        log_budget: Arc<LogBudget>,
        seed: Option<u128>,
    ) -> Self {
        let stderr = OutputTail::default();
        let tape = super::tape::Tape::default();
        let seed = seed.unwrap_or_else(|| {
            let mut b = [0u8; 16];
            if getrandom::fill(&mut b).is_err() {
                fastrand::fill(&mut b);
            }
            u128::from_le_bytes(b)
        });
        // No args, env, preopened dirs or network: WASI only as far as the
        // guest language runtime needs (clocks, random, stdio) — those
        // through the tape.
        let wasi = WasiCtx::builder()
            .wall_clock(tape.wall_clock())
            .monotonic_clock(tape.monotonic_clock())
            .secure_random(tape.random())
            .insecure_random(tape.random())
            .insecure_random_seed(seed)
            .stderr(stderr.clone())
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        PluginState {
            wasi,
            table: ResourceTable::new(),
            limiter: MemoryBudget::new(spec.limits.memory_bytes),
            stderr,
            caps: Capabilities::new(
                Owner {
                    plugin: &spec.name,
                    tenant: &spec.tenant,
                    grants: &spec.grants,
                    log_lines_per_batch: spec.limits.log_lines_per_batch,
                },
                backends,
                log_budget,
            ),
            clock: None,
            tape,
            seed,
        }
    }
}

impl HasCapabilities for PluginState {
    fn capabilities(&mut self) -> &mut Capabilities {
        &mut self.caps
    }
}

impl WasiView for PluginState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Keeps the last few KiB a guest wrote to a stream (used for stderr, where
/// Rust panics print their message). Writes never fail or block.
#[derive(Debug, Clone, Default)]
pub struct OutputTail(Arc<Mutex<VecDeque<u8>>>);

impl OutputTail {
    /// The kept text, lossily decoded, trimmed.
    pub fn text(&self) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let (a, b) = buf.as_slices();
        let mut bytes = Vec::with_capacity(a.len() + b.len());
        bytes.extend_from_slice(a);
        bytes.extend_from_slice(b);
        String::from_utf8_lossy(&bytes).trim().to_owned()
    }

    fn push(&self, data: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let data = &data[data.len().saturating_sub(STDERR_TAIL)..];
        let overflow = (buf.len() + data.len()).saturating_sub(STDERR_TAIL);
        let overflow = overflow.min(buf.len());
        buf.drain(..overflow);
        buf.extend(data);
    }
}

impl IsTerminal for OutputTail {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for OutputTail {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for OutputTail {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_end() {
        let t = OutputTail::default();
        t.push(&vec![b'a'; STDERR_TAIL]);
        t.push(b"panicked at boom");
        let text = t.text();
        assert!(text.ends_with("panicked at boom"));
        assert_eq!(text.len(), STDERR_TAIL);
    }
}
