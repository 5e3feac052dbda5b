//! A worker: runs batches through its plugin instance and settles every
//! message with JetStream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use tokio::sync::{Mutex, mpsc};

use super::ack::{self, settle_captured, settle_one};
use super::circuit::{record_outcome, wait_for_breaker};
use super::run::{Hold, Run};
use super::settle::{self, Action};
use super::{Pipeline, Stats};
use crate::bindings::{Decision, Message};
use crate::deadletter::addressed_to;
use crate::jetstream::convert;
use crate::plugin::PluginInstance;
use crate::telemetry::context::BatchTrace;

/// Messages pulled together, handed to one worker; kept alive (+WPI) until
/// the guard is dropped after settling.
#[derive(Debug)]
pub struct Batch(
    pub Vec<jetstream::Message>,
    pub Vec<super::keepalive::Guard>,
);

/// Where a worker takes its batches from.
pub(super) enum Source {
    /// The pipeline's channel: any batch.
    Shared(Arc<Mutex<mpsc::Receiver<Box<Batch>>>>),
    /// An ordered pipeline's queue: keys not running elsewhere.
    Keyed(Arc<super::keyed::KeyedQueue>),
}

pub(super) async fn run(p: Arc<Pipeline>, mut instance: PluginInstance, source: Source) {
    instance.set_capture(p.capturing());
    // Made on the first batch: an idle pipeline's task holds a pointer.
    let mut spare: Option<Box<Spare>> = None;
    loop {
        match &source {
            Source::Shared(rx) => {
                let next =
                    next_or_release(&mut instance, async { rx.lock().await.recv().await }).await;
                let Some(next) = next else {
                    return;
                };
                let Batch(batch, _alive) = *next;
                let spare = spare.get_or_insert_with(Box::default);
                // Boxed: an idle worker holds only a pointer to this
                // (large) future's state, not its whole size.
                Box::pin(process(&p, &mut instance, spare, batch)).await;
            }
            Source::Keyed(queue) => {
                // A failing plugin takes one message at a time (see `failing`).
                let max = if p.failing() { 1 } else { p.cfg.batch as usize };
                let Some(mut taken) = next_or_release(&mut instance, queue.next(max)).await else {
                    return;
                };
                let batch = std::mem::take(&mut taken.messages);
                let started = std::time::Instant::now();
                let spare = spare.get_or_insert_with(Box::default);
                // Boxed: an idle worker holds only a pointer to this
                // (large) future's state, not its whole size.
                Box::pin(process(&p, &mut instance, spare, batch)).await;
                queue.release(taken, started.elapsed());
            }
        }
    }
}

/// How long a worker keeps its plugin instance with no batch to run: then
/// the instance is released (its memory back to the pool) and the next
/// batch makes a new one from the loaded plugin, in about a millisecond
/// (Python and JavaScript: a few). Ten thousand pipelines that each see a
/// message now and then do not each hold an instance (5.7 MiB for Python).
pub const INSTANCE_IDLE: Duration = Duration::from_secs(60);

/// `next`, releasing `instance` if it does not come within [`INSTANCE_IDLE`].
async fn next_or_release<T>(
    instance: &mut PluginInstance,
    next: impl std::future::Future<Output = T>,
) -> T {
    next_or_release_after(INSTANCE_IDLE, instance, next).await
}

async fn next_or_release_after<T>(
    idle: Duration,
    instance: &mut PluginInstance,
    next: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(next);
    if instance.is_live() {
        match tokio::time::timeout(idle, &mut next).await {
            Ok(v) => return v,
            Err(_) => instance.release(),
        }
    }
    next.await
}

/// A worker's instances of the versions on trial, made when first needed.
#[derive(Default)]
struct Spare {
    /// The canary's candidate.
    candidate: Option<PluginInstance>,
    /// The shadow version.
    shadow: Option<PluginInstance>,
}

async fn process(
    p: &Pipeline,
    instance: &mut PluginInstance,
    spare: &mut Spare,
    batch: Vec<jetstream::Message>,
) {
    let mut delivered = Vec::with_capacity(batch.len());
    let mut msgs = Vec::with_capacity(batch.len());
    for m in batch {
        match convert::to_plugin_message(&m, &p.tenant) {
            // A redrive for other pipelines: their effect happened here already.
            Some(pm) if !addressed_to(&pm.headers, &p.cfg.name) => {
                Stats::add(&p.stats.skipped, 1);
                if let Err(e) = m.ack().await {
                    tracing::warn!(pipeline = %p.cfg.name, subject = %m.subject, error = %e,
                        "settling a skipped redrive failed; JetStream will redeliver it");
                }
            }
            // The spare delivery: the last one ended without a decision.
            Some(pm) if settle::is_spare(pm.delivered, p.cfg.max_deliver) => {
                let action = settle::for_spare(pm.delivered, p.cfg.max_deliver);
                settle_one(p, &m, &pm, action).await;
            }
            Some(pm) => {
                msgs.push(pm);
                delivered.push(m);
            }
            None => tracing::warn!(pipeline = %p.cfg.name, subject = %m.subject,
                "delivery without JetStream metadata ignored"),
        }
    }
    if msgs.is_empty() {
        return;
    }
    // A hot swap takes effect here, between batches: a held batch is run
    // again on the version it started with (docs/hotswap.md).
    instance.follow(&p.plugin);
    let Some(canary) = p.plugin.canary() else {
        return handle(p, instance, &mut spare.shadow, delivered, msgs).await;
    };
    // A canary: each part on its version, as a batch of its own.
    let ((live_js, live), (cand_js, cand)) = super::canary::split(p, &canary, delivered, msgs);
    if !cand.is_empty() {
        let c = super::canary::candidate_instance(&mut spare.candidate, &canary);
        handle(p, c, &mut spare.shadow, cand_js, cand).await;
    }
    if !live.is_empty() {
        handle(p, instance, &mut spare.shadow, live_js, live).await;
    }
}

/// Runs converted messages through `instance` and settles each of them.
async fn handle(
    p: &Pipeline,
    instance: &mut PluginInstance,
    shadow: &mut Option<PluginInstance>,
    delivered: Vec<jetstream::Message>,
    msgs: Vec<Message>,
) {
    let trace = BatchTrace::start(&p.cfg.name, &p.cfg.plugin, &msgs);
    if let Some(plan) = &p.effects {
        super::effects::run_batch(p, plan, instance, shadow, delivered, msgs, &trace).await;
        return;
    }
    let mut run = Run::new(delivered, msgs);
    // A shadow runs the batch first, its effects held back.
    let mut shadowed = super::shadow::run(p, shadow, &run.msgs).await;
    let mut _slot = None;
    let mut hold = Hold::new();
    let outcome = loop {
        _slot = None;
        if !wait_for_breaker(p).await {
            ack::hand_back(&run.delivered, ack::STOPPING).await;
            return;
        }
        // The tenant's slot is held for the batch, settling included.
        _slot = match &p.tenant_slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        Stats::add(&p.stats.batches, 1);
        let (outcome, _) = run.call(p, instance, shadowed.take(), None, &trace).await;
        let downstream = instance.downstream_failures();
        let open = record_outcome(p, outcome.is_err() || downstream > 0);
        if downstream == 0 || hold.expired(p, &run) {
            break outcome;
        }
        // A downstream is out: settle what the plugin decided, keep the
        // rest (no delivery is spent) and run it again once the breaker
        // lets it, or after a backoff while it is still closed.
        if let Ok(decisions) = &outcome {
            settle_decided(p, &mut run, decisions, &trace).await;
            if run.msgs.is_empty() {
                return;
            }
        }
        if !hold.wait(p, &run, open).await {
            return;
        }
    };
    let witness = instance.take_witness();
    let msgs = &run.msgs;
    let max = p.cfg.max_deliver;
    // The capture that explains each message's dead letter, if any.
    let mut captured: Vec<Option<String>> = vec![None; msgs.len()];
    let actions: Vec<Action> = match &outcome {
        Ok(decisions) => decisions
            .iter()
            .zip(msgs.iter())
            .map(|(d, m)| settle::for_decision(d, m.delivered, max, &p.backoff))
            .collect(),
        Err(e) => {
            trace.failed(e);
            p.stats.batch_failed(e.kind());
            tracing::warn!(pipeline = %p.cfg.name, plugin = %instance.plugin().name(), error = %e, kind = e.kind(),
                messages = msgs.len(), "batch failed; retrying with backoff");
            let mut actions = Vec::with_capacity(msgs.len());
            let mut failed_alone = 0;
            for (i, m) in msgs.iter().enumerate() {
                let action =
                    if m.delivered >= max && msgs.len() > 1 && failed_alone < ISOLATION_GIVE_UP {
                        // Last chance: before dead-lettering a message for its
                        // batch's failure, see whether it fails on its own.
                        let (action, failed, capture) = isolate(p, instance, m).await;
                        failed_alone = if failed { failed_alone + 1 } else { 0 };
                        captured[i] = capture;
                        action
                    } else {
                        settle::for_failure(e, m.delivered, max, &p.backoff)
                    };
                actions.push(action);
            }
            actions
        }
    };
    let dead = super::capture::first_dead(&actions, &captured);
    let plugin = instance.plugin().clone();
    if let Some(id) = super::capture::keep(p, &plugin, msgs, &outcome, witness, dead).await {
        for (c, a) in captured.iter_mut().zip(&actions) {
            if c.is_none() && matches!(a, Action::DeadLetter(_)) {
                *c = Some(id.clone());
            }
        }
    }
    let settled = run
        .delivered
        .iter()
        .zip(msgs.iter())
        .zip(actions)
        .zip(captured);
    for (i, (((js_msg, msg), action), capture)) in settled.enumerate() {
        trace.decided(run.at[i], action.kind());
        settle_captured(p, js_msg, msg, action, capture).await;
    }
}

/// Settles the messages the plugin acked or terminated while a downstream
/// is out; the ones it asked to retry stay in `run`, to be held.
async fn settle_decided(p: &Pipeline, run: &mut Run, decisions: &[Decision], trace: &BatchTrace) {
    let is_retry = |d: &Decision| matches!(d, Decision::Retry(_));
    let keep: Vec<bool> = decisions.iter().map(is_retry).collect();
    let decided = decisions.iter().filter(|d| !is_retry(d));
    for ((js_msg, msg, place), d) in run.take(|i| !keep[i]).into_iter().zip(decided) {
        let action = settle::for_decision(d, msg.delivered, p.cfg.max_deliver, &p.backoff);
        trace.decided(place, action.kind());
        settle_one(p, &js_msg, &msg, action).await;
    }
}

/// Runs one message alone (on its last delivery, after its batch failed) so
/// that only a message that itself fails is dead-lettered.
/// True with the action when the plugin failed on the message alone; the
/// capture of that run when it dead-letters the message.
async fn isolate(
    p: &Pipeline,
    instance: &mut PluginInstance,
    m: &Message,
) -> (Action, bool, Option<String>) {
    let max = p.cfg.max_deliver;
    let alone = [m.clone()];
    let outcome = instance.handle(alone.to_vec()).await;
    p.stats.paused(instance.last_call_paused());
    p.stats.used(instance.last_call_usage());
    let (action, failed) = match &outcome {
        Ok(d) => (
            settle::for_decision(&d[0], m.delivered, max, &p.backoff),
            false,
        ),
        Err(e) => (settle::for_failure(e, m.delivered, max, &p.backoff), true),
    };
    let witness = instance.take_witness();
    let actions = [action];
    let dead = super::capture::first_dead(&actions, &[]);
    let plugin = instance.plugin().clone();
    let capture = super::capture::keep(p, &plugin, &alone, &outcome, witness, dead).await;
    let [action] = actions;
    (action, failed, capture)
}

/// Messages in a row that fail alone after which the plugin is taken to
/// fail on everything: the rest of the batch is dead-lettered without being
/// run alone (a looping plugin would otherwise burn its deadline per message).
const ISOLATION_GIVE_UP: u32 = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{EngineSettings, Runtime};
    use crate::plugin::PluginSpec;

    fn msg() -> Message {
        Message {
            stream: "S".into(),
            consumer: "c".into(),
            subject: "s.x".into(),
            headers: vec![],
            payload: bytes::Bytes::from_static(b"{}"),
            stream_seq: 1,
            delivered: 1,
            published_at_ms: 0,
            tenant: "default".into(),
        }
    }

    #[tokio::test]
    async fn an_idle_worker_releases_its_instance_and_the_next_batch_makes_one()
    -> Result<(), Box<dyn std::error::Error>> {
        let rt = Arc::new(Runtime::new(EngineSettings {
            max_instances: 4,
            ..EngineSettings::default()
        })?);
        let spec = PluginSpec::new("noop", jetplug_tests::plugins::TEST_NOOP);
        let mut inst = PluginInstance::new(Arc::new(crate::plugin::load(&rt, spec)?));
        assert!(!inst.is_live(), "made on the first batch, not before");
        inst.handle(vec![msg()]).await?;
        assert!(inst.is_live());
        let idle = Duration::from_millis(200);
        // A batch within the idle time: the instance is kept.
        let got = next_or_release_after(idle, &mut inst, async { 1 }).await;
        assert_eq!(got, 1);
        assert!(inst.is_live());
        // None for longer: released, and what comes later is still returned.
        let late = async {
            tokio::time::sleep(idle * 3).await;
            2
        };
        assert_eq!(next_or_release_after(idle, &mut inst, late).await, 2);
        assert!(!inst.is_live(), "released after {idle:?} idle");
        inst.handle(vec![msg()]).await?;
        assert!(inst.is_live());
        assert_eq!(inst.instances_created(), 2);
        Ok(())
    }
}
