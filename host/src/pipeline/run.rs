//! A batch as a worker runs it: its deliveries, the plugin's messages and
//! each one's place in the batch's trace, kept together while settled
//! messages are taken out and the rest run again; and the hold of a run
//! while a downstream is out.
//!
//! Why one module: plain batches (`worker`) and exactly-once ones
//! (`effects`) both take settled messages out and run the rest again, and
//! both hold a run (no delivery spent) up to `breaker.max_hold`; sharing
//! [`Run`] and [`Hold`] keeps a message's trace place right after any
//! split, and the hold's accounting the same in both.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream;

use super::{Pipeline, Stats, ack};
use crate::bindings::{Decision, Message};
use crate::capability::effects::EffectsTx;
use crate::capability::record::Recording;
use crate::plugin::{BatchError, PluginInstance};
use crate::telemetry::context::BatchTrace;

/// The messages of a run: each delivery, its plugin message (shared with
/// the plugin call, not copied for it) and its place in the batch's trace.
pub(super) struct Run {
    pub delivered: Vec<jetstream::Message>,
    pub msgs: Arc<[Message]>,
    pub at: Vec<usize>,
}

/// A message taken out of a run: its delivery, its plugin message and its
/// place in the trace.
pub(super) type Taken = (jetstream::Message, Message, usize);

impl Run {
    pub fn new(delivered: Vec<jetstream::Message>, msgs: Vec<Message>) -> Self {
        let at = (0..msgs.len()).collect();
        Run {
            delivered,
            msgs: msgs.into(),
            at,
        }
    }

    /// Takes out the messages `out` picks (by their index in the run);
    /// the rest stay, in their order.
    pub fn take(&mut self, out: impl Fn(usize) -> bool) -> Vec<Taken> {
        let (mut delivered, mut msgs, mut at) = (Vec::new(), Vec::new(), Vec::new());
        let mut taken = Vec::new();
        let all = std::mem::take(&mut self.delivered)
            .into_iter()
            .zip(self.msgs.iter())
            .zip(std::mem::take(&mut self.at));
        for (i, ((js_msg, m), place)) in all.enumerate() {
            if out(i) {
                taken.push((js_msg, m.clone(), place));
            } else {
                delivered.push(js_msg);
                msgs.push(m.clone());
                at.push(place);
            }
        }
        (self.delivered, self.msgs, self.at) = (delivered, msgs.into(), at);
        taken
    }
}

impl Run {
    /// The plugin's call on the run (in `tx`, an exactly-once batch's
    /// transaction, when given), compared with the shadow's run of it when
    /// one `shadowed` it, and the call's figures recorded: its time, the
    /// canary's tally, pauses and usage.
    pub async fn call(
        &self,
        p: &Pipeline,
        instance: &mut PluginInstance,
        shadowed: Option<super::shadow::Ran>,
        tx: Option<EffectsTx>,
        trace: &BatchTrace,
    ) -> (Result<Vec<Decision>, BatchError>, Option<EffectsTx>) {
        let msgs = &self.msgs;
        let started = Instant::now();
        let observe = shadowed.as_ref().map(|_| Recording::observe());
        let (outcome, tx, recording) = instance
            .handle_recorded(msgs.clone(), trace.call(), tx, observe)
            .await;
        if let Some(ran) = shadowed {
            let took = started.elapsed();
            super::shadow::compare(ran, msgs, &outcome, recording.as_ref(), took, instance);
        }
        p.stats.batch_took(started.elapsed());
        let decided = outcome.as_ref().ok().map(Vec::as_slice);
        super::canary::tally(p, instance, msgs.len(), started.elapsed(), decided);
        p.stats.paused(instance.last_call_paused());
        p.stats.used(instance.last_call_usage());
        (outcome, tx)
    }
}

/// A run held while a downstream (the effects database, or one the plugin
/// calls) is out: no delivery is spent, up to `breaker.max_hold`.
pub(super) struct Hold {
    since: Instant,
    holds: u32,
}

impl Hold {
    pub fn new() -> Self {
        Hold {
            since: Instant::now(),
            holds: 0,
        }
    }

    /// Whether the run has been held for `breaker.max_hold` (counted and
    /// logged): its messages go back to retry accounting.
    pub fn expired(&self, p: &Pipeline, run: &Run) -> bool {
        if self.since.elapsed() < p.cfg.breaker.max_hold.0 {
            return false;
        }
        Stats::add(&p.stats.held_expired, 1);
        tracing::warn!(pipeline = %p.cfg.name, messages = run.msgs.len(), held_for = ?self.since.elapsed(),
            "a downstream has been out for longer than breaker.max_hold: these messages go back to retry accounting");
        true
    }

    /// Holds the run once more: after a backoff while the breaker is
    /// closed (`open`: its permit is the wait). False when stopping meanwhile
    /// (the run is handed back).
    pub async fn wait(&mut self, p: &Pipeline, run: &Run, open: bool) -> bool {
        Stats::add(&p.stats.held_batches, 1);
        self.holds += 1;
        if open {
            return true;
        }
        let wait = p.backoff.delay(self.holds);
        tokio::select! {
            _ = p.shutdown.cancelled() => {
                ack::hand_back(&run.delivered, ack::STOPPING).await;
                false
            }
            _ = tokio::time::sleep(wait) => true,
        }
    }
}
