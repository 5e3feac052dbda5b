//! On-disk cache of compiled components.
//!
//! Compiling a component with cranelift takes from hundreds of milliseconds to
//! seconds; a host restart or a fleet of hosts loading the same plugin should
//! not pay that again. Entries are keyed by the SHA-256 of the component bytes
//! *and* a hash of the engine's compatibility settings (wasmtime version,
//! target, tunables), so a changed engine never loads a stale artifact. Files
//! are written to a temporary name and renamed, so readers never see a
//! half-written entry; an unreadable entry is recompiled and replaced.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

/// How a component was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheOutcome {
    /// Loaded precompiled from the cache: no compilation.
    Hit,
    /// Compiled now and stored for next time.
    Stored,
    /// Compiled now; the cache is disabled or could not be written.
    Compiled,
}

/// The default cache directory: `$JETPLUG_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/jetplug/components`, else `~/.cache/jetplug/components`.
pub fn default_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("JETPLUG_CACHE_DIR") {
        return Some(PathBuf::from(dir));
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("jetplug").join("components"))
}

/// Hex SHA-256 of `bytes`: the identity of a plugin version.
pub fn content_hash(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// A directory of compiled components for one engine configuration.
#[derive(Debug, Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
}

impl ComponentCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..8]);
        ComponentCache { dir, engine_key }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds (or will hold) the component with this content hash.
    pub fn entry_path(&self, content_hash: &str) -> PathBuf {
        self.dir
            .join(format!("{content_hash}-{}.cwasm", self.engine_key))
    }

    /// Loads the compiled component from the cache, or compiles `wasm` and
    /// stores it. Cache I/O problems are logged and never fail the load.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let path = self.entry_path(content_hash);
        if path.exists() {
            match std::fs::read(&path)
                .map_err(wasmtime::Error::from)
                .and_then(|bytes| deserialize(engine, &bytes))
            {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "unreadable compiled-component cache entry; recompiling"),
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        let outcome = match self.store(&path, &compiled) {
            Ok(()) => CacheOutcome::Stored,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e,
                    "cannot write the compiled-component cache");
                CacheOutcome::Compiled
            }
        };
        let component = deserialize(engine, &compiled)?;
        Ok((component, outcome))
    }

    fn store(&self, path: &Path, compiled: &[u8]) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(compiled)?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: the bytes come from `Engine::precompile_component` — either just
    // now, or from a cache file this module wrote, keyed by the engine's
    // compatibility hash; wasmtime also validates the header. They are read
    // into memory (not mapped), so a cache file changed on disk later cannot
    // affect a loaded component.
    unsafe { Component::deserialize(engine, bytes) }
}

/// Feeds `Hash` output into SHA-256 so the key is stable across processes.
struct ShaHasher(Sha256);

impl Hasher for ShaHasher {
    fn finish(&self) -> u64 {
        0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
}
