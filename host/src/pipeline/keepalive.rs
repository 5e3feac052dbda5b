//! Keeping unsettled messages alive: from the moment a batch is pulled until
//! it is settled — waiting in a channel, held by an open breaker, or running
//! in a plugin — one ticker sends +WPI (in progress) for its messages every
//! half `ack_wait`, so JetStream never redelivers a message the host still
//! holds. (A redelivery would spend a delivery and run the message twice.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::{Client, Subject};
use tokio_util::sync::CancellationToken;

/// The reply subjects of every message the pipeline holds.
#[derive(Debug, Default)]
pub struct KeepAlive {
    next: AtomicU64,
    held: std::sync::Mutex<HashMap<u64, Vec<Subject>>>,
}

/// Removes its batch from the keep-alive set when dropped (after settling).
#[derive(Debug)]
pub struct Guard {
    owner: Arc<KeepAlive>,
    id: u64,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.owner.lock().remove(&self.id);
    }
}

impl KeepAlive {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Vec<Subject>>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts keeping `msgs` alive until the guard is dropped.
    pub fn track(self: &Arc<Self>, msgs: &[jetstream::Message]) -> Guard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let replies = msgs.iter().filter_map(|m| m.reply.clone()).collect();
        self.lock().insert(id, replies);
        Guard {
            owner: self.clone(),
            id,
        }
    }

    /// Messages currently held.
    pub fn held(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Sends +WPI for everything held every `period` until `shutdown`.
    pub async fn run(
        self: Arc<Self>,
        client: Client,
        period: Duration,
        shutdown: CancellationToken,
    ) {
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticker.tick() => {}
            }
            let replies: Vec<Subject> = self.lock().values().flatten().cloned().collect();
            for reply in replies {
                // Boxed: only a ticker waits in an idle pipeline's task.
                if let Err(e) = Box::pin(client.publish(reply, "+WPI".into())).await {
                    tracing::debug!(error = %e, "+WPI failed");
                }
            }
        }
    }
}
