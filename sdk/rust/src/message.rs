//! One delivered message, with typed accessors for what handlers look at
//! most: the payload as text or JSON, and headers.

use serde::de::DeserializeOwned;

use crate::bindings::exports::jetplug::plugin::handler::Message as RawMessage;

/// One message delivered by JetStream (see `record message` in the WIT).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The stream that stored it.
    pub stream: String,
    /// The durable consumer that delivered it (`""` offline).
    pub consumer: String,
    /// The subject it was published to.
    pub subject: String,
    /// Headers in the order sent; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// The body, unchanged.
    pub payload: Vec<u8>,
    /// Its sequence in the stream (stable across redeliveries).
    pub stream_seq: u64,
    /// Delivery attempt, 1 on first delivery.
    pub delivered: u32,
    /// When JetStream stored it, ms since the Unix epoch.
    pub published_at_ms: i64,
    /// The tenant of the consuming pipeline.
    pub tenant: String,
}

/// Header naming a redriven message's origin, `STREAM:SEQUENCE`.
pub const ORIGIN_HEADER: &str = "Jetplug-Origin";
/// Header with a redriven message's original publish time (ms since epoch).
pub const ORIGIN_PUBLISHED_HEADER: &str = "Jetplug-Origin-Published-Ms";

/// Where a message was first stored: the key of exactly-once effects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub stream: String,
    pub sequence: u64,
    /// When the original was stored, ms since the Unix epoch.
    pub published_at_ms: i64,
    /// True when the message was redriven from the dead-letter queue.
    pub redriven: bool,
}

/// Why a payload could not be read as asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadError {
    /// The payload is not UTF-8 text.
    NotUtf8(String),
    /// The payload is not JSON (a syntax error, or it ends early).
    Json(String),
    /// The payload is JSON, but not of the expected shape (a missing
    /// field, a value of another type).
    Shape(String),
}

impl std::fmt::Display for PayloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PayloadError::NotUtf8(e) => write!(f, "payload is not UTF-8 text: {e}"),
            PayloadError::Json(e) => write!(f, "payload is not JSON: {e}"),
            PayloadError::Shape(e) => write!(f, "payload JSON has the wrong shape: {e}"),
        }
    }
}

impl std::error::Error for PayloadError {}

/// A subject read as `<domain>.<entity>.<action>` ([`Message::subject_parts`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectParts<'a> {
    pub domain: &'a str,
    pub entity: &'a str,
    pub action: &'a str,
}

impl Message {
    /// The subject as `<domain>.<entity>.<action>`, for subjects that do
    /// not always have three tokens:
    /// - three tokens `learning.lesson.completed`: as they are;
    /// - two tokens `focus.ping` are `<domain>.<action>`: the entity is the
    ///   domain (`focus`, `focus`, `ping`);
    /// - one token `heartbeat`: all three are that token;
    /// - more than three `a.b.c.d`: the action keeps the rest (`c.d`).
    ///
    /// No part is ever empty for a valid subject.
    pub fn subject_parts(&self) -> SubjectParts<'_> {
        subject_parts(&self.subject)
    }

    /// The payload as UTF-8 text.
    pub fn text(&self) -> Result<&str, PayloadError> {
        std::str::from_utf8(&self.payload).map_err(|e| PayloadError::NotUtf8(e.to_string()))
    }

    /// The payload parsed as JSON into `T` (any serde type, or
    /// `serde_json::Value`). The error says why, ready for a `term` reason.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, PayloadError> {
        serde_json::from_slice(&self.payload).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => PayloadError::Shape(e.to_string()),
            _ => PayloadError::Json(e.to_string()),
        })
    }

    /// The first value of header `name` (exact name first, then ignoring
    /// ASCII case, as NATS header names are often written either way).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .or_else(|| {
                self.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
            })
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name` (ignoring ASCII case), in order.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Where the message was first stored. For a message redriven from the
    /// dead-letter queue that is the original stream and sequence (from the
    /// `Jetplug-Origin` header the host's redrive sets), otherwise the
    /// message's own stream and sequence.
    pub fn origin(&self) -> Origin {
        let redriven = self
            .header(ORIGIN_HEADER)
            .and_then(|v| v.rsplit_once(':'))
            .and_then(|(stream, seq)| Some((stream, seq.trim().parse::<u64>().ok()?)));
        match redriven {
            Some((stream, sequence)) if !stream.is_empty() => Origin {
                stream: stream.to_owned(),
                sequence,
                published_at_ms: self
                    .header(ORIGIN_PUBLISHED_HEADER)
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(self.published_at_ms),
                redriven: true,
            },
            _ => Origin {
                stream: self.stream.clone(),
                sequence: self.stream_seq,
                published_at_ms: self.published_at_ms,
                redriven: false,
            },
        }
    }

    /// A key that identifies this message's effect for exactly-once writes:
    /// `STREAM:SEQUENCE` of its [origin](Self::origin). The same on every
    /// redelivery and after a redrive from the dead-letter queue.
    pub fn idempotency_key(&self) -> String {
        let o = self.origin();
        format!("{}:{}", o.stream, o.sequence)
    }

    /// Whether this is a redelivery (`delivered > 1`).
    pub fn is_redelivery(&self) -> bool {
        self.delivered > 1
    }
}

impl From<RawMessage> for Message {
    fn from(m: RawMessage) -> Self {
        Message {
            stream: m.stream,
            consumer: m.consumer,
            subject: m.subject,
            headers: m.headers,
            payload: m.payload,
            stream_seq: m.stream_seq,
            delivered: m.delivered,
            published_at_ms: m.published_at_ms,
            tenant: m.tenant,
        }
    }
}

/// [`Message::subject_parts`] of a subject string.
pub fn subject_parts(subject: &str) -> SubjectParts<'_> {
    let mut tokens = subject.splitn(3, '.');
    let first = tokens.next().unwrap_or("");
    match (tokens.next(), tokens.next()) {
        (Some(entity), Some(action)) => SubjectParts {
            domain: first,
            entity,
            action,
        },
        (Some(action), None) => SubjectParts {
            domain: first,
            entity: first,
            action,
        },
        _ => SubjectParts {
            domain: first,
            entity: first,
            action: first,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8], headers: &[(&str, &str)]) -> Message {
        Message {
            stream: "S".into(),
            consumer: "c".into(),
            subject: "a.b.c".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            payload: payload.to_vec(),
            stream_seq: 7,
            delivered: 1,
            published_at_ms: 0,
            tenant: "t".into(),
        }
    }

    #[derive(serde::Deserialize)]
    struct Event {
        student: String,
    }

    #[test]
    fn subjects_of_one_two_three_and_more_tokens() {
        let parts = |s| {
            let p = subject_parts(s);
            (p.domain, p.entity, p.action)
        };
        assert_eq!(
            parts("learning.lesson.completed"),
            ("learning", "lesson", "completed")
        );
        assert_eq!(parts("focus.ping"), ("focus", "focus", "ping"));
        assert_eq!(parts("heartbeat"), ("heartbeat", "heartbeat", "heartbeat"));
        assert_eq!(parts("a.b.c.d"), ("a", "b", "c.d"));
        assert_eq!(message(b"", &[]).subject_parts().action, "c");
    }

    #[test]
    fn json_into_a_type_and_a_readable_error() {
        let ok = message(br#"{"student":"s-1"}"#, &[]);
        assert_eq!(ok.json::<Event>().map(|e| e.student), Ok("s-1".into()));
        let missing = message(br#"{"x":1}"#, &[]);
        let err = missing.json::<Event>().err().map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(
                |e| e.starts_with("payload JSON has the wrong shape: missing field `student`")
            ),
            "{err:?}"
        );
        let broken = message(br#"{"student":"#, &[]);
        let err = broken.json::<Event>().err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.starts_with("payload is not JSON")),
            "{err:?}"
        );
        let binary = message(&[0xff, 0xfe], &[]);
        assert!(matches!(binary.text(), Err(PayloadError::NotUtf8(_))));
    }

    #[test]
    fn headers_exact_then_case_insensitive() {
        let m = message(b"", &[("X-Id", "1"), ("x-id", "2"), ("Other", "3")]);
        assert_eq!(m.header("x-id"), Some("2"));
        assert_eq!(m.header("X-ID"), Some("1"));
        assert_eq!(m.header("missing"), None);
        assert_eq!(m.header_values("x-id").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(m.idempotency_key(), "S:7");
        assert!(!m.origin().redriven);
    }

    #[test]
    fn a_redriven_message_keeps_its_origin() {
        let mut m = message(b"", &[]);
        m.headers = vec![
            ("Jetplug-Origin".into(), "LEARNING:42".into()),
            ("Jetplug-Origin-Published-Ms".into(), "1000".into()),
        ];
        let o = m.origin();
        assert_eq!(
            (o.stream.as_str(), o.sequence, o.published_at_ms),
            ("LEARNING", 42, 1000)
        );
        assert!(o.redriven);
        assert_eq!(m.idempotency_key(), "LEARNING:42");
        m.headers = vec![("Jetplug-Origin".into(), "garbage".into())];
        assert_eq!(
            m.idempotency_key(),
            "S:7",
            "an unreadable origin is ignored"
        );
    }
}
