//! Telling JetStream what became of a message: the one place a
//! pipeline's batches ack, NAK, terminate or hand messages back.
//!
//! Why one place: a plain batch (`worker`) and an exactly-once one
//! (`effects`) settle alike — a dead letter is stored before its message
//! is terminated, and a message whose dead letter could not be stored goes
//! back to JetStream rather than being lost — so neither can drift from
//! the other.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};

use super::settle::Action;
use super::{Pipeline, Stats};
use crate::bindings::Message;
use crate::deadletter::DeadLetter;

/// How soon messages handed back while stopping are redelivered.
pub(super) const STOPPING: Duration = Duration::from_secs(1);

/// Hands messages the host holds but will not run back to JetStream (a
/// NAK with `delay`), so this or another host takes them soon.
pub(super) async fn hand_back(msgs: &[jetstream::Message], delay: Duration) {
    for m in msgs {
        let _ = m.ack_with(AckKind::Nak(Some(delay))).await;
    }
}

/// Settles one message as `action` says.
pub(super) async fn settle_one(
    p: &Pipeline,
    js_msg: &jetstream::Message,
    msg: &Message,
    action: Action,
) {
    settle_captured(p, js_msg, msg, action, None).await;
}

/// [`settle_one`], a dead letter naming `capture`.
pub(super) async fn settle_captured(
    p: &Pipeline,
    js_msg: &jetstream::Message,
    msg: &Message,
    action: Action,
    capture: Option<String>,
) {
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
            let mut dl = DeadLetter::from_message(&p.cfg.name, msg, reason);
            dl.capture = capture;
            if p.store_dead_letter(&dl).await {
                js_msg.ack_with(AckKind::Term).await
            } else {
                // Stopping with its dead letter unstored: back to JetStream,
                // which redelivers it (on the spare delivery at the latest).
                js_msg.ack_with(AckKind::Nak(Some(STOPPING))).await
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(pipeline = %p.cfg.name, stream = %msg.stream, seq = msg.stream_seq, error = %e,
            "settling failed; JetStream will redeliver after ack_wait");
    }
}
