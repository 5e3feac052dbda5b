//! Every capability of one plugin instance, and linking them: the only
//! place that lists the capabilities, so adding one means a folder here,
//! its WIT, and a line in [`Capabilities`] and [`link`] — nothing in the
//! plugin runner, which holds a [`Capabilities`] and knows none of them.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::kv::KvState;
use super::log::{LogBudget, LogState};
use super::publish::PublishState;
use super::sql::SqlState;
use super::{Backends, CallPath, Capability, Grants};
use crate::bindings::jetplug::plugin::types;

/// The per-instance state of every capability, sharing one [`CallPath`].
#[derive(Debug)]
pub struct Capabilities {
    pub log: LogState,
    pub publish: PublishState,
    pub sql: SqlState,
    pub kv: KvState,
    calls: CallPath,
}

/// Whose capabilities these are.
#[derive(Debug, Clone, Copy)]
pub struct Owner<'a> {
    pub plugin: &'a str,
    pub tenant: &'a str,
    pub grants: &'a Grants,
    /// Log calls in one `handle` call past which it traps as a log flood.
    pub log_lines_per_batch: u32,
}

impl Capabilities {
    /// States for one instance of `owner`, reaching `backends`; its log
    /// lines come out of `log_budget` (shared by the plugin's instances).
    pub fn new(owner: Owner<'_>, backends: &Arc<Backends>, log_budget: Arc<LogBudget>) -> Self {
        let calls = CallPath::default();
        let grants = Arc::new(owner.grants.clone());
        Capabilities {
            log: LogState::new(
                owner.plugin,
                owner.tenant,
                log_budget,
                owner.log_lines_per_batch,
                calls.clone(),
            ),
            publish: PublishState::new(grants.clone(), backends.clone(), calls.clone()),
            sql: SqlState::new(grants.clone(), backends.clone(), calls.clone()),
            kv: KvState::new(grants, backends.clone(), calls.clone()),
            calls,
        }
    }

    /// The path all of this instance's capability calls take.
    pub fn calls(&self) -> &CallPath {
        &self.calls
    }
}

/// Store data that holds an instance's [`Capabilities`] (the plugin
/// runner's state implements it; capabilities never see that type).
pub trait HasCapabilities: Send + 'static {
    fn capabilities(&mut self) -> &mut Capabilities;
}

/// Adds `cap`'s interface to `linker`.
pub fn link<T: HasCapabilities>(linker: &mut Linker<T>, cap: Capability) -> wasmtime::Result<()> {
    match cap {
        Capability::Log => super::log::add_to_linker(linker, |t| &mut t.capabilities().log),
        Capability::Publish => {
            super::publish::add_to_linker(linker, |t| &mut t.capabilities().publish)
        }
        Capability::Sql => super::sql::add_to_linker(linker, |t| &mut t.capabilities().sql),
        Capability::Kv => super::kv::add_to_linker(linker, |t| &mut t.capabilities().kv),
    }
}

struct TypesOnly;

impl HasData for TypesOnly {
    type Data<'a> = ();
}

impl types::Host for () {}

/// Defines `jetplug:plugin/types`, which holds only types but is imported by
/// components whose imports use them.
pub fn link_types<T: Send + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    types::add_to_linker::<_, TypesOnly>(linker, |_| ())
}
