//! Whether healthy plugin calls are running: the signal that turns pacing on.
//!
//! Long and misbehaving calls are paced only while others need the CPU
//! (see [`crate::plugin::pace`]). "Others" are calls running outside the
//! slow lane. Looking only at the calls in flight at the instant of an
//! epoch tick misses most of them: a busy pipeline's calls are short, and
//! between two of them it settles and pulls, so at a given tick there is
//! often none in flight and a looping plugin went unpaced most of the time
//! (it took 60 % of a core beside a busy no-op pipeline). So a call also
//! counts for [`RECENT`] after it ends — for everyone but its own caller:
//! a worker's short call must not make its own next, long call look like
//! it has company.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long after a call ends it still counts as activity.
pub const RECENT: Duration = Duration::from_millis(100);

/// Who made a call: any number that tells callers (plugin instances) apart.
pub type Caller = usize;

/// Calls running outside the slow lane, now and lately, across all plugins
/// of one engine. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    in_flight: AtomicUsize,
    /// The last call to end, and the last one before it by another caller.
    ended: Mutex<[Option<(Instant, Caller)>; 2]>,
}

impl Activity {
    /// Counts a call by `caller` as running until the guard is dropped.
    pub fn enter(&self, caller: Caller) -> CallGuard {
        self.0.in_flight.fetch_add(1, Ordering::Relaxed);
        CallGuard {
            activity: self.clone(),
            caller,
            lingers: true,
        }
    }

    /// Whether a call is running now, or one by someone other than `me`
    /// ended less than [`RECENT`] ago.
    pub fn busy(&self, me: Caller) -> bool {
        self.busy_at(Instant::now(), me)
    }

    fn busy_at(&self, now: Instant, me: Caller) -> bool {
        if self.0.in_flight.load(Ordering::Relaxed) > 0 {
            return true;
        }
        let ended = *self.0.ended.lock().unwrap_or_else(|e| e.into_inner());
        ended
            .iter()
            .flatten()
            .any(|&(at, caller)| caller != me && now.saturating_duration_since(at) < RECENT)
    }

    fn ended(&self, caller: Caller, at: Instant) {
        let mut ended = self.0.ended.lock().unwrap_or_else(|e| e.into_inner());
        if ended[0].is_some_and(|(_, last)| last != caller) {
            ended[1] = ended[0];
        }
        ended[0] = Some((at, caller));
    }
}

/// A running call (see [`Activity::enter`]); dropping it ends the call.
#[derive(Debug)]
pub struct CallGuard {
    activity: Activity,
    caller: Caller,
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
        if self.lingers {
            self.activity.ended(self.caller, Instant::now());
        }
        self.activity.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: Caller = 1;
    const OTHER: Caller = 2;

    #[test]
    fn idle_until_a_call_runs() {
        let a = Activity::default();
        assert!(!a.busy(ME));
        let call = a.enter(OTHER);
        assert!(a.busy(ME));
        drop(call);
        assert!(a.busy(ME), "a call that just ended still counts");
    }

    #[test]
    fn a_call_counts_for_a_while_after_it_ends() {
        let a = Activity::default();
        drop(a.enter(OTHER));
        let now = Instant::now();
        assert!(a.busy_at(now, ME));
        assert!(!a.busy_at(now + RECENT + Duration::from_millis(5), ME));
        // Still busy while any call is in flight, however long ago one ended.
        let running = a.enter(OTHER);
        assert!(a.busy_at(now + RECENT * 10, ME));
        drop(running);
    }

    #[test]
    fn a_callers_own_calls_do_not_make_it_busy() {
        let a = Activity::default();
        drop(a.enter(OTHER));
        drop(a.enter(ME));
        drop(a.enter(ME));
        assert!(a.busy(OTHER), "ME's calls count for OTHER");
        assert!(
            a.busy(ME),
            "OTHER's call, before ME's last two, still counts"
        );
        let b = Activity::default();
        drop(b.enter(ME));
        assert!(!b.busy(ME));
    }

    #[test]
    fn a_call_handed_to_the_slow_lane_stops_counting_at_once() {
        let a = Activity::default();
        let call = a.enter(OTHER);
        assert!(a.busy(ME));
        call.hand_off();
        assert!(!a.busy(ME));
    }
}
