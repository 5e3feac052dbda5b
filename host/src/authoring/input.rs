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
//!
//! For `jetplug test`, a line may also carry `answers` (what the capability
//! calls of its batch answer) and `expect_effects` (calls its batch must
//! make), and a line without a `subject` declares `answers` for every batch
//! of the file, `time_ms` (the clock the plugin sees) and `config` (what its
//! `init` gets) (docs/plugins/testing.md).
//! `run-plugin` ignores them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::authoring::expect::Expectation;
use crate::bindings::Message;
use crate::capability::transcript::Entry;
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
    /// Answers for the capability calls of this line's batch.
    pub answers: Vec<Entry>,
    /// Calls this line's batch must make (each given argument equal).
    pub effects: Vec<Entry>,
}

/// What a fixture file declares for all its batches.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    pub answers: Vec<Entry>,
    /// The wall clock the plugin sees, ms since the epoch.
    pub time_ms: Option<i64>,
    /// The plugin's `config` for `init` (`--config` pairs override it).
    pub config: Option<Vec<(String, String)>>,
}

impl Declared {
    /// Whether the file runs its batches on declared answers (no servers).
    pub fn any(&self) -> bool {
        !self.answers.is_empty() || self.time_ms.is_some()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    subject: Option<String>,
    payload: Option<serde_json::Value>,
    payload_text: Option<String>,
    payload_base64: Option<String>,
    headers: Option<Headers>,
    stream: Option<String>,
    stream_seq: Option<u64>,
    delivered: Option<u32>,
    published_at_ms: Option<i64>,
    expect: Option<serde_json::Value>,
    answers: Option<Vec<Entry>>,
    expect_effects: Option<Vec<Entry>>,
    time_ms: Option<i64>,
    config: Option<BTreeMap<String, String>>,
    /// The capture a fixture was made from (`capture to-fixture`); informational.
    #[allow(dead_code)]
    capture: Option<String>,
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
    parse_fixture(path, text, tenant).map(|(messages, _)| messages)
}

/// Reads a fixture file: its messages and what it declares.
pub fn read_fixture(
    path: &Path,
    tenant: &str,
) -> Result<(Vec<InputMessage>, Declared), InputError> {
    let text = std::fs::read_to_string(path).map_err(|source| InputError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_fixture(path, &text, tenant)
}

/// [`parse_jsonl`], with the file's declarations.
pub fn parse_fixture(
    path: &Path,
    text: &str,
    tenant: &str,
) -> Result<(Vec<InputMessage>, Declared), InputError> {
    let mut declared = Declared::default();
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
        let Some(subject) = event.subject.clone() else {
            let declares =
                event.answers.is_some() || event.time_ms.is_some() || event.config.is_some();
            let message_keys = event.payload.is_some()
                || event.payload_text.is_some()
                || event.payload_base64.is_some()
                || event.expect.is_some()
                || event.expect_effects.is_some();
            if !declares || message_keys {
                return Err(err("invalid event: missing field `subject`".into()));
            }
            declared.answers.extend(event.answers.unwrap_or_default());
            if event.time_ms.is_some() {
                declared.time_ms = event.time_ms;
            }
            if let Some(c) = event.config {
                declared.config = Some(c.into_iter().collect());
            }
            continue;
        };
        if event.time_ms.is_some() || event.config.is_some() {
            return Err(err(
                "`time_ms` and `config` belong on a line of their own (without `subject`): \
                 they hold for the whole file"
                    .into(),
            ));
        }
        subject::validate_publish_subject(&subject).map_err(|e| err(e.to_string()))?;
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
            answers: event.answers.unwrap_or_default(),
            effects: event.expect_effects.unwrap_or_default(),
            message: Message {
                stream: event.stream.unwrap_or_else(|| "OFFLINE".into()),
                consumer: String::new(),
                subject,
                headers,
                payload: payload.into(),
                stream_seq: seq,
                delivered: event.delivered.unwrap_or(1).max(1),
                published_at_ms: event.published_at_ms.unwrap_or(now_ms),
                tenant: tenant.to_owned(),
            },
        });
    }
    Ok((out, declared))
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
        assert_eq!(&msgs[0].message.payload[..], br#"{"x":1}"#);
        assert_eq!(msgs[0].message.headers, vec![("h".into(), "v".into())]);
        assert_eq!(msgs[1].line, 3);
        assert_eq!(&msgs[1].message.payload[..], b"retry");
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
