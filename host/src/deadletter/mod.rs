//! Dead letters: messages that will never be processed, with everything
//! needed to understand and redrive them.
//!
//! A dead letter goes to the pipeline's route — its dead-letter plugin, or the
//! built-in route that publishes to `dlq.<stream>.<pipeline>` — and only once
//! the route has taken it is the original terminated. If the route fails the
//! original is retried later, so a dead letter is never lost on the way.

pub mod advisory;
pub mod doctor;
pub mod origin;
pub mod redrive;
mod route;

pub use origin::{Origin, addressed_to};
pub use route::{DeadLetterError, Route};

use crate::bindings::Message;

/// Header names carrying a dead letter's facts (on the DLQ message, and on
/// the message handed to a dead-letter plugin).
pub mod headers {
    pub const SUBJECT: &str = "Jetplug-Original-Subject";
    pub const STREAM: &str = "Jetplug-Original-Stream";
    pub const SEQUENCE: &str = "Jetplug-Original-Sequence";
    pub const CONSUMER: &str = "Jetplug-Original-Consumer";
    pub const PIPELINE: &str = "Jetplug-Pipeline";
    pub const DELIVERIES: &str = "Jetplug-Deliveries";
    pub const REASON: &str = "Jetplug-Reason";
    pub const PUBLISHED_AT: &str = "Jetplug-Original-Published-Ms";
    /// Where the message was first stored, `STREAM:SEQUENCE` (on dead
    /// letters, and on redriven messages: the idempotency key).
    pub const ORIGIN: &str = "Jetplug-Origin";
    /// When the origin was stored, ms since the Unix epoch.
    pub const ORIGIN_PUBLISHED: &str = "Jetplug-Origin-Published-Ms";
    /// On a redriven message: the pipelines that should run it (comma-separated).
    pub const REDRIVE_TO: &str = "Jetplug-Redrive-To";
    /// On a redriven message: the dead letter it came from, `STREAM:SEQUENCE`.
    pub const REDRIVEN_FROM: &str = "Jetplug-Redriven-From";
    /// The capture of the plugin call that failed (`jetplug capture show ID`).
    pub const CAPTURE: &str = "Jetplug-Capture";
}

/// A message that will not be processed, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub pipeline: String,
    pub subject: String,
    pub stream: String,
    pub sequence: u64,
    pub consumer: String,
    pub deliveries: u32,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub payload: bytes::Bytes,
    pub published_at_ms: i64,
    /// Where the message was first stored (differs from stream/sequence
    /// when the failed message was itself a redrive).
    pub origin: Origin,
    /// The capture of the failing call, when one was kept.
    pub capture: Option<String>,
}

impl DeadLetter {
    /// The dead letter for a delivered message.
    pub fn from_message(pipeline: &str, msg: &Message, reason: String) -> Self {
        DeadLetter {
            pipeline: pipeline.to_owned(),
            subject: msg.subject.clone(),
            stream: msg.stream.clone(),
            sequence: msg.stream_seq,
            consumer: msg.consumer.clone(),
            deliveries: msg.delivered,
            reason,
            headers: msg.headers.clone(),
            payload: msg.payload.clone(),
            published_at_ms: msg.published_at_ms,
            origin: Origin::of(
                &msg.headers,
                &msg.stream,
                msg.stream_seq,
                msg.published_at_ms,
            ),
            capture: None,
        }
    }

    /// The facts as headers, original headers first.
    pub fn all_headers(&self) -> Vec<(String, String)> {
        let mut h: Vec<(String, String)> = self
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("Jetplug-") && !k.eq_ignore_ascii_case("Nats-Msg-Id"))
            .cloned()
            .collect();
        // Header values cannot hold line breaks.
        let reason = self.reason.replace(['\r', '\n'], " ");
        h.extend([
            (headers::SUBJECT.into(), self.subject.clone()),
            (headers::STREAM.into(), self.stream.clone()),
            (headers::SEQUENCE.into(), self.sequence.to_string()),
            (headers::CONSUMER.into(), self.consumer.clone()),
            (headers::PIPELINE.into(), self.pipeline.clone()),
            (headers::DELIVERIES.into(), self.deliveries.to_string()),
            (headers::REASON.into(), reason),
            (
                headers::PUBLISHED_AT.into(),
                self.published_at_ms.to_string(),
            ),
            (headers::ORIGIN.into(), self.origin.key()),
            (
                headers::ORIGIN_PUBLISHED.into(),
                self.origin.published_at_ms.to_string(),
            ),
        ]);
        if let Some(id) = &self.capture {
            h.push((headers::CAPTURE.into(), id.clone()));
        }
        h
    }

    /// The de-duplication id: one dead letter per original message and pipeline.
    pub fn message_id(&self) -> String {
        format!(
            "jetplug-dlq:{}:{}:{}",
            self.stream, self.sequence, self.pipeline
        )
    }

    /// The built-in route's subject: `dlq.<stream>.<pipeline>` (lowercase stream).
    pub fn default_subject(&self) -> String {
        crate::config::dead_letter_subject(&self.stream, &self.pipeline)
    }

    /// The message a dead-letter plugin receives: the original subject,
    /// payload and position, with the facts added as headers.
    pub fn to_message(&self, tenant: &str) -> Message {
        Message {
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            subject: self.subject.clone(),
            headers: self.all_headers(),
            payload: self.payload.clone(),
            stream_seq: self.sequence,
            delivered: self.deliveries,
            published_at_ms: self.published_at_ms,
            tenant: tenant.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_carry_the_facts() {
        let dl = DeadLetter {
            pipeline: "indexer".into(),
            subject: "learning.quiz.answered".into(),
            stream: "LEARNING".into(),
            sequence: 42,
            consumer: "c".into(),
            deliveries: 5,
            reason: "bad\njson".into(),
            headers: vec![
                ("traceparent".into(), "00-1".into()),
                ("Nats-Msg-Id".into(), "x".into()),
            ],
            payload: bytes::Bytes::from_static(b"{"),
            published_at_ms: 7,
            origin: Origin {
                stream: "LEARNING".into(),
                sequence: 3,
                published_at_ms: 1,
            },
            capture: Some("indexer.LEARNING.42.5".into()),
        };
        let h = dl.all_headers();
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("traceparent"), Some("00-1"));
        assert_eq!(
            get("Nats-Msg-Id"),
            None,
            "the original id would dedupe the dead letter"
        );
        assert_eq!(get(headers::SEQUENCE), Some("42"));
        assert_eq!(get(headers::REASON), Some("bad json"));
        assert_eq!(get(headers::ORIGIN), Some("LEARNING:3"));
        assert_eq!(get(headers::ORIGIN_PUBLISHED), Some("1"));
        assert_eq!(get(headers::CAPTURE), Some("indexer.LEARNING.42.5"));
        assert_eq!(dl.default_subject(), "dlq.learning.indexer");
        assert_eq!(dl.message_id(), "jetplug-dlq:LEARNING:42:indexer");
    }
}
