//! `[plugin.NAME]`: a wasm component, its tenant, grants, limits and config.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::units::{Dur, Size};
use crate::capability::Grants;
use crate::plugin::{Limits, PluginSpec};

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file; relative paths are relative to the config file.
    pub path: PathBuf,
    #[serde(default = "default_tenant")]
    pub tenant: String,
    #[serde(default)]
    pub grants: Grants,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Passed to the plugin's `init` as key/value strings.
    #[serde(default)]
    pub config: BTreeMap<String, ConfigValue>,
}

fn default_tenant() -> String {
    "default".into()
}

/// A value in a plugin's `config` table: strings, numbers and booleans are
/// handed to `init` as text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
}

impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::Text(s) => f.write_str(s),
            ConfigValue::Int(i) => write!(f, "{i}"),
            ConfigValue::Float(x) => write!(f, "{x}"),
            ConfigValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Whole-instance memory (default 64MiB).
    pub memory: Size,
    /// Time limit per batch (default 5s).
    pub deadline: Dur,
    /// Log lines per second (default 100).
    pub log_per_second: u32,
    /// Log calls in one batch past which the batch fails as a log flood (default 10000).
    pub log_lines_per_batch: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = Limits::default();
        LimitsConfig {
            memory: Size(l.memory_bytes),
            deadline: Dur(l.deadline),
            log_per_second: l.log_per_second,
            log_lines_per_batch: l.log_lines_per_batch,
        }
    }
}

impl PluginConfig {
    /// The runtime's view of this plugin.
    pub fn spec(&self, name: &str) -> PluginSpec {
        PluginSpec {
            name: name.to_owned(),
            tenant: self.tenant.clone(),
            path: self.path.clone(),
            grants: self.grants.clone(),
            limits: Limits {
                memory_bytes: self.limits.memory.0,
                deadline: Duration::from(self.limits.deadline),
                log_per_second: self.limits.log_per_second,
                log_lines_per_batch: self.limits.log_lines_per_batch,
            },
            config: self
                .config
                .iter()
                .map(|(k, v)| (k.clone(), v.to_string()))
                .collect(),
        }
    }
}
