//! What the epoch callback measures of a running call, shared with the
//! dispatcher (which moves a long call to the slow lane) and with the outer
//! timer (which must not fire for time the host itself paused the call).
//!
//! Why excuse paused time: a deadline is the plugin's budget, and pacing
//! is the host's doing. Charging pauses to the call would turn a heavy but
//! legitimate call beside a busy pipeline into a deadline error, and a
//! memory bomb's memory-limit failure into a misleading "deadline". The
//! excuse is bounded ([`EXCUSE_FACTOR`] deadlines), so a call still ends in
//! bounded wall time; a plugin whose last call ran out of time gets none.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use crate::engine::activity::Caller;

/// At most this many deadlines of pauses are excused per call.
pub const EXCUSE_FACTOR: u32 = 3;

/// Per-instance meter of the running call. Reset when a call starts.
#[derive(Debug, Default)]
pub struct CallMeter {
    ticks: AtomicU32,
    excused_us: AtomicU64,
    paused_us: AtomicU64,
    /// Time the call was being polled: running wasm or host code, not
    /// waiting on a downstream (its CPU time, near enough).
    busy_ns: AtomicU64,
}

impl CallMeter {
    /// A call starts: nothing measured yet.
    pub fn start(&self) {
        self.ticks.store(0, Ordering::Relaxed);
        self.excused_us.store(0, Ordering::Relaxed);
        self.paused_us.store(0, Ordering::Relaxed);
        self.busy_ns.store(0, Ordering::Relaxed);
    }

    /// Counts time spent polling the call.
    pub fn busy(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Time spent polling the call since it started.
    pub fn busy_for(&self) -> Duration {
        Duration::from_nanos(self.busy_ns.load(Ordering::Relaxed))
    }

    /// Counts a pause the call was made to take for others.
    pub fn paused(&self, pause: Duration) {
        self.paused_us.fetch_add(micros(pause), Ordering::Relaxed);
    }

    /// Pauses since the call started (until the next call starts).
    pub fn paused_for(&self) -> Duration {
        Duration::from_micros(self.paused_us.load(Ordering::Relaxed))
    }

    /// Counts an epoch tick spent in wasm; the ticks so far, this one included.
    pub fn tick(&self) -> u32 {
        self.ticks.fetch_add(1, Ordering::Relaxed).saturating_add(1)
    }

    /// Epoch ticks spent in wasm since the call started.
    pub fn ticks(&self) -> u32 {
        self.ticks.load(Ordering::Relaxed)
    }

    /// Excuses a pause of `pause` if the call's excused time stays within
    /// `EXCUSE_FACTOR × deadline`; whether it was excused.
    pub fn excuse(&self, pause: Duration, deadline: Duration) -> bool {
        let cap = micros(deadline.saturating_mul(EXCUSE_FACTOR));
        let pause = micros(pause);
        self.excused_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |so_far| {
                let total = so_far.saturating_add(pause);
                (total <= cap).then_some(total)
            })
            .is_ok()
    }

    /// This meter's instance, as a caller of [`crate::engine::activity`].
    pub fn caller(self: &Arc<Self>) -> Caller {
        Arc::as_ptr(self).addr()
    }

    /// Pauses excused since the call started.
    pub fn excused(&self) -> Duration {
        Duration::from_micros(self.excused_us.load(Ordering::Relaxed))
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_excused_up_to_the_cap_and_reset_per_call() {
        let m = CallMeter::default();
        let deadline = Duration::from_millis(100);
        let pause = Duration::from_millis(70);
        let excused = (0..10).filter(|_| m.excuse(pause, deadline)).count();
        assert_eq!(excused, 4, "300 ms of 70 ms pauses");
        assert_eq!(m.excused(), pause * 4);
        assert_eq!((m.tick(), m.tick()), (1, 2));
        m.paused(pause);
        assert_eq!(m.paused_for(), pause);
        m.start();
        assert_eq!((m.ticks(), m.excused()), (0, Duration::ZERO));
        assert_eq!(m.paused_for(), Duration::ZERO);
        assert!(m.excuse(pause, deadline));
    }
}
