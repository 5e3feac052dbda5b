//! Retry delays: exponential from the delivery count, capped, with jitter so
//! that a burst of failures does not come back as a burst.

use std::time::Duration;

use crate::config::BackoffConfig;

/// Shortest delay the host ever sends with a NAK: JetStream redelivers a
/// NAK without delay at once, which turns a failing message into a hot loop.
pub const MIN_DELAY: Duration = Duration::from_millis(10);

/// `initial * 2^(delivered-1)`, capped at `max`, then ±20% jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
}

impl From<BackoffConfig> for Backoff {
    fn from(c: BackoffConfig) -> Self {
        Backoff {
            initial: c.initial.0,
            max: c.max.0,
        }
    }
}

impl Backoff {
    /// The delay before delivery number `delivered + 1`.
    pub fn delay(&self, delivered: u32) -> Duration {
        self.delay_with_jitter(delivered, fastrand::f64())
    }

    /// As [`Backoff::delay`] with the jitter source given (`unit` in 0..1).
    pub fn delay_with_jitter(&self, delivered: u32, unit: f64) -> Duration {
        let exp = delivered.saturating_sub(1).min(32);
        let base = self
            .initial
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max);
        let factor = 0.8 + 0.4 * unit.clamp(0.0, 1.0);
        base.mul_f64(factor).max(MIN_DELAY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b() -> Backoff {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(60),
        }
    }

    #[test]
    fn doubles_per_delivery_and_caps() {
        let mid = |d| b().delay_with_jitter(d, 0.5);
        assert_eq!(mid(1), Duration::from_secs(1));
        assert_eq!(mid(2), Duration::from_secs(2));
        assert_eq!(mid(4), Duration::from_secs(8));
        assert_eq!(mid(7), Duration::from_secs(60));
        assert_eq!(mid(1000), Duration::from_secs(60));
    }

    #[test]
    fn jitter_is_bounded_and_never_zero() {
        assert_eq!(b().delay_with_jitter(1, 0.0), Duration::from_millis(800));
        assert_eq!(b().delay_with_jitter(1, 1.0), Duration::from_millis(1200));
        let tiny = Backoff {
            initial: Duration::from_nanos(1),
            max: Duration::from_nanos(1),
        };
        assert_eq!(tiny.delay(1), MIN_DELAY);
    }
}
