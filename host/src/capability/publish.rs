//! `jetplug:plugin/publish`: JetStream publish, checked against the plugin's
//! publish grant on every call.
//!
//! This host does not yet hold a NATS connection for plugins, so a granted
//! publish reports `unavailable` (the plugin's usual answer is `retry`).

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::{Grants, denied};
use crate::bindings::CapabilityError;
use crate::bindings::jetplug::plugin::publish::{self, Outgoing, Receipt};
use crate::plugin::PluginState;
use crate::subject;

/// Per-instance state of the publish capability.
#[derive(Debug)]
pub struct PublishState {
    grants: Arc<Grants>,
}

impl PublishState {
    pub fn new(grants: Arc<Grants>) -> Self {
        PublishState { grants }
    }

    /// Checks a message against the grant; the error is what the plugin sees.
    pub fn check(&self, msg: &Outgoing) -> Result<(), CapabilityError> {
        subject::validate_publish_subject(&msg.subject).map_err(CapabilityError::Invalid)?;
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
pub fn add_to_linker(linker: &mut Linker<PluginState>) -> wasmtime::Result<()> {
    publish::add_to_linker::<PluginState, PublishCap>(linker, |s| &mut s.publish)
}

impl publish::Host for PublishState {
    async fn publish(&mut self, msg: Outgoing) -> Result<Receipt, CapabilityError> {
        self.check(&msg)?;
        Err(CapabilityError::Unavailable(
            "publish: no NATS connection is available to plugins in this host".into(),
        ))
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
        let state = PublishState::new(Arc::new(Grants {
            publish: vec!["dlq.>".into()],
            ..Grants::default()
        }));
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
