//! Collecting a batch from the consumer's message stream: wait as long as it
//! takes for the first message, then up to `max_wait` for the rest.

use std::time::Duration;

use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::Stream;
use futures::StreamExt;

/// Up to `size` messages; plus the stream error that ended collection early,
/// if any (the caller re-binds the consumer after dispatching what it has).
pub async fn collect(
    messages: &mut Stream,
    size: usize,
    max_wait: Duration,
) -> (Vec<jetstream::Message>, Option<String>) {
    let mut batch = Vec::with_capacity(size);
    match messages.next().await {
        Some(Ok(m)) => batch.push(m),
        Some(Err(e)) => return (batch, Some(e.to_string())),
        None => return (batch, Some("message stream ended".into())),
    }
    let deadline = tokio::time::Instant::now() + max_wait;
    while batch.len() < size {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Err(_) => break,
            Ok(Some(Ok(m))) => batch.push(m),
            Ok(Some(Err(e))) => return (batch, Some(e.to_string())),
            Ok(None) => return (batch, Some("message stream ended".into())),
        }
    }
    (batch, None)
}
