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
/// handed to `init` as text; `"${ENV_VAR}"` is read from the environment and
/// is a [`Secret`](super::Secret) (masked in logs and captures).
#[derive(Debug, Clone, PartialEq)]
pub enum ConfigValue {
    Text(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    Secret(super::Secret),
}

impl<'de> Deserialize<'de> for ConfigValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Int(i64),
            Float(f64),
            Bool(bool),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Text(s) if s.starts_with("${") && s.ends_with('}') => {
                ConfigValue::Secret(super::secret::from_text(&s).map_err(serde::de::Error::custom)?)
            }
            Raw::Text(s) => ConfigValue::Text(s),
            Raw::Int(i) => ConfigValue::Int(i),
            Raw::Float(x) => ConfigValue::Float(x),
            Raw::Bool(b) => ConfigValue::Bool(b),
        })
    }
}

impl ConfigValue {
    /// The text `init` gets (a secret's value included).
    pub fn value(&self) -> String {
        match self {
            ConfigValue::Secret(s) => s.expose().to_owned(),
            other => other.to_string(),
        }
    }
}

/// A secret shows as `***`.
impl std::fmt::Display for ConfigValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConfigValue::Secret(s) => write!(f, "{s}"),
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
