//! Keeping a pipeline's captures: after a plugin call whose messages are
//! dead-lettered (or after every call, with `capture = "all"`), what the
//! call saw is written to the capture bucket and the dead letters name it.
//!
//! Recording itself is the plugin instance's (see [`crate::plugin::world`]):
//! a worker's instance records every call while its pipeline captures, and
//! this module decides afterwards whether the record is kept.

use std::sync::Arc;

use super::Pipeline;
use super::settle::Action;
use crate::bindings::{Decision, Message};
use crate::capture::store::Captures;
use crate::capture::{self, Capture, Origin};
use crate::config::Capture as Mode;
use crate::plugin::{BatchError, Plugin, Witness};

/// Where a host keeps captures, and its name in them.
#[derive(Debug, Clone)]
pub struct Capturer {
    pub store: Captures,
    pub host: String,
}

impl Pipeline {
    /// Whether this pipeline's calls are recorded for capture.
    pub(super) fn capturing(&self) -> bool {
        self.captures.is_some() && self.cfg.capture != Mode::Off
    }
}

/// The first message `actions` dead-letter, with the reason, skipping
/// those already explained by a capture of their own.
pub(super) fn first_dead<'a>(
    actions: &'a [Action],
    explained: &[Option<String>],
) -> Option<(usize, &'a str)> {
    actions.iter().enumerate().find_map(|(i, a)| match a {
        Action::DeadLetter(reason) if explained.get(i).is_none_or(Option::is_none) => {
            Some((i, reason.as_str()))
        }
        _ => None,
    })
}

/// Keeps the call on `msgs` if the pipeline's `capture` setting asks for
/// it: `dead` is the first message it dead-letters (see [`first_dead`]).
/// The capture's id, for the dead letters it explains.
pub(super) async fn keep(
    p: &Pipeline,
    plugin: &Arc<Plugin>,
    msgs: &[Message],
    result: &Result<Vec<Decision>, BatchError>,
    witness: Option<Witness>,
    dead: Option<(usize, &str)>,
) -> Option<String> {
    let capturer = p.captures.as_ref()?;
    let Some(Witness::Seen(seen)) = witness else {
        return None;
    };
    let (at, why) = match (p.cfg.capture, dead) {
        (Mode::Off, _) | (Mode::Failures, None) => return None,
        (_, Some(d)) => d,
        (Mode::All, None) => (0, "all"),
    };
    let id = capture::id_for(&p.cfg.name, msgs.get(at)?);
    let origin = Origin {
        host: &capturer.host,
        pipeline: &p.cfg.name,
        tenant: &p.tenant,
        payloads: p.cfg.capture_payloads,
    };
    let capture = Capture::of(&origin, plugin, msgs, result, &seen, why, id.clone());
    let doc = capture.to_stored();
    if doc.len() as u64 > p.cfg.capture_max_size.0 {
        p.stats.captures[1].inc();
        tracing::warn!(pipeline = %p.cfg.name, capture = %id, bytes = doc.len(),
            max = p.cfg.capture_max_size.0, "capture larger than capture_max_size: not stored");
        return None;
    }
    let store = capturer.store.clone();
    let stats = p.stats.clone();
    let name = p.cfg.name.clone();
    let put = async move {
        match store.put(&capture, &doc).await {
            Ok(()) => {
                stats.captures[0].inc();
                true
            }
            Err(e) => {
                stats.captures[2].inc();
                tracing::warn!(pipeline = %name, capture = %capture.id, error = %e, "capture not stored");
                false
            }
        }
    };
    if dead.is_some() {
        // Stored before its dead letter names it.
        put.await.then_some(id)
    } else {
        tokio::spawn(put);
        None
    }
}
