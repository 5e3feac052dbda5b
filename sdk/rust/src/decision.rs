//! What a plugin answers for each message.

use std::time::Duration;

use crate::bindings::exports::jetplug::plugin::handler::Decision as RawDecision;

/// The decision for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done: the host acknowledges the message.
    Ack,
    /// Not now: redeliver later. `None` uses the host's backoff (exponential
    /// with jitter); `Some(d)` asks for that delay (whole milliseconds, at
    /// most `u32::MAX` ms). On the pipeline's last delivery the message is
    /// dead-lettered instead.
    Retry(Option<Duration>),
    /// Never: dead-letter the message with this reason, then terminate it.
    Term(String),
}

impl Decision {
    /// Acknowledge.
    pub fn ack() -> Self {
        Decision::Ack
    }

    /// Retry after the host's backoff.
    pub fn retry() -> Self {
        Decision::Retry(None)
    }

    /// Retry after `delay`.
    pub fn retry_after(delay: Duration) -> Self {
        Decision::Retry(Some(delay))
    }

    /// Dead-letter with `reason`.
    pub fn term(reason: impl Into<String>) -> Self {
        Decision::Term(reason.into())
    }
}

impl From<Decision> for RawDecision {
    fn from(d: Decision) -> Self {
        match d {
            Decision::Ack => RawDecision::Ack,
            Decision::Retry(None) => RawDecision::Retry(None),
            Decision::Retry(Some(delay)) => {
                let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
                RawDecision::Retry(Some(ms))
            }
            Decision::Term(reason) => RawDecision::Term(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_become_milliseconds_and_saturate() {
        assert!(matches!(
            RawDecision::from(Decision::retry_after(Duration::from_millis(1500))),
            RawDecision::Retry(Some(1500))
        ));
        assert!(matches!(
            RawDecision::from(Decision::retry_after(Duration::from_secs(u64::MAX / 2))),
            RawDecision::Retry(Some(u32::MAX))
        ));
        assert!(matches!(
            RawDecision::from(Decision::retry()),
            RawDecision::Retry(None)
        ));
        assert!(matches!(
            RawDecision::from(Decision::term("bad")),
            RawDecision::Term(r) if r == "bad"
        ));
    }
}
