//! `[database.NAME]`, `[kv.NAME]` and `[tenant.NAME]`: what plugins may reach,
//! and the boundaries of each tenant.

use serde::Deserialize;

use super::quantity::{Dur, Size};
use super::secret::Secret;
use super::stream::Storage;

/// A PostgreSQL database plugins may be granted (`grants.sql = ["NAME"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db` (or key=value form); a
    /// [`Secret`]: `"${DATABASE_URL}"` works.
    #[serde(default)]
    pub url: Option<Secret>,
    /// A file holding the URL, instead of `url`.
    #[serde(default)]
    pub url_file: Option<std::path::PathBuf>,
    /// The password, when the URL does not carry it (a [`Secret`]).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password, instead of `password`.
    #[serde(default)]
    pub password_file: Option<std::path::PathBuf>,
    /// TLS to the server: `disable` (default), `require` (encrypted, the
    /// certificate not checked), `verify-ca` (signed by `sslrootcert`) or
    /// `verify-full` (and issued for the host connected to).
    #[serde(default)]
    pub sslmode: SslMode,
    /// PEM CA certificates to verify the server with (verify-ca/verify-full).
    #[serde(default)]
    pub sslrootcert: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that ask for one (with `sslkey`).
    #[serde(default)]
    pub sslcert: Option<std::path::PathBuf>,
    /// The PEM private key of `sslcert`.
    #[serde(default)]
    pub sslkey: Option<std::path::PathBuf>,
    /// Connections kept in the pool (default 8).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Time limit to connect or to wait for a free connection (default 5s);
    /// past it the plugin gets `unavailable`.
    #[serde(default = "default_db_timeout")]
    pub timeout: Dur,
}

impl DatabaseConfig {
    /// A database at `url`, every other key at its default.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseConfig {
            url: Some(Secret::new(url)),
            url_file: None,
            password: None,
            password_file: None,
            sslmode: SslMode::default(),
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            pool_size: default_pool_size(),
            timeout: default_db_timeout(),
        }
    }

    /// The connection settings: the URL, with `password` applied.
    pub fn pg_config(&self) -> Result<tokio_postgres::Config, super::Refused> {
        let url = self.url.as_ref().ok_or("no `url` (or `url_file`) given")?;
        let mut pg: tokio_postgres::Config = url.expose().parse().map_err(|_| {
            "is not a PostgreSQL connection string (postgres://user@host:port/db)".to_owned()
        })?;
        if let Some(p) = &self.password {
            pg.password(p.expose());
        }
        // `sslmode` here decides, not the URL's: no silent fallback to plaintext.
        pg.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            _ => tokio_postgres::config::SslMode::Require,
        });
        // A password written in the URL is a secret too.
        if let Some(p) = pg.get_password() {
            crate::redact::register(&String::from_utf8_lossy(p));
        }
        Ok(pg)
    }
}

/// How a database connection uses TLS (libpq's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    #[default]
    Disable,
    Require,
    VerifyCa,
    VerifyFull,
}

fn default_pool_size() -> usize {
    8
}

fn default_db_timeout() -> Dur {
    Dur(std::time::Duration::from_secs(5))
}

/// A NATS KV bucket the host creates if missing (`grants.kv = ["NAME"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BucketConfig {
    /// Revisions kept per key (default 1, at most 64).
    #[serde(default = "default_history")]
    pub history: i64,
    /// Entries expire after this long (default never).
    #[serde(default)]
    pub max_age: Dur,
    #[serde(default)]
    pub max_bytes: Size,
    #[serde(default)]
    pub storage: Storage,
    #[serde(default = "default_replicas")]
    pub replicas: usize,
}

fn default_history() -> i64 {
    1
}

fn default_replicas() -> usize {
    1
}

/// One tenant's boundaries. `{tenant}` in a pattern stands for the tenant's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Subject patterns the tenant's pipelines may consume.
    #[serde(default)]
    pub consume: Vec<String>,
    /// Subject patterns the tenant's plugins may publish to.
    #[serde(default)]
    pub publish: Vec<String>,
    /// Databases the tenant's plugins may be granted.
    #[serde(default)]
    pub databases: Vec<String>,
    /// KV buckets the tenant's plugins may be granted.
    #[serde(default)]
    pub buckets: Vec<String>,
    #[serde(default)]
    pub limits: TenantLimits,
}

/// Ceilings for a tenant's plugins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    /// Largest memory limit any of its plugins may have.
    pub memory: Option<Size>,
    /// Longest deadline any of its plugins may have.
    pub deadline: Option<Dur>,
    /// Batches running at once across all its pipelines (default: no ceiling).
    pub max_concurrent_batches: Option<u32>,
    /// Messages a second its pipelines may pull, together (default: no limit).
    pub max_messages_per_second: Option<u32>,
    /// Its weight when tenants compete for CPU (default 1 once any tenant
    /// sets one; without any, CPU is not arbitrated by tenant).
    pub cpu_share: Option<u32>,
}
