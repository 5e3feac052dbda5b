//! The per-pipeline circuit breaker.
//!
//! Closed → Open after `consecutive_failures` failed batches in a row, or a
//! failure rate of at least `failure_rate` over the last `window` (once it
//! holds `min_calls` batches). While Open nothing runs; when the open
//! interval is over, one probe batch runs (HalfOpen): success closes the
//! breaker, failure opens it again for twice as long (from `open_initial`,
//! capped at `open_max`). Pure logic: callers pass the time in.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

pub use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open {
        until: Instant,
        interval: Duration,
    },
    /// A probe batch is running.
    HalfOpen {
        interval: Duration,
    },
}

impl State {
    /// 0 closed, 1 open, 2 half-open (for metrics).
    pub fn code(&self) -> u8 {
        match self {
            State::Closed => 0,
            State::Open { .. } => 1,
            State::HalfOpen { .. } => 2,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// May a batch run now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permit {
    /// Yes (`probe`: it is the half-open probe).
    Run { probe: bool },
    /// No: ask again after this long.
    Wait(Duration),
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    state: State,
    consecutive: u32,
    window: VecDeque<(Instant, bool)>,
    transitions: u64,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Self {
        Breaker {
            cfg,
            state: State::Closed,
            consecutive: 0,
            window: VecDeque::new(),
            transitions: 0,
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The state as seen from outside at `now`: an open breaker whose
    /// interval has passed lets the next batch through as a probe, so it
    /// reads half-open even while an idle pipeline has not run one yet.
    pub fn shown(&self, now: Instant) -> State {
        match self.state {
            State::Open { until, interval } if until <= now => State::HalfOpen { interval },
            s => s,
        }
    }

    /// State changes so far.
    pub fn transitions(&self) -> u64 {
        self.transitions
    }

    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Closed => Permit::Run { probe: false },
            State::Open { until, interval } => {
                if now >= until {
                    self.set(State::HalfOpen { interval });
                    Permit::Run { probe: true }
                } else {
                    Permit::Wait(until - now)
                }
            }
            // One probe at a time; others wait for its outcome.
            State::HalfOpen { .. } => Permit::Wait(Duration::from_millis(50)),
        }
    }

    /// Records a batch outcome; returns the new state if it changed.
    pub fn record(&mut self, now: Instant, failed: bool) -> Option<State> {
        let before = self.state;
        match self.state {
            State::HalfOpen { interval } => {
                if failed {
                    let next = interval.saturating_mul(2).min(self.cfg.open_max.0);
                    self.set(State::Open {
                        until: now + next,
                        interval: next,
                    });
                } else {
                    self.reset();
                    self.set(State::Closed);
                }
            }
            State::Closed => {
                self.window.push_back((now, failed));
                while self
                    .window
                    .front()
                    .is_some_and(|(t, _)| now.saturating_duration_since(*t) > self.cfg.window.0)
                {
                    self.window.pop_front();
                }
                self.consecutive = if failed { self.consecutive + 1 } else { 0 };
                let failures = self.window.iter().filter(|(_, f)| *f).count();
                let calls = self.window.len();
                let rate_trips = calls >= self.cfg.min_calls.max(1) as usize
                    && failures as f64 / calls as f64 >= self.cfg.failure_rate;
                if failed
                    && (self.consecutive >= self.cfg.consecutive_failures.max(1) || rate_trips)
                {
                    let interval = self.cfg.open_initial.0;
                    self.set(State::Open {
                        until: now + interval,
                        interval,
                    });
                }
            }
            // A batch that started before the breaker opened: no change.
            State::Open { .. } => {}
        }
        (self.state != before).then_some(self.state)
    }

    fn reset(&mut self) {
        self.consecutive = 0;
        self.window.clear();
    }

    fn set(&mut self, s: State) {
        if std::mem::discriminant(&s) != std::mem::discriminant(&self.state) {
            self.transitions += 1;
        }
        self.state = s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: Dur(Duration::from_secs(10)),
            min_calls: 6,
            open_initial: Dur(Duration::from_millis(100)),
            open_max: Dur(Duration::from_millis(300)),
            ..BreakerConfig::default()
        }
    }

    #[test]
    fn opens_after_consecutive_failures_and_probes() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        assert_eq!(b.record(t0, true), None);
        assert_eq!(b.record(t0, true), None);
        assert!(matches!(b.record(t0, true), Some(State::Open { .. })));
        assert_eq!(b.permit(t0), Permit::Wait(Duration::from_millis(100)));
        let t1 = t0 + Duration::from_millis(100);
        assert_eq!(b.permit(t1), Permit::Run { probe: true });
        assert!(
            matches!(b.permit(t1), Permit::Wait(_)),
            "one probe at a time"
        );
        // Failed probe: open twice as long.
        assert!(
            matches!(b.record(t1, true), Some(State::Open { interval, .. }) if interval == Duration::from_millis(200))
        );
        let t2 = t1 + Duration::from_millis(200);
        assert_eq!(b.permit(t2), Permit::Run { probe: true });
        assert!(
            matches!(b.record(t2, true), Some(State::Open { interval, .. }) if interval == Duration::from_millis(300)),
            "capped"
        );
        let t3 = t2 + Duration::from_millis(300);
        assert_eq!(b.permit(t3), Permit::Run { probe: true });
        assert_eq!(b.record(t3, false), Some(State::Closed));
        assert_eq!(b.permit(t3), Permit::Run { probe: false });
        assert_eq!(b.transitions(), 7);
    }

    #[test]
    fn opens_on_failure_rate_over_the_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        for i in 0..5 {
            assert_eq!(b.record(t0, i % 2 == 0), None);
        }
        // 6 calls, 3 failures: rate 0.5, never 3 in a row.
        assert!(matches!(b.record(t0, true), Some(State::Open { .. })));
    }

    #[test]
    fn old_failures_leave_the_window_and_successes_reset_the_run() {
        let t0 = Instant::now();
        let mut b = Breaker::new(cfg());
        b.record(t0, true);
        b.record(t0, true);
        b.record(t0, false);
        b.record(t0, true);
        b.record(t0, true);
        assert_eq!(b.state(), State::Closed);
        let later = t0 + Duration::from_secs(11);
        for _ in 0..4 {
            b.record(later, false);
        }
        assert_eq!(b.record(later, true), None, "earlier failures expired");
    }

    #[test]
    fn an_open_breaker_past_its_interval_shows_half_open() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            consecutive_failures: 1,
            ..BreakerConfig::default()
        });
        b.record(t0, true);
        assert_eq!(b.shown(t0).name(), "open");
        assert_eq!(b.shown(t0 + Duration::from_secs(3600)).name(), "half-open");
        assert_eq!(
            b.state().name(),
            "open",
            "the state itself moves on a permit"
        );
    }
}
