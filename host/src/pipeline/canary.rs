//! A batch during a canary: split by key between the live version and the
//! candidate, each part run and settled as a batch of its own, and each
//! version's calls tallied for the rollout's decision.
//!
//! The key is the pipeline's ordering key when it has one (so a key's
//! messages stay on one version, in order), else the message's origin
//! (its stream and sequence, which a redelivery keeps: a message retried
//! is retried on the version that first had it).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;

use super::Pipeline;
use super::keyed::key_text;
use crate::bindings::{Decision, Message};
use crate::config::Ordering;
use crate::deadletter::Origin;
use crate::plugin::{Canary, Counted, PluginInstance};

/// The routing key of `m` (delivered as `js`).
fn key(p: &Pipeline, js: &jetstream::Message, m: &Message) -> Vec<u8> {
    if p.cfg.ordering != Ordering::None
        && let Some(k) = key_text(&p.cfg.ordering, &m.subject, js.headers.as_ref(), &m.payload)
    {
        return k.into_bytes();
    }
    let o = Origin::of(&m.headers, &m.stream, m.stream_seq, m.published_at_ms);
    let mut k = o.stream.into_bytes();
    k.extend_from_slice(&o.sequence.to_be_bytes());
    k
}

/// A batch split by version: `(live, candidate)`, each as delivered and
/// converted, in the batch's order.
pub(super) type Parts = (
    (Vec<jetstream::Message>, Vec<Message>),
    (Vec<jetstream::Message>, Vec<Message>),
);

/// Splits a batch between the live version and `canary`'s candidate.
pub(super) fn split(
    p: &Pipeline,
    canary: &Canary,
    delivered: Vec<jetstream::Message>,
    msgs: Vec<Message>,
) -> Parts {
    let mut live = (Vec::new(), Vec::new());
    let mut candidate = (Vec::new(), Vec::new());
    for (js, m) in delivered.into_iter().zip(msgs) {
        let part = if canary.takes(&key(p, &js, &m)) {
            &mut candidate
        } else {
            &mut live
        };
        part.0.push(js);
        part.1.push(m);
    }
    (live, candidate)
}

/// The worker's instance of `canary`'s candidate, made or replaced when
/// the candidate changed.
pub(super) fn candidate_instance<'a>(
    slot: &'a mut Option<PluginInstance>,
    canary: &Canary,
) -> &'a mut PluginInstance {
    let stale = slot
        .as_ref()
        .is_none_or(|i| !Arc::ptr_eq(i.plugin(), &canary.plugin));
    if stale {
        *slot = Some(PluginInstance::new(canary.plugin.clone()));
    }
    slot.get_or_insert_with(|| PluginInstance::new(canary.plugin.clone()))
}

/// Counts one plugin call on `instance` for the canary running on `p`'s
/// plugin, if there is one: its decisions, or a failure (`None`).
pub(super) fn tally(
    p: &Pipeline,
    instance: &PluginInstance,
    n: usize,
    took: Duration,
    decisions: Option<&[Decision]>,
) {
    let Some(canary) = p.plugin.canary() else {
        return;
    };
    let counted: Option<Vec<Counted>> = decisions.map(|ds| {
        ds.iter()
            .map(|d| match d {
                Decision::Ack => Counted::Ack,
                Decision::Retry(_) => Counted::Retry,
                Decision::Term(_) => Counted::Term,
            })
            .collect()
    });
    canary
        .tally_of(instance.plugin())
        .record(n, took, counted.as_deref());
}
