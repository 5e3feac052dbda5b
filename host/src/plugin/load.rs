//! Loading a plugin: read, check it is a component, compile (through the
//! cache), check its imports against its grants, link only what is granted,
//! and pre-instantiate (`InstancePre`) so every later instance is cheap.
//!
//! Everything that can be wrong with a plugin file is found here, before a
//! single message is handed to it, and reported as a [`LoadError`] that names
//! the file or plugin and what to do about it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use wasmtime::component::{Component, ComponentExportIndex, Linker};

use super::{PluginSpec, PluginState};
use crate::bindings::EventPluginPre;
use crate::capability::{self, Backends, Capability};
use crate::engine::Runtime;
use crate::engine::cache::{self, CacheOutcome};

/// The export every plugin must provide (at the current version; a
/// component built against an earlier shipped version exports that one).
pub const HANDLER_EXPORT: &str = "jetplug:plugin/handler@0.1.1";

/// Whether `name` is the handler export of a shipped WIT version.
fn is_handler_export(name: &str) -> bool {
    name.strip_prefix("jetplug:plugin/handler@")
        .is_some_and(|v| crate::wit::SHIPPED.contains(&v))
}

/// Why a plugin could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read plugin file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a WebAssembly file (it does not start with the `\\0asm` magic bytes)", path.display())]
    NotWasm { path: PathBuf },
    #[error(
        "{} is a core WebAssembly module, not a component: build the plugin for the \
         wasm32-wasip2 target (or wrap the module with `wasm-tools component new`)",
        path.display()
    )]
    CoreModule { path: PathBuf },
    #[error("{} is not a valid WebAssembly component: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "plugin `{plugin}` imports `{interface}` but is not granted `{grant}`: \
         add it to the plugin's grants (e.g. `{grant} = [...]`) or remove the import"
    )]
    UngrantedImport {
        plugin: String,
        interface: String,
        grant: Capability,
    },
    #[error(
        "plugin `{plugin}` imports `{import}`, which jetplug does not provide \
         (available: jetplug:plugin/{{log,publish,sql,kv}}@0.1.0 to 0.1.1 and wasi:*@0.2)"
    )]
    UnknownImport { plugin: String, import: String },
    #[error(
        "plugin `{plugin}` ({}) does not implement the world jetplug:plugin/event-plugin (0.1.0 to 0.1.1): {reason}",
        path.display()
    )]
    NotAPlugin {
        plugin: String,
        path: PathBuf,
        reason: String,
    },
    #[error(
        "plugin `{plugin}`: memory limit of {limit} bytes exceeds the engine's maximum of {max} bytes"
    )]
    MemoryLimitTooLarge {
        plugin: String,
        limit: u64,
        max: u64,
    },
}

/// A loaded, validated plugin version, ready to be instantiated.
pub struct Plugin {
    pub(crate) spec: PluginSpec,
    pub(crate) runtime: Arc<Runtime>,
    pub(crate) pre: EventPluginPre<PluginState>,
    /// Where `handler.handle` is among the component's exports.
    pub(crate) handle_export: ComponentExportIndex,
    pub(crate) backends: Arc<Backends>,
    hash: String,
    loaded_at: SystemTime,
    cache: CacheOutcome,
    imports: Vec<Capability>,
    /// The last call of this version ran out of time: its next calls are
    /// throttled from their first tick (cleared by a call that finishes).
    pub(crate) overran: Arc<std::sync::atomic::AtomicBool>,
    /// The last call of this version failed: its next call runs on the
    /// slow lane and is paced from the start (cleared by a call that succeeds).
    pub(crate) faulted: Arc<std::sync::atomic::AtomicBool>,
    /// Log lines per second, shared by all instances of this version.
    pub(crate) log_budget: Arc<crate::capability::log::LogBudget>,
}

impl std::fmt::Debug for Plugin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.spec.name)
            .field("hash", &self.hash)
            .field("imports", &self.imports)
            .finish_non_exhaustive()
    }
}

impl Plugin {
    pub fn spec(&self) -> &PluginSpec {
        &self.spec
    }

    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// SHA-256 of the component bytes: the version's identity.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }

    /// Whether compilation was skipped thanks to the on-disk cache.
    pub fn cache_outcome(&self) -> CacheOutcome {
        self.cache
    }

    /// Whether the last call of this version ran out of time (its next
    /// calls are throttled from their first tick).
    pub fn last_call_overran(&self) -> bool {
        self.overran.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether the last call of this version failed (its next call runs on
    /// the slow lane and is paced from the start).
    pub fn last_call_failed(&self) -> bool {
        self.faulted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The compiled code of this version, as the engine loads it from a
    /// cache (shared with the fleet by `engine.fleet_cache_key`).
    pub fn compiled(&self) -> wasmtime::Result<Vec<u8>> {
        self.pre.instance_pre().component().serialize()
    }

    /// The jetplug capabilities the component imports.
    pub fn imports(&self) -> &[Capability] {
        &self.imports
    }
}

/// Loads the plugin file named by `spec.path`, with no backends (its
/// `publish`, `sql` and `kv` calls answer `unavailable`).
pub fn load(runtime: &Arc<Runtime>, spec: PluginSpec) -> Result<Plugin, LoadError> {
    load_with(runtime, spec, Backends::offline())
}

/// Loads the plugin file named by `spec.path`, its capabilities reaching `backends`.
pub fn load_with(
    runtime: &Arc<Runtime>,
    spec: PluginSpec,
    backends: Arc<Backends>,
) -> Result<Plugin, LoadError> {
    let bytes = std::fs::read(&spec.path).map_err(|source| LoadError::Read {
        path: spec.path.clone(),
        source,
    })?;
    load_bytes(runtime, spec, &bytes, backends)
}

/// Loads a plugin from component bytes (`spec.path` is used in messages only).
pub fn load_bytes(
    runtime: &Arc<Runtime>,
    spec: PluginSpec,
    bytes: &[u8],
    backends: Arc<Backends>,
) -> Result<Plugin, LoadError> {
    let path = spec.path.clone();
    check_header(&path, bytes)?;
    check_memory(runtime, &spec)?;

    let hash = cache::content_hash(bytes);
    let (component, cache) = compile(runtime, &path, bytes, &hash)?;
    from_component(runtime, spec, component, hash, cache, backends)
}

/// The compiled component of `bytes` (through the cache).
fn compile(
    runtime: &Runtime,
    path: &Path,
    bytes: &[u8],
    hash: &str,
) -> Result<(Component, CacheOutcome), LoadError> {
    let engine = runtime.engine();
    match runtime.cache() {
        Some(c) => c.load_or_compile(engine, bytes, hash),
        None => Component::new(engine, bytes).map(|c| (c, CacheOutcome::Compiled)),
    }
    .map_err(|e| LoadError::Invalid {
        path: path.to_path_buf(),
        reason: format!("{e:#}"),
    })
}

/// Loads many plugins at once (a host's start): a file named by several
/// entries is read, hashed and compiled once, and its entries share the
/// compiled code — a thousand tenants' entries of one component cost one
/// component's memory, not a thousand.
#[derive(Default)]
pub struct Loader {
    /// Files read: their bytes' hash and compiled component.
    files: std::collections::HashMap<PathBuf, (String, Component, CacheOutcome)>,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader")
            .field("files", &self.files.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Loader {
    /// Loads the plugin file named by `spec.path` (as [`load_with`]).
    pub fn load(
        &mut self,
        runtime: &Arc<Runtime>,
        spec: PluginSpec,
        backends: Arc<Backends>,
    ) -> Result<Plugin, LoadError> {
        if let Some((hash, component, cache)) = self.files.get(&spec.path) {
            let (hash, component, cache) = (hash.clone(), component.clone(), *cache);
            check_memory(runtime, &spec)?;
            return from_component(runtime, spec, component, hash, cache, backends);
        }
        let bytes = std::fs::read(&spec.path).map_err(|source| LoadError::Read {
            path: spec.path.clone(),
            source,
        })?;
        check_header(&spec.path, &bytes)?;
        check_memory(runtime, &spec)?;
        let hash = cache::content_hash(&bytes);
        let (component, cache) = compile(runtime, &spec.path, &bytes, &hash)?;
        self.files
            .insert(spec.path.clone(), (hash.clone(), component.clone(), cache));
        from_component(runtime, spec, component, hash, cache, backends)
    }
}

fn check_memory(runtime: &Runtime, spec: &PluginSpec) -> Result<(), LoadError> {
    let max = runtime.settings().max_memory_bytes;
    if spec.limits.memory_bytes > max {
        return Err(LoadError::MemoryLimitTooLarge {
            plugin: spec.name.clone(),
            limit: spec.limits.memory_bytes,
            max,
        });
    }
    Ok(())
}

/// Checks a compiled component against `spec` and pre-instantiates it.
fn from_component(
    runtime: &Arc<Runtime>,
    spec: PluginSpec,
    component: Component,
    hash: String,
    cache: CacheOutcome,
    backends: Arc<Backends>,
) -> Result<Plugin, LoadError> {
    let path = spec.path.clone();
    let imports = check_imports(&spec, &component, runtime)?;
    check_exports(&spec, &component, runtime)?;

    let not_a_plugin = |e: wasmtime::Error| LoadError::NotAPlugin {
        plugin: spec.name.clone(),
        path: path.clone(),
        reason: format!("{e:#}"),
    };
    let linker = linker_for(runtime, &imports).map_err(not_a_plugin)?;
    let instance_pre = linker.instantiate_pre(&component).map_err(not_a_plugin)?;
    let handle_export = handle_export(&component).map_err(not_a_plugin)?;
    let pre = EventPluginPre::new(instance_pre).map_err(not_a_plugin)?;

    tracing::debug!(plugin = %spec.name, hash = %hash, ?cache, "plugin loaded");
    Ok(Plugin {
        log_budget: crate::capability::log::LogBudget::new(spec.limits.log_per_second),
        spec,
        runtime: runtime.clone(),
        pre,
        handle_export,
        backends,
        hash,
        loaded_at: SystemTime::now(),
        cache,
        imports,
        overran: Arc::default(),
        faulted: Arc::default(),
    })
}

fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return Err(LoadError::NotWasm {
            path: path.to_path_buf(),
        });
    }
    // Bytes 4..8: version + layer. Layer 0 is a core module, 1 a component.
    if bytes[6..8] == [0, 0] {
        return Err(LoadError::CoreModule {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Every jetplug import must be granted; WASI is allowed (with no ambient
/// authority); anything else is unknown.
fn check_imports(
    spec: &PluginSpec,
    component: &Component,
    runtime: &Runtime,
) -> Result<Vec<Capability>, LoadError> {
    let mut caps = Vec::new();
    for (name, _) in component.component_type().imports(runtime.engine()) {
        if let Some(cap) = Capability::from_import(name) {
            if !spec.grants.allows(cap) {
                return Err(LoadError::UngrantedImport {
                    plugin: spec.name.clone(),
                    interface: name.to_owned(),
                    grant: cap,
                });
            }
            caps.push(cap);
        } else if !(name.starts_with("wasi:") || name.starts_with("jetplug:plugin/types")) {
            return Err(LoadError::UnknownImport {
                plugin: spec.name.clone(),
                import: name.to_owned(),
            });
        }
    }
    caps.sort();
    caps.dedup();
    Ok(caps)
}

fn check_exports(
    spec: &PluginSpec,
    component: &Component,
    runtime: &Runtime,
) -> Result<(), LoadError> {
    let exports: Vec<String> = component
        .component_type()
        .exports(runtime.engine())
        .map(|(name, _)| name.to_owned())
        .collect();
    if exports.iter().any(|e| is_handler_export(e)) {
        return Ok(());
    }
    let found = if exports.is_empty() {
        "nothing".to_owned()
    } else {
        exports.join(", ")
    };
    Err(LoadError::NotAPlugin {
        plugin: spec.name.clone(),
        path: spec.path.clone(),
        reason: format!("it does not export `{HANDLER_EXPORT}` (it exports {found})"),
    })
}

/// The handler's `handle` export, looked up once per version (as the
/// bindings look up theirs; a component of an earlier patch version of
/// the contract is found by its compatible name).
fn handle_export(component: &Component) -> wasmtime::Result<ComponentExportIndex> {
    let handler = component
        .get_export_index(None, HANDLER_EXPORT)
        .ok_or_else(|| wasmtime::format_err!("no exported instance named `{HANDLER_EXPORT}`"))?;
    component
        .get_export_index(Some(&handler), "handle")
        .ok_or_else(|| wasmtime::format_err!("`{HANDLER_EXPORT}` does not export `handle`"))
}

/// A linker with WASI and exactly the granted capabilities the plugin uses.
fn linker_for(runtime: &Runtime, caps: &[Capability]) -> wasmtime::Result<Linker<PluginState>> {
    let mut linker = Linker::new(runtime.engine());
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
    capability::link_types(&mut linker)?;
    for cap in caps {
        capability::link(&mut linker, *cap)?;
    }
    Ok(linker)
}
