//! On-disk cache of compiled components.
//!
//! Compiling a component with cranelift takes from hundreds of milliseconds to
//! seconds; a host restart or a fleet of hosts loading the same plugin should
//! not pay that again. Entries are keyed by the SHA-256 of the component bytes
//! *and* a hash of the engine's compatibility settings (wasmtime version,
//! target, tunables), so a changed engine never loads a stale artifact. Files
//! are written to a temporary name and renamed, so readers never see a
//! half-written entry; an unreadable entry is recompiled and replaced.
//!
//! An entry is native code the host will run, so it is loaded only if this
//! host wrote it: each entry ends with an HMAC-SHA256 under a random key
//! kept in the directory (`.host-key`, mode 0600). A directory writable by
//! other users, or a key file readable by them, turns the cache off (with a
//! warning) rather than trust it; a tampered or foreign entry is recompiled.

use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};

use hmac::{Hmac, Mac};
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
    if let Some(dir) = std::env::var_os("JETPLUG_CACHE_DIR").filter(|d| !d.is_empty()) {
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
#[derive(Clone)]
pub struct ComponentCache {
    dir: PathBuf,
    engine_key: String,
    /// The MAC key; `None` when the directory cannot be trusted (the cache
    /// is then off: components are compiled, nothing is read or written).
    key: Option<[u8; KEY_LEN]>,
}

impl std::fmt::Debug for ComponentCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ComponentCache")
            .field("dir", &self.dir)
            .field("engine_key", &self.engine_key)
            .field("trusted", &self.key.is_some())
            .finish()
    }
}

const KEY_LEN: usize = 32;
const MAC_LEN: usize = 32;
const KEY_FILE: &str = ".host-key";

impl ComponentCache {
    pub fn new(dir: PathBuf, engine: &Engine) -> Self {
        let mut hasher = ShaHasher(Sha256::new());
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine_key = hex(&hasher.0.finalize()[..8]);
        let key = match host_key(&dir) {
            Ok(k) => Some(k),
            Err(reason) => {
                tracing::warn!(dir = %dir.display(), %reason,
                    "compiled-component cache off: components are compiled on every start");
                None
            }
        };
        ComponentCache {
            dir,
            engine_key,
            key,
        }
    }

    /// Whether entries are read and written (the directory is trusted).
    pub fn is_trusted(&self) -> bool {
        self.key.is_some()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file that holds (or will hold) the component with this content hash.
    pub fn entry_path(&self, content_hash: &str) -> PathBuf {
        // `-m1`: entries carry a MAC (older, unsigned entries are not read).
        self.dir
            .join(format!("{content_hash}-{}-m1.cwasm", self.engine_key))
    }

    /// Loads the compiled component from the cache, or compiles `wasm` and
    /// stores it. Cache I/O problems are logged and never fail the load.
    pub fn load_or_compile(
        &self,
        engine: &Engine,
        wasm: &[u8],
        content_hash: &str,
    ) -> wasmtime::Result<(Component, CacheOutcome)> {
        let Some(key) = &self.key else {
            let compiled = engine.precompile_component(wasm)?;
            return Ok((deserialize(engine, &compiled)?, CacheOutcome::Compiled));
        };
        let path = self.entry_path(content_hash);
        if path.exists() {
            let read = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|bytes| {
                    let compiled = self
                        .verified(key, content_hash, &bytes)
                        .map_err(|e| e.to_string())?;
                    deserialize(engine, compiled).map_err(|e| e.to_string())
                });
            match read {
                Ok(component) => return Ok((component, CacheOutcome::Hit)),
                Err(e) => tracing::warn!(path = %path.display(), error = %e,
                    "compiled-component cache entry not loaded; recompiling"),
            }
        }
        let compiled = engine.precompile_component(wasm)?;
        let outcome = match self.store(&path, &compiled, key, content_hash) {
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

    /// The MAC of an entry: over the engine key, the content hash and the code.
    fn mac(&self, key: &[u8; KEY_LEN], content_hash: &str, compiled: &[u8]) -> HmacSha256 {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| {
            // HMAC takes keys of any length.
            unreachable!("HMAC-SHA256 accepts a {KEY_LEN}-byte key")
        });
        mac.update(self.engine_key.as_bytes());
        mac.update(content_hash.as_bytes());
        mac.update(compiled);
        mac
    }

    /// The compiled code of an entry whose MAC this host's key confirms.
    fn verified<'a>(
        &self,
        key: &[u8; KEY_LEN],
        content_hash: &str,
        entry: &'a [u8],
    ) -> Result<&'a [u8], Untrusted> {
        if entry.len() < MAC_LEN {
            return Err(Untrusted::TooShort);
        }
        let (compiled, tag) = entry.split_at(entry.len() - MAC_LEN);
        self.mac(key, content_hash, compiled)
            .verify_slice(tag)
            .map_err(|_| Untrusted::Foreign)?;
        Ok(compiled)
    }

    fn store(
        &self,
        path: &Path,
        compiled: &[u8],
        key: &[u8; KEY_LEN],
        content_hash: &str,
    ) -> std::io::Result<()> {
        std::fs::create_dir_all(&self.dir)?;
        let mut tmp = tempfile::NamedTempFile::new_in(&self.dir)?;
        tmp.write_all(compiled)?;
        tmp.write_all(
            &self
                .mac(key, content_hash, compiled)
                .finalize()
                .into_bytes(),
        )?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

type HmacSha256 = Hmac<Sha256>;

/// Why the cache's key cannot be had (the cache is then off).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
struct KeyUnusable(String);

impl From<String> for KeyUnusable {
    fn from(s: String) -> Self {
        KeyUnusable(s)
    }
}

/// This host's cache key: read from `DIR/.host-key`, or made and written
/// there (mode 0600) on first use. Refuses a directory other users may
/// write and a key file they may read.
fn host_key(dir: &Path) -> Result<[u8; KEY_LEN], KeyUnusable> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create it: {e}"))?;
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let mode = std::fs::metadata(dir)
        .map_err(|e| format!("cannot read it: {e}"))?
        .permissions()
        .mode();
    if mode & 0o022 != 0 {
        return Err(KeyUnusable(format!(
            "it is writable by other users (mode {:o}): anyone who can write there could make this host load their code; `chmod go-w` it or set engine.cache_dir elsewhere",
            mode & 0o777
        )));
    }
    let file = dir.join(KEY_FILE);
    let mut fresh = [0u8; KEY_LEN];
    getrandom::fill(&mut fresh).map_err(|e| format!("no randomness for a key: {e}"))?;
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&file)
    {
        Ok(mut f) => {
            f.write_all(&fresh)
                .and_then(|()| f.sync_all())
                .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
            return Ok(fresh);
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(KeyUnusable(format!(
                "cannot create {}: {e}",
                file.display()
            )));
        }
    }
    let meta = std::fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyUnusable(format!(
            "{} is readable by other users: anyone who reads it could forge entries; `chmod 600` it",
            file.display()
        )));
    }
    let bytes = std::fs::read(&file).map_err(|e| format!("{}: {e}", file.display()))?;
    bytes.try_into().map_err(|_| {
        KeyUnusable(format!(
            "{} is not a {KEY_LEN}-byte key; delete it to make a new one",
            file.display()
        ))
    })
}

#[allow(unsafe_code)]
fn deserialize(engine: &Engine, bytes: &[u8]) -> wasmtime::Result<Component> {
    // SAFETY: the bytes come from `Engine::precompile_component` — either just
    // now, or from a cache file this host wrote (its HMAC under this host's
    // key verified), keyed by the engine's compatibility hash; wasmtime also
    // validates the header. They are read
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
/// Why a cache entry is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
enum Untrusted {
    #[error("entry too short")]
    TooShort,
    #[error("not written by this host (its MAC does not match): tampered or foreign")]
    Foreign,
}
