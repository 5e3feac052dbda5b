//! One batch of an exactly-once pipeline, from its delivery to its
//! settlement, in the steps the module above lists: skip what the ledger
//! holds, run the rest in a transaction, take out the retries and run the
//! others again, commit and settle; a failed batch runs again message by
//! message.
//!
//! Every step takes messages out of the [`Run`] and settles them; what
//! stays runs again from the top (the breaker, the ledger).

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream::{self, AckKind};

use super::{EffectsPlan, entry, is_redrive};
use crate::bindings::{Decision, Message};
use crate::capability::effects::{EffectsTx, Entry, Outcome, StoreError};
use crate::pipeline::run::{Hold, Run};
use crate::pipeline::settle::{self, Action};
use crate::pipeline::{Pipeline, Stats, ack, circuit};
use crate::plugin::{BatchError, Plugin, PluginInstance, Witness};
use crate::telemetry::context::BatchTrace;

/// How a run ended: whether the plugin itself failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(in crate::pipeline) enum Ran {
    Settled,
    PluginFailed,
}

/// Messages in a row that fail alone after which the rest of a failed
/// batch is settled for the failure without running alone.
const ISOLATION_GIVE_UP: u32 = 3;

/// Runs `msgs` (delivered as `delivered`) exactly-once, as the module
/// docs say, and settles every one of them. A batch the plugin fails on
/// (a trap, a deadline) leaves nothing behind, and its messages run again
/// one by one at once, each in its own transaction: one poison message
/// never holds its batch-mates back.
pub(in crate::pipeline) async fn run_batch(
    p: &Pipeline,
    plan: &EffectsPlan,
    instance: &mut PluginInstance,
    shadow: &mut Option<PluginInstance>,
    delivered: Vec<jetstream::Message>,
    msgs: Vec<Message>,
    trace: &BatchTrace,
) -> Ran {
    let mut run = Run::new(delivered, msgs);
    // The same origin twice in one batch (a redelivery pulled beside the
    // first delivery): run once; the first's settlement covers the other.
    if let Some(firsts) = firsts_only(&run.msgs) {
        run.take(|i| !firsts[i]);
    }
    let mut hold = Hold::new();
    loop {
        if run.msgs.is_empty() {
            return Ran::Settled;
        }
        if !circuit::wait_for_breaker(p).await {
            ack::hand_back(&run.delivered, ack::STOPPING).await;
            return Ran::Settled;
        }
        let _slot = match &p.tenant_slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        let entries: Vec<Entry> = run.msgs.iter().map(entry).collect();
        // Handled before (a redelivery after the commit): settled unrun.
        let done = match plan.handled(&p.cfg.name, &entries).await {
            Ok(done) => done.into_iter().collect(),
            Err(e) => match store_out(p, &mut hold, &run, &e).await {
                true => continue,
                false => return Ran::Settled,
            },
        };
        if skip_handled(p, &mut run, &entries, &done, trace).await {
            continue;
        }
        let tx = match plan.begin(&p.cfg.name, &entries[0]).await {
            Ok(tx) => tx,
            Err(e) => match store_out(p, &mut hold, &run, &e).await {
                true => continue,
                false => return Ran::Settled,
            },
        };
        Stats::add(&p.stats.batches, 1);
        // A shadow runs the batch first, its effects held back.
        let shadowed = crate::pipeline::shadow::run(p, shadow, &run.msgs).await;
        let (outcome, tx) = run.call(p, instance, shadowed, Some(tx), trace).await;
        let witness = instance.take_witness();
        let downstream = instance.downstream_failures();
        let (decisions, tx) = match (outcome, tx) {
            (Ok(d), Some(tx)) => (d, tx),
            (outcome, tx) => {
                if let Some(tx) = tx {
                    tx.rollback().await;
                }
                let e = match outcome {
                    Err(e) => e,
                    Ok(_) => BatchError::Trap {
                        plugin: instance.plugin().name().to_owned(),
                        reason: "the batch transaction was lost".into(),
                    },
                };
                return failed(p, plan, instance, shadow, run, (e, witness), trace).await;
            }
        };
        if downstream > 0 {
            tx.rollback().await;
            let open = circuit::record_outcome(p, true);
            match held(p, &mut hold, &run, open).await {
                true => continue,
                false => return Ran::Settled,
            }
        }
        circuit::record_outcome(p, false);
        // A retry: nothing of this run stays; the others run again.
        if decisions.iter().any(|d| matches!(d, Decision::Retry(_))) {
            tx.rollback().await;
            Stats::add(&p.stats.effects_reruns, 1);
            settle_retries(p, instance.plugin(), &mut run, decisions, witness, trace).await;
            continue;
        }
        let decided = Decided {
            entries: &entries,
            done: &done,
            decisions,
            witness,
        };
        let plugin = instance.plugin().clone();
        match commit(p, plan, &plugin, &run, decided, tx, trace).await {
            Ok(true) => return Ran::Settled,
            // Another host committed some of them meanwhile: run the
            // batch again; the ledger skips those.
            Ok(false) => Stats::add(&p.stats.effects_reruns, 1),
            Err(e) => {
                if !store_out(p, &mut hold, &run, &e).await {
                    return Ran::Settled;
                }
            }
        }
    }
}

/// Acks, unrun, the messages whose origins the ledger holds (a dead
/// letter's only when it is not a redrive of it); true when there were any.
async fn skip_handled(
    p: &Pipeline,
    run: &mut Run,
    entries: &[Entry],
    done: &HashMap<Entry, Outcome>,
    trace: &BatchTrace,
) -> bool {
    // A dead letter's origin is run again when it is redriven (once:
    // the run updates its entry); any other delivery of it is done.
    let skip = |i: usize| match done.get(&entries[i]) {
        Some(Outcome::Ack) => true,
        Some(Outcome::DeadLetter) => !is_redrive(&run.msgs[i]),
        None => false,
    };
    if !(0..entries.len()).any(skip) {
        return false;
    }
    let skips: Vec<bool> = (0..entries.len()).map(skip).collect();
    for (js_msg, m, place) in run.take(|i| skips[i]) {
        trace.decided(place, "skipped");
        Stats::add(&p.stats.skipped, 1);
        if let Err(err) = js_msg.ack().await {
            tracing::warn!(pipeline = %p.cfg.name, stream = %m.stream, seq = m.stream_seq,
                error = %err, "acking a message handled before failed; it comes back and is skipped again");
        }
    }
    true
}

/// The plugin failed on the run (its transaction is rolled back): a run
/// of many runs again message by message; a single message is settled
/// for the failure.
async fn failed(
    p: &Pipeline,
    plan: &EffectsPlan,
    instance: &mut PluginInstance,
    shadow: &mut Option<PluginInstance>,
    run: Run,
    (e, witness): (BatchError, Option<Witness>),
    trace: &BatchTrace,
) -> Ran {
    circuit::record_outcome(p, true);
    trace.failed(&e);
    p.stats.batch_failed(e.kind());
    tracing::warn!(pipeline = %p.cfg.name, plugin = %instance.plugin().name(), error = %e,
        kind = e.kind(), messages = run.msgs.len(),
        "batch failed; its effects rolled back");
    let max = p.cfg.max_deliver;
    if run.msgs.len() > 1 {
        let mut failed_alone = 0;
        for ((js_msg, m), i) in run.delivered.into_iter().zip(run.msgs.iter()).zip(run.at) {
            if failed_alone >= ISOLATION_GIVE_UP {
                let action = settle::for_failure(&e, m.delivered, max, &p.backoff);
                trace.decided(i, action.kind());
                ack::settle_one(p, &js_msg, m, action).await;
                continue;
            }
            let alone = Box::pin(run_batch(
                p,
                plan,
                instance,
                shadow,
                vec![js_msg],
                vec![m.clone()],
                &trace.only(i),
            ))
            .await;
            failed_alone = match alone {
                Ran::PluginFailed => failed_alone + 1,
                Ran::Settled => 0,
            };
        }
        return Ran::Settled;
    }
    let actions: Vec<Action> = run
        .msgs
        .iter()
        .map(|m| settle::for_failure(&e, m.delivered, max, &p.backoff))
        .collect();
    let plugin = instance.plugin().clone();
    let capture = keep_capture(p, &plugin, &run.msgs, &Err(e), &actions, witness).await;
    let settled = run.delivered.iter().zip(run.msgs.iter()).zip(actions);
    for (i, ((js_msg, m), action)) in settled.enumerate() {
        trace.decided(run.at[i], action.kind());
        let capture = dead_letter_capture(&action, &capture);
        ack::settle_captured(p, js_msg, m, action, capture).await;
    }
    Ran::PluginFailed
}

/// Settles the messages the plugin asked to retry (a retry on the last
/// delivery is dead-lettered, with the run's capture) and leaves the
/// others in `run`, to run again without them.
async fn settle_retries(
    p: &Pipeline,
    plugin: &Arc<Plugin>,
    run: &mut Run,
    decisions: Vec<Decision>,
    witness: Option<Witness>,
    trace: &BatchTrace,
) {
    let max = p.cfg.max_deliver;
    let is_retry: Vec<bool> = decisions
        .iter()
        .map(|d| matches!(d, Decision::Retry(_)))
        .collect();
    let actions: Vec<Action> = decisions
        .iter()
        .zip(run.msgs.iter())
        .map(|(d, m)| match d {
            Decision::Retry(_) => settle::for_decision(d, m.delivered, max, &p.backoff),
            _ => Action::Ack,
        })
        .collect();
    let msgs = run.msgs.clone();
    let capture = keep_capture(p, plugin, &msgs, &Ok(decisions), &actions, witness).await;
    let retries = actions
        .into_iter()
        .zip(&is_retry)
        .filter_map(|(a, r)| r.then_some(a));
    for ((js_msg, m, place), action) in run.take(|i| is_retry[i]).into_iter().zip(retries) {
        trace.decided(place, action.kind());
        let capture = dead_letter_capture(&action, &capture);
        ack::settle_captured(p, &js_msg, &m, action, capture).await;
    }
}

/// What the plugin decided for a run, every decision `ack` or `term`.
struct Decided<'a> {
    entries: &'a [Entry],
    /// The run's origins the ledger held at its start (redriven dead letters).
    done: &'a HashMap<Entry, Outcome>,
    decisions: Vec<Decision>,
    witness: Option<Witness>,
}

/// Stores the run's dead letters, writes its origins to the ledger and
/// commits everything at once, then relays the outbox and acks or
/// terminates each message. `Ok(false)` on a conflict (another host
/// committed some of the origins meanwhile: nothing was committed).
async fn commit(
    p: &Pipeline,
    plan: &EffectsPlan,
    plugin: &Arc<Plugin>,
    run: &Run,
    decided: Decided<'_>,
    tx: EffectsTx,
    trace: &BatchTrace,
) -> Result<bool, StoreError> {
    let max = p.cfg.max_deliver;
    let actions: Vec<Action> = decided
        .decisions
        .iter()
        .zip(run.msgs.iter())
        .map(|(d, m)| settle::for_decision(d, m.delivered, max, &p.backoff))
        .collect();
    let outcome = Ok(decided.decisions);
    let capture = keep_capture(p, plugin, &run.msgs, &outcome, &actions, decided.witness).await;
    // Dead letters stored first: a stop before the commit leaves nothing.
    let mut terms = vec![false; run.msgs.len()];
    for (i, (action, m)) in actions.into_iter().zip(run.msgs.iter()).enumerate() {
        if let Action::DeadLetter(reason) = action {
            let mut dl = crate::deadletter::DeadLetter::from_message(&p.cfg.name, m, reason);
            dl.capture = capture.clone();
            if !p.store_dead_letter(&dl).await {
                // Stopping: nothing is committed; JetStream redelivers.
                tx.rollback().await;
                ack::hand_back(&run.delivered, ack::STOPPING).await;
                return Ok(true);
            }
            terms[i] = true;
        }
    }
    // Entries new to the ledger, and redriven dead letters' entries.
    let (mut fresh, mut again) = (Vec::new(), Vec::new());
    for (e, term) in decided.entries.iter().zip(&terms) {
        let outcome = if *term {
            Outcome::DeadLetter
        } else {
            Outcome::Ack
        };
        if decided.done.contains_key(e) {
            again.push((e.clone(), outcome));
        } else {
            fresh.push((e.clone(), outcome));
        }
    }
    let published = match tx.commit(&fresh, &again).await {
        Ok(published) => published,
        Err(StoreError::Conflict { .. }) => return Ok(false),
        Err(e) => return Err(e),
    };
    if published > 0 {
        match plan.relay(&p.cfg.name, &p.js).await {
            Ok(n) => Stats::add(&p.stats.outbox_relayed, n as u64),
            Err(e) => tracing::warn!(pipeline = %p.cfg.name, error = %e,
                "relaying the outbox failed; the relay loop sends it later"),
        }
    }
    let settled = run.delivered.iter().zip(run.msgs.iter()).zip(terms);
    for (i, ((js_msg, m), term)) in settled.enumerate() {
        let result = if term {
            trace.decided(run.at[i], "dead-letter");
            js_msg.ack_with(AckKind::Term).await
        } else {
            trace.decided(run.at[i], "ack");
            Stats::add(&p.stats.acked, 1);
            js_msg.ack().await
        };
        if let Err(e) = result {
            tracing::warn!(pipeline = %p.cfg.name, stream = %m.stream, seq = m.stream_seq, error = %e,
                "settling failed; the redelivery is skipped by the ledger");
        }
    }
    Ok(true)
}

/// Keeps the run's capture if the pipeline's `capture` setting asks for
/// it (see `pipeline::capture`); its id.
async fn keep_capture(
    p: &Pipeline,
    plugin: &Arc<Plugin>,
    msgs: &[Message],
    outcome: &Result<Vec<Decision>, BatchError>,
    actions: &[Action],
    witness: Option<Witness>,
) -> Option<String> {
    let dead = crate::pipeline::capture::first_dead(actions, &[]);
    crate::pipeline::capture::keep(p, plugin, msgs, outcome, witness, dead).await
}

/// The capture a message's dead letter names: the run's, only when
/// `action` dead-letters it.
fn dead_letter_capture(action: &Action, capture: &Option<String>) -> Option<String> {
    matches!(action, Action::DeadLetter(_))
        .then(|| capture.clone())
        .flatten()
}

/// Which of `msgs` are the first with their origin — `None` when all
/// are (a sort of the origins, no hashing: this runs on every batch).
fn firsts_only(msgs: &[Message]) -> Option<Vec<bool>> {
    let mut order: Vec<(Entry, usize)> = msgs.iter().map(entry).zip(0..).collect();
    order.sort_unstable();
    if order.windows(2).all(|w| w[0].0 != w[1].0) {
        return None;
    }
    let mut firsts = vec![true; msgs.len()];
    for w in order.windows(2) {
        if w[0].0 == w[1].0 {
            firsts[w[1].1] = false;
        }
    }
    Some(firsts)
}

/// The effects database is out: hold the run as for any downstream
/// outage. False when the run was settled or handed back instead.
async fn store_out(p: &Pipeline, hold: &mut Hold, run: &Run, e: &StoreError) -> bool {
    tracing::warn!(pipeline = %p.cfg.name, error = %e, "exactly-once: the effects database is out; holding the batch");
    let open = circuit::record_outcome(p, true);
    held(p, hold, run, open).await
}

/// Holds the run after a failure the breaker has counted (`open`: it is
/// open now). False when the run was settled for retry (held past
/// `breaker.max_hold`: nothing of it was committed) or handed back.
async fn held(p: &Pipeline, hold: &mut Hold, run: &Run, open: bool) -> bool {
    if hold.expired(p, run) {
        for (js_msg, m) in run.delivered.iter().zip(run.msgs.iter()) {
            let retry = Decision::Retry(None);
            let action = settle::for_decision(&retry, m.delivered, p.cfg.max_deliver, &p.backoff);
            ack::settle_one(p, js_msg, m, action).await;
        }
        return false;
    }
    hold.wait(p, run, open).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(stream: &str, seq: u64) -> Message {
        Message {
            stream: stream.into(),
            consumer: String::new(),
            subject: "s".into(),
            headers: Vec::new(),
            payload: bytes::Bytes::new(),
            stream_seq: seq,
            delivered: 1,
            published_at_ms: 0,
            tenant: String::new(),
        }
    }

    #[test]
    fn only_the_first_of_an_origin_runs() {
        assert_eq!(firsts_only(&[at("A", 1), at("A", 2), at("B", 1)]), None);
        assert_eq!(
            firsts_only(&[at("A", 2), at("A", 1), at("A", 2), at("A", 2)]),
            Some(vec![true, true, false, false])
        );
        assert_eq!(firsts_only(&[]), None);
    }
}
