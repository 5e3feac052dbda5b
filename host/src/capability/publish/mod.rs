//! `jetplug:plugin/publish`: JetStream publish, checked against the plugin's
//! publish grant on every call.
//!
//! The acknowledgement is awaited (the message is stored); transient
//! failures are retried under `[nats.publish]` ([`retry`]), then reported
//! as `unavailable` so the plugin can `retry` and the breaker can see it;
//! a refusal is reported at once.

pub mod retry;

use std::sync::Arc;

use async_nats::HeaderMap;

use wasmtime::component::{HasData, Linker};

use super::{Backends, CallPath, Capability, Grants, denied};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::publish::{self, Outgoing, Receipt};
use crate::subject;

/// Per-instance state of the publish capability.
#[derive(Debug)]
pub struct PublishState {
    grants: Arc<Grants>,
    backends: Arc<Backends>,
    calls: CallPath,
}

impl PublishState {
    pub fn new(grants: Arc<Grants>, backends: Arc<Backends>, calls: CallPath) -> Self {
        PublishState {
            grants,
            backends,
            calls,
        }
    }

    /// Checks a message against the grant; the error is what the plugin sees.
    pub fn check(&self, msg: &Outgoing) -> Result<(), CapabilityError> {
        subject::validate_publish_subject(&msg.subject)
            .map_err(|e| CapabilityError::Invalid(e.to_string()))?;
        if !self.grants.allows_subject(&msg.subject) {
            return Err(denied(format_args!(
                "publish to `{}` is outside the grant {:?}",
                msg.subject, self.grants.publish
            )));
        }
        Ok(())
    }
}

struct PublishCap;

impl HasData for PublishCap {
    type Data<'a> = &'a mut PublishState;
}

/// Adds the `publish` interface to `linker`.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut PublishState,
) -> wasmtime::Result<()> {
    publish::add_to_linker::<T, PublishCap>(linker, get)
}

impl publish::Host for PublishState {
    async fn publish(&mut self, msg: Outgoing) -> Result<Receipt, CapabilityError> {
        let grant = self.check(&msg);
        let held_stream = String::new();
        self.calls
            .call(Capability::Publish, "publish", &msg.subject)
            .args(|| {
                serde_json::json!({
                    "headers": msg.headers,
                    "payload": super::transcript::text_or_bytes(&msg.payload),
                    "message_id": msg.message_id,
                })
            })
            .effect(|| {
                format!(
                    "{:?} {}",
                    msg.headers,
                    String::from_utf8_lossy(&msg.payload)
                )
            })
            .run_or_hold(
                grant,
                || Receipt {
                    stream: held_stream,
                    sequence: 0,
                    duplicate: false,
                },
                |span| async move {
                    let mut headers = HeaderMap::new();
                    for (k, v) in &msg.headers {
                        if k.is_empty()
                            || k.contains([':', ' ', '\r', '\n'])
                            || v.contains(['\r', '\n'])
                        {
                            return Err(CapabilityError::Invalid(format!(
                                "header `{k}` is not a valid NATS header"
                            )));
                        }
                        headers.append(k.as_str(), v.as_str());
                    }
                    // An exactly-once batch: into the outbox, sent after commit
                    // (a subject no stream captures is refused now, not there).
                    if let Some(tx) = self.calls.effects().lock().await.as_mut() {
                        let stream = self.backends.stream_capturing(&msg.subject).await?;
                        let mut carried = msg.headers.clone();
                        let mut trace = HeaderMap::new();
                        crate::telemetry::context::inject(&span, &mut trace);
                        for (k, v) in trace.iter() {
                            for v in v {
                                carried.push((k.to_string(), v.as_str().to_owned()));
                            }
                        }
                        tx.queue(
                            &msg.subject,
                            &carried,
                            &msg.payload,
                            msg.message_id.as_deref(),
                        )
                        .await?;
                        return Ok(Receipt {
                            stream,
                            sequence: 0,
                            duplicate: false,
                        });
                    }
                    let js = self.backends.js()?;
                    // One id through every attempt: an attempt whose
                    // acknowledgement was lost is not stored twice.
                    let own_id = msg.message_id.is_none();
                    let id = msg
                        .message_id
                        .clone()
                        .unwrap_or_else(|| format!("jetplug-publish:{:032x}", fastrand::u128(..)));
                    headers.insert("Nats-Msg-Id", id.as_str());
                    crate::telemetry::context::inject(&span, &mut headers);
                    let how = self.backends.publishing();
                    match retry::publish(js, &msg.subject, headers, msg.payload.into(), how).await {
                        Ok(ack) => Ok(Receipt {
                            stream: ack.stream,
                            sequence: ack.sequence,
                            // With the host's own id a duplicate is an
                            // earlier attempt of this very call.
                            duplicate: ack.duplicate && !own_id,
                        }),
                        Err(
                            e @ (retry::PublishFailure::NoStream(_)
                            | retry::PublishFailure::Rejected { .. }),
                        ) => Err(CapabilityError::Invalid(e.to_string())),
                        Err(e @ retry::PublishFailure::Forbidden(_)) => {
                            Err(CapabilityError::AccessDenied(e.to_string()))
                        }
                        Err(e @ retry::PublishFailure::Exhausted { .. }) => {
                            Err(CapabilityError::Unavailable(e.to_string()))
                        }
                    }
                },
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(subject: &str) -> Outgoing {
        Outgoing {
            subject: subject.into(),
            headers: vec![],
            payload: vec![],
            message_id: None,
        }
    }

    #[test]
    fn outside_grant_is_denied() {
        let state = PublishState::new(
            Arc::new(Grants {
                publish: vec!["dlq.>".into()],
                ..Grants::default()
            }),
            Backends::offline(),
            CallPath::default(),
        );
        assert!(state.check(&msg("dlq.learning.indexer")).is_ok());
        assert!(matches!(
            state.check(&msg("learning.quiz.answered")),
            Err(CapabilityError::AccessDenied(m)) if m.contains("learning.quiz.answered")
        ));
        assert!(matches!(
            state.check(&msg("dlq.>")),
            Err(CapabilityError::Invalid(_))
        ));
    }
}
