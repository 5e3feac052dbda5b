//! Plugins: what one is ([`PluginSpec`]), loading and validating it
//! ([`load`]), and running batches through it ([`PluginInstance`]).

pub mod canary;
pub mod instance;
pub mod limits;
pub mod load;
pub mod meter;
pub mod pace;
pub mod shadow;
pub mod slot;
pub mod state;
pub mod tape;
pub mod world;

use std::path::PathBuf;

pub use canary::{Canary, Counted, Figures, Tally};
pub use instance::{BatchError, CallUsage, PluginInstance};
pub use limits::Limits;
pub use load::{LoadError, Loader, Plugin, load, load_bytes, load_with};
pub use shadow::Shadow;
pub use slot::PluginSlot;
pub use state::PluginState;
pub use world::{Replayed, Seen, Witness};

use crate::config::{Grants, PluginConfig};

/// Everything needed to load and run one plugin.
#[derive(Debug, Clone)]
pub struct PluginSpec {
    /// Name from the configuration (`[plugin.NAME]`); used in logs and errors.
    pub name: String,
    /// The tenant the plugin belongs to.
    pub tenant: String,
    /// The component file.
    pub path: PathBuf,
    /// Interfaces and resources the plugin may use.
    pub grants: Grants,
    /// Memory, time and log limits.
    pub limits: Limits,
    /// Passed to the plugin's `init`.
    pub config: Vec<(String, String)>,
}

impl PluginSpec {
    /// A spec with default tenant, grants (`log` only), limits and no config.
    pub fn new(name: impl Into<String>, path: impl Into<PathBuf>) -> Self {
        PluginSpec {
            name: name.into(),
            tenant: "default".into(),
            path: path.into(),
            grants: Grants::default(),
            limits: Limits::default(),
            config: Vec::new(),
        }
    }

    /// The runtime's view of `[plugin.NAME]`.
    pub fn from_config(name: &str, c: &PluginConfig) -> Self {
        PluginSpec {
            name: name.to_owned(),
            tenant: c.tenant.clone(),
            path: c.path.clone(),
            grants: c.grants.clone(),
            limits: Limits::from(&c.limits),
            config: c
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.value()))
                .collect(),
        }
    }
}
