//! Checking a plugin's grants ([`crate::config::Grants`], plain settings):
//! whether an interface is linked at all, and inside it whether a subject,
//! database or bucket may be touched. Every capability asks these on every call.

use super::Capability;
pub use crate::config::Grants;
use crate::subject;

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
