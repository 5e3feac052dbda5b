//! Stream and consumer figures read from the JetStream API, for metrics
//! and alerts.
//!
//! Read from the API (stream and consumer info, one stored message) rather
//! than from nats-server's monitoring endpoint, whose numbers lag and
//! which an operator may not expose: what an autoscaler or an alert sees
//! is what the server answers now.

use std::time::Duration;

use async_nats::jetstream;

/// One consumer, now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ConsumerFigures {
    /// Messages not yet delivered.
    pub pending: u64,
    /// Delivered, not yet settled.
    pub ack_pending: u64,
    /// Delivered more than once, not yet settled.
    pub redelivered: u64,
    /// Age of the oldest message not yet settled (0 when none).
    pub oldest_unacked_age: Duration,
    /// Since the consumer last delivered a message (None: never).
    pub last_active_age: Option<Duration>,
}

/// One stream, now.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct StreamFigures {
    pub messages: u64,
    pub bytes: u64,
    pub first_sequence: u64,
    pub last_sequence: u64,
    /// Age of the oldest message (0 when empty).
    pub oldest_age: Duration,
    pub consumers: u64,
}

fn age(then: time::OffsetDateTime) -> Duration {
    let now = time::OffsetDateTime::now_utc();
    Duration::try_from(now - then).unwrap_or_default()
}

/// Figures of consumer `name` on `stream`, whose filter is `filter` (`>`
/// for none or several: the oldest-unsettled age is then an upper bound).
pub async fn consumer(
    js: &jetstream::Context,
    stream: &str,
    name: &str,
    filter: &str,
) -> Result<ConsumerFigures, async_nats::Error> {
    let info = js
        .get_stream_no_info(stream)
        .await?
        .consumer_info(name)
        .await?;
    let mut f = ConsumerFigures {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
        oldest_unacked_age: Duration::ZERO,
        last_active_age: info.delivered.last_active.map(age),
    };
    if f.pending + f.ack_pending > 0 {
        let next = info.ack_floor.stream_sequence.saturating_add(1);
        // The first unsettled message is the first the filter takes after
        // the ack floor; a message removed meanwhile just skips ahead.
        if let Ok(m) = super::raw_get::next(&js.client(), stream, next, filter).await
            && let Ok(at) = time::OffsetDateTime::from_unix_timestamp_nanos(
                i128::from(m.published_at_ms) * 1_000_000,
            )
        {
            f.oldest_unacked_age = age(at);
        }
    }
    Ok(f)
}

/// Figures of `stream`.
pub async fn stream(
    js: &jetstream::Context,
    stream: &str,
) -> Result<StreamFigures, async_nats::Error> {
    let s = js.get_stream(stream).await?;
    let state = s.cached_info().state.clone();
    Ok(StreamFigures {
        messages: state.messages,
        bytes: state.bytes,
        first_sequence: state.first_sequence,
        last_sequence: state.last_sequence,
        oldest_age: if state.messages == 0 {
            Duration::ZERO
        } else {
            age(state.first_timestamp)
        },
        consumers: state.consumer_count as u64,
    })
}

/// Sets the `jetplug_stream_*` gauges of `streams` every `every`, until
/// `stop`. A stream that cannot be read keeps its last figures.
pub async fn watch_streams(
    js: jetstream::Context,
    streams: Vec<String>,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    loop {
        for name in &streams {
            let Ok(f) = stream(&js, name).await else {
                continue;
            };
            let l = crate::metrics::labels(&[("stream", name)]);
            metrics.stream_messages.get_or_create(&l).set(n(f.messages));
            metrics.stream_bytes.get_or_create(&l).set(n(f.bytes));
            metrics
                .stream_first_sequence
                .get_or_create(&l)
                .set(n(f.first_sequence));
            metrics
                .stream_last_sequence
                .get_or_create(&l)
                .set(n(f.last_sequence));
            metrics
                .stream_oldest_age
                .get_or_create(&l)
                .set(f.oldest_age.as_secs_f64());
            metrics
                .stream_consumers
                .get_or_create(&l)
                .set(n(f.consumers));
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
