//! `[plugin.NAME]`: a wasm component, its tenant, grants, limits and config.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

use super::Grants;
use super::quantity::{Dur, Size};

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
        LimitsConfig {
            memory: Size(64 << 20),
            deadline: Dur(std::time::Duration::from_secs(5)),
            log_per_second: 100,
            log_lines_per_batch: 10_000,
        }
    }
}
