//! Durable pull consumers: one per (pipeline, stream), explicit ack.
//!
//! `create_consumer` is create-or-update, so calling [`ensure`] again after a
//! server restart or after someone deleted the consumer brings it back with
//! the configured settings (a deleted consumer restarts from its deliver
//! policy). An `exclusive` pipeline's consumer has a pinned-client
//! priority group: the server delivers to one pulling host at a time.
//!
//! The server is told one delivery more than the pipeline's `max_deliver`
//! (see [`server_max_deliver`]): the last delivery the plugin may see is
//! still `max_deliver`, and the spare one is the host's. A message whose
//! last delivery ended without a decision (the host stopped, crashed or
//! lost it) comes back once more, and the host dead-letters it then
//! instead of JetStream dropping it with only an advisory to say so.

use std::time::Duration;

use async_nats::jetstream::{self, consumer};

use crate::config::{DeliverPolicy, PipelineConfig, StreamConfig};

/// The consumer configuration for `pipeline` on `stream`.
pub fn config(pipeline: &PipelineConfig, stream: &StreamConfig) -> consumer::pull::Config {
    let deliver_policy = match pipeline.deliver {
        DeliverPolicy::All => consumer::DeliverPolicy::All,
        DeliverPolicy::New => consumer::DeliverPolicy::New,
        DeliverPolicy::ByStartSequence => consumer::DeliverPolicy::ByStartSequence {
            start_sequence: pipeline.start_sequence.unwrap_or(1),
        },
        DeliverPolicy::ByStartTime => match pipeline.start_time.as_deref().and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        }) {
            Some(start_time) => consumer::DeliverPolicy::ByStartTime { start_time },
            None => consumer::DeliverPolicy::All,
        },
    };
    let (priority_policy, priority_groups, priority_timeout) = if pipeline.exclusive {
        (
            consumer::PriorityPolicy::PinnedClient,
            vec![crate::config::PIN_GROUP.to_owned()],
            pipeline.pin_timeout.0,
        )
    } else {
        (consumer::PriorityPolicy::None, Vec::new(), Duration::ZERO)
    };
    consumer::pull::Config {
        durable_name: Some(pipeline.consumer_name(&stream.name)),
        priority_policy,
        priority_groups,
        priority_timeout,
        description: Some(format!("jetplug pipeline {}", pipeline.name)),
        deliver_policy,
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait: pipeline.ack_wait.0,
        max_deliver: server_max_deliver(pipeline.max_deliver),
        max_ack_pending: i64::from(pipeline.max_ack_pending),
        filter_subjects: pipeline.filters_for(stream),
        ..Default::default()
    }
}

/// The `max_deliver` the server is given: the pipeline's, plus the
/// host's spare delivery.
pub fn server_max_deliver(max_deliver: u32) -> i64 {
    i64::from(max_deliver) + 1
}

/// Why a pipeline's consumer could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The stream is not there or cannot be reached (transient: it may be
    /// made again, the server may come back).
    #[error("stream `{stream}`: {source}")]
    Stream {
        stream: String,
        #[source]
        source: jetstream::context::GetStreamError,
    },
    /// Creating or updating the consumer failed.
    #[error("consumer `{consumer}` on stream `{stream}`: {source}")]
    Consumer {
        consumer: String,
        stream: String,
        #[source]
        source: jetstream::stream::ConsumerError,
    },
}

impl BindError {
    /// Whether binding again cannot help: the server answered and refused
    /// the consumer's configuration (a setting it cannot change on an
    /// existing consumer, a filter another consumer of a work-queue stream
    /// holds, ...). Timeouts, no responders and the server's passing
    /// troubles (unavailable, no leader or peers, out of resources, a
    /// stream not there) are transient.
    pub fn is_permanent(&self) -> bool {
        use jetstream::stream::ConsumerErrorKind as K;
        match self {
            BindError::Stream { .. } => false,
            BindError::Consumer { source, .. } => match source.kind() {
                K::JetStream(e) => !transient(&e),
                K::InvalidConsumerType | K::InvalidName => true,
                _ => false,
            },
        }
    }
}

/// JetStream API errors that pass by themselves.
fn transient(e: &jetstream::Error) -> bool {
    use jetstream::ErrorCode as C;
    const TRANSIENT: [C; 9] = [
        C::CLUSTER_NOT_AVAILABLE,
        C::CLUSTER_NO_PEERS,
        C::CLUSTER_INCOMPLETE,
        C::CLUSTER_NOT_LEADER,
        C::RAFT_GENERAL,
        C::INSUFFICIENT_RESOURCES,
        C::MEMORY_RESOURCES_EXCEEDED,
        C::STORAGE_RESOURCES_EXCEEDED,
        C::STREAM_NOT_FOUND,
    ];
    matches!(e.code(), 408 | 503) || TRANSIENT.contains(&e.error_code())
}

/// Consumers being created or updated at once, host-wide. nats-server
/// queues JetStream API requests and drops what is past its queue limit
/// (10,000): ten thousand pipelines binding at once had their requests
/// dropped and waited out timeouts (37 s to ready); in turns of this many,
/// none is dropped.
const BINDS_AT_ONCE: usize = 64;
static BINDS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(BINDS_AT_ONCE);

/// Creates or updates the durable consumer and returns it.
pub async fn ensure(
    js: &jetstream::Context,
    pipeline: &PipelineConfig,
    stream: &StreamConfig,
) -> Result<consumer::PullConsumer, BindError> {
    // Never closed: a permit is always given.
    let _turn = BINDS.acquire().await;
    let s = js
        .get_stream_no_info(&stream.name)
        .await
        .map_err(|source| BindError::Stream {
            stream: stream.name.clone(),
            source,
        })?;
    s.create_consumer(config(pipeline, stream))
        .await
        .map_err(|source| BindError::Consumer {
            consumer: pipeline.consumer_name(&stream.name),
            stream: stream.name.clone(),
            source,
        })
}
