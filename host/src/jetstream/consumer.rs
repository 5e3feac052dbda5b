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

/// Creates or updates the durable consumer and returns it.
pub async fn ensure(
    js: &jetstream::Context,
    pipeline: &PipelineConfig,
    stream: &StreamConfig,
) -> Result<consumer::PullConsumer, String> {
    let s = js
        .get_stream_no_info(&stream.name)
        .await
        .map_err(|e| format!("stream `{}`: {e}", stream.name))?;
    s.create_consumer(config(pipeline, stream))
        .await
        .map_err(|e| format!("consumer `{}`: {e}", pipeline.consumer_name(&stream.name)))
}
