//! JetStream message → the plugin's `message` record.

use async_nats::jetstream;

use crate::bindings::Message;

/// A message's headers as (name, value) pairs, each value of a repeated
/// header as a pair of its own.
pub fn header_pairs(headers: Option<&async_nats::HeaderMap>) -> Vec<(String, String)> {
    headers
        .iter()
        .flat_map(|h| h.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.as_str().to_owned()))
        })
        .collect()
}

/// Converts a delivered message. `None` when its reply subject carries no
/// JetStream metadata (not a JetStream delivery).
pub fn to_plugin_message(msg: &jetstream::Message, tenant: &str) -> Option<Message> {
    let info = msg.info().ok()?;
    let headers = header_pairs(msg.headers.as_ref());
    let published_at_ms =
        i64::try_from(info.published.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    Some(Message {
        stream: info.stream.to_owned(),
        consumer: info.consumer.to_owned(),
        subject: msg.subject.to_string(),
        headers,
        payload: msg.payload.clone(),
        stream_seq: info.stream_sequence,
        delivered: u32::try_from(info.delivered).unwrap_or(u32::MAX),
        published_at_ms,
        tenant: tenant.to_owned(),
    })
}

/// A message read back leniently (see [`super::raw_get`]).
pub fn from_raw(
    raw: &super::raw_get::RawMessage,
    stream: &str,
    tenant: &str,
    consumer: &str,
    delivered: u32,
) -> Message {
    Message {
        stream: stream.to_owned(),
        consumer: consumer.to_owned(),
        subject: raw.subject.clone(),
        headers: raw.headers.clone(),
        payload: raw.payload.clone().into(),
        stream_seq: raw.seq,
        delivered,
        published_at_ms: raw.published_at_ms,
        tenant: tenant.to_owned(),
    }
}
