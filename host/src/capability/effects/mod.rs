//! Exactly-once effects (`effects = "exactly-once"` on a pipeline).
//!
//! Why here: every `sql` and `publish` call already passes through the
//! instance's [`CallPath`](super::CallPath); while a batch of an
//! exactly-once pipeline runs, that path carries the batch's open
//! [`EffectsTx`], and the two capabilities send their work into it instead
//! of autocommitting: statements on the effects database run inside it
//! (each under a savepoint, so a failed statement undoes only itself, as
//! it would alone), and publishes become rows of the outbox table. The
//! pipeline commits the transaction together with the batch's origins in
//! the ledger table — or rolls it back — and relays the outbox afterwards
//! with deterministic `Nats-Msg-Id`s. This module owns both tables: their
//! DDL, the ledger's reads and writes, and the outbox's rows.

use std::sync::Arc;

use tokio::sync::Mutex;

mod ledger;
mod tables;
mod tx;

pub use tables::{Entry, Outcome, Queued, StoreError, Tables};
pub use tx::EffectsTx;

/// The batch transaction an instance's calls go into, when there is one.
#[derive(Debug, Clone, Default)]
pub struct Effects(Arc<Mutex<Option<EffectsTx>>>);

impl Effects {
    /// From now on this instance's SQL on `tx.database` and its publishes
    /// go into `tx`.
    pub async fn install(&self, tx: EffectsTx) {
        *self.0.lock().await = Some(tx);
    }

    /// Ends the redirection and hands the transaction back.
    pub async fn take(&self) -> Option<EffectsTx> {
        self.0.lock().await.take()
    }

    pub(super) async fn lock(&self) -> tokio::sync::MutexGuard<'_, Option<EffectsTx>> {
        self.0.lock().await
    }
}
