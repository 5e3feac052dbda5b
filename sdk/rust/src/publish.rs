//! Publishing to JetStream, acknowledged, within the plugin's grant.

use serde::Serialize;

use crate::Error;
use crate::bindings::jetplug::plugin::publish::publish as host_publish;
pub use crate::bindings::jetplug::plugin::publish::{Outgoing, Receipt};

/// Publishes `msg` and waits for JetStream's acknowledgement.
pub fn publish(msg: &Outgoing) -> Result<Receipt, Error> {
    host_publish(msg).map_err(Error::from)
}

/// Publishes raw bytes to `subject`.
pub fn bytes(subject: &str, payload: impl Into<Vec<u8>>) -> Result<Receipt, Error> {
    publish(&Outgoing {
        subject: subject.to_owned(),
        headers: Vec::new(),
        payload: payload.into(),
        message_id: None,
    })
}

/// Publishes `value` as JSON to `subject`. `message_id` (JetStream's
/// `Nats-Msg-Id`) makes a republish within the stream's duplicate window a
/// no-op: pass something derived from the input message to make the
/// publish exactly-once under redelivery.
pub fn json<T: Serialize>(
    subject: &str,
    value: &T,
    message_id: Option<String>,
) -> Result<Receipt, Error> {
    let payload = serde_json::to_vec(value)
        .map_err(|e| Error::Invalid(format!("cannot encode the payload as JSON: {e}")))?;
    publish(&Outgoing {
        subject: subject.to_owned(),
        headers: vec![("content-type".into(), "application/json".into())],
        payload,
        message_id,
    })
}
