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

/// A consumer's figures from its info (the oldest unsettled message's age
/// is left at 0: see [`oldest_unsettled_age`]).
pub fn of_consumer(info: &jetstream::consumer::Info) -> ConsumerFigures {
    ConsumerFigures {
        pending: info.num_pending,
        ack_pending: info.num_ack_pending as u64,
        redelivered: info.num_redelivered as u64,
        oldest_unacked_age: Duration::ZERO,
        last_active_age: info.delivered.last_active.map(age),
    }
}

/// Age of the first message of `stream` that consumer `info` has not
/// settled, whose filter is `filter` (`>` for none or several: then an
/// upper bound); 0 when it cannot be read.
pub async fn oldest_unsettled_age(
    js: &jetstream::Context,
    stream: &str,
    info: &jetstream::consumer::Info,
    filter: &str,
) -> Duration {
    let next = info.ack_floor.stream_sequence.saturating_add(1);
    // The first unsettled message is the first the filter takes after
    // the ack floor; a message removed meanwhile just skips ahead.
    match super::raw_get::next(&js.client(), stream, next, filter).await {
        Ok(m) => time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(m.published_at_ms) * 1_000_000,
        )
        .map(age)
        .unwrap_or_default(),
        Err(_) => Duration::ZERO,
    }
}

/// A stream's figures from its state.
pub fn of_state(state: &jetstream::stream::State) -> StreamFigures {
    StreamFigures {
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
    }
}
