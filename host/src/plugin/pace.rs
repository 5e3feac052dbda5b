//! How much CPU a running plugin call gets, decided at every epoch tick it
//! spends computing in wasm.
//!
//! Why pace at all: a plugin spinning towards its deadline takes CPU that
//! healthy pipelines (and PostgreSQL and nats-server beside the host) need.
//! Lowering its OS priority (the slow lane) is not enough on its own: on a
//! small VM even idle-priority work slows the neighbours, because the vCPUs
//! share physical cores. So a *long* call — one that has computed for
//! longer than `throttle_after` — runs one tick in [`LONG_PAUSE`]` + 1`
//! while the host is busy with other calls (calls outside the slow lane,
//! running now or lately: see [`crate::engine::activity`]; long calls do
//! not slow each other down). A call of a plugin whose last call failed
//! runs one tick in [`FAILED_PAUSE`]` + 1` from its first tick: a memory
//! bomb's calls are short but each one faults in its whole memory. A call
//! of a plugin whose last call ran out of time runs one tick in
//! [`OFFENDER_PAUSE`]` + 1` (one in
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
/// Ticks a call of a plugin whose last call failed pauses after each tick
/// it runs while others run.
pub const FAILED_PAUSE: u32 = 15;
/// Ticks a repeat offender pauses after each tick it runs while others run.
pub const OFFENDER_PAUSE: u32 = 31;
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

/// What the pacing rules look at, at one epoch tick of a call.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tick {
    /// Ticks the call has seen in wasm, this one included.
    pub ticks: u32,
    /// The call is past its deadline.
    pub out_of_time: bool,
    /// The plugin's last call ran out of time.
    pub overran: bool,
    /// The plugin's last call failed.
    pub failed: bool,
    /// Other calls (outside the slow lane) are running or ran lately.
    pub busy: bool,
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

    /// The pace of a call at `t`.
    pub fn at_tick(&self, t: Tick) -> Pace {
        if t.out_of_time {
            return Pace::Stop;
        }
        if !self.enabled() {
            return Pace::Continue;
        }
        match (t.overran, t.busy) {
            (true, true) => Pace::Pause(OFFENDER_PAUSE),
            (true, false) => Pace::Pause(OFFENDER_ALONE_PAUSE),
            (false, true) if t.failed => Pace::Pause(FAILED_PAUSE),
            (false, true) if self.is_long(t.ticks) => Pace::Pause(LONG_PAUSE),
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

    fn tick(ticks: u32) -> Tick {
        Tick {
            ticks,
            ..Tick::default()
        }
    }

    #[test]
    fn long_calls_are_paced_only_while_others_run() {
        let p = Pacing::new(Some(Duration::from_millis(20)), TICK);
        let busy = |ticks| Tick {
            busy: true,
            ..tick(ticks)
        };
        assert_eq!(p.at_tick(busy(1)), Pace::Continue);
        assert_eq!(p.at_tick(busy(3)), Pace::Pause(LONG_PAUSE));
        assert_eq!(p.at_tick(tick(3)), Pace::Continue);
    }

    #[test]
    fn calls_after_a_failure_are_paced_from_the_first_tick_while_others_run() {
        let p = Pacing::new(Some(Duration::from_millis(20)), TICK);
        let failed = Tick {
            failed: true,
            ..tick(1)
        };
        assert_eq!(
            p.at_tick(Tick {
                busy: true,
                ..failed
            }),
            Pace::Pause(FAILED_PAUSE)
        );
        assert_eq!(p.at_tick(failed), Pace::Continue);
    }

    #[test]
    fn offenders_are_paced_from_the_first_tick_and_even_alone() {
        let p = Pacing::new(Some(Duration::from_millis(20)), TICK);
        let overran = Tick {
            overran: true,
            ..tick(1)
        };
        assert_eq!(
            p.at_tick(Tick {
                busy: true,
                ..overran
            }),
            Pace::Pause(OFFENDER_PAUSE)
        );
        assert_eq!(p.at_tick(overran), Pace::Pause(OFFENDER_ALONE_PAUSE));
    }

    #[test]
    fn out_of_time_stops_even_without_pacing() {
        let off = Pacing::new(None, TICK);
        let late = Tick {
            out_of_time: true,
            ..tick(1)
        };
        assert_eq!(off.at_tick(late), Pace::Stop);
        let everything = Tick {
            overran: true,
            failed: true,
            busy: true,
            ..tick(100)
        };
        assert_eq!(off.at_tick(everything), Pace::Continue);
    }
}
