//! Host capabilities: one module per WIT import, each a self-contained unit.
//!
//! A capability owns its per-instance state, adds its interface to a linker,
//! and checks the plugin's grant on every call. The plugin loader links only
//! the capabilities a plugin is granted, so a component that imports anything
//! else is refused before it ever runs (see [`crate::plugin::load`]).

pub mod backends;
pub mod grants;
pub mod kv;
pub mod log;
pub mod pg_tls;
pub mod publish;
pub mod sql;

use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicU32, AtomicU64};

pub use backends::Backends;
pub use grants::Grants;

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

struct TypesOnly;

impl wasmtime::component::HasData for TypesOnly {
    type Data<'a> = ();
}

impl crate::bindings::jetplug::plugin::types::Host for () {}

/// Defines `jetplug:plugin/types`, which holds only types but is imported by
/// components whose imports use them.
pub(crate) fn add_types_to_linker(
    linker: &mut wasmtime::component::Linker<crate::plugin::PluginState>,
) -> wasmtime::Result<()> {
    crate::bindings::jetplug::plugin::types::add_to_linker::<_, TypesOnly>(linker, |_| ())
}

/// Counts one instance's capability calls and their errors (for the
/// per-tenant metrics), and the `unavailable` answers among them, so the
/// host can tell a batch that failed because a downstream is out (which
/// the circuit breaker counts) from one the plugin simply chose to retry.
#[derive(Debug, Clone, Default)]
pub struct Downstream(std::sync::Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    /// The span the running call's capability calls hang under.
    trace: crate::telemetry::CallTrace,
    unavailable: AtomicU32,
    calls: [AtomicU64; 4],
    errors: [[AtomicU64; 5]; 4],
}

/// Error kinds as metric labels, in [`error_index`] order.
pub const ERROR_KINDS: [&str; 5] = [
    "access-denied",
    "not-found",
    "unavailable",
    "invalid",
    "other",
];

fn error_index(e: &crate::bindings::CapabilityError) -> usize {
    use crate::bindings::CapabilityError as E;
    match e {
        E::AccessDenied(_) => 0,
        E::NotFound => 1,
        E::Unavailable(_) => 2,
        E::Invalid(_) => 3,
        E::Other(_) => 4,
    }
}

/// Capability calls of one batch: calls and errors (by [`ERROR_KINDS`]) per
/// capability, in [`Capability::ALL`] order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub calls: [u64; 4],
    pub errors: [[u64; 5]; 4],
}

impl Downstream {
    /// The running call's trace (set by the instance around each call).
    pub fn trace(&self) -> &crate::telemetry::CallTrace {
        &self.0.trace
    }

    /// Starts one capability call: its span (a child of the plugin call's
    /// span; nothing with export off) and, at [`CapCall::end`], its count.
    pub fn call(&self, cap: Capability, op: &'static str, target: &str) -> CapCall {
        CapCall {
            span: self.0.trace.capability(cap.name(), op, target),
            downstream: self.clone(),
            cap,
        }
    }

    /// Passes `r` through, counting the call and its error, if any.
    pub fn track<T>(
        &self,
        cap: Capability,
        r: Result<T, crate::bindings::CapabilityError>,
    ) -> Result<T, crate::bindings::CapabilityError> {
        let c = cap as usize;
        self.0.calls[c].fetch_add(1, Relaxed);
        if let Err(e) = &r {
            self.0.errors[c][error_index(e)].fetch_add(1, Relaxed);
            if let crate::bindings::CapabilityError::Unavailable(_) = e {
                self.0.unavailable.fetch_add(1, Relaxed);
            }
        }
        r
    }

    /// `unavailable` answers since the last call, resetting the count.
    pub fn take(&self) -> u32 {
        self.0.unavailable.swap(0, Relaxed)
    }

    /// Calls and errors since the last call, resetting them.
    pub fn take_usage(&self) -> Usage {
        let mut u = Usage::default();
        for c in 0..4 {
            u.calls[c] = self.0.calls[c].swap(0, Relaxed);
            for k in 0..5 {
                u.errors[c][k] = self.0.errors[c][k].swap(0, Relaxed);
            }
        }
        u
    }
}

/// One capability call in progress (see [`Downstream::call`]).
#[derive(Debug)]
pub struct CapCall {
    downstream: Downstream,
    span: tracing::Span,
    cap: Capability,
}

impl CapCall {
    /// The call's span: instrument the call's future with it.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }

    /// Counts the call's outcome (and marks its span failed on error).
    pub fn end<T>(
        self,
        r: Result<T, crate::bindings::CapabilityError>,
    ) -> Result<T, crate::bindings::CapabilityError> {
        if let Err(e) = &r {
            crate::telemetry::context::fail(&self.span, &format_args!("{e:?}"));
        }
        self.downstream.track(self.cap, r)
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
