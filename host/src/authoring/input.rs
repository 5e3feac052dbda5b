//! Offline input for `jetplug run-plugin`: messages from a JSONL file.
//!
//! One JSON object per line:
//! `{"subject": "learning.quiz.answered", "payload": {...}, "headers": {"k": "v"}}`.
//! The payload is given as exactly one of `payload` (any JSON value, sent as
//! its JSON text), `payload_text` (sent as UTF-8) or `payload_base64` (raw
//! bytes); none means an empty payload. Optional: `headers` (object or list
//! of `[name, value]` pairs), `stream`, `stream_seq`, `delivered`,
//! `published_at_ms`, `expect` (what the plugin must answer, see
//! [`crate::authoring::expect`]). Blank lines are skipped. Any other key, or a malformed
//! line, is an error naming the file and line number.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::authoring::expect::Expectation;
use crate::bindings::Message;
use crate::subject;

/// Why the input could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("cannot read input file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// One message and the input line it came from.
#[derive(Debug, Clone)]
pub struct InputMessage {
    pub line: usize,
    pub message: Message,
    /// What the plugin must answer (`"expect"`), for `jetplug test`.
    pub expect: Option<Expectation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    subject: String,
    payload: Option<serde_json::Value>,
    payload_text: Option<String>,
    payload_base64: Option<String>,
    headers: Option<Headers>,
    stream: Option<String>,
    stream_seq: Option<u64>,
    delivered: Option<u32>,
    published_at_ms: Option<i64>,
    expect: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Headers {
    Map(BTreeMap<String, String>),
    Pairs(Vec<(String, String)>),
}

/// Reads and parses a JSONL file.
pub fn read_jsonl(path: &Path, tenant: &str) -> Result<Vec<InputMessage>, InputError> {
    let text = std::fs::read(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let text = String::from_utf8(text).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let bytes = e.as_bytes();
        let line = bytes[..offset].iter().filter(|&&b| b == b'\n').count() + 1;
        InputError::Line {
            path: path.to_path_buf(),
            line,
            reason: "not valid UTF-8".into(),
        }
    })?;
    parse_jsonl(path, &text, tenant)
}

/// Parses JSONL text; `path` is used in error messages.
pub fn parse_jsonl(path: &Path, text: &str, tenant: &str) -> Result<Vec<InputMessage>, InputError> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or_default();
    let mut out = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = idx + 1;
        if raw.trim().is_empty() {
            continue;
        }
        let err = |reason: String| InputError::Line {
            path: path.to_path_buf(),
            line,
            reason,
        };
        let event: RawEvent =
            serde_json::from_str(raw).map_err(|e| err(format!("invalid event: {e}")))?;
        subject::validate_publish_subject(&event.subject).map_err(|e| err(e.to_string()))?;
        let payload = payload_of(&event).map_err(|e| err(e.to_string()))?;
        let headers = match event.headers {
            None => Vec::new(),
            Some(Headers::Map(m)) => m.into_iter().collect(),
            Some(Headers::Pairs(p)) => p,
        };
        let expect = event
            .expect
            .as_ref()
            .map(Expectation::parse)
            .transpose()
            .map_err(|e| err(e.to_string()))?;
        let seq = event.stream_seq.unwrap_or(out.len() as u64 + 1);
        out.push(InputMessage {
            line,
            expect,
            message: Message {
                stream: event.stream.unwrap_or_else(|| "OFFLINE".into()),
                consumer: String::new(),
                subject: event.subject,
                headers,
                payload,
                stream_seq: seq,
                delivered: event.delivered.unwrap_or(1).max(1),
                published_at_ms: event.published_at_ms.unwrap_or(now_ms),
                tenant: tenant.to_owned(),
            },
        });
    }
    Ok(out)
}

/// A line's payload fields that do not make a payload.
#[derive(Debug, thiserror::Error)]
enum PayloadError {
    #[error("payload_base64 is not valid base64: {0}")]
    Base64(base64::DecodeError),
    #[error("give only one of `payload`, `payload_text`, `payload_base64`")]
    Several,
}

fn payload_of(event: &RawEvent) -> Result<Vec<u8>, PayloadError> {
    match (&event.payload, &event.payload_text, &event.payload_base64) {
        (None, None, None) => Ok(Vec::new()),
        (Some(v), None, None) => Ok(v.to_string().into_bytes()),
        (None, Some(t), None) => Ok(t.clone().into_bytes()),
        (None, None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b)
            .map_err(PayloadError::Base64),
        _ => Err(PayloadError::Several),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<InputMessage>, InputError> {
        parse_jsonl(Path::new("events.jsonl"), text, "t1")
    }

    #[test]
    fn parses_payload_forms_and_skips_blank_lines() -> Result<(), InputError> {
        let msgs = parse(concat!(
            "{\"subject\":\"a.b.c\",\"payload\":{\"x\":1},\"headers\":{\"h\":\"v\"}}\n",
            "\n",
            "{\"subject\":\"a.b.c\",\"payload_text\":\"retry\"}\n",
            "{\"subject\":\"a.b.c\",\"payload_base64\":\"AAEC\",\"headers\":[[\"h\",\"1\"],[\"h\",\"2\"]]}\n",
        ))?;
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[0].message.payload, br#"{"x":1}"#);
        assert_eq!(msgs[0].message.headers, vec![("h".into(), "v".into())]);
        assert_eq!(msgs[1].line, 3);
        assert_eq!(msgs[1].message.payload, b"retry");
        assert_eq!(msgs[2].message.payload, vec![0, 1, 2]);
        assert_eq!(msgs[2].message.headers.len(), 2);
        assert_eq!(msgs[2].message.stream_seq, 3);
        assert_eq!(msgs[2].message.tenant, "t1");
        Ok(())
    }

    #[test]
    fn malformed_line_is_named() {
        let err = parse("{\"subject\":\"a.b\"}\n{not json}\n").err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.starts_with("events.jsonl:2: invalid event"), "{msg}");
    }

    #[test]
    fn bad_fields_are_named() {
        let cases = [
            ("{\"subject\":\"a.>\"}", "wildcard"),
            (
                "{\"subject\":\"a\",\"payload\":1,\"payload_text\":\"x\"}",
                "only one",
            ),
            ("{\"subject\":\"a\",\"payload_base64\":\"!!\"}", "base64"),
            (
                "{\"subject\":\"a\",\"colour\":\"red\"}",
                "unknown field `colour`",
            ),
            ("{\"payload\":1}", "missing field `subject`"),
        ];
        for (line, want) in cases {
            let msg = parse(line).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(
                msg.contains(want) && msg.starts_with("events.jsonl:1:"),
                "{line}: {msg}"
            );
        }
    }
}
