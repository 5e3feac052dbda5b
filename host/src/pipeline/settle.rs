//! From a plugin's answer to what JetStream is told, per message.
//!
//! Pure logic (tested without a server): `ack` → +ACK; `retry` → -NAK with
//! a delay (the plugin's, or the host backoff), never a plain NAK; `term` →
//! dead letter then +TERM. A failed batch retries every message with backoff;
//! on the last allowed delivery a message that would be retried is
//! dead-lettered instead, so nothing loops forever and nothing is dropped.
//! A delivery past the last one (the host's spare, see
//! `jetstream::consumer`) is dead-lettered without running the plugin.

use std::time::Duration;

use super::backoff::{Backoff, MIN_DELAY};
use crate::bindings::Decision;
use crate::plugin::BatchError;

/// What to do with one delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Ack,
    /// Redeliver after this delay.
    Nak(Duration),
    /// Hand to the dead-letter route with this reason, then terminate.
    DeadLetter(String),
}

impl Action {
    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Ack => "ack",
            Action::Nak(_) => "retry",
            Action::DeadLetter(_) => "dead-letter",
        }
    }
}

/// The action for a message the plugin decided on.
pub fn for_decision(
    decision: &Decision,
    delivered: u32,
    max_deliver: u32,
    backoff: &Backoff,
) -> Action {
    match decision {
        Decision::Ack => Action::Ack,
        Decision::Term(reason) => Action::DeadLetter(reason.clone()),
        Decision::Retry(delay) => {
            if delivered >= max_deliver {
                Action::DeadLetter(format!(
                    "retries exhausted: the plugin asked to retry on delivery {delivered} of {max_deliver}"
                ))
            } else {
                Action::Nak(match delay {
                    Some(ms) => Duration::from_millis(u64::from(*ms)).max(MIN_DELAY),
                    None => backoff.delay(delivered),
                })
            }
        }
    }
}

/// Whether `delivered` is the host's spare delivery: past the last one the
/// plugin may see, so the last one ended without a decision.
pub fn is_spare(delivered: u32, max_deliver: u32) -> bool {
    delivered > max_deliver
}

/// The action for a message on the spare delivery: its dead letter.
pub fn for_spare(delivered: u32, max_deliver: u32) -> Action {
    Action::DeadLetter(format!(
        "no decision on the last delivery ({max_deliver} of {max_deliver}): the host holding it \
         stopped, crashed or lost its connection before settling it (delivery {delivered})"
    ))
}

/// The action for a message whose batch failed (trap, deadline, ...).
pub fn for_failure(
    error: &BatchError,
    delivered: u32,
    max_deliver: u32,
    backoff: &Backoff,
) -> Action {
    if delivered >= max_deliver {
        Action::DeadLetter(format!(
            "{}: {error} (delivery {delivered} of {max_deliver})",
            error.kind()
        ))
    } else {
        Action::Nak(backoff.delay(delivered))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Backoff = Backoff {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(60),
    };

    #[test]
    fn decisions_map_to_actions() {
        assert_eq!(for_decision(&Decision::Ack, 1, 5, &B), Action::Ack);
        assert_eq!(
            for_decision(&Decision::Retry(Some(250)), 1, 5, &B),
            Action::Nak(Duration::from_millis(250))
        );
        assert_eq!(
            for_decision(&Decision::Retry(Some(0)), 1, 5, &B),
            Action::Nak(MIN_DELAY),
            "never a plain immediate NAK"
        );
        assert!(matches!(for_decision(&Decision::Retry(None), 3, 5, &B),
            Action::Nak(d) if d >= Duration::from_millis(3200) && d <= Duration::from_millis(4800)));
        assert_eq!(
            for_decision(&Decision::Term("bad".into()), 1, 5, &B),
            Action::DeadLetter("bad".into())
        );
    }

    #[test]
    fn the_spare_delivery_is_dead_lettered() {
        assert!(!is_spare(5, 5));
        assert!(is_spare(6, 5));
        assert!(matches!(for_spare(6, 5),
            Action::DeadLetter(r) if r.starts_with("no decision on the last delivery (5 of 5)")));
    }

    #[test]
    fn last_delivery_dead_letters_instead_of_retrying() {
        assert!(matches!(for_decision(&Decision::Retry(None), 5, 5, &B),
            Action::DeadLetter(r) if r.contains("retries exhausted")));
        let err = BatchError::Trap {
            plugin: "p".into(),
            reason: "unreachable".into(),
        };
        assert!(matches!(for_failure(&err, 4, 5, &B), Action::Nak(_)));
        assert!(matches!(for_failure(&err, 5, 5, &B),
            Action::DeadLetter(r) if r.starts_with("trap: plugin `p` trapped: unreachable")));
    }
}
