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

use crate::bindings::Message;
use crate::capability::effects::{EffectsTx, Entry, Outcome, StoreError, Tables};
use crate::deadletter::Origin;

mod batch;
pub(super) use batch::run_batch;

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
