//! `[[stream]]`: the JetStream streams the host creates and reconciles.

use serde::Deserialize;

use super::quantity::{Dur, Size};

/// How long messages are kept and who may remove them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// Kept until a limit (age, size, count) removes them.
    #[default]
    Limits,
    /// Kept while some consumer has not acknowledged them.
    Interest,
    /// Removed once acknowledged (one consumer per subject).
    Workqueue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    #[default]
    File,
    Memory,
}

/// What happens when a limit is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Remove the oldest messages.
    #[default]
    Old,
    /// Refuse new messages.
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    S2,
}

/// One stream. Zero limits mean unlimited.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StreamConfig {
    pub name: String,
    pub subjects: Vec<String>,
    #[serde(default)]
    pub retention: Retention,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default)]
    pub discard: Discard,
    #[serde(default)]
    pub max_age: Dur,
    #[serde(default)]
    pub max_bytes: Size,
    #[serde(default)]
    pub max_messages: u64,
    #[serde(default)]
    pub max_messages_per_subject: u64,
    /// Window for `Nats-Msg-Id` de-duplication (default 2m).
    #[serde(default = "default_duplicate_window")]
    pub duplicate_window: Dur,
    #[serde(default = "default_replicas")]
    pub replicas: u8,
    #[serde(default)]
    pub compression: Compression,
    /// The host creates and updates this stream (default true); false for
    /// a stream owned elsewhere: the host only checks that it exists and
    /// reports how it differs, never creating or changing it.
    #[serde(default = "default_manage")]
    pub manage: bool,
}

impl StreamConfig {
    /// Whether a message published to `subject` is stored in this stream.
    pub fn captures(&self, subject: &str) -> bool {
        self.subjects
            .iter()
            .any(|pattern| crate::subject::matches(pattern, subject))
    }
}

fn default_duplicate_window() -> Dur {
    Dur(std::time::Duration::from_secs(120))
}

fn default_manage() -> bool {
    true
}

fn default_replicas() -> u8 {
    1
}
