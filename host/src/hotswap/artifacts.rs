//! Compiled components shared across a fleet, so a host that joins or
//! swaps does not recompile what another host already compiled.
//!
//! Compiling a Python or JavaScript component takes seconds; loading its
//! compiled code takes milliseconds. Hosts that share
//! `engine.fleet_cache_key` keep compiled code in the deploy bucket's Object
//! Store as `compiled/ENGINE_KEY/CONTENT_HASH`, sealed with an HMAC under
//! that key. A host verifies the seal before it imports an artifact into
//! its own cache (where its own key re-seals it), so compiled code is only
//! ever loaded from a key holder: whoever has the key can make a host run
//! native code, which is why the key is kept like a signing key. Artifacts
//! for another engine (another jetplug or wasmtime version, other engine
//! settings) live under another key prefix and are never read.

use std::sync::Arc;

use async_nats::jetstream::object_store::ObjectStore;
use tokio::io::AsyncReadExt;

use crate::config::EngineConfig;
use crate::engine::Runtime;
use crate::engine::cache::FleetKey;

/// The fleet key, when this process shares compiled components
/// (`engine.fleet_cache_key` set and a compiled-component cache on).
pub fn fleet_key(config: &EngineConfig, runtime: &Runtime) -> Option<FleetKey> {
    let secret = config.fleet_cache_key.as_ref()?;
    runtime.cache()?;
    FleetKey::new(secret.expose().as_bytes())
}

/// What pulling a compiled component from the fleet did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pulled {
    /// This host's cache already holds it.
    Local,
    /// Verified and imported into this host's cache.
    Imported,
    /// No host has shared it yet.
    Missing,
    /// Present, but its seal does not match this fleet's key (tampered,
    /// or sealed by a fleet with another key): not used.
    Refused(String),
    /// The bucket could not be read or the cache written.
    Failed(String),
}

/// Why compiled code could not be shared (the fleet then compiles it).
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error("the compiled-component cache is off")]
    NoCache,
    #[error("cannot serialize the compiled component: {0}")]
    Serialize(String),
    #[error("cannot store `{object}`: {reason}")]
    Store { object: String, reason: String },
}

/// The fleet's compiled components, as seen by one host.
#[derive(Clone)]
pub struct Artifacts {
    objects: ObjectStore,
    key: FleetKey,
    runtime: Arc<Runtime>,
    /// Bytes per stored chunk.
    chunk: usize,
}

/// Room left in a chunk's message for what the server adds.
const CHUNK_MARGIN: usize = 4 << 10;

impl std::fmt::Debug for Artifacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Artifacts")
    }
}

impl Artifacts {
    /// `max_payload`: the server's largest message. Compiled code is tens
    /// of MiB, so it goes in chunks as large as the server takes (the
    /// Object Store's default, 128 KiB, makes a Python component ~280
    /// messages to fetch on every joining host).
    pub(super) fn new(
        objects: ObjectStore,
        key: FleetKey,
        runtime: Arc<Runtime>,
        max_payload: usize,
    ) -> Self {
        Artifacts {
            objects,
            key,
            runtime,
            chunk: max_payload
                .saturating_sub(CHUNK_MARGIN)
                .clamp(16 << 10, 8 << 20),
        }
    }

    fn object(&self, engine_key: &str, content_hash: &str) -> String {
        format!("compiled/{engine_key}/{content_hash}")
    }

    /// Brings the compiled code of `content_hash` into this host's cache
    /// if another host shared it.
    pub async fn pull(&self, content_hash: &str) -> Pulled {
        let Some(cache) = self.runtime.cache() else {
            return Pulled::Failed("the compiled-component cache is off".into());
        };
        if cache.has(content_hash) {
            return Pulled::Local;
        }
        let object = self.object(cache.engine_key(), content_hash);
        let mut reader = match self.objects.get(object.as_str()).await {
            Ok(r) => r,
            Err(e) if e.kind() == async_nats::jetstream::object_store::GetErrorKind::NotFound => {
                return Pulled::Missing;
            }
            Err(e) => return Pulled::Failed(format!("cannot read `{object}`: {e}")),
        };
        // Sized up front (the object says how large it is; capped, as
        // the bucket is not trusted before the seal is checked).
        let mut sealed = Vec::with_capacity(reader.info.size.min(256 << 20));
        if let Err(e) = reader.read_to_end(&mut sealed).await {
            return Pulled::Failed(format!("cannot read `{object}`: {e}"));
        }
        let compiled = match self.key.open(cache.engine_key(), content_hash, &sealed) {
            Ok(c) => c,
            Err(e) => return Pulled::Refused(format!("`{object}`: {e}")),
        };
        match cache.import(content_hash, compiled) {
            Ok(()) => Pulled::Imported,
            Err(e) => Pulled::Failed(format!("cannot write this host's cache: {e}")),
        }
    }

    /// Pulls and logs the outcome (a failure only costs a local compile).
    pub async fn pull_logged(&self, plugin: &str, content_hash: &str) -> Pulled {
        let pulled = self.pull(content_hash).await;
        match &pulled {
            Pulled::Imported => {
                tracing::info!(%plugin, hash = content_hash, "compiled component taken from the fleet")
            }
            Pulled::Refused(why) => tracing::warn!(%plugin, reason = %why,
                "a fleet-shared compiled component is not sealed with this host's engine.fleet_cache_key; compiling locally"),
            Pulled::Failed(why) => tracing::warn!(%plugin, reason = %why,
                "cannot take the compiled component from the fleet; compiling locally"),
            Pulled::Local | Pulled::Missing => {}
        }
        pulled
    }

    /// Shares `compiled` (the code of `content_hash`) with the fleet unless
    /// it is there already; returns whether it was written.
    pub async fn push(&self, content_hash: &str, compiled: &[u8]) -> Result<bool, ShareError> {
        let cache = self.runtime.cache().ok_or(ShareError::NoCache)?;
        let engine_key = cache.engine_key();
        let object = self.object(engine_key, content_hash);
        if self.objects.info(object.as_str()).await.is_ok() {
            return Ok(false);
        }
        let sealed = self.key.seal(engine_key, content_hash, compiled);
        let mut reader = sealed.as_slice();
        let meta = async_nats::jetstream::object_store::ObjectMetadata {
            name: object.clone(),
            chunk_size: Some(self.chunk),
            ..Default::default()
        };
        match self.objects.put(meta, &mut reader).await {
            Ok(_) => Ok(true),
            Err(e) => Err(ShareError::Store {
                object,
                reason: e.to_string(),
            }),
        }
    }

    /// Shares a loaded plugin's compiled code; returns whether it was written.
    pub async fn share(&self, plugin: &crate::plugin::Plugin) -> Result<bool, ShareError> {
        let compiled = plugin
            .compiled()
            .map_err(|e| ShareError::Serialize(e.to_string()))?;
        self.push(plugin.hash(), &compiled).await
    }

    /// Shares a loaded plugin's compiled code, logging the outcome.
    pub async fn push_plugin(&self, plugin: &crate::plugin::Plugin) {
        match self.share(plugin).await {
            Ok(true) => tracing::info!(plugin = %plugin.name(), hash = plugin.hash(),
                "compiled component shared with the fleet"),
            Ok(false) => {}
            Err(e) => tracing::warn!(plugin = %plugin.name(), error = %e,
                "cannot share the compiled component with the fleet"),
        }
    }
}
