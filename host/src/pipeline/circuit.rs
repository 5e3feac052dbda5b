//! The circuit breaker as a pipeline's batches meet it: a batch waits for
//! its permit, and reports how it went.
//!
//! Why apart from `breaker`: the state machine there is pure (callers pass
//! the time in, tests need no pipeline); here it is tied to a pipeline —
//! its lock, its shutdown, its metrics and log lines — once, for both
//! kinds of batch (`worker`, `effects`).

use super::breaker::{Breaker, Permit, State};
use super::{Pipeline, Stats};

/// Waits until the breaker lets a batch run (the keep-alive ticker keeps
/// the held messages from being redelivered). False when shutting down.
pub(super) async fn wait_for_breaker(p: &Pipeline) -> bool {
    loop {
        let permit = lock(p).permit(std::time::Instant::now());
        let wait = match permit {
            Permit::Run { probe } => {
                if probe {
                    p.stats.breaker_state.set(2);
                    tracing::info!(pipeline = %p.cfg.name, "circuit breaker half-open: running a probe batch");
                }
                return true;
            }
            Permit::Wait(d) => d,
        };
        tokio::select! {
            _ = p.shutdown.cancelled() => return false,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Feeds a batch outcome to the breaker; true if it is open afterwards.
pub(super) fn record_outcome(p: &Pipeline, failed: bool) -> bool {
    let mut b = lock(p);
    if let Some(state) = b.record(std::time::Instant::now(), failed) {
        p.stats.breaker_state.set(i64::from(state.code()));
        match state {
            State::Open { interval, .. } => {
                Stats::add(&p.stats.breaker_opened, 1);
                tracing::warn!(pipeline = %p.cfg.name, open_for = ?interval,
                    "circuit breaker open: pausing the pipeline");
            }
            State::Closed => {
                tracing::info!(pipeline = %p.cfg.name, "circuit breaker closed: pipeline resumed")
            }
            State::HalfOpen { .. } => {}
        }
    }
    matches!(b.state(), State::Open { .. })
}

fn lock(p: &Pipeline) -> std::sync::MutexGuard<'_, Breaker> {
    p.breaker.lock().unwrap_or_else(|e| e.into_inner())
}
