//! A worker: runs batches through its plugin instance and settles every
//! message with JetStream.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use tokio::sync::{Mutex, mpsc};

use super::{Pipeline, Stats};
use crate::bindings::Message;
use crate::deadletter::DeadLetter;
use crate::jetstream::convert;
use crate::plugin::PluginInstance;
use crate::settle::{self, Action};

/// Messages pulled together, handed to one worker.
#[derive(Debug)]
pub struct Batch(pub Vec<jetstream::Message>);

pub(super) async fn run(
    p: Arc<Pipeline>,
    mut instance: PluginInstance,
    rx: Arc<Mutex<mpsc::Receiver<Batch>>>,
) {
    loop {
        let next = rx.lock().await.recv().await;
        let Some(Batch(batch)) = next else { return };
        process(&p, &mut instance, batch).await;
    }
}

async fn process(p: &Pipeline, instance: &mut PluginInstance, batch: Vec<jetstream::Message>) {
    let mut delivered = Vec::with_capacity(batch.len());
    let mut msgs = Vec::with_capacity(batch.len());
    for m in batch {
        match convert::to_plugin_message(&m, &p.tenant) {
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
    Stats::add(&p.stats.batches, 1);
    // Held for the whole batch, settling included.
    let _slot = match &p.tenant_slots {
        Some(slots) => slots.clone().acquire_owned().await.ok(),
        None => None,
    };
    let outcome = run_with_progress(p, instance, &msgs, &delivered).await;
    let max = p.cfg.max_deliver;
    let actions: Vec<Action> = match outcome {
        Ok(decisions) => decisions
            .iter()
            .zip(&msgs)
            .map(|(d, m)| settle::for_decision(d, m.delivered, max, &p.backoff))
            .collect(),
        Err(e) => {
            Stats::add(&p.stats.failed_batches, 1);
            tracing::warn!(pipeline = %p.cfg.name, plugin = %p.plugin.name(), error = %e, kind = e.kind(),
                messages = msgs.len(), "batch failed; retrying with backoff");
            let mut actions = Vec::with_capacity(msgs.len());
            for m in &msgs {
                let action = if m.delivered >= max && msgs.len() > 1 {
                    // Last chance: before dead-lettering a message for its
                    // batch's failure, see whether it fails on its own.
                    isolate(p, instance, m, &delivered).await
                } else {
                    settle::for_failure(&e, m.delivered, max, &p.backoff)
                };
                actions.push(action);
            }
            actions
        }
    };
    for ((js_msg, msg), action) in delivered.iter().zip(&msgs).zip(actions) {
        settle_one(p, js_msg, msg, action).await;
    }
}

/// Runs one message alone (on its last delivery, after its batch failed) so
/// that only a message that itself fails is dead-lettered.
async fn isolate(
    p: &Pipeline,
    instance: &mut PluginInstance,
    m: &Message,
    delivered: &[jetstream::Message],
) -> Action {
    let max = p.cfg.max_deliver;
    match run_with_progress(p, instance, std::slice::from_ref(m), delivered).await {
        Ok(d) => settle::for_decision(&d[0], m.delivered, max, &p.backoff),
        Err(e) => settle::for_failure(&e, m.delivered, max, &p.backoff),
    }
}

/// Runs the plugin, sending +WPI for the whole batch every half `ack_wait`
/// while it is still running, so a long batch is not redelivered meanwhile.
async fn run_with_progress(
    p: &Pipeline,
    instance: &mut PluginInstance,
    msgs: &[Message],
    delivered: &[jetstream::Message],
) -> Result<Vec<crate::bindings::Decision>, crate::plugin::BatchError> {
    let half = (p.cfg.ack_wait.0 / 2).max(Duration::from_millis(100));
    let call = instance.handle(msgs);
    tokio::pin!(call);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + half, half);
    loop {
        tokio::select! {
            r = &mut call => return r,
            _ = ticker.tick() => {
                for m in delivered {
                    if let Err(e) = m.ack_with(AckKind::Progress).await {
                        tracing::debug!(error = %e, "+WPI failed");
                    }
                }
            }
        }
    }
}

async fn settle_one(p: &Pipeline, js_msg: &jetstream::Message, msg: &Message, action: Action) {
    let result = match action {
        Action::Ack => {
            Stats::add(&p.stats.acked, 1);
            js_msg.ack().await
        }
        Action::Nak(delay) => {
            Stats::add(&p.stats.retried, 1);
            js_msg.ack_with(AckKind::Nak(Some(delay))).await
        }
        Action::DeadLetter(reason) => {
            let dl = DeadLetter::from_message(&p.cfg.name, msg, reason);
            match p.route.send(&dl).await {
                Ok(()) => {
                    Stats::add(&p.stats.dead_lettered, 1);
                    tracing::warn!(pipeline = %p.cfg.name, stream = %msg.stream, seq = msg.stream_seq,
                        reason = %dl.reason, "dead-lettered");
                    js_msg.ack_with(AckKind::Term).await
                }
                Err(e) => {
                    // Keep the original: it is retried (or caught from the
                    // MAX_DELIVERIES advisory) rather than lost.
                    Stats::add(&p.stats.dead_letter_failures, 1);
                    tracing::error!(pipeline = %p.cfg.name, stream = %msg.stream, seq = msg.stream_seq,
                        error = %e, "dead letter not delivered; the message will be retried");
                    js_msg
                        .ack_with(AckKind::Nak(Some(p.backoff.delay(msg.delivered))))
                        .await
                }
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(pipeline = %p.cfg.name, stream = %msg.stream, seq = msg.stream_seq, error = %e,
            "settling failed; JetStream will redeliver after ack_wait");
    }
}
