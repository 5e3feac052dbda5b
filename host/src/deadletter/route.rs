//! Where dead letters go: a dead-letter plugin, or the built-in publish to
//! `dlq.<stream>.<pipeline>`.

use async_nats::HeaderMap;
use async_nats::jetstream;
use tokio::sync::Mutex;

use super::DeadLetter;
use crate::bindings::Decision;
use std::sync::Arc;

use crate::capability::publish::retry::{self, Refusals};
use crate::config::PublishPolicy;
use crate::plugin::{PluginInstance, PluginSlot};

/// The route could not take the dead letter; the original must be retried.
#[derive(Debug, thiserror::Error)]
pub enum DeadLetterError {
    #[error("publishing the dead letter failed: {0}")]
    Publish(retry::PublishFailure),
    #[error("dead-letter plugin `{plugin}` did not accept the dead letter: {reason}")]
    Plugin { plugin: String, reason: String },
}

/// A pipeline's dead-letter route.
#[derive(Debug)]
pub enum Route {
    /// Publish to `dlq.<stream>.<pipeline>` with the facts as headers,
    /// retried under `[nats.publish]`.
    Builtin {
        js: Box<jetstream::Context>,
        policy: PublishPolicy,
        refusals: Option<Arc<Refusals>>,
    },
    /// Hand to a plugin (the dlq-router), which must `ack` it.
    Plugin {
        instance: Box<Mutex<PluginInstance>>,
        slot: Arc<PluginSlot>,
        tenant: String,
    },
}

impl Route {
    pub async fn send(&self, dl: &DeadLetter) -> Result<(), DeadLetterError> {
        match self {
            Route::Builtin {
                js,
                policy,
                refusals,
            } => {
                let how = retry::Retrying {
                    policy,
                    refusals: refusals.as_deref(),
                    source: retry::Source::DeadLetter,
                };
                publish(js, dl, how).await
            }
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

/// A failed publish leaves the original to be retried: nothing is lost.
async fn publish(
    js: &jetstream::Context,
    dl: &DeadLetter,
    how: retry::Retrying<'_>,
) -> Result<(), DeadLetterError> {
    let subject = dl.default_subject();
    let mut headers = HeaderMap::new();
    for (k, v) in dl.all_headers() {
        headers.append(k.as_str(), v.as_str());
    }
    headers.insert("Nats-Msg-Id", dl.message_id().as_str());
    retry::publish(js, &subject, headers, dl.payload.clone(), how)
        .await
        .map(|_| ())
        .map_err(DeadLetterError::Publish)
}
