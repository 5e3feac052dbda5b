//! `[[pipeline]]`: which streams feed which plugin, and how messages are
//! pulled, batched, retried and dead-lettered.

use std::time::Duration;

use serde::Deserialize;

use super::quantity::{Dur, Size};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// From the first message in the stream.
    #[default]
    All,
    /// Only messages published after the consumer is created.
    New,
    /// From `start_sequence`.
    ByStartSequence,
    /// From `start_time`.
    ByStartTime,
}

/// `ordering`: which messages must be handled in order.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub enum Ordering {
    /// `"none"`: batches run in parallel (up to `concurrency`) in any order.
    #[default]
    None,
    /// `"subject"`: messages of one subject are handled in order.
    Subject,
    /// `"token:N"`: keyed by the subject's Nth token (1-based).
    Token(usize),
    /// `"header:NAME"`: keyed by a header's value.
    Header(String),
    /// `"json:/POINTER"`: keyed by a value in the JSON payload (RFC 6901 pointer).
    Json(String),
}

impl TryFrom<String> for Ordering {
    type Error = super::Refused;

    fn try_from(text: String) -> Result<Self, super::Refused> {
        let bad = |why: &str| {
            super::Refused(format!(
                "`{text}`: {why} (expected none, subject, token:N, header:NAME or json:/POINTER)"
            ))
        };
        match text.split_once(':') {
            None if text == "none" => Ok(Ordering::None),
            None if text == "subject" => Ok(Ordering::Subject),
            None => Err(bad("unknown ordering")),
            Some(("token", n)) => match n.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Ordering::Token(n)),
                _ => Err(bad("the token number starts at 1")),
            },
            Some(("header", name)) if !name.trim().is_empty() => {
                Ok(Ordering::Header(name.trim().to_owned()))
            }
            Some(("header", _)) => Err(bad("name the header")),
            Some(("json", pointer)) if pointer.starts_with('/') => {
                Ok(Ordering::Json(pointer.to_owned()))
            }
            Some(("json", _)) => Err(bad("a JSON pointer starts with `/`, e.g. json:/user/id")),
            Some(_) => Err(bad("unknown ordering")),
        }
    }
}

/// `effects`: what the host guarantees about a plugin's effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Effects {
    /// Each message is handled at least once; a plugin that writes state
    /// keys it on the message's origin (docs/delivery.md).
    #[default]
    AtLeastOnce,
    /// The host runs a batch's SQL in its own transaction with a ledger of
    /// handled origins and relays publishes through an outbox: each effect
    /// happens exactly once, with no dedupe code in the plugin.
    ExactlyOnce,
}

/// `capture`: which plugin calls the host keeps, with everything the plugin
/// saw, for `jetplug capture` and `jetplug test --replay` (docs/capture.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Capture {
    /// None.
    Off,
    /// Calls that dead-letter a message: a `term`, a retry on the last
    /// delivery, a failed batch on the last delivery (default).
    #[default]
    Failures,
    /// Every call (costly: see docs/performance.md).
    All,
}

/// Host retry backoff for `retry(none)` and plugin failures:
/// `initial * 2^(delivered-1)`, capped at `max`, with ±20% jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackoffConfig {
    pub initial: Dur,
    pub max: Dur,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Dur(Duration::from_secs(1)),
            max: Dur(Duration::from_secs(300)),
        }
    }
}

/// `[pipeline.breaker]`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Failed batches in a row that open the breaker (default 5).
    pub consecutive_failures: u32,
    /// Failure rate over `window` that opens the breaker (default 0.5).
    pub failure_rate: f64,
    /// Window of the failure rate (default 30s).
    pub window: Dur,
    /// Batches the window must hold before the rate counts (default 20).
    pub min_calls: u32,
    /// First open interval (default 100ms); doubles on every failed probe.
    pub open_initial: Dur,
    /// Cap of the open interval (default 180s).
    pub open_max: Dur,
    /// Longest a batch is held because a downstream is out (default 5m);
    /// past it, its messages return to normal retry accounting.
    pub max_hold: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: Dur(Duration::from_secs(30)),
            min_calls: 20,
            open_initial: Dur(Duration::from_millis(100)),
            open_max: Dur(Duration::from_secs(180)),
            max_hold: Dur(Duration::from_secs(300)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    pub name: String,
    /// Streams to consume (one durable consumer each).
    pub streams: Vec<String>,
    /// The durable consumer's name on each of its streams (default
    /// `jetplug-<pipeline>-<stream>`), e.g. `indexer` for a runbook's
    /// `nats consumer info LEARNING indexer`.
    #[serde(default)]
    pub consumer: Option<String>,
    /// Only these subjects (default: everything in the stream).
    #[serde(default)]
    pub filter_subjects: Vec<String>,
    /// The plugin that handles messages.
    pub plugin: String,
    /// The plugin that receives dead letters (default: the built-in route to
    /// `dlq.<stream>.<pipeline>`).
    #[serde(default)]
    pub dead_letter: Option<String>,
    #[serde(default)]
    pub deliver: DeliverPolicy,
    /// With `deliver = "by_start_sequence"`.
    #[serde(default)]
    pub start_sequence: Option<u64>,
    /// With `deliver = "by_start_time"`: RFC 3339, e.g. `2026-01-31T12:00:00Z`.
    #[serde(default)]
    pub start_time: Option<String>,
    #[serde(default = "default_ack_wait")]
    pub ack_wait: Dur,
    #[serde(default = "default_max_deliver")]
    pub max_deliver: u32,
    #[serde(default = "default_max_ack_pending")]
    pub max_ack_pending: u32,
    #[serde(default = "default_batch")]
    pub batch: u32,
    #[serde(default = "default_batch_max_wait")]
    pub batch_max_wait: Dur,
    /// A batch also ends before its messages (payloads and headers) pass
    /// this many bytes (default 8MiB; at least one message): they are all
    /// copied into the plugin's memory at once.
    #[serde(default = "default_batch_max_bytes")]
    pub batch_max_bytes: Size,
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    #[serde(default)]
    pub ordering: Ordering,
    /// One host at a time consumes this pipeline's streams (JetStream
    /// pinned-client priority group); the others stand by and one takes
    /// over when the pinned host stops pulling for `pin_timeout`.
    #[serde(default)]
    pub exclusive: bool,
    /// With `exclusive`: how long a silent pinned host keeps the pin (default 10s).
    #[serde(default = "default_pin_timeout")]
    pub pin_timeout: Dur,
    #[serde(default)]
    pub backoff: BackoffConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// `"at-least-once"` (default) or `"exactly-once"`.
    #[serde(default)]
    pub effects: Effects,
    /// With exactly-once effects: the database whose transaction holds the
    /// plugin's SQL, the ledger and the outbox (default: the plugin's only
    /// granted database).
    #[serde(default)]
    pub effects_database: Option<String>,
    /// With exactly-once effects: the schema of the ledger and outbox
    /// tables (default `jetplug`).
    #[serde(default = "default_effects_schema")]
    pub effects_schema: String,
    /// With exactly-once effects: the ledger table's name (default `ledger`).
    #[serde(default = "default_ledger_table")]
    pub effects_ledger_table: String,
    /// With exactly-once effects: the outbox table's name (default `outbox`).
    #[serde(default = "default_outbox_table")]
    pub effects_outbox_table: String,
    /// With exactly-once effects: how long a ledger entry is kept (default
    /// 7d; the longest a message can be redelivered or redriven and still
    /// be recognised).
    #[serde(default = "default_effects_retention")]
    pub effects_retention: Dur,
    /// `"off"`, `"failures"` (default) or `"all"`: the plugin calls kept
    /// as captures (docs/capture.md).
    #[serde(default)]
    pub capture: Capture,
    /// Keep message payloads (and headers) in captures (default true);
    /// false where they hold personal data (a capture then replays with
    /// empty payloads).
    #[serde(default = "default_true")]
    pub capture_payloads: bool,
    /// Largest capture kept (default 1MiB); a larger one is not stored
    /// (counted in `jetplug_captures_total{outcome="too-large"}`).
    #[serde(default = "default_capture_max_size")]
    pub capture_max_size: Size,
}

fn default_ack_wait() -> Dur {
    Dur(Duration::from_secs(30))
}
fn default_max_deliver() -> u32 {
    5
}
fn default_max_ack_pending() -> u32 {
    1000
}
fn default_batch() -> u32 {
    100
}
fn default_batch_max_wait() -> Dur {
    Dur(Duration::from_millis(100))
}
fn default_batch_max_bytes() -> Size {
    Size(8 << 20)
}
fn default_concurrency() -> u32 {
    1
}
fn default_effects_schema() -> String {
    "jetplug".to_owned()
}
fn default_ledger_table() -> String {
    "ledger".to_owned()
}
fn default_outbox_table() -> String {
    "outbox".to_owned()
}
fn default_effects_retention() -> Dur {
    Dur(Duration::from_secs(7 * 24 * 3600))
}
fn default_true() -> bool {
    true
}
fn default_capture_max_size() -> Size {
    Size(1 << 20)
}
fn default_pin_timeout() -> Dur {
    Dur(Duration::from_secs(10))
}

/// The priority group of `exclusive` pipelines' consumers.
pub const PIN_GROUP: &str = "jetplug";

impl PipelineConfig {
    /// The durable consumer name for one of this pipeline's streams.
    pub fn consumer_name(&self, stream: &str) -> String {
        match &self.consumer {
            Some(name) => name.clone(),
            None => format!("jetplug-{}-{}", self.name, stream),
        }
    }

    /// The durable consumer on the host's advisory stream that follows
    /// this pipeline's MAX_DELIVERIES advisories from `stream` (a named
    /// `consumer` is shared by several streams, so it gets the stream too).
    pub fn advisory_consumer_name(&self, stream: &str) -> String {
        match &self.consumer {
            Some(name) => format!("{name}-{stream}-advisories"),
            None => format!("{}-advisories", self.consumer_name(stream)),
        }
    }

    /// The filter subjects that can match something in `stream`.
    pub fn filters_for(&self, stream: &super::StreamConfig) -> Vec<String> {
        self.filter_subjects
            .iter()
            .filter(|f| {
                stream
                    .subjects
                    .iter()
                    .any(|s| crate::subject::overlaps(f, s))
            })
            .cloned()
            .collect()
    }

    /// With exactly-once effects: the effects database, named or the
    /// plugin's only granted one (None when neither; validation says why).
    pub fn effects_database<'a>(&'a self, plugin: &'a super::PluginConfig) -> Option<&'a str> {
        match (&self.effects_database, plugin.grants.sql.as_slice()) {
            (Some(d), _) => Some(d),
            (None, [only]) if only != "*" => Some(only),
            _ => None,
        }
    }

    /// Where the built-in dead-letter route publishes this pipeline's dead
    /// letters from `stream`.
    pub fn dead_letter_subject(&self, stream: &str) -> String {
        dead_letter_subject(stream, &self.name)
    }
}

/// The built-in dead-letter route's subject: `dlq.<stream>.<pipeline>`
/// (lowercase stream).
pub fn dead_letter_subject(stream: &str, pipeline: &str) -> String {
    format!("dlq.{}.{pipeline}", stream.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::Ordering;

    #[test]
    fn orderings_parse_or_say_what_is_expected() {
        let parse = |t: &str| Ordering::try_from(t.to_owned());
        assert_eq!(parse("none"), Ok(Ordering::None));
        assert_eq!(parse("subject"), Ok(Ordering::Subject));
        assert_eq!(parse("token:2"), Ok(Ordering::Token(2)));
        assert_eq!(
            parse("header:X-User"),
            Ok(Ordering::Header("X-User".into()))
        );
        assert_eq!(
            parse("json:/user/id"),
            Ok(Ordering::Json("/user/id".into()))
        );
        for (bad, why) in [
            ("token:0", "starts at 1"),
            ("token:x", "starts at 1"),
            ("header:", "name the header"),
            ("json:user", "starts with `/`"),
            ("random", "unknown ordering"),
            ("key:x", "unknown ordering"),
        ] {
            let e = parse(bad).err().map(|e| e.0).unwrap_or_default();
            assert!(e.contains(why) && e.contains("token:N"), "{bad}: {e}");
        }
    }
}
