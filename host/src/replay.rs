//! Replay: run a plugin over a stream's history with an ephemeral consumer.
//!
//! The consumer has no durable name and an inactive threshold, so the server
//! removes it by itself if the replay is interrupted. Replay does not ack,
//! retry or dead-letter anything: it only feeds history through the plugin
//! (whose effects go through its capabilities) and reports the decisions.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;

use crate::bindings::Decision;
use crate::jetstream::convert;
use crate::plugin::PluginInstance;

/// Where to start.
#[derive(Debug, Clone)]
pub enum From {
    /// A stream sequence, inclusive.
    Sequence(u64),
    /// Messages stored at or after this time.
    Time(time::OffsetDateTime),
}

/// What went wrong before or during a replay.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error(
        "stream `{stream}`: sequence {requested} is below the first retained sequence {first} \
         (earlier messages were removed by the stream's limits)"
    )]
    BelowFirst {
        stream: String,
        requested: u64,
        first: u64,
    },
    #[error("stream `{stream}`: {reason}")]
    JetStream { stream: String, reason: String },
}

/// Counts of what the plugin answered.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub messages: u64,
    pub acked: u64,
    pub retried: u64,
    pub terminated: u64,
    pub failed: u64,
    pub last_sequence: u64,
}

/// What to replay.
#[derive(Debug, Clone)]
pub struct Request {
    pub stream: String,
    pub from: From,
    /// Last sequence, inclusive (default: the stream's last).
    pub to: Option<u64>,
    /// Messages per `handle` call.
    pub batch: usize,
    /// How long the server keeps the ephemeral consumer once nothing
    /// reads it ([`INACTIVE_THRESHOLD`] by default).
    pub inactive_threshold: Duration,
}

/// The span a replay covers: first and last sequence to expect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub first: u64,
    pub last: u64,
}

/// How long an abandoned replay consumer lives on the server, by default.
pub const INACTIVE_THRESHOLD: Duration = Duration::from_secs(30);

/// Checks the start against the stream; returns the span to replay, or
/// `None` when there is nothing after the start.
pub async fn span(js: &jetstream::Context, req: &Request) -> Result<Option<Span>, ReplayError> {
    let (stream, from, to) = (req.stream.as_str(), &req.from, req.to);
    let err = |reason: String| ReplayError::JetStream {
        stream: stream.to_owned(),
        reason,
    };
    let mut s = js
        .get_stream(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let state = s
        .info()
        .await
        .map_err(|e| err(e.to_string()))?
        .state
        .clone();
    let last = to.map_or(state.last_sequence, |t| t.min(state.last_sequence));
    match from {
        From::Sequence(seq) => {
            if *seq < state.first_sequence {
                return Err(ReplayError::BelowFirst {
                    stream: stream.to_owned(),
                    requested: *seq,
                    first: state.first_sequence,
                });
            }
            Ok((*seq <= last && state.messages > 0).then_some(Span { first: *seq, last }))
        }
        From::Time(_) => Ok(
            (state.messages > 0 && state.first_sequence <= last).then_some(Span {
                first: state.first_sequence,
                last,
            }),
        ),
    }
}

/// Replays `span` of the stream through `instance`, in batches,
/// calling `progress` with the last sequence handled after every batch.
pub async fn run(
    js: &jetstream::Context,
    req: &Request,
    span: Span,
    instance: &mut PluginInstance,
    tenant: &str,
    mut progress: impl FnMut(&Report),
) -> Result<Report, ReplayError> {
    let (stream, from, batch) = (req.stream.as_str(), &req.from, req.batch.max(1));
    let err = |reason: String| ReplayError::JetStream {
        stream: stream.to_owned(),
        reason,
    };
    let deliver_policy = match from {
        From::Sequence(seq) => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: *seq,
        },
        From::Time(t) => consumer::DeliverPolicy::ByStartTime { start_time: *t },
    };
    let s = js
        .get_stream_no_info(stream)
        .await
        .map_err(|e| err(e.to_string()))?;
    let consumer = s
        .create_consumer(consumer::pull::Config {
            deliver_policy,
            ack_policy: consumer::AckPolicy::None,
            inactive_threshold: req.inactive_threshold,
            description: Some("jetplug replay".into()),
            ..Default::default()
        })
        .await
        .map_err(|e| err(e.to_string()))?;
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await
        .map_err(|e| err(e.to_string()))?;

    let mut report = Report::default();
    let mut pending = Vec::with_capacity(batch);
    let mut done = false;
    while !done {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let msg = match next {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => return Err(err(e.to_string())),
            Ok(None) | Err(_) => break,
        };
        let (seq, left) = match msg.info() {
            Ok(i) => (i.stream_sequence, i.pending),
            Err(_) => continue,
        };
        if seq > span.last {
            break;
        }
        if let Some(m) = convert::to_plugin_message(&msg, tenant) {
            pending.push(m);
        }
        done = seq >= span.last || left == 0;
        if pending.len() >= batch || done {
            handle(instance, &mut pending, &mut report).await;
            report.last_sequence = seq;
            progress(&report);
        }
    }
    if !pending.is_empty() {
        handle(instance, &mut pending, &mut report).await;
        progress(&report);
    }
    Ok(report)
}

async fn handle(
    instance: &mut PluginInstance,
    pending: &mut Vec<crate::bindings::Message>,
    report: &mut Report,
) {
    let n = pending.len() as u64;
    report.messages += n;
    match instance.handle(std::mem::take(pending)).await {
        Ok(decisions) => {
            for d in decisions {
                match d {
                    Decision::Ack => report.acked += 1,
                    Decision::Retry(_) => report.retried += 1,
                    Decision::Term(_) => report.terminated += 1,
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, messages = n, "replay batch failed");
            report.failed += n;
        }
    }
}
