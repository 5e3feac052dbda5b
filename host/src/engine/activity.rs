//! Whether healthy plugin calls are running: the signal that turns pacing on.
//!
//! Long and misbehaving calls are paced only while others need the CPU
//! (see [`crate::plugin::pace`]). "Others" are calls running outside the
//! slow lane. Looking only at the calls in flight at the instant of an
//! epoch tick misses most of them: a busy pipeline's calls are short, and
//! between two of them it settles and pulls, so at a given tick there is
//! often none in flight and a looping plugin went unpaced most of the time
//! (it took 60 % of a core beside a busy no-op pipeline). So a call also
//! counts for [`RECENT`] after it ends.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long after a call ends it still counts as activity.
pub const RECENT: Duration = Duration::from_millis(100);

/// Calls running outside the slow lane, now and lately, across all plugins
/// of one engine. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Activity(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    in_flight: AtomicUsize,
    /// When the last call ended, in milliseconds since `origin` (0: never).
    last_end_ms: AtomicU64,
    origin: Instant,
}

impl Default for Activity {
    fn default() -> Self {
        Activity(Arc::new(Inner {
            in_flight: AtomicUsize::new(0),
            last_end_ms: AtomicU64::new(0),
            origin: Instant::now(),
        }))
    }
}

impl Activity {
    /// Counts a call as running until the returned guard is dropped.
    pub fn enter(&self) -> CallGuard {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard {
            activity: self.clone(),
            lingers: true,
        }
    }

    /// Whether a call is running now or ended less than [`RECENT`] ago.
    pub fn busy(&self) -> bool {
        self.busy_at(Instant::now())
    }

    fn busy_at(&self, now: Instant) -> bool {
        if self.0.in_flight.load(Ordering::Relaxed) > 0 {
            return true;
        }
        match self.0.last_end_ms.load(Ordering::Relaxed) {
            0 => false,
            last => self.millis(now).saturating_sub(last) < RECENT.as_millis() as u64,
        }
    }

    /// Milliseconds since the origin, at least 1 (0 means "never").
    fn millis(&self, at: Instant) -> u64 {
        let ms = at.saturating_duration_since(self.0.origin).as_millis();
        u64::try_from(ms).unwrap_or(u64::MAX).max(1)
    }
}

/// A running call (see [`Activity::enter`]); dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard {
    activity: Activity,
    /// Whether the call counts as activity after it leaves.
    lingers: bool,
}

impl CallGuard {
    /// The call moves to the slow lane: it stops counting at once (a long
    /// call must not make the host look busy and so pace itself).
    pub fn hand_off(mut self) {
        self.lingers = false;
    }
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        let inner = &self.activity.0;
        if self.lingers {
            let now = self.activity.millis(Instant::now());
            inner.last_end_ms.fetch_max(now, Ordering::Relaxed);
        }
        inner.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_until_a_call_runs() {
        let a = Activity::default();
        assert!(!a.busy());
        let call = a.enter();
        assert!(a.busy());
        drop(call);
        assert!(a.busy(), "a call that just ended still counts");
    }

    #[test]
    fn a_call_counts_for_a_while_after_it_ends() {
        let a = Activity::default();
        drop(a.enter());
        let now = Instant::now();
        assert!(a.busy_at(now));
        assert!(!a.busy_at(now + RECENT + Duration::from_millis(5)));
        // Still busy while any call is in flight, however long ago one ended.
        let running = a.enter();
        assert!(a.busy_at(now + RECENT * 10));
        drop(running);
    }

    #[test]
    fn a_call_handed_to_the_slow_lane_stops_counting_at_once() {
        let a = Activity::default();
        let call = a.enter();
        assert!(a.busy());
        call.hand_off();
        assert!(!a.busy());
    }
}
