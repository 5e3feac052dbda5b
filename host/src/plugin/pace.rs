//! How much CPU a running plugin call gets, decided at every epoch tick it
//! spends computing in wasm.
//!
//! Why pace at all: a plugin spinning towards its deadline takes CPU that
//! healthy pipelines (and PostgreSQL and nats-server beside the host) need.
//! Lowering its OS priority (the slow lane) is not enough on its own: on a
//! small VM even idle-priority work slows the neighbours, because the vCPUs
//! share physical cores. So a *long* call — one that has computed for
//! longer than `throttle_after` — runs one tick in [`LONG_PAUSE`]` + 1`
//! while short calls are running (calls outside the slow lane: long calls
//! do not slow each other down), and a call of a plugin whose last call ran
//! out of time runs one tick in [`OFFENDER_PAUSE`]` + 1` (one in
//! [`OFFENDER_ALONE_PAUSE`]` + 1` when alone, so a looping plugin does not
//! burn a core for nothing). A long call with the machine to itself runs at
//! full speed: pacing costs a legitimately heavy plugin nothing unless
//! someone else is waiting.
//!
//! Time spent waiting in a host call (a query, a publish) is not counted:
//! the epoch callback only runs while wasm code runs.

use std::time::Duration;

/// Ticks a long call pauses after each tick it runs while others run.
pub const LONG_PAUSE: u32 = 7;
/// Ticks a repeat offender pauses after each tick it runs while others run.
pub const OFFENDER_PAUSE: u32 = 15;
/// Ticks a repeat offender pauses after each tick it runs alone.
pub const OFFENDER_ALONE_PAUSE: u32 = 3;

/// What a call does at an epoch tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Let other tasks run, then go on.
    Continue,
    /// Sleep this many ticks, then go on.
    Pause(u32),
    /// Out of time: interrupt the call.
    Stop,
}

/// The pacing rules of one engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacing {
    /// Ticks in wasm from which a call is long; `None`: never paced.
    long_after: Option<u32>,
}

impl Pacing {
    /// No pacing at all.
    pub const OFF: Pacing = Pacing { long_after: None };

    /// `throttle_after` of compute makes a call long (`None` turns pacing,
    /// and the slow lane, off).
    pub fn new(throttle_after: Option<Duration>, tick: Duration) -> Self {
        let long_after = throttle_after.map(|t| {
            let whole = t.as_nanos().div_ceil(tick.as_nanos().max(1));
            // The first tick comes anywhere within the first tick period.
            u32::try_from(whole).unwrap_or(u32::MAX).saturating_add(1)
        });
        Pacing { long_after }
    }

    /// Whether pacing (and the slow lane) is on.
    pub fn enabled(&self) -> bool {
        self.long_after.is_some()
    }

    /// Whether a call that has seen `ticks` epoch ticks in wasm is long.
    pub fn is_long(&self, ticks: u32) -> bool {
        self.long_after.is_some_and(|n| ticks >= n)
    }

    /// The pace at a tick: the call has seen `ticks` ticks in wasm (this
    /// one included), `offender` if the plugin's last call ran out of time,
    /// `contended` if short calls (outside the slow lane) are running.
    pub fn at_tick(&self, ticks: u32, out_of_time: bool, offender: bool, contended: bool) -> Pace {
        if out_of_time {
            return Pace::Stop;
        }
        if !self.enabled() {
            return Pace::Continue;
        }
        match (offender, contended) {
            (true, true) => Pace::Pause(OFFENDER_PAUSE),
            (true, false) => Pace::Pause(OFFENDER_ALONE_PAUSE),
            (false, true) if self.is_long(ticks) => Pace::Pause(LONG_PAUSE),
            _ => Pace::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TICK: Duration = Duration::from_millis(10);

    #[test]
    fn a_call_is_long_after_throttle_after_of_compute() {
        let p = Pacing::new(Some(Duration::from_millis(20)), TICK);
        assert!(!p.is_long(2));
        assert!(p.is_long(3));
        // Rounded up to whole ticks.
        assert!(Pacing::new(Some(Duration::from_millis(15)), TICK).is_long(3));
        assert!(!Pacing::new(Some(Duration::from_millis(15)), TICK).is_long(2));
        assert!(!Pacing::new(None, TICK).is_long(u32::MAX));
    }

    #[test]
    fn long_calls_are_paced_only_while_others_run() {
        let p = Pacing::new(Some(Duration::from_millis(20)), TICK);
        assert_eq!(p.at_tick(1, false, false, true), Pace::Continue);
        assert_eq!(p.at_tick(3, false, false, true), Pace::Pause(LONG_PAUSE));
        assert_eq!(p.at_tick(3, false, false, false), Pace::Continue);
    }

    #[test]
    fn offenders_are_paced_from_the_first_tick_and_even_alone() {
        let p = Pacing::new(Some(Duration::from_millis(20)), TICK);
        assert_eq!(p.at_tick(1, false, true, true), Pace::Pause(OFFENDER_PAUSE));
        assert_eq!(
            p.at_tick(1, false, true, false),
            Pace::Pause(OFFENDER_ALONE_PAUSE)
        );
    }

    #[test]
    fn out_of_time_stops_even_without_pacing() {
        let off = Pacing::new(None, TICK);
        assert_eq!(off.at_tick(1, true, false, false), Pace::Stop);
        assert_eq!(off.at_tick(100, false, true, true), Pace::Continue);
    }
}
