//! `grants` of a `[plugin.NAME]`: which interfaces a plugin is linked with,
//! and inside each which subjects, databases and buckets it may touch. Plain
//! settings; the checks made on every call live with the capabilities.

use serde::{Deserialize, Serialize};

/// A plugin's grants. An interface is granted when its list is non-empty
/// (`log` is granted unless switched off).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grants {
    /// Structured logging (default: on).
    #[serde(default = "default_log")]
    pub log: bool,
    /// Subject patterns the plugin may publish to (`*`, `>` allowed).
    #[serde(default)]
    pub publish: Vec<String>,
    /// Database names (from `[database.NAME]`) the plugin may use.
    #[serde(default)]
    pub sql: Vec<String>,
    /// KV bucket names the plugin may use.
    #[serde(default)]
    pub kv: Vec<String>,
    /// A PostgreSQL role the plugin's statements run under (`SET ROLE` on
    /// its connections, reset before anyone else uses them), so its SQL has
    /// exactly that role's rights.
    #[serde(default)]
    pub sql_role: Option<String>,
}

fn default_log() -> bool {
    true
}

impl Default for Grants {
    fn default() -> Self {
        Grants {
            log: true,
            publish: Vec::new(),
            sql: Vec::new(),
            kv: Vec::new(),
            sql_role: None,
        }
    }
}
