//! The figures behind the stream and consumer gauges, read host-wide in
//! few requests: one stream listing a round, and a stream's consumer
//! listing only when something on it can have changed.
//!
//! A request per consumer every `host.stats_interval` was 2,000 API
//! requests a second for ten thousand pipelines — most of nats-server's
//! and much of the host's idle CPU. A consumer's pending, ack-pending and
//! redelivered counts change only when its stream does (a message stored
//! or removed) or while it has messages in flight, so a stream whose
//! state is the same and whose consumers were all settled at the last
//! read is not asked again, except in a full read every
//! [`FULL_EVERY`] rounds (a consumer reset by hand, say). Ages
//! (last active, oldest unsettled) are moved on from the last read.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::Pipeline;
use crate::jetstream::figures::{self, ConsumerFigures, StreamFigures};
use crate::metrics::Metrics;

/// Every this many rounds, every stream's consumers are read.
pub const FULL_EVERY: u32 = 12;

/// How long the first read waits for every consumer to be bound.
const FIRST_READ_WAIT: Duration = Duration::from_secs(30);

/// One of our consumers: its pipeline and the filter of its first
/// unsettled message.
struct Watched {
    pipeline: Arc<Pipeline>,
    filter: String,
    /// The figures of the last read, and when they were read.
    last: Option<(ConsumerFigures, Instant)>,
}

/// What a stream looked like at the last round.
#[derive(PartialEq, Clone, Copy)]
struct Seen {
    messages: u64,
    first: u64,
    last: u64,
}

/// Sets the stream gauges of `streams` and the consumer and breaker gauges
/// of `pipelines` every `every`, until `stop`. A stream or consumer that
/// cannot be read keeps its last figures.
pub async fn run(
    js: jetstream::Context,
    streams: Vec<crate::config::StreamConfig>,
    pipelines: Vec<Arc<Pipeline>>,
    metrics: Arc<Metrics>,
    every: Duration,
    stop: CancellationToken,
) {
    let mut consumers: BTreeMap<String, HashMap<String, Watched>> = BTreeMap::new();
    for p in &pipelines {
        for s in streams.iter().filter(|s| p.cfg.streams.contains(&s.name)) {
            let filter = match p.cfg.filters_for(s).as_slice() {
                [one] => one.clone(),
                _ => ">".to_owned(),
            };
            consumers.entry(s.name.clone()).or_default().insert(
                p.cfg.consumer_name(&s.name),
                Watched {
                    pipeline: p.clone(),
                    filter,
                    last: None,
                },
            );
        }
    }
    let ours: std::collections::HashSet<String> = streams.into_iter().map(|s| s.name).collect();
    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut round = 0u32;
    // The first read waits for the consumers to be bound (or a while):
    // while they are being made, a listing would miss them.
    if let Some(p) = pipelines.first() {
        let bound = async {
            while !p.health.ready() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::timeout(FIRST_READ_WAIT, bound) => {}
        }
    }
    loop {
        for p in &pipelines {
            p.stats
                .breaker_state
                .set(i64::from(p.breaker_shown().code()));
        }
        let full = round.is_multiple_of(FULL_EVERY);
        round = round.wrapping_add(1);
        let listed = list_streams(&js, &ours).await;
        for (name, f) in &listed {
            set_stream(&metrics, name, f);
        }
        for (stream, watched) in consumers.iter_mut() {
            let now = listed.get(stream).map(|f| Seen {
                messages: f.messages,
                first: f.first_sequence,
                last: f.last_sequence,
            });
            let changed = now.is_none() || now.as_ref() != seen.get(stream);
            // A consumer not listed yet is read at the next full round.
            let busy = watched
                .values()
                .any(|w| w.last.is_some_and(|(f, _)| f.pending + f.ack_pending > 0));
            if (full || changed || busy)
                && read_consumers(&js, stream, watched).await
                && let Some(now) = now
            {
                seen.insert(stream.clone(), now);
            }
            for w in watched.values() {
                if let Some((f, at)) = &w.last {
                    let mut f = *f;
                    let since = at.elapsed();
                    f.last_active_age = f.last_active_age.map(|a| a + since);
                    if f.pending + f.ack_pending > 0 {
                        f.oldest_unacked_age += since;
                    }
                    w.pipeline.stats.consumer(stream, &f);
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Our streams' figures, from the stream listing (paged by the server).
async fn list_streams(
    js: &jetstream::Context,
    ours: &std::collections::HashSet<String>,
) -> HashMap<String, StreamFigures> {
    let mut out = HashMap::new();
    let mut list = js.streams();
    while let Some(info) = list.next().await {
        match info {
            Ok(info) if ours.contains(&info.config.name) => {
                out.insert(info.config.name.clone(), figures::of_state(&info.state));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(error = %e, "cannot list streams for their figures");
                break;
            }
        }
    }
    out
}

/// Reads the consumers of `stream` (one listing) into `watched`; true if
/// the listing was read whole.
async fn read_consumers(
    js: &jetstream::Context,
    stream: &str,
    watched: &mut HashMap<String, Watched>,
) -> bool {
    let s = match js.get_stream_no_info(stream).await {
        Ok(s) => s,
        Err(e) => {
            tracing::debug!(%stream, error = %e, "cannot list consumers for their figures");
            return false;
        }
    };
    let mut list = s.consumers();
    let at = Instant::now();
    while let Some(info) = list.next().await {
        let info = match info {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(%stream, error = %e, "cannot list consumers for their figures");
                return false;
            }
        };
        let Some(w) = watched.get_mut(&info.name) else {
            continue;
        };
        let mut f = figures::of_consumer(&info);
        if f.pending + f.ack_pending > 0 {
            f.oldest_unacked_age =
                figures::oldest_unsettled_age(js, stream, &info, &w.filter).await;
        }
        w.last = Some((f, at));
    }
    true
}

fn set_stream(metrics: &Metrics, name: &str, f: &StreamFigures) {
    let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
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
