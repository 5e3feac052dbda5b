//! The publish retry policy (`[nats.publish]`), shared by the `publish`
//! capability and the built-in dead-letter route.
//!
//! Only what can pass is retried: no acknowledgement in time, a lost
//! connection, a stream that exists but did not answer (a leader being
//! elected, a server restarting). A refusal — no stream captures the
//! subject, the server's permissions forbid it, the stream rejects the
//! message — fails at once: waiting cannot change it, and retrying would
//! only delay the plugin's answer and the breaker's view. One message id
//! is kept through the attempts, so a publish the server stored but whose
//! acknowledgement was lost is not stored twice.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use async_nats::jetstream::context::{GetStreamByNameErrorKind, PublishErrorKind};
use async_nats::jetstream::{self, publish::PublishAck};
use bytes::Bytes;

use crate::config::PublishPolicy;

/// Who publishes, for the log and `jetplug_publish_retries_total{source}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Plugin,
    DeadLetter,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Plugin => "plugin",
            Source::DeadLetter => "dead-letter",
        }
    }
}

/// Why a publish did not go through.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishFailure {
    #[error("no stream captures subject `{0}`")]
    NoStream(String),
    #[error("the NATS server's permissions forbid publishing to `{0}`")]
    Forbidden(String),
    #[error("the stream refused the message published to `{subject}`: {reason}")]
    Rejected { subject: String, reason: String },
    #[error("publish to `{subject}` failed after {attempts} attempts: {last}")]
    Exhausted {
        subject: String,
        attempts: u32,
        last: String,
    },
}

/// Subjects the server answered with a permissions violation, and when.
/// Filled from the connection's error events (the server reports such a
/// refusal asynchronously, not in the publish's answer).
#[derive(Debug, Default)]
pub struct Refusals(Mutex<HashMap<String, Instant>>);

impl Refusals {
    /// Notes a server error; returns the subject if it was a publish
    /// permissions violation (`Permissions Violation for Publish to "S"`).
    pub fn note(&self, server_error: &str) -> Option<String> {
        const MARK: &str = "permissions violation for publish to ";
        let at = server_error.to_ascii_lowercase().find(MARK)?;
        let subject = server_error
            .get(at + MARK.len()..)?
            .trim()
            .trim_matches(|c| c == '"' || c == '\'')
            .to_owned();
        if subject.is_empty() {
            return None;
        }
        if let Ok(mut seen) = self.0.lock() {
            if seen.len() > 1000 {
                seen.clear();
            }
            seen.insert(subject.clone(), Instant::now());
        }
        Some(subject)
    }

    /// Whether `subject` was refused since `since`.
    fn refused_since(&self, subject: &str, since: Instant) -> bool {
        self.0
            .lock()
            .ok()
            .and_then(|seen| seen.get(subject).copied())
            .is_some_and(|at| at >= since)
    }
}

/// What a publish needs besides the message.
#[derive(Debug, Clone, Copy)]
pub struct Retrying<'a> {
    pub policy: &'a PublishPolicy,
    pub refusals: Option<&'a Refusals>,
    pub source: Source,
}

/// Publishes under the policy: every attempt waits `policy.timeout` for
/// the acknowledgement; a transient failure is retried after the policy's
/// pause, with a warning naming the attempt.
pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    headers: HeaderMap,
    payload: Bytes,
    how: Retrying<'_>,
) -> Result<PublishAck, PublishFailure> {
    let policy = how.policy;
    let attempts = policy.attempts.max(1);
    let mut last = String::new();
    for attempt in 1..=attempts {
        let started = Instant::now();
        let outcome = tokio::time::timeout(policy.timeout.0, async {
            js.publish_with_headers(subject.to_owned(), headers.clone(), payload.clone())
                .await?
                .await
        })
        .await;
        let error = match outcome {
            Ok(Ok(ack)) => return Ok(ack),
            Ok(Err(e)) => e,
            Err(_) => async_nats::jetstream::context::PublishError::new(PublishErrorKind::TimedOut),
        };
        if let Some(refusals) = how.refusals
            && refusals.refused_since(subject, started)
        {
            return Err(PublishFailure::Forbidden(subject.to_owned()));
        }
        match error.kind() {
            PublishErrorKind::TimedOut
            | PublishErrorKind::BrokenPipe
            | PublishErrorKind::MaxAckPending => {}
            PublishErrorKind::StreamNotFound => {
                if !stream_exists(js, subject, policy.timeout.0).await {
                    return Err(PublishFailure::NoStream(subject.to_owned()));
                }
            }
            PublishErrorKind::Other if connection_trouble(&error.to_string()) => {}
            _ => {
                return Err(PublishFailure::Rejected {
                    subject: subject.to_owned(),
                    reason: error.to_string(),
                });
            }
        }
        last = error.to_string();
        if attempt < attempts {
            let pause = policy.delay_after(attempt);
            crate::metrics::PUBLISH_RETRIES
                .get_or_create(&crate::metrics::labels(&[("source", how.source.label())]))
                .inc();
            tracing::warn!(%subject, attempt, of = attempts, error = %last, retry_in = ?pause,
                source = how.source.label(), "publish failed; retrying");
            tokio::time::sleep(pause).await;
        }
    }
    Err(PublishFailure::Exhausted {
        subject: subject.to_owned(),
        attempts,
        last,
    })
}

/// "No responders": a subject no stream captures (false), or a stream that
/// exists and did not answer — a leader being elected, a server starting
/// (true). A lookup that cannot be made counts as "exists": retrying costs
/// a pause, wrongly refusing loses the message's effect.
async fn stream_exists(js: &jetstream::Context, subject: &str, limit: Duration) -> bool {
    match tokio::time::timeout(limit, js.stream_by_subject(subject)).await {
        Ok(Err(e)) => e.kind() != GetStreamByNameErrorKind::NotFound,
        Ok(Ok(_)) | Err(_) => true,
    }
}

fn connection_trouble(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    [
        "closed",
        "disconnect",
        "connection",
        "broken pipe",
        "timed out",
    ]
    .iter()
    .any(|w| lower.contains(w))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permission_violations_are_read_from_server_errors() {
        let r = Refusals::default();
        let before = Instant::now();
        assert_eq!(
            r.note("Permissions Violation for Publish to \"forbidden.x\""),
            Some("forbidden.x".into())
        );
        assert_eq!(
            r.note("'Permissions Violation for Publish to forbidden.y'"),
            Some("forbidden.y".into())
        );
        assert_eq!(
            r.note("Permissions Violation for Subscription to \"a\""),
            None
        );
        assert_eq!(r.note("slow consumer"), None);
        assert!(r.refused_since("forbidden.x", before));
        assert!(!r.refused_since("allowed.x", before));
        assert!(!r.refused_since("forbidden.x", Instant::now() + Duration::from_secs(1)));
    }

    #[test]
    fn only_connection_trouble_counts_as_transient_among_other_errors() {
        assert!(connection_trouble("publish failed: connection closed"));
        assert!(!connection_trouble("maximum messages exceeded"));
    }
}
