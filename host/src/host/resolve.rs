//! Resolving a validated configuration against the world: what `config`
//! cannot know because it imports nothing above itself — whether the
//! PostgreSQL TLS files hold usable certificates and keys, and whether the
//! trusted deploy keys are ed25519 keys. Run by `jetplug check`, at start and
//! on every configuration reload; errors read like the loader's own
//! (`FILE: KEY: reason`).

use std::path::Path;

use crate::capability::pg_tls;
use crate::config::{Config, ConfigError};
use crate::hotswap::signing::TrustedKey;

/// What resolving found, for the start-up to use.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// `host.trusted_keys`, parsed.
    pub trusted: Vec<TrustedKey>,
}

/// Reads, validates and resolves the configuration at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let config = Config::load(path)?;
    resolve(&config)?;
    Ok(config)
}

/// Checks what needs more than the configuration's own text.
pub fn resolve(config: &Config) -> Result<Resolved, ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        path: config.source.clone().unwrap_or_default(),
        key,
        reason,
    };
    let mut trusted = Vec::new();
    for (i, k) in config.host.trusted_keys.iter().enumerate() {
        let at = || format!("host.trusted_keys[{i}]");
        let k = crate::config::secret::expand(k).map_err(|r| invalid(at(), r.0))?;
        let key = TrustedKey::parse(&k).map_err(|r| invalid(at(), r.to_string()))?;
        trusted.push(key);
    }
    for (name, db) in &config.databases {
        pg_tls::check(db).map_err(|(key, r)| invalid(format!("database.{name}.{key}"), r))?;
    }
    Ok(Resolved { trusted })
}
