//! Where dead letters go: a dead-letter plugin, or the built-in publish to
//! `dlq.<stream>.<pipeline>`.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, context::PublishErrorKind};
use tokio::sync::Mutex;

use super::DeadLetter;
use crate::bindings::Decision;
use std::sync::Arc;

use crate::plugin::{PluginInstance, PluginSlot};

/// The route could not take the dead letter; the original must be retried.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing the dead letter to `{subject}` failed after {attempts} attempts: {reason}")]
    Publish {
        subject: String,
        attempts: u32,
        reason: String,
    },
    #[error("dead-letter plugin `{plugin}` did not accept the dead letter: {reason}")]
    Plugin { plugin: String, reason: String },
}

/// A pipeline's dead-letter route.
#[derive(Debug)]
pub enum Route {
    /// Publish to `dlq.<stream>.<pipeline>` with the facts as headers.
    Builtin { js: jetstream::Context },
    /// Hand to a plugin (the dlq-router), which must `ack` it.
    Plugin {
        instance: Box<Mutex<PluginInstance>>,
        slot: Arc<PluginSlot>,
        tenant: String,
    },
}

/// Attempts of a dead-letter publish before giving up (then the original is retried).
const PUBLISH_ATTEMPTS: u32 = 4;

impl Route {
    pub async fn send(&self, dl: &DeadLetter) -> Result<(), DeadLetterError> {
        match self {
            Route::Builtin { js } => publish(js, dl).await,
            Route::Plugin {
                instance,
                slot,
                tenant,
            } => {
                let mut inst = instance.lock().await;
                inst.follow(slot);
                let plugin = inst.plugin().name().to_owned();
                match inst.handle([dl.to_message(tenant)]).await {
                    Ok(d) if matches!(d[..], [Decision::Ack]) => Ok(()),
                    Ok(d) => Err(DeadLetterError::Plugin {
                        plugin,
                        reason: format!("it answered {:?} instead of ack", d.first()),
                    }),
                    Err(e) => Err(DeadLetterError::Plugin {
                        plugin,
                        reason: e.to_string(),
                    }),
                }
            }
        }
    }
}

async fn publish(js: &jetstream::Context, dl: &DeadLetter) -> Result<(), DeadLetterError> {
    let subject = dl.default_subject();
    let mut headers = HeaderMap::new();
    for (k, v) in dl.all_headers() {
        headers.append(k.as_str(), v.as_str());
    }
    headers.insert("Nats-Msg-Id", dl.message_id().as_str());
    let mut delay = Duration::from_millis(100);
    let mut last = String::new();
    for attempt in 1..=PUBLISH_ATTEMPTS {
        let result = async {
            js.publish_with_headers(subject.clone(), headers.clone(), dl.payload.clone().into())
                .await?
                .await
        }
        .await;
        match result {
            Ok(_) => return Ok(()),
            Err(e) => {
                last = e.to_string();
                // No stream captures the subject: retrying now will not help.
                if e.kind() == PublishErrorKind::StreamNotFound {
                    break;
                }
                tracing::debug!(%subject, attempt, error = %e, "dead-letter publish failed; retrying");
            }
        }
        if attempt < PUBLISH_ATTEMPTS {
            tokio::time::sleep(delay).await;
            delay *= 2;
        }
    }
    Err(DeadLetterError::Publish {
        subject,
        attempts: PUBLISH_ATTEMPTS,
        reason: last,
    })
}
