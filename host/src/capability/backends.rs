//! The systems capabilities reach: the NATS connection (publish, KV) and
//! PostgreSQL pools (sql). Shared by every instance of every plugin.
//!
//! Plugins are loaded and validated before the host connects, so the NATS
//! side is filled in once connected; until then (and in offline runs) calls
//! that need it answer `unavailable`. Pools connect lazily.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use async_nats::jetstream::{self, kv};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::Mutex;

use super::publish::retry::Refusals;
use crate::bindings::CapabilityError;
use crate::config::{DatabaseConfig, PublishPolicy};

/// Shared connections for capabilities.
#[derive(Default)]
pub struct Backends {
    js: OnceLock<jetstream::Context>,
    databases: BTreeMap<String, Pool>,
    buckets: Mutex<HashMap<String, kv::Store>>,
    /// Subjects known to be captured by a stream, and by which.
    captured: Mutex<HashMap<String, String>>,
    /// `[nats.publish]` and the server's publish refusals (set with NATS).
    publishing: OnceLock<(PublishPolicy, Arc<Refusals>)>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("nats", &self.js.get().is_some())
            .field("databases", &self.databases.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A database pool could not be set up from its configuration.
#[derive(Debug, thiserror::Error)]
#[error("database `{name}`: {reason}")]
pub struct BackendError {
    pub name: String,
    pub reason: String,
}

impl Backends {
    /// No NATS, no databases: everything answers `unavailable`.
    pub fn offline() -> Arc<Self> {
        Arc::new(Backends::default())
    }

    /// Pools for the configured databases (connections open on first use).
    pub fn with_databases(
        databases: &BTreeMap<String, DatabaseConfig>,
    ) -> Result<Arc<Self>, BackendError> {
        let mut pools = BTreeMap::new();
        for (name, db) in databases {
            let err = |reason: String| BackendError {
                name: name.clone(),
                reason,
            };
            let pg = db.pg_config().map_err(|e| err(format!("url: {e}")))?;
            let recycling = ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            };
            let tls = super::pg_tls::connector(db).map_err(|(k, r)| err(format!("{k}: {r}")))?;
            let manager = match tls {
                Some(tls) => Manager::from_config(pg, tls, recycling),
                None => Manager::from_config(pg, tokio_postgres::NoTls, recycling),
            };
            let t = Some(db.timeout.0);
            let pool = Pool::builder(manager)
                .max_size(db.pool_size)
                .wait_timeout(t)
                .create_timeout(t)
                .recycle_timeout(t)
                .runtime(Runtime::Tokio1)
                .build()
                .map_err(|e| err(e.to_string()))?;
            pools.insert(name.clone(), pool);
        }
        Ok(Arc::new(Backends {
            databases: pools,
            ..Backends::default()
        }))
    }

    /// Makes NATS available to plugins (once the host is connected).
    pub fn set_nats(&self, js: jetstream::Context) {
        let _ = self.js.set(js);
    }

    /// The publish retry policy, and where the connection notes the
    /// server's publish refusals (default policy and none until set).
    pub fn set_publishing(&self, policy: PublishPolicy, refusals: Arc<Refusals>) {
        let _ = self.publishing.set((policy, refusals));
    }

    pub(crate) fn publishing(&self) -> super::publish::retry::Retrying<'_> {
        static DEFAULT: std::sync::LazyLock<PublishPolicy> =
            std::sync::LazyLock::new(PublishPolicy::default);
        let (policy, refusals) = match self.publishing.get() {
            Some((p, r)) => (p, Some(r.as_ref())),
            None => (&*DEFAULT, None),
        };
        super::publish::retry::Retrying {
            policy,
            refusals,
            source: super::publish::retry::Source::Plugin,
        }
    }

    pub(crate) fn js(&self) -> Result<&jetstream::Context, CapabilityError> {
        self.js
            .get()
            .ok_or_else(|| CapabilityError::Unavailable("NATS is not connected".into()))
    }

    pub(crate) fn database(&self, name: &str) -> Result<&Pool, CapabilityError> {
        self.databases.get(name).ok_or_else(|| {
            CapabilityError::Unavailable(format!(
                "database `{name}` is not configured in this host"
            ))
        })
    }

    /// The stream that captures `subject` (looked up once, then cached):
    /// `invalid` when none does, as a publish to it would be.
    pub(crate) async fn stream_capturing(&self, subject: &str) -> Result<String, CapabilityError> {
        if let Some(stream) = self.captured.lock().await.get(subject) {
            return Ok(stream.clone());
        }
        let js = self.js()?;
        let stream = js.stream_by_subject(subject).await.map_err(|e| {
            use async_nats::jetstream::context::GetStreamByNameErrorKind as K;
            match e.kind() {
                K::NotFound => {
                    CapabilityError::Invalid(format!("no stream captures subject `{subject}`"))
                }
                K::InvalidSubject => CapabilityError::Invalid(format!("bad subject `{subject}`")),
                _ => CapabilityError::Unavailable(format!("stream lookup for `{subject}`: {e}")),
            }
        })?;
        self.captured
            .lock()
            .await
            .insert(subject.to_owned(), stream.clone());
        Ok(stream)
    }

    /// The KV store handle for `bucket`, looked up once and cached.
    pub(crate) async fn bucket(&self, bucket: &str) -> Result<kv::Store, CapabilityError> {
        if let Some(store) = self.buckets.lock().await.get(bucket) {
            return Ok(store.clone());
        }
        let js = self.js()?;
        let store = js.get_key_value(bucket).await.map_err(|e| {
            if e.to_string().contains("not found") {
                CapabilityError::NotFound
            } else {
                CapabilityError::Unavailable(format!("kv bucket `{bucket}`: {e}"))
            }
        })?;
        self.buckets
            .lock()
            .await
            .insert(bucket.to_owned(), store.clone());
        Ok(store)
    }
}
