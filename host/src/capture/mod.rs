//! Captures: one plugin call with everything the plugin saw — the batch,
//! the plugin's digest and config, every capability call with its answer,
//! the clock reads and random bytes of its sandbox — and what it decided.
//!
//! Why: a plugin's whole world passes through its imports, so a call that
//! failed in production can be played back on a laptop, bit for bit, with
//! no servers (`jetplug test PLUGIN.wasm --replay case.jplug`). A capture is
//! a JSON document (the `.jplug` file), stored in a JetStream Object Store
//! bucket ([`store`]) and named by the dead letter it explains. Secrets are
//! masked by the same rules as the host's logs before it is stored.

pub mod replay;
pub mod store;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::bindings::{Decision, Message};
use crate::capability::transcript::{Entry, text_or_bytes};
use crate::config::Grants;
use crate::plugin::tape::Handed;
use crate::plugin::{BatchError, Seen};

/// The capture format's version (`"jplug"` in the document).
pub const FORMAT: u32 = 1;

/// One captured plugin call.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capture {
    /// The format version ([`FORMAT`]).
    pub jplug: u32,
    pub id: String,
    /// RFC 3339.
    pub captured_at: String,
    pub host: String,
    pub pipeline: String,
    pub tenant: String,
    pub plugin: PluginRef,
    /// The plugin's `config`, as `init` got it (secrets masked).
    pub config: Vec<(String, String)>,
    pub grants: Grants,
    /// Why it was kept: the dead-letter reason, or `all`.
    pub why: String,
    /// Whether payloads and headers were kept (`capture_payloads`).
    pub payloads: bool,
    pub batch: Vec<CapturedMessage>,
    /// What the plugin answered: decisions, or the failure.
    pub outcome: Outcome,
    /// Every capability call, in order, with its answer.
    pub calls: Vec<Entry>,
    /// Calls past the transcript's size, not kept.
    #[serde(default)]
    pub calls_dropped: u64,
    /// Clock reads and random bytes.
    pub handed: Handed,
    /// The instance's `wasi:random/insecure-seed` (decimal).
    pub seed: String,
}

/// Which plugin build ran.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PluginRef {
    pub name: String,
    /// SHA-256 of the component.
    pub digest: String,
}

/// What a call came to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Decisions(Vec<Decision>),
    Failed { kind: String, reason: String },
}

impl Outcome {
    pub fn of(result: &Result<Vec<Decision>, BatchError>) -> Self {
        match result {
            Ok(d) => Outcome::Decisions(d.clone()),
            Err(e) => Outcome::Failed {
                kind: e.kind().to_owned(),
                reason: e.to_string(),
            },
        }
    }

    /// The answer for message `i`, in words (`ack`, `retry`, `term: …`,
    /// `trap: …`).
    pub fn describe(&self, i: usize) -> String {
        match self {
            Outcome::Decisions(d) => match d.get(i) {
                Some(Decision::Ack) => "ack".into(),
                Some(Decision::Retry(None)) => "retry".into(),
                Some(Decision::Retry(Some(ms))) => format!("retry after {ms} ms"),
                Some(Decision::Term(r)) => format!("term: {r}"),
                None => "no decision".into(),
            },
            Outcome::Failed { kind, reason } => format!("{kind}: {reason}"),
        }
    }
}

/// A message as captured: payload as text when it is UTF-8, else base64.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapturedMessage {
    pub stream: String,
    pub consumer: String,
    pub subject: String,
    #[serde(default)]
    pub headers: Vec<(String, String)>,
    /// A string, `{"base64": "…"}`, or `{"omitted": LENGTH}`.
    pub payload: Value,
    pub stream_seq: u64,
    pub delivered: u32,
    pub published_at_ms: i64,
    pub tenant: String,
}

impl CapturedMessage {
    pub fn of(m: &Message, payloads: bool) -> Self {
        CapturedMessage {
            stream: m.stream.clone(),
            consumer: m.consumer.clone(),
            subject: m.subject.clone(),
            headers: if payloads {
                m.headers.clone()
            } else {
                Vec::new()
            },
            payload: if payloads {
                text_or_bytes(&m.payload)
            } else {
                serde_json::json!({ "omitted": m.payload.len() })
            },
            stream_seq: m.stream_seq,
            delivered: m.delivered,
            published_at_ms: m.published_at_ms,
            tenant: m.tenant.clone(),
        }
    }

    /// The message as the plugin gets it (an omitted payload is empty).
    pub fn message(&self) -> Result<Message, CaptureError> {
        let payload = match &self.payload {
            Value::String(s) => s.clone().into_bytes(),
            Value::Object(o) if o.contains_key("base64") => {
                use base64::Engine;
                let text = o.get("base64").and_then(Value::as_str).unwrap_or_default();
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|e| CaptureError::Format(format!("payload base64: {e}")))?
            }
            Value::Object(o) if o.contains_key("omitted") => Vec::new(),
            other => {
                return Err(CaptureError::Format(format!(
                    "payload must be a string, {{\"base64\": …}} or {{\"omitted\": N}}, not {other}"
                )));
            }
        };
        Ok(Message {
            stream: self.stream.clone(),
            consumer: self.consumer.clone(),
            subject: self.subject.clone(),
            headers: self.headers.clone(),
            payload: payload.into(),
            stream_seq: self.stream_seq,
            delivered: self.delivered,
            published_at_ms: self.published_at_ms,
            tenant: self.tenant.clone(),
        })
    }
}

/// Where a capture comes from (the pipeline's side).
#[derive(Debug, Clone)]
pub struct Origin<'a> {
    pub host: &'a str,
    pub pipeline: &'a str,
    pub tenant: &'a str,
    pub payloads: bool,
}

/// Reading, writing or storing a capture failed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("not a capture: {0}")]
    Format(String),
    #[error("capture format {found} is newer than this jetplug reads ({FORMAT}); upgrade jetplug")]
    Version { found: u32 },
    #[error("capture `{0}` not found")]
    NotFound(String),
    #[error("capture bucket `{bucket}`: {reason}")]
    Store { bucket: String, reason: String },
}

/// A capture's name: the first message it explains, at its delivery.
pub fn id_for(pipeline: &str, m: &Message) -> String {
    format!("{pipeline}.{}.{}.{}", m.stream, m.stream_seq, m.delivered)
}

impl Capture {
    /// A capture of one call of `plugin` on `batch`, kept because of `why`.
    pub fn of(
        origin: &Origin<'_>,
        plugin: &crate::plugin::Plugin,
        batch: &[Message],
        result: &Result<Vec<Decision>, BatchError>,
        seen: &Seen,
        why: &str,
        id: String,
    ) -> Self {
        let spec = plugin.spec();
        Capture {
            jplug: FORMAT,
            id,
            captured_at: now_rfc3339(),
            host: origin.host.to_owned(),
            pipeline: origin.pipeline.to_owned(),
            tenant: origin.tenant.to_owned(),
            plugin: PluginRef {
                name: plugin.name().to_owned(),
                digest: plugin.hash().to_owned(),
            },
            config: spec.config.clone(),
            grants: spec.grants.clone(),
            why: why.to_owned(),
            payloads: origin.payloads,
            batch: batch
                .iter()
                .map(|m| CapturedMessage::of(m, origin.payloads))
                .collect(),
            outcome: Outcome::of(result),
            calls: seen.calls.entries(),
            calls_dropped: seen.calls.dropped,
            handed: seen.handed.clone(),
            seed: seen.seed.to_string(),
        }
    }

    /// The document as stored: JSON, every registered secret masked.
    pub fn to_stored(&self) -> Vec<u8> {
        let text = serde_json::to_string(self).unwrap_or_default();
        crate::redact::text(&text).into_owned().into_bytes()
    }

    /// Reads a `.jplug` document.
    pub fn parse(bytes: &[u8]) -> Result<Self, CaptureError> {
        let v: Value =
            serde_json::from_slice(bytes).map_err(|e| CaptureError::Format(e.to_string()))?;
        let found = v.get("jplug").and_then(Value::as_u64).ok_or_else(|| {
            CaptureError::Format("no `jplug` format field (is this a .jplug file?)".into())
        })?;
        if found > u64::from(FORMAT) {
            return Err(CaptureError::Version {
                found: found as u32,
            });
        }
        serde_json::from_value(v).map_err(|e| CaptureError::Format(e.to_string()))
    }

    /// The recorded insecure seed.
    pub fn seed(&self) -> u128 {
        self.seed.parse().unwrap_or(0)
    }

    /// The time the capture was taken, ns since the epoch (what a replay's
    /// `init` sees): the first wall clock read, else the capture time.
    pub fn wall(&self) -> u64 {
        if let Some(first) = self.handed.wall.first() {
            return *first;
        }
        time::OffsetDateTime::parse(
            &self.captured_at,
            &time::format_description::well_known::Rfc3339,
        )
        .map(|t| t.unix_timestamp_nanos() as u64)
        .unwrap_or(0)
    }

    /// A one-line summary (for listings).
    pub fn summary(&self) -> String {
        let first = self
            .batch
            .first()
            .map(|m| format!("{} #{} ", m.subject, m.stream_seq))
            .unwrap_or_default();
        format!("{first}{}", self.why)
    }
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(payload: &[u8]) -> Message {
        Message {
            stream: "S".into(),
            consumer: "c".into(),
            subject: "a.b".into(),
            headers: vec![("h".into(), "v".into())],
            payload: payload.to_vec().into(),
            stream_seq: 7,
            delivered: 5,
            published_at_ms: 1,
            tenant: "t".into(),
        }
    }

    #[test]
    fn messages_come_back_as_they_were_or_without_payload() {
        for p in [&b"{\"a\":1}"[..], &[0xff, 0, 1][..]] {
            let m = msg(p);
            assert_eq!(CapturedMessage::of(&m, true).message().ok(), Some(m));
        }
        let kept = CapturedMessage::of(&msg(b"secret person"), false);
        assert_eq!(kept.payload, serde_json::json!({"omitted": 13}));
        let back = kept.message().expect("message");
        assert!(back.payload.is_empty() && back.headers.is_empty());
    }

    #[test]
    fn a_newer_format_or_another_file_is_refused_by_name() {
        let e = Capture::parse(br#"{"jplug": 99}"#)
            .err()
            .map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("format 99 is newer"));
        let e = Capture::parse(b"{}").err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().contains("is this a .jplug file"));
        let e = Capture::parse(b"PK\x03").err().map(|e| e.to_string());
        assert!(e.unwrap_or_default().starts_with("not a capture"));
    }
}
