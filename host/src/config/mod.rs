//! `jetplug.toml`: typed, validated configuration.
//!
//! Loading is all-or-nothing and happens before anything connects: unknown
//! keys, bad values and broken references are reported with the file, the
//! key and the reason (and the line, when the TOML parser knows it).

mod grants;
mod nats;
mod pipeline;
mod plugin;
mod quantity;
mod resources;
pub mod secret;
mod stream;
mod telemetry;
mod tenants;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use grants::Grants;
pub use nats::{NatsConfig, PublishPolicy, ServerList};
pub use pipeline::{
    BackoffConfig, BreakerConfig, Capture, DeliverPolicy, Effects, Ordering, PIN_GROUP,
    PipelineConfig, dead_letter_subject,
};
pub use plugin::{ConfigValue, LimitsConfig, PluginConfig};
pub use secret::Secret;

pub use quantity::{Dur, Size};
pub use resources::{BucketConfig, DatabaseConfig, SslMode, TenantConfig, TenantLimits};
pub use stream::{Compression, Discard, Retention, Storage, StreamConfig};
pub use telemetry::{OtlpProtocol, TelemetryConfig};

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub host: HostConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    #[serde(default, rename = "stream")]
    pub streams: Vec<StreamConfig>,
    #[serde(default, rename = "plugin")]
    pub plugins: BTreeMap<String, PluginConfig>,
    #[serde(default, rename = "pipeline")]
    pub pipelines: Vec<PipelineConfig>,
    #[serde(default, rename = "database")]
    pub databases: BTreeMap<String, DatabaseConfig>,
    #[serde(default, rename = "kv")]
    pub buckets: BTreeMap<String, BucketConfig>,
    #[serde(default, rename = "tenant")]
    pub tenants: BTreeMap<String, TenantConfig>,
    /// The file this was loaded from (watched by `host::run`).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

/// `[host]`: process-wide behaviour.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostConfig {
    /// On SIGINT/SIGTERM, how long in-flight batches may take to finish and
    /// settle before the host exits anyway (default 30s).
    pub shutdown_timeout: Dur,
    /// Swap a plugin when its file is replaced (default true).
    pub watch_plugins: bool,
    /// Object Store + KV bucket through which `jetplug plugin deploy`
    /// distributes versions to every host (default `jetplug-plugins`;
    /// `""` turns fleet deploys off).
    pub deploy_bucket: String,
    /// Public keys (`ed25519:BASE64`) of which one must have signed a
    /// deployed version before this host runs it (default: none, any
    /// deployed version runs).
    pub trusted_keys: Vec<String>,
    /// The stream that keeps the MAX_DELIVERIES advisories of the
    /// pipelines' consumers, so that one emitted while no host runs is
    /// dead-lettered when one starts (default `JETPLUG_ADVISORIES`; `""`
    /// turns it off: advisories are then only heard live).
    pub advisory_stream: String,
    /// The Object Store bucket that keeps captures (default
    /// `JETPLUG_CAPTURES`; replicated like the most replicated stream).
    pub capture_bucket: String,
    /// How long a capture is kept (default 7d).
    pub capture_retention: Dur,
    /// The most the capture bucket holds (default 1GiB; the oldest
    /// captures make room).
    pub capture_max_bytes: Size,
    /// How often stream and consumer figures are read from the JetStream
    /// API for the metrics (default 5s).
    pub stats_interval: Dur,
}

/// `host.deploy_bucket` by default.
pub const DEFAULT_DEPLOY_BUCKET: &str = "jetplug-plugins";

/// The subjects of the advisory stream: every consumer's MAX_DELIVERIES
/// advisories in the account.
pub const ADVISORY_SUBJECTS: &str = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>";

impl Default for HostConfig {
    fn default() -> Self {
        HostConfig {
            shutdown_timeout: Dur(Duration::from_secs(30)),
            watch_plugins: true,
            deploy_bucket: DEFAULT_DEPLOY_BUCKET.to_owned(),
            trusted_keys: Vec::new(),
            advisory_stream: "JETPLUG_ADVISORIES".to_owned(),
            capture_bucket: "JETPLUG_CAPTURES".to_owned(),
            capture_retention: Dur(Duration::from_secs(7 * 24 * 3600)),
            capture_max_bytes: Size(1 << 30),
            stats_interval: Dur(Duration::from_secs(5)),
        }
    }
}

/// `[admin]`: the admin HTTP server (health, readiness, metrics, API).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Listen address: `"9090"` (loopback, `127.0.0.1:9090`) or
    /// `"HOST:PORT"` (default: no admin server). A non-loopback address
    /// needs `token`, or `allow_unauthenticated = true`.
    #[serde(default)]
    pub address: Option<AdminAddr>,
    /// Bearer token every endpoint but `/healthz` and `/readyz` requires
    /// (a [`Secret`]).
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token, instead of `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Serve a non-loopback address without a token (default false).
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

/// The admin server's address; a bare port means loopback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub std::net::SocketAddr);

impl<'de> Deserialize<'de> for AdminAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let t = text.trim().trim_start_matches(':');
        if let Ok(port) = t.parse::<u16>() {
            return Ok(AdminAddr(std::net::SocketAddr::from((
                [127, 0, 0, 1],
                port,
            ))));
        }
        t.parse().map(AdminAddr).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{text}` is not a port (`9090`, loopback) or an address (`127.0.0.1:9090`)"
            ))
        })
    }
}

/// `[engine]`: the wasm engine shared by all plugins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// Instances alive at once across all plugins (default 256).
    pub max_instances: u32,
    /// Largest memory limit any plugin may have (default 1GiB).
    pub max_memory: Size,
    /// Compiled-component cache (default `~/.cache/jetplug/components`).
    pub cache_dir: Option<PathBuf>,
    /// Disable the compiled-component cache (default false).
    pub no_cache: bool,
    /// Epoch tick: the resolution of plugin deadlines (default 10ms).
    pub epoch_tick: Dur,
    /// A plugin call that has computed this long is long: it moves to the
    /// slow lane and is paced while other calls run (default 20ms; "0s"
    /// turns pacing and the slow lane off).
    pub throttle_after: Dur,
    /// Threads of the slow lane, where long calls and calls of failing
    /// plugins run (default: half the cores, at least 1).
    pub slow_lane_threads: usize,
    /// How much lower the slow lane's priority is, in `nice` steps, 0–19
    /// (default 10; Linux only).
    pub slow_lane_nice: u8,
    /// Shared by a fleet's hosts (at least 32 bytes) to trust one another's
    /// compiled components, kept in the deploy bucket (default: none, every
    /// host compiles for itself).
    pub fleet_cache_key: Option<Secret>,
    /// A file holding `fleet_cache_key`.
    pub fleet_cache_key_file: Option<PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        EngineConfig {
            max_instances: 256,
            max_memory: Size(1 << 30),
            cache_dir: None,
            no_cache: false,
            epoch_tick: Dur(Duration::from_millis(10)),
            throttle_after: Dur(Duration::from_millis(20)),
            slow_lane_threads: (cores / 2).max(1),
            slow_lane_nice: 10,
            fleet_cache_key: None,
            fleet_cache_key_file: None,
        }
    }
}

/// Why one value is refused: the reason a [`ConfigError::Invalid`] carries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

impl From<String> for Refused {
    fn from(s: String) -> Self {
        Refused(s)
    }
}

impl From<&str> for Refused {
    fn from(s: &str) -> Self {
        Refused(s.to_owned())
    }
}

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The TOML is malformed or a value has the wrong type or form.
    #[error("{}{}: {key}: {reason}", path.display(), location.map(|(l, c)| format!(":{l}:{c}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        key: String,
        location: Option<(usize, usize)>,
        reason: String,
    },
    /// Well-formed, but a value is out of range or a reference is broken.
    #[error("{}: {key}: {reason}", path.display())]
    Invalid {
        path: PathBuf,
        key: String,
        reason: String,
    },
}

impl ConfigError {
    /// The offending key, e.g. `pipeline[0].batch`.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Read { .. } => None,
            ConfigError::Parse { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
        }
    }
}

impl Config {
    /// Reads, parses and validates `path`. Relative plugin paths and
    /// credential files are resolved against the file's directory.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut config = Config::parse(&text, path, base)?;
        config.source = Some(path.to_path_buf());
        Ok(config)
    }

    /// What is allowed but probably a mistake, one line each (shown by
    /// `jetplug check`, logged by `jetplug run`).
    pub fn warnings(&self) -> Vec<String> {
        validate::warnings(self)
    }

    /// Parses and validates TOML `text`; `path` names it in errors, `base`
    /// resolves relative paths.
    pub fn parse(text: &str, path: &Path, base: &Path) -> Result<Config, ConfigError> {
        let mut config = parse_toml(text, path)?;
        config.resolve_paths(base);
        config
            .read_secret_files()
            .map_err(|(key, reason)| ConfigError::Invalid {
                path: path.to_path_buf(),
                key,
                reason,
            })?;
        config.expand_tenant_templates();
        validate::validate(&config, path)?;
        Ok(config)
    }

    /// The stream declared under `name`.
    pub fn stream(&self, name: &str) -> Option<&StreamConfig> {
        self.streams.iter().find(|s| s.name == name)
    }

    /// The advisory stream (`host.advisory_stream`), if on: kept a week,
    /// with as many replicas as the most replicated declared stream.
    pub fn advisory_stream(&self) -> Option<StreamConfig> {
        let name = &self.host.advisory_stream;
        (!name.is_empty()).then(|| StreamConfig {
            name: name.clone(),
            subjects: vec![ADVISORY_SUBJECTS.to_owned()],
            retention: Retention::Limits,
            storage: Storage::File,
            discard: Discard::Old,
            max_age: Dur(Duration::from_secs(7 * 86_400)),
            max_bytes: Size(0),
            max_messages: 1_000_000,
            max_messages_per_subject: 0,
            duplicate_window: Dur(Duration::from_secs(120)),
            replicas: self
                .streams
                .iter()
                .map(|s| s.replicas)
                .max()
                .unwrap_or(1)
                .max(1),
            compression: Compression::None,
            manage: true,
        })
    }

    /// Every stream the host provisions: the declared ones and the
    /// advisory stream.
    pub fn provisioned_streams(&self) -> Vec<StreamConfig> {
        let mut all = self.streams.clone();
        all.extend(self.advisory_stream());
        all
    }

    /// The pipeline called `name`.
    pub fn pipeline(&self, name: &str) -> Option<&PipelineConfig> {
        self.pipelines.iter().find(|p| p.name == name)
    }

    /// Whether pipeline `p` receives messages published to `subject`: one
    /// of its streams stores them and its filters (if any) let them through.
    pub fn consumes(&self, p: &PipelineConfig, subject: &str) -> bool {
        p.streams
            .iter()
            .filter_map(|s| self.stream(s))
            .any(|s| s.captures(subject))
            && (p.filter_subjects.is_empty()
                || p.filter_subjects
                    .iter()
                    .any(|f| crate::subject::matches(f, subject)))
    }

    /// The tenant a plugin belongs to, if tenants are declared.
    pub fn tenant_of(&self, plugin: &str) -> Option<&TenantConfig> {
        self.plugins
            .get(plugin)
            .and_then(|p| self.tenants.get(&p.tenant))
    }

    /// Replaces `{tenant}` in subject patterns with the owning tenant's name.
    fn expand_tenant_templates(&mut self) {
        let expand = |v: &mut Vec<String>, tenant: &str| {
            for s in v.iter_mut() {
                *s = s.replace("{tenant}", tenant);
            }
        };
        for (name, t) in self.tenants.iter_mut() {
            expand(&mut t.consume, name);
            expand(&mut t.publish, name);
        }
        for p in self.plugins.values_mut() {
            let tenant = p.tenant.clone();
            expand(&mut p.grants.publish, &tenant);
        }
        let tenants: Vec<String> = self
            .pipelines
            .iter()
            .map(|p| {
                self.plugins
                    .get(&p.plugin)
                    .map(|pl| pl.tenant.clone())
                    .unwrap_or_default()
            })
            .collect();
        for (p, tenant) in self.pipelines.iter_mut().zip(tenants) {
            expand(&mut p.filter_subjects, &tenant);
        }
    }

    fn resolve_paths(&mut self, base: &Path) {
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for plugin in self.plugins.values_mut() {
            resolve(&mut plugin.path);
        }
        if let Some(p) = self.nats.credentials.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.nats.tls_ca.as_mut() {
            resolve(p);
        }
        if let Some(p) = self.engine.cache_dir.as_mut() {
            resolve(p);
        }
        let n = &mut self.nats;
        for p in [
            &mut n.token_file,
            &mut n.password_file,
            &mut n.nkey_seed_file,
            &mut n.tls_cert,
            &mut n.tls_key,
            &mut self.admin.token_file,
            &mut self.engine.fleet_cache_key_file,
        ]
        .into_iter()
        .flatten()
        {
            resolve(p);
        }
        for db in self.databases.values_mut() {
            for p in [&mut db.url_file, &mut db.password_file]
                .into_iter()
                .flatten()
            {
                resolve(p);
            }
        }
    }

    /// Reads the secrets given as `*_file` keys.
    fn read_secret_files(&mut self) -> Result<(), (String, String)> {
        use secret::from_file;
        let n = &mut self.nats;
        from_file(&mut n.token, &n.token_file, "nats.token")?;
        from_file(&mut n.password, &n.password_file, "nats.password")?;
        from_file(&mut self.admin.token, &self.admin.token_file, "admin.token")?;
        let e = &mut self.engine;
        from_file(
            &mut e.fleet_cache_key,
            &e.fleet_cache_key_file,
            "engine.fleet_cache_key",
        )?;
        for (name, db) in self.databases.iter_mut() {
            from_file(&mut db.url, &db.url_file, &format!("database.{name}.url"))?;
            from_file(
                &mut db.password,
                &db.password_file,
                &format!("database.{name}.password"),
            )?;
        }
        Ok(())
    }
}

fn parse_toml(text: &str, path: &Path) -> Result<Config, ConfigError> {
    let parse_error = |key: String, e: toml::de::Error| ConfigError::Parse {
        path: path.to_path_buf(),
        key,
        location: e.span().map(|s| line_col(text, s.start)),
        reason: e.message().trim().to_owned(),
    };
    let de = toml::Deserializer::parse(text).map_err(|e| parse_error("(document)".into(), e))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let key = if key == "." { "(document)".into() } else { key };
        parse_error(key, e.into_inner())
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}
