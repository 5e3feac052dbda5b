//! `[database.NAME]`, `[kv.NAME]` and `[tenant.NAME]`: what plugins may reach,
//! and the boundaries of each tenant.

use serde::Deserialize;

use super::stream::Storage;
use super::units::{Dur, Size};

/// A PostgreSQL database plugins may be granted (`grants.sql = ["NAME"]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `postgres://user:password@host:port/db` (or key=value form).
    pub url: String,
    /// Connections kept in the pool (default 8).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Time limit to connect or to wait for a free connection (default 5s);
    /// past it the plugin gets `unavailable`.
    #[serde(default = "default_db_timeout")]
    pub timeout: Dur,
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
