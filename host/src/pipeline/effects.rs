//! A batch of an exactly-once pipeline (`effects = "exactly-once"`).
//!
//! Why a batch is one transaction: a plugin handles a whole batch in one
//! call, so its statements cannot be told apart by message. The host runs
//! the call inside one transaction on the effects database and commits it
//! only when every message of the run is settled for good:
//!
//! 1. origins already in the ledger are acked without the plugin (`skipped`);
//! 2. the rest run in a fresh transaction ([`crate::capability::effects`]);
//! 3. a message that asks to `retry` is NAKed and the transaction rolled
//!    back; the others run again, alone together, in a new one (so one
//!    message's retry never undoes or keeps its batch-mates' effects);
//! 4. when all are `ack` or `term`, the dead letters are stored, the
//!    origins written to the ledger and everything committed at once; then
//!    the outbox is relayed and the messages acked or terminated.
//!
//! A crash anywhere before the commit leaves nothing; after it, the ledger
//! makes the redelivery a `skipped` and the outbox relay (here, after each
//! commit, and in [`relay_loop`] for what a crashed host left) sends every
//! queued publish with its stored `Nats-Msg-Id`, which the stream's
//! duplicate window absorbs when a relay is repeated.

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use deadpool_postgres::Pool;

use super::{ack, circuit};
use crate::bindings::Message;
use crate::capability::effects::{EffectsTx, Entry, Outcome, StoreError, Tables};
use crate::deadletter::Origin;

/// Where and how a pipeline keeps its effects exactly-once.
#[derive(Debug)]
pub struct EffectsPlan {
    pub database: String,
    pool: Pool,
    role: Option<String>,
    tables: Tables,
    retention: Duration,
}

impl EffectsPlan {
    pub fn new(
        database: &str,
        pool: Pool,
        role: Option<String>,
        tables: Tables,
        retention: Duration,
    ) -> Self {
        EffectsPlan {
            database: database.to_owned(),
            pool,
            role,
            tables,
            retention,
        }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable {
            database: self.database.clone(),
            reason: e.to_string(),
        })
    }

    /// Creates the ledger and outbox tables when missing.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        self.tables.create(&client, &self.database).await
    }

    /// What the database user lacks for this plan (see
    /// [`Tables::missing_privileges`]); within `wait`.
    pub async fn missing_privileges(&self, wait: Duration) -> Result<Vec<String>, StoreError> {
        let unreachable = || StoreError::Unavailable {
            database: self.database.clone(),
            reason: format!("no connection within {wait:?}"),
        };
        tokio::time::timeout(wait, async {
            let client = self.client().await?;
            self.tables
                .missing_privileges(&client, &self.database)
                .await
        })
        .await
        .map_err(|_| unreachable())?
    }

    /// Which of `origins` `pipeline` has handled already, and how.
    pub async fn handled(
        &self,
        pipeline: &str,
        origins: &[Entry],
    ) -> Result<Vec<(Entry, Outcome)>, StoreError> {
        let client = self.client().await?;
        self.tables
            .handled(&client, &self.database, pipeline, origins)
            .await
    }

    /// A transaction for a run of `msgs` (named after the first one's origin).
    pub async fn begin(&self, pipeline: &str, first: &Entry) -> Result<EffectsTx, StoreError> {
        let key = format!("{pipeline}:{}:{}", first.stream, first.sequence);
        EffectsTx::begin(
            &self.pool,
            &self.database,
            self.role.as_deref(),
            &self.tables,
            pipeline,
            key,
        )
        .await
    }

    /// Sends `pipeline`'s queued publishes, oldest first, and forgets each
    /// once JetStream stored it; how many were sent. Stops at the first
    /// that fails (the order of a message's publishes is kept).
    pub async fn relay(
        &self,
        pipeline: &str,
        js: &jetstream::Context,
    ) -> Result<usize, RelayError> {
        let client = self.client().await?;
        if !self
            .tables
            .begin_relay(&client, &self.database, pipeline)
            .await?
        {
            return Ok(0);
        }
        let result = self.relay_locked(&client, pipeline, js).await;
        self.tables
            .end_relay(&client, &self.database, result.is_ok())
            .await?;
        result
    }

    async fn relay_locked(
        &self,
        client: &deadpool_postgres::Object,
        pipeline: &str,
        js: &jetstream::Context,
    ) -> Result<usize, RelayError> {
        let mut sent = 0;
        loop {
            let queued = self
                .tables
                .queued(client, &self.database, pipeline, 100)
                .await?;
            if queued.is_empty() {
                return Ok(sent);
            }
            let mut done = Vec::with_capacity(queued.len());
            for q in &queued {
                let mut headers = HeaderMap::new();
                for (k, v) in &q.headers {
                    headers.append(k.as_str(), v.as_str());
                }
                headers.insert("Nats-Msg-Id", q.msg_id.as_str());
                let stored = async {
                    js.publish_with_headers(q.subject.clone(), headers, q.payload.clone().into())
                        .await?
                        .await
                }
                .await;
                if let Err(e) = stored {
                    return Err(RelayError::Publish {
                        subject: q.subject.clone(),
                        reason: e.to_string(),
                    });
                }
                done.push(q.id);
            }
            self.tables.relayed(client, &self.database, &done).await?;
            sent += done.len();
        }
    }

    /// Drops ledger entries older than the retention; how many.
    pub async fn prune(&self, pipeline: &str) -> Result<u64, StoreError> {
        let client = self.client().await?;
        self.tables
            .prune(&client, &self.database, pipeline, self.retention)
            .await
    }

    /// Queued publishes of `pipeline`.
    pub async fn queued(&self, pipeline: &str) -> Result<i64, StoreError> {
        let client = self.client().await?;
        self.tables
            .queued_count(&client, &self.database, pipeline)
            .await
    }

    /// Ledger entries of `pipeline`.
    pub async fn ledger_size(&self, pipeline: &str) -> Result<i64, StoreError> {
        let client = self.client().await?;
        self.tables
            .ledger_count(&client, &self.database, pipeline)
            .await
    }
}

/// Why a relay stopped.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("publishing a queued message to `{subject}` failed: {reason}")]
    Publish { subject: String, reason: String },
}

/// The ledger key of a delivered message: its origin.
pub fn entry(m: &Message) -> Entry {
    let o = Origin::of(&m.headers, &m.stream, m.stream_seq, m.published_at_ms);
    Entry {
        stream: o.stream,
        sequence: o.sequence,
    }
}

/// Whether `m` was redriven from the dead-letter queue (it carries its
/// origin in headers).
fn is_redrive(m: &Message) -> bool {
    m.headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case(crate::deadletter::headers::ORIGIN))
}

/// Relays what a crashed host (or a failed relay) left in the outbox, and
/// prunes the ledger, until `shutdown`.
pub async fn relay_loop(p: Arc<super::Pipeline>, plan: Arc<EffectsPlan>) {
    let mut tick = tokio::time::interval(RELAY_EVERY);
    let mut pruned_at = std::time::Instant::now() - PRUNE_EVERY;
    loop {
        tokio::select! {
            _ = p.shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        match plan.relay(&p.cfg.name, &p.js).await {
            Ok(n) if n > 0 => {
                super::Stats::add(&p.stats.outbox_relayed, n as u64);
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(pipeline = %p.cfg.name, error = %e,
                "relaying the outbox failed; trying again"),
        }
        if pruned_at.elapsed() >= PRUNE_EVERY {
            pruned_at = std::time::Instant::now();
            match plan.prune(&p.cfg.name).await {
                Ok(n) if n > 0 => {
                    tracing::debug!(pipeline = %p.cfg.name, entries = n, "ledger pruned")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(pipeline = %p.cfg.name, error = %e,
                    "pruning the ledger failed; trying again later"),
            }
            if let Ok(n) = plan.ledger_size(&p.cfg.name).await {
                p.stats.effects_ledger.set(n);
            }
        }
        if let Ok(n) = plan.queued(&p.cfg.name).await {
            p.stats.effects_outbox.set(n);
        }
    }
}

/// How often the outbox is checked for what no batch relayed.
const RELAY_EVERY: Duration = Duration::from_secs(5);
/// How often old ledger entries are dropped.
const PRUNE_EVERY: Duration = Duration::from_secs(600);

/// How a run ended: whether the plugin itself failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ran {
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
pub(super) async fn run_batch(
    p: &super::Pipeline,
    plan: &EffectsPlan,
    instance: &mut crate::plugin::PluginInstance,
    shadow: &mut Option<crate::plugin::PluginInstance>,
    mut delivered: Vec<jetstream::Message>,
    msgs: Vec<Message>,
    trace: &crate::telemetry::context::BatchTrace,
) -> Ran {
    use super::settle::{self, Action};
    use crate::bindings::Decision;

    let max = p.cfg.max_deliver;
    let held_since = std::time::Instant::now();
    let mut holds = 0u32;
    // Shared with the plugin call, not copied for it.
    let mut msgs: Arc<[Message]> = msgs.into();
    // Each message's place in `trace` (the batch as delivered).
    let mut at: Vec<usize> = (0..msgs.len()).collect();
    // The same origin twice in one batch (a redelivery pulled beside the
    // first delivery): run once; the first's settlement covers the other.
    if let Some(firsts) = firsts_only(&msgs) {
        let (mut keep_js, mut keep, mut keep_at) = (Vec::new(), Vec::new(), Vec::new());
        for (((js_msg, m), first), i) in delivered.into_iter().zip(msgs.iter()).zip(firsts).zip(at)
        {
            if first {
                keep_js.push(js_msg);
                keep.push(m.clone());
                keep_at.push(i);
            }
        }
        (delivered, msgs, at) = (keep_js, keep.into(), keep_at);
    }
    loop {
        if msgs.is_empty() {
            return Ran::Settled;
        }
        if !circuit::wait_for_breaker(p).await {
            ack::hand_back(&delivered, ack::STOPPING).await;
            return Ran::Settled;
        }
        let _slot = match &p.tenant_slots {
            Some(slots) => slots.clone().acquire_owned().await.ok(),
            None => None,
        };
        let entries: Vec<Entry> = msgs.iter().map(entry).collect();
        // Handled before (a redelivery after the commit): settled unrun.
        let done = match plan.handled(&p.cfg.name, &entries).await {
            Ok(done) => done,
            Err(e) => {
                if !hold(p, &delivered, &msgs, &e, held_since, &mut holds).await {
                    return Ran::Settled;
                }
                continue;
            }
        };
        // A dead letter's origin is run again when it is redriven (once:
        // the run updates its entry); any other delivery of it is done.
        let done: std::collections::HashMap<Entry, Outcome> = done.into_iter().collect();
        let skip = |m: &Message, e: &Entry| match done.get(e) {
            Some(Outcome::Ack) => true,
            Some(Outcome::DeadLetter) => !is_redrive(m),
            None => false,
        };
        if msgs.iter().zip(&entries).any(|(m, e)| skip(m, e)) {
            let (mut keep_js, mut keep, mut keep_at) = (Vec::new(), Vec::new(), Vec::new());
            for (((js_msg, m), e), i) in
                delivered.into_iter().zip(msgs.iter()).zip(&entries).zip(at)
            {
                if skip(m, e) {
                    trace.decided(i, "skipped");
                    super::Stats::add(&p.stats.skipped, 1);
                    if let Err(err) = js_msg.ack().await {
                        tracing::warn!(pipeline = %p.cfg.name, stream = %m.stream, seq = m.stream_seq,
                            error = %err, "acking a message handled before failed; it comes back and is skipped again");
                    }
                } else {
                    keep_js.push(js_msg);
                    keep.push(m.clone());
                    keep_at.push(i);
                }
            }
            (delivered, msgs, at) = (keep_js, keep.into(), keep_at);
            continue;
        }
        let tx = match plan.begin(&p.cfg.name, &entries[0]).await {
            Ok(tx) => tx,
            Err(e) => {
                if !hold(p, &delivered, &msgs, &e, held_since, &mut holds).await {
                    return Ran::Settled;
                }
                continue;
            }
        };
        super::Stats::add(&p.stats.batches, 1);
        // A shadow runs the batch first, its effects held back.
        let shadowed = super::shadow::run(p, shadow, &msgs).await;
        let started = std::time::Instant::now();
        let observe = shadowed
            .as_ref()
            .map(|_| crate::capability::record::Recording::observe());
        let (outcome, tx, recording) = instance
            .handle_recorded(msgs.clone(), trace.call(), Some(tx), observe)
            .await;
        let witness = instance.take_witness();
        if let Some(ran) = shadowed {
            super::shadow::compare(
                ran,
                &msgs,
                &outcome,
                recording.as_ref(),
                started.elapsed(),
                instance,
            );
        }
        p.stats.batch_took(started.elapsed());
        let decided = outcome.as_ref().ok().map(Vec::as_slice);
        super::canary::tally(p, instance, msgs.len(), started.elapsed(), decided);
        p.stats.paused(instance.last_call_paused());
        p.stats.used(instance.last_call_usage());
        let downstream = instance.downstream_failures();
        let (decisions, tx) = match (outcome, tx) {
            (Ok(d), Some(tx)) => (d, tx),
            (outcome, tx) => {
                if let Some(tx) = tx {
                    tx.rollback().await;
                }
                circuit::record_outcome(p, true);
                let e = match outcome {
                    Err(e) => e,
                    Ok(_) => crate::plugin::BatchError::Trap {
                        plugin: instance.plugin().name().to_owned(),
                        reason: "the batch transaction was lost".into(),
                    },
                };
                trace.failed(&e);
                p.stats.batch_failed(e.kind());
                tracing::warn!(pipeline = %p.cfg.name, plugin = %instance.plugin().name(), error = %e,
                    kind = e.kind(), messages = msgs.len(),
                    "batch failed; its effects rolled back");
                if msgs.len() > 1 {
                    let mut failed_alone = 0;
                    for ((js_msg, m), i) in delivered.into_iter().zip(msgs.iter()).zip(at) {
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
                let actions: Vec<Action> = msgs
                    .iter()
                    .map(|m| settle::for_failure(&e, m.delivered, max, &p.backoff))
                    .collect();
                let dead = super::capture::first_dead(&actions, &[]);
                let plugin = instance.plugin().clone();
                let failed = Err(e.clone());
                let capture = super::capture::keep(p, &plugin, &msgs, &failed, witness, dead).await;
                for (i, ((js_msg, m), action)) in
                    delivered.iter().zip(msgs.iter()).zip(actions).enumerate()
                {
                    trace.decided(at[i], action.kind());
                    let capture = matches!(action, Action::DeadLetter(_))
                        .then(|| capture.clone())
                        .flatten();
                    ack::settle_captured(p, js_msg, m, action, capture).await;
                }
                return Ran::PluginFailed;
            }
        };
        if downstream > 0 {
            tx.rollback().await;
            let open = circuit::record_outcome(p, true);
            if !hold_after(p, &delivered, &msgs, open, held_since, &mut holds).await {
                return Ran::Settled;
            }
            continue;
        }
        circuit::record_outcome(p, false);
        // A retry: nothing of this run stays; the others run again.
        if decisions.iter().any(|d| matches!(d, Decision::Retry(_))) {
            tx.rollback().await;
            super::Stats::add(&p.stats.effects_reruns, 1);
            // A retry on the last delivery is dead-lettered: captured.
            let retried: Vec<Action> = decisions
                .iter()
                .zip(msgs.iter())
                .map(|(d, m)| match d {
                    Decision::Retry(_) => settle::for_decision(d, m.delivered, max, &p.backoff),
                    _ => Action::Ack,
                })
                .collect();
            let dead = super::capture::first_dead(&retried, &[]);
            let plugin = instance.plugin().clone();
            let decided = Ok(decisions.clone());
            let capture = super::capture::keep(p, &plugin, &msgs, &decided, witness, dead).await;
            let (mut keep_js, mut keep, mut keep_at) = (Vec::new(), Vec::new(), Vec::new());
            for (((js_msg, m), d), i) in delivered
                .into_iter()
                .zip(msgs.iter())
                .zip(&decisions)
                .zip(at)
            {
                if matches!(d, Decision::Retry(_)) {
                    let action = settle::for_decision(d, m.delivered, max, &p.backoff);
                    trace.decided(i, action.kind());
                    let capture = matches!(action, Action::DeadLetter(_))
                        .then(|| capture.clone())
                        .flatten();
                    ack::settle_captured(p, &js_msg, m, action, capture).await;
                } else {
                    keep_js.push(js_msg);
                    keep.push(m.clone());
                    keep_at.push(i);
                }
            }
            (delivered, msgs, at) = (keep_js, keep.into(), keep_at);
            continue;
        }
        // All ack or term: dead letters stored first, then one commit.
        let actions: Vec<Action> = decisions
            .iter()
            .zip(msgs.iter())
            .map(|(d, m)| settle::for_decision(d, m.delivered, max, &p.backoff))
            .collect();
        let dead = super::capture::first_dead(&actions, &[]);
        let plugin = instance.plugin().clone();
        let decided = Ok(decisions);
        let capture = super::capture::keep(p, &plugin, &msgs, &decided, witness, dead).await;
        let mut terms = vec![false; msgs.len()];
        for (i, (action, m)) in actions.into_iter().zip(msgs.iter()).enumerate() {
            if let Action::DeadLetter(reason) = action {
                let mut dl = crate::deadletter::DeadLetter::from_message(&p.cfg.name, m, reason);
                dl.capture = capture.clone();
                if !p.store_dead_letter(&dl).await {
                    // Stopping: nothing is committed; JetStream redelivers.
                    tx.rollback().await;
                    ack::hand_back(&delivered, ack::STOPPING).await;
                    return Ran::Settled;
                }
                terms[i] = true;
            }
        }
        // Entries new to the ledger, and redriven dead letters' entries.
        let (mut fresh, mut again) = (Vec::new(), Vec::new());
        for (e, term) in entries.iter().zip(&terms) {
            let outcome = if *term {
                Outcome::DeadLetter
            } else {
                Outcome::Ack
            };
            if done.contains_key(e) {
                again.push((e.clone(), outcome));
            } else {
                fresh.push((e.clone(), outcome));
            }
        }
        let published = match tx.commit(&fresh, &again).await {
            Ok(published) => published,
            Err(StoreError::Conflict { .. }) => {
                // Another host committed some of them meanwhile: run the
                // batch again; the ledger skips those.
                super::Stats::add(&p.stats.effects_reruns, 1);
                continue;
            }
            Err(e) => {
                if !hold(p, &delivered, &msgs, &e, held_since, &mut holds).await {
                    return Ran::Settled;
                }
                continue;
            }
        };
        if published > 0 {
            match plan.relay(&p.cfg.name, &p.js).await {
                Ok(n) => super::Stats::add(&p.stats.outbox_relayed, n as u64),
                Err(e) => tracing::warn!(pipeline = %p.cfg.name, error = %e,
                    "relaying the outbox failed; the relay loop sends it later"),
            }
        }
        for (i, ((js_msg, m), term)) in delivered.iter().zip(msgs.iter()).zip(terms).enumerate() {
            let result = if term {
                trace.decided(at[i], "dead-letter");
                js_msg.ack_with(async_nats::jetstream::AckKind::Term).await
            } else {
                trace.decided(at[i], "ack");
                super::Stats::add(&p.stats.acked, 1);
                js_msg.ack().await
            };
            if let Err(e) = result {
                tracing::warn!(pipeline = %p.cfg.name, stream = %m.stream, seq = m.stream_seq, error = %e,
                    "settling failed; the redelivery is skipped by the ledger");
            }
        }
        return Ran::Settled;
    }
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

/// The effects database is out: hold the batch (no delivery spent) as
/// for any downstream outage. False when the batch was settled or handed
/// back instead.
async fn hold(
    p: &super::Pipeline,
    delivered: &[jetstream::Message],
    msgs: &[Message],
    e: &StoreError,
    held_since: std::time::Instant,
    holds: &mut u32,
) -> bool {
    tracing::warn!(pipeline = %p.cfg.name, error = %e, "exactly-once: the effects database is out; holding the batch");
    let open = circuit::record_outcome(p, true);
    hold_after(p, delivered, msgs, open, held_since, holds).await
}

async fn hold_after(
    p: &super::Pipeline,
    delivered: &[jetstream::Message],
    msgs: &[Message],
    open: bool,
    held_since: std::time::Instant,
    holds: &mut u32,
) -> bool {
    if held_since.elapsed() >= p.cfg.breaker.max_hold.0 {
        super::Stats::add(&p.stats.held_expired, 1);
        tracing::warn!(pipeline = %p.cfg.name, messages = msgs.len(), held_for = ?held_since.elapsed(),
            "a downstream has been out for longer than breaker.max_hold: these messages go back to retry accounting");
        for (js_msg, m) in delivered.iter().zip(msgs) {
            let action = super::settle::for_decision(
                &crate::bindings::Decision::Retry(None),
                m.delivered,
                p.cfg.max_deliver,
                &p.backoff,
            );
            ack::settle_one(p, js_msg, m, action).await;
        }
        return false;
    }
    super::Stats::add(&p.stats.held_batches, 1);
    *holds += 1;
    if !open {
        let wait = p.backoff.delay(*holds);
        let stop = tokio::select! {
            _ = p.shutdown.cancelled() => true,
            _ = tokio::time::sleep(wait) => false,
        };
        if stop {
            ack::hand_back(delivered, ack::STOPPING).await;
            return false;
        }
    }
    true
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
