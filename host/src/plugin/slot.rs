//! The running version of one plugin, swappable while batches run.
//!
//! Workers read the slot before each batch and keep the version they read
//! until that batch is settled, so a swap never changes the plugin under a
//! batch in flight: new batches use the new version, old batches finish on
//! the old one, which is dropped when its last batch is done.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};

use super::{Canary, Plugin, Shadow};

/// How many replaced versions' hashes a slot remembers.
const HISTORY: usize = 8;

/// One plugin name's current version (and the ones it replaced).
#[derive(Debug)]
pub struct PluginSlot {
    name: String,
    current: ArcSwap<Plugin>,
    replaced: Mutex<Vec<String>>,
    /// A candidate version taking a share of the messages, during a canary.
    canary: ArcSwapOption<Canary>,
    /// A version run beside the current one with its effects held back.
    shadow: ArcSwapOption<Shadow>,
}

impl PluginSlot {
    pub fn new(plugin: Arc<Plugin>) -> Arc<Self> {
        Arc::new(PluginSlot {
            name: plugin.name().to_owned(),
            current: ArcSwap::new(plugin),
            replaced: Mutex::new(Vec::new()),
            canary: ArcSwapOption::empty(),
            shadow: ArcSwapOption::empty(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The version new batches run on.
    pub fn current(&self) -> Arc<Plugin> {
        self.current.load_full()
    }

    /// True when `plugin` is still the current version (cheap; no clone).
    pub fn is_current(&self, plugin: &Arc<Plugin>) -> bool {
        Arc::ptr_eq(&self.current.load(), plugin)
    }

    /// Makes `plugin` current; returns the version it replaced.
    pub fn swap(&self, plugin: Arc<Plugin>) -> Arc<Plugin> {
        let old = self.current.swap(plugin);
        let mut replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        replaced.push(old.hash().to_owned());
        if replaced.len() > HISTORY {
            replaced.remove(0);
        }
        old
    }

    /// The canary running beside the current version, if any.
    pub fn canary(&self) -> Option<Arc<Canary>> {
        self.canary.load_full()
    }

    /// Starts (`Some`) or ends (`None`) a canary; returns the one it ends.
    pub fn set_canary(&self, canary: Option<Arc<Canary>>) -> Option<Arc<Canary>> {
        self.canary.swap(canary)
    }

    /// The shadow running beside the current version, if any.
    pub fn shadow(&self) -> Option<Arc<Shadow>> {
        self.shadow.load_full()
    }

    /// Starts (`Some`) or ends (`None`) a shadow; returns the one it ends.
    pub fn set_shadow(&self, shadow: Option<Arc<Shadow>>) -> Option<Arc<Shadow>> {
        self.shadow.swap(shadow)
    }

    /// The hashes of the versions this slot ran before the current one, oldest first.
    pub fn history(&self) -> Vec<String> {
        let replaced = self.replaced.lock().unwrap_or_else(|e| e.into_inner());
        replaced.clone()
    }
}
