//! Host capabilities: one module per WIT import, each a self-contained unit.
//!
//! A capability owns its per-instance state, adds its interface to a linker,
//! and checks the plugin's grant on every call. The plugin loader links only
//! the capabilities a plugin is granted, so a component that imports anything
//! else is refused before it ever runs (see [`crate::plugin::load`]).

pub mod backends;
pub mod call;
pub mod effects;
pub mod grants;
pub mod kv;
pub mod log;
pub mod pg_tls;
pub mod publish;
pub mod record;
mod set;
pub mod sql;
pub mod transcript;

use std::fmt;

pub use backends::Backends;
pub use call::{CallPath, ERROR_KINDS, Usage};
pub use grants::Grants;
pub use set::{Capabilities, HasCapabilities, Owner, link, link_types};

/// One host interface a plugin may import.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Capability {
    Log = 0,
    Publish,
    Sql,
    Kv,
}

impl Capability {
    pub const ALL: [Capability; 4] = [
        Capability::Log,
        Capability::Publish,
        Capability::Sql,
        Capability::Kv,
    ];

    /// The WIT interface name inside `jetplug:plugin`, which is also the grant key.
    pub fn name(self) -> &'static str {
        match self {
            Capability::Log => "log",
            Capability::Publish => "publish",
            Capability::Sql => "sql",
            Capability::Kv => "kv",
        }
    }

    /// Parses an interface name as it appears in a component import
    /// (`jetplug:plugin/sql@0.1.0` → `Sql`). `None` for anything else.
    pub fn from_import(import: &str) -> Option<Capability> {
        let rest = import.strip_prefix("jetplug:plugin/")?;
        let iface = rest.split('@').next().unwrap_or(rest);
        Capability::ALL.into_iter().find(|c| c.name() == iface)
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error a capability returns when a call is outside the grant.
pub(crate) fn denied(what: impl fmt::Display) -> crate::bindings::CapabilityError {
    crate::bindings::CapabilityError::AccessDenied(what.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_import_names() {
        assert_eq!(
            Capability::from_import("jetplug:plugin/sql@0.1.0"),
            Some(Capability::Sql)
        );
        assert_eq!(
            Capability::from_import("jetplug:plugin/log"),
            Some(Capability::Log)
        );
        assert_eq!(Capability::from_import("jetplug:plugin/types@0.1.0"), None);
        assert_eq!(Capability::from_import("wasi:cli/stdout@0.2.0"), None);
    }
}
