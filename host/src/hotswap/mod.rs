//! Hot swap: replace a running plugin with a new version without losing or
//! double-settling a message.
//!
//! A new version (from a watched file or a fleet deploy) is compiled,
//! linked, instantiated and `init`-ed in the background first; only a
//! version that passes all of that is swapped into the plugin's
//! [`PluginSlot`]. Workers pick the new version up at their next batch, so
//! batches in flight finish on the old one. A version that fails is refused
//! with a log line and a metric, and the old one keeps running.

pub mod artifacts;
pub mod config;
pub mod fleet;
mod follow;
pub mod rollout;
pub mod shadow;
pub mod signing;
pub mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::capability::Backends;
use crate::engine::Runtime;
use crate::engine::cache;
use crate::metrics::{Metrics, labels};
use crate::plugin::{self, BatchError, LoadError, Plugin, PluginInstance, PluginSlot, PluginSpec};

/// Why a new version was refused (the old one keeps running).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("no plugin named `{0}` runs on this host")]
    UnknownPlugin(String),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Start(#[from] BatchError),
    #[error("compiling plugin `{plugin}` was interrupted: {reason}")]
    Interrupted { plugin: String, reason: String },
}

impl SwapError {
    /// A short stable name for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            SwapError::UnknownPlugin(_) => "unknown-plugin",
            SwapError::Load(_) => "load",
            SwapError::Start(_) => "init",
            SwapError::Interrupted { .. } => "interrupted",
        }
    }
}

/// What a swap attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Swapped {
    /// The new version runs; `from` is the hash it replaced.
    Yes { from: String, to: String },
    /// The offered version is the one already running.
    Unchanged,
}

/// Validates new versions and swaps them into the slots.
#[derive(Debug)]
pub struct Swapper {
    runtime: Arc<Runtime>,
    backends: Arc<Backends>,
    slots: BTreeMap<String, Arc<PluginSlot>>,
    metrics: Arc<Metrics>,
    /// One swap at a time, so two sources cannot interleave on one slot.
    serial: tokio::sync::Mutex<()>,
}

impl Swapper {
    pub fn new(
        runtime: Arc<Runtime>,
        backends: Arc<Backends>,
        slots: BTreeMap<String, Arc<PluginSlot>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Swapper {
            runtime,
            backends,
            slots,
            metrics,
            serial: tokio::sync::Mutex::new(()),
        }
    }

    pub fn slots(&self) -> &BTreeMap<String, Arc<PluginSlot>> {
        &self.slots
    }

    /// Offers `bytes` as the new version of `name`; `origin` (a file path or
    /// an object-store address) names it in errors and the admin API.
    pub async fn offer(
        &self,
        name: &str,
        bytes: Vec<u8>,
        origin: PathBuf,
    ) -> Result<Swapped, SwapError> {
        let spec = |running: &Plugin| {
            let mut spec = running.spec().clone();
            spec.path = origin.clone();
            spec
        };
        self.record(name, &origin, self.try_swap(name, Some(bytes), spec).await)
    }

    /// Reloads `name` with new settings (file, grants, limits, config),
    /// validated like a new version; swapped even if the component is the same.
    pub async fn reconfigure(&self, name: &str, spec: PluginSpec) -> Result<Swapped, SwapError> {
        let origin = spec.path.clone();
        let result = self.try_swap(name, None, |_| spec.clone()).await;
        self.record(name, &origin, result)
    }

    /// Counts and logs a version refused before it was offered (a deploy
    /// without a trusted signature); the running version stays.
    pub fn refuse(&self, name: &str, origin: &std::path::Path, refusal: &signing::Refusal) {
        tracing::error!(plugin = %name, origin = %origin.display(), reason = %refusal,
            "deployed plugin version refused; the running version stays");
        self.metrics
            .plugin_swaps
            .get_or_create(&labels(&[("plugin", name), ("outcome", refusal.kind())]))
            .inc();
    }

    fn record(
        &self,
        name: &str,
        origin: &std::path::Path,
        result: Result<Swapped, SwapError>,
    ) -> Result<Swapped, SwapError> {
        let outcome = match &result {
            Ok(Swapped::Yes { from, to }) => {
                tracing::info!(plugin = %name, from = %short(from), to = %short(to),
                    origin = %origin.display(), "plugin swapped; new batches run the new version");
                "swapped"
            }
            Ok(Swapped::Unchanged) => "unchanged",
            Err(e) => {
                tracing::error!(plugin = %name, origin = %origin.display(), error = %e,
                    "new plugin version refused; the running version stays");
                e.kind()
            }
        };
        self.metrics
            .plugin_swaps
            .get_or_create(&labels(&[("plugin", name), ("outcome", outcome)]))
            .inc();
        result
    }

    /// With `bytes`, a new component under the running settings (skipped
    /// when it is the running one); without, the file `spec` names.
    async fn try_swap(
        &self,
        name: &str,
        bytes: Option<Vec<u8>>,
        spec: impl FnOnce(&Plugin) -> PluginSpec,
    ) -> Result<Swapped, SwapError> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| SwapError::UnknownPlugin(name.to_owned()))?;
        let _one_at_a_time = self.serial.lock().await;
        let running = slot.current();
        if let Some(b) = &bytes
            && cache::content_hash(b) == running.hash()
        {
            return Ok(Swapped::Unchanged);
        }
        let new = self.validate(name, bytes, spec(&running)).await?;
        let old = slot.swap(new.clone());
        self.set_info(&old, 0);
        self.set_info(&new, 1);
        Ok(Swapped::Yes {
            from: old.hash().to_owned(),
            to: new.hash().to_owned(),
        })
    }

    /// Loads, links, instantiates and `init`s a version, as a swap would,
    /// without swapping it in: a canary's candidate (with the running
    /// version's settings).
    pub async fn candidate(
        &self,
        name: &str,
        bytes: Vec<u8>,
        origin: PathBuf,
    ) -> Result<Arc<Plugin>, SwapError> {
        let slot = self
            .slots
            .get(name)
            .ok_or_else(|| SwapError::UnknownPlugin(name.to_owned()))?;
        let mut spec = slot.current().spec().clone();
        spec.path = origin;
        self.validate(name, Some(bytes), spec).await
    }

    async fn validate(
        &self,
        name: &str,
        bytes: Option<Vec<u8>>,
        spec: PluginSpec,
    ) -> Result<Arc<Plugin>, SwapError> {
        // Compiling is CPU work: keep it off the threads that move messages.
        let (runtime, backends) = (self.runtime.clone(), self.backends.clone());
        let loaded = tokio::task::spawn_blocking(move || match bytes {
            Some(b) => plugin::load_bytes(&runtime, spec, &b, backends),
            None => plugin::load_with(&runtime, spec, backends),
        })
        .await
        .map_err(|e| SwapError::Interrupted {
            plugin: name.to_owned(),
            reason: e.to_string(),
        })??;
        let new = Arc::new(loaded);
        PluginInstance::new(new.clone()).ready().await?;
        Ok(new)
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    fn set_info(&self, p: &plugin::Plugin, value: i64) {
        let l = labels(&[
            ("plugin", p.name()),
            ("tenant", &p.spec().tenant),
            ("hash", p.hash()),
        ]);
        self.metrics.plugin_info.get_or_create(&l).set(value);
    }
}

/// The first 12 hex digits of a hash, for logs.
pub fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}
