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

    /// The engine's compatibility key: compiled code made for another key
    /// is never loaded here.
    pub fn engine_key(&self) -> &str {
        &self.engine_key
    }

    /// Whether a trusted entry for this content hash is on disk (not
    /// verified: loading does that).
    pub fn has(&self, content_hash: &str) -> bool {
        self.key.is_some() && self.entry_path(content_hash).exists()
    }

    /// Stores `compiled` (trusted by the caller: the fleet's MAC verified
    /// it) as this host's entry for `content_hash`, under this host's MAC.
    pub fn import(&self, content_hash: &str, compiled: &[u8]) -> std::io::Result<()> {
        let Some(key) = &self.key else {
            return Err(std::io::Error::other("the compiled-component cache is off"));
        };
        self.store(&self.entry_path(content_hash), compiled, key, content_hash)
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
        mac(key, b"", &self.engine_key, content_hash, compiled)
    }

    /// The compiled code of an entry whose MAC this host's key confirms.
    fn verified<'a>(
        &self,
        key: &[u8; KEY_LEN],
        content_hash: &str,
        entry: &'a [u8],
    ) -> Result<&'a [u8], Untrusted> {
        verified(entry, |compiled| self.mac(key, content_hash, compiled))
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
        // Not synced: an entry torn by a crash fails its MAC and is
        // compiled again, and syncing tens of MiB costs a start more than
        // the load itself.
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    }
}

type HmacSha256 = Hmac<Sha256>;

/// HMAC-SHA256 under `key` over a domain tag, the engine key, the content
/// hash and the compiled code.
fn mac(
    key: &[u8],
    domain: &[u8],
    engine_key: &str,
    content_hash: &str,
    compiled: &[u8],
) -> HmacSha256 {
    // HMAC takes keys of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC-SHA256 accepts keys of any length"));
    mac.update(domain);
    mac.update(engine_key.as_bytes());
    mac.update(content_hash.as_bytes());
    mac.update(compiled);
    mac
}

/// The code of `entry` (code, then a MAC) if `mac_of` the code matches.
fn verified(entry: &[u8], mac_of: impl FnOnce(&[u8]) -> HmacSha256) -> Result<&[u8], Untrusted> {
    if entry.len() < MAC_LEN {
        return Err(Untrusted::TooShort);
    }
    let (compiled, tag) = entry.split_at(entry.len() - MAC_LEN);
    mac_of(compiled)
        .verify_slice(tag)
        .map_err(|_| Untrusted::Foreign)?;
    Ok(compiled)
}

/// The key a fleet shares to trust one another's compiled components
/// (`engine.fleet_cache_key`): whoever holds it can make every host run
/// native code, so it is kept like a signing key.
#[derive(Clone)]
pub struct FleetKey(Vec<u8>);

impl std::fmt::Debug for FleetKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FleetKey(***)")
    }
}

/// Domain tag of fleet MACs (never confused with a host's entries).
const FLEET_DOMAIN: &[u8] = b"jetplug-fleet-cache-v1\0";

impl FleetKey {
    /// Shortest key accepted, in bytes.
    pub const MIN_LEN: usize = 32;

    pub fn new(secret: &[u8]) -> Option<Self> {
        (secret.len() >= Self::MIN_LEN).then(|| FleetKey(secret.to_vec()))
    }

    /// `compiled` followed by its fleet MAC.
    pub fn seal(&self, engine_key: &str, content_hash: &str, compiled: &[u8]) -> Vec<u8> {
        let tag = mac(&self.0, FLEET_DOMAIN, engine_key, content_hash, compiled).finalize();
        let mut out = Vec::with_capacity(compiled.len() + MAC_LEN);
        out.extend_from_slice(compiled);
        out.extend_from_slice(&tag.into_bytes());
        out
    }

    /// The compiled code of a sealed artifact whose fleet MAC matches.
    pub fn open<'a>(
        &self,
        engine_key: &str,
        content_hash: &str,
        sealed: &'a [u8],
    ) -> Result<&'a [u8], Untrusted> {
        verified(sealed, |c| {
            mac(&self.0, FLEET_DOMAIN, engine_key, content_hash, c)
        })
    }
}

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
/// Why a cache entry or a fleet artifact is not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error("entry too short")]
    TooShort,
    #[error("not written by this host (its MAC does not match): tampered or foreign")]
    Foreign,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fleet_seal_opens_only_with_its_key_engine_and_hash() {
        let key = FleetKey::new(&[7; 32]).expect("32 bytes");
        let sealed = key.seal("e1", "h1", b"code");
        assert_eq!(key.open("e1", "h1", &sealed), Ok(&b"code"[..]));
        let other = FleetKey::new(&[8; 32]).expect("32 bytes");
        assert_eq!(other.open("e1", "h1", &sealed), Err(Untrusted::Foreign));
        assert_eq!(key.open("e2", "h1", &sealed), Err(Untrusted::Foreign));
        assert_eq!(key.open("e1", "h2", &sealed), Err(Untrusted::Foreign));
        let mut flipped = sealed.clone();
        flipped[0] ^= 1;
        assert_eq!(key.open("e1", "h1", &flipped), Err(Untrusted::Foreign));
        assert_eq!(key.open("e1", "h1", b"short"), Err(Untrusted::TooShort));
        assert!(FleetKey::new(&[1; 31]).is_none(), "short keys are refused");
    }

    #[test]
    fn an_imported_entry_loads_as_a_hit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::default();
        let cache = ComponentCache::new(dir.path().join("c"), &engine);
        // An empty component: the preamble alone.
        let wasm = b"\0asm\x0d\0\x01\0".to_vec();
        let hash = content_hash(&wasm);
        assert!(!cache.has(&hash));
        let compiled = engine.precompile_component(&wasm).expect("compile");
        cache.import(&hash, &compiled).expect("import");
        assert!(cache.has(&hash));
        let (_, outcome) = cache.load_or_compile(&engine, &wasm, &hash).expect("load");
        assert_eq!(outcome, CacheOutcome::Hit);
    }
}
