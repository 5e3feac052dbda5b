//! What a plugin may use: which interfaces it is linked with, and inside each
//! interface which subjects, databases and buckets it may touch.

use serde::Deserialize;

use super::Capability;
use crate::subject;

/// A plugin's grants. An interface is granted when its list is non-empty
/// (`log` is granted unless switched off).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
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

impl Grants {
    /// Everything, everywhere: for offline runs where no capability reaches a
    /// real system anyway.
    pub fn all() -> Self {
        Grants {
            log: true,
            publish: vec![">".into()],
            sql: vec!["*".into()],
            kv: vec!["*".into()],
            sql_role: None,
        }
    }

    /// Only logging.
    pub fn log_only() -> Self {
        Grants::default()
    }

    /// Whether the interface is granted at all.
    pub fn allows(&self, cap: Capability) -> bool {
        match cap {
            Capability::Log => self.log,
            Capability::Publish => !self.publish.is_empty(),
            Capability::Sql => !self.sql.is_empty(),
            Capability::Kv => !self.kv.is_empty(),
        }
    }

    /// Whether publishing to `subject` is granted.
    pub fn allows_subject(&self, subject_name: &str) -> bool {
        self.publish
            .iter()
            .any(|p| subject::matches(p, subject_name))
    }

    /// Whether database `name` is granted (`*` grants all).
    pub fn allows_database(&self, name: &str) -> bool {
        self.sql.iter().any(|d| d == "*" || d == name)
    }

    /// Whether KV bucket `name` is granted (`*` grants all).
    pub fn allows_bucket(&self, name: &str) -> bool {
        self.kv.iter().any(|b| b == "*" || b == name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_granted_by_nonempty_lists() {
        let g = Grants {
            sql: vec!["main".into()],
            ..Grants::default()
        };
        assert!(g.allows(Capability::Log));
        assert!(g.allows(Capability::Sql));
        assert!(!g.allows(Capability::Publish));
        assert!(!g.allows(Capability::Kv));
        assert!(g.allows_database("main"));
        assert!(!g.allows_database("other"));
    }

    #[test]
    fn subjects_checked_with_wildcards() {
        let g = Grants {
            publish: vec!["dlq.>".into()],
            ..Grants::default()
        };
        assert!(g.allows_subject("dlq.learning.indexer"));
        assert!(!g.allows_subject("learning.quiz.answered"));
    }
}
