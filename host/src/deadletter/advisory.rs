//! Dead letters nobody decided on: a message whose last delivery timed out
//! (host down or hung) is never redelivered, and JetStream only says so in a
//! `MAX_DELIVERIES` advisory. This listener turns those advisories into dead
//! letters, fetching the message from the stream.

use serde::Deserialize;

/// The advisory subject for one consumer.
pub fn subject(stream: &str, consumer: &str) -> String {
    format!("$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}")
}

/// The fields of a `io.nats.jetstream.advisory.v1.max_deliver` advisory we use.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct MaxDeliveries {
    pub stream: String,
    pub consumer: String,
    pub stream_seq: u64,
    pub deliveries: u32,
}

impl MaxDeliveries {
    pub fn parse(payload: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(payload)
    }

    pub fn reason(&self) -> String {
        format!(
            "max deliveries ({}) reached without a decision: the last delivery timed out (host down or handler hung)",
            self.deliveries
        )
    }

    /// The reason for a message the client could not even receive.
    pub fn undeliverable_reason(&self) -> String {
        format!(
            "undeliverable: its subject or headers are not valid UTF-8, which the NATS client \
             cannot read (invalid bytes shown as U+FFFD; payload intact; {} deliveries)",
            self.deliveries
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_server_advisory() -> Result<(), serde_json::Error> {
        let raw = br#"{"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-01-01T00:00:00Z","stream":"LEARNING","consumer":"c","stream_seq":9,"deliveries":5,"domain":""}"#;
        let a = MaxDeliveries::parse(raw)?;
        assert_eq!(a.stream_seq, 9);
        assert_eq!(a.deliveries, 5);
        assert!(a.reason().contains("(5)"));
        Ok(())
    }
}
