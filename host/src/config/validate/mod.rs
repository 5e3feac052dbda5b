//! Checks that need the whole configuration: ranges, uniqueness, references
//! between sections, files that must exist. Types and forms are already
//! checked by deserialization.

use std::collections::BTreeSet;
use std::path::Path;

mod pipelines;

use super::{Config, ConfigError, Refused, StreamConfig};
use pipelines::pipeline;

pub(super) fn validate(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        reason,
    };
    nats(config).map_err(|(k, r)| invalid(k, r))?;
    config.telemetry.check().map_err(|(k, r)| invalid(k, r))?;
    let admin = &config.admin;
    if let Some(addr) = admin.address
        && !addr.0.ip().is_loopback()
        && admin.token.is_none()
        && !admin.allow_unauthenticated
    {
        return Err(invalid(
            "admin.address".into(),
            format!(
                "{} is reachable from other machines: set admin.token (or admin.token_file), or allow_unauthenticated = true to serve it open",
                addr.0
            ),
        ));
    }
    if config.engine.max_instances == 0 {
        return Err(invalid(
            "engine.max_instances".into(),
            "must be at least 1".into(),
        ));
    }
    if config.engine.epoch_tick.0.is_zero() {
        return Err(invalid(
            "engine.epoch_tick".into(),
            "must be greater than zero".into(),
        ));
    }
    if config.engine.slow_lane_threads == 0 {
        return Err(invalid(
            "engine.slow_lane_threads".into(),
            "must be at least 1".into(),
        ));
    }
    if config.engine.slow_lane_nice > 19 {
        return Err(invalid(
            "engine.slow_lane_nice".into(),
            format!(
                "{} is out of range; nice steps go from 0 (same priority) to 19 (lowest)",
                config.engine.slow_lane_nice
            ),
        ));
    }
    let bucket = &config.host.deploy_bucket;
    if let Some(c) = bucket
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_')))
    {
        return Err(invalid(
            "host.deploy_bucket".into(),
            format!("`{bucket}` contains `{c}`; use ASCII letters, digits, `-` and `_`"),
        ));
    }
    fleet_cache(config).map_err(|(k, r)| invalid(k, r))?;
    if config.host.stats_interval.0 < std::time::Duration::from_millis(100) {
        return Err(invalid(
            "host.stats_interval".into(),
            "must be at least 100ms".into(),
        ));
    }
    let advisories = &config.host.advisory_stream;
    if !advisories.is_empty() {
        name(advisories).map_err(|r| invalid("host.advisory_stream".into(), r.0))?;
        if config.stream(advisories).is_some() {
            return Err(invalid(
                "host.advisory_stream".into(),
                format!(
                    "`{advisories}` is also declared in [[stream]]; give the host its own stream"
                ),
            ));
        }
    }
    let mut names = BTreeSet::new();
    for (i, s) in config.streams.iter().enumerate() {
        stream(s).map_err(|(k, r)| invalid(format!("stream[{i}].{k}"), r))?;
        if !names.insert(s.name.as_str()) {
            return Err(invalid(
                format!("stream[{i}].name"),
                format!("stream `{}` is declared twice", s.name),
            ));
        }
    }
    for (name, p) in &config.plugins {
        let key = |k: &str| format!("plugin.{name}.{k}");
        name_check(name).map_err(|r| invalid(format!("plugin.{name}"), r.0))?;
        if !p.path.is_file() {
            return Err(invalid(
                key("path"),
                format!("plugin file {} does not exist", p.path.display()),
            ));
        }
        if p.limits.memory.0 > config.engine.max_memory.0 {
            return Err(invalid(
                key("limits.memory"),
                format!(
                    "{} bytes exceeds engine.max_memory ({} bytes)",
                    p.limits.memory.0, config.engine.max_memory.0
                ),
            ));
        }
        if p.limits.deadline.0.is_zero() {
            return Err(invalid(
                key("limits.deadline"),
                "must be greater than zero".into(),
            ));
        }
        for (j, pattern) in p.grants.publish.iter().enumerate() {
            subject_pattern(pattern)
                .map_err(|r| invalid(key(&format!("grants.publish[{j}]")), r.0))?;
        }
        if let Some(role) = &p.grants.sql_role
            && (role.trim().is_empty() || p.grants.sql.is_empty())
        {
            return Err(invalid(
                key("grants.sql_role"),
                "names the role the plugin's SQL runs under: give a role name, and databases in `grants.sql`".into(),
            ));
        }
    }
    for (name, db) in &config.databases {
        name_check(name).map_err(|r| invalid(format!("database.{name}"), r.0))?;
        if db.url.as_ref().is_none_or(|u| u.expose().trim().is_empty()) {
            return Err(invalid(
                format!("database.{name}.url"),
                "must be given (or `url_file`) and not empty".into(),
            ));
        }
        if let Err(reason) = db.pg_config() {
            return Err(invalid(format!("database.{name}.url"), reason.0));
        }
        tls(db).map_err(|(k, r)| invalid(format!("database.{name}.{k}"), r))?;
        if db.pool_size == 0 {
            return Err(invalid(
                format!("database.{name}.pool_size"),
                "must be at least 1".into(),
            ));
        }
    }
    for (name, b) in &config.buckets {
        name_check(name).map_err(|r| invalid(format!("kv.{name}"), r.0))?;
        if !(1..=64).contains(&b.history) {
            return Err(invalid(
                format!("kv.{name}.history"),
                format!("must be between 1 and 64 (got {})", b.history),
            ));
        }
    }
    for (name, p) in &config.plugins {
        for (j, db) in p.grants.sql.iter().enumerate() {
            if db != "*" && !config.databases.contains_key(db) {
                return Err(invalid(
                    format!("plugin.{name}.grants.sql[{j}]"),
                    format!("database `{db}` is not declared as [database.{db}]"),
                ));
            }
        }
    }
    super::tenants::validate(config, path)?;
    let mut names = BTreeSet::new();
    let mut consumers = std::collections::BTreeMap::new();
    for (i, p) in config.pipelines.iter().enumerate() {
        pipeline(config, p).map_err(|(k, r)| invalid(format!("pipeline[{i}].{k}"), r))?;
        if !names.insert(p.name.as_str()) {
            return Err(invalid(
                format!("pipeline[{i}].name"),
                format!("pipeline `{}` is declared twice", p.name),
            ));
        }
        for s in &p.streams {
            let consumer = p.consumer_name(s);
            if let Some(other) = consumers.insert((s.clone(), consumer.clone()), &p.name) {
                return Err(invalid(
                    format!("pipeline[{i}].consumer"),
                    format!(
                        "pipelines `{other}` and `{}` would both use consumer `{consumer}` on \
                         stream `{s}`: give each its own `consumer` name",
                        p.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

type Problem = (String, String);

/// What is allowed but probably wrong: publish grants that match no
/// declared stream (a publish there fails unless a stream declared
/// elsewhere captures it).
pub(super) fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (name, p) in &config.plugins {
        for (j, grant) in p.grants.publish.iter().enumerate() {
            let stored = config.streams.iter().any(|s| {
                s.subjects
                    .iter()
                    .any(|ss| crate::subject::overlaps(grant, ss))
            });
            if !stored {
                out.push(format!(
                    "plugin.{name}.grants.publish[{j}]: `{grant}` matches no declared stream's \
                     subjects; publishes there fail unless a stream declared elsewhere captures them"
                ));
            }
        }
    }
    out
}

fn nats(config: &Config) -> Result<(), Problem> {
    let n = &config.nats;
    let p = |k: &str, r: &str| (format!("nats.{k}"), r.to_owned());
    if let Err((i, reason)) = n.url.addrs() {
        let key = if n.url.0.len() > 1 {
            format!("url[{i}]")
        } else {
            "url".into()
        };
        return Err(p(&key, &reason));
    }
    let ways: Vec<&str> = [
        ("token", n.token.is_some()),
        ("user", n.user.is_some() || n.password.is_some()),
        ("nkey_seed_file", n.nkey_seed_file.is_some()),
        ("credentials", n.credentials.is_some()),
    ]
    .into_iter()
    .filter_map(|(k, on)| on.then_some(k))
    .collect();
    if ways.len() > 1 {
        return Err(p(
            ways[1],
            &format!(
                "give one way to authenticate, not several ({})",
                ways.join(", ")
            ),
        ));
    }
    if n.user.is_some() != n.password.is_some() {
        return Err(p(
            if n.user.is_some() { "password" } else { "user" },
            "`user` and `password` go together",
        ));
    }
    if n.tls_cert.is_some() != n.tls_key.is_some() {
        return Err(p(
            if n.tls_cert.is_some() {
                "tls_key"
            } else {
                "tls_cert"
            },
            "`tls_cert` and `tls_key` go together (a client certificate and its key)",
        ));
    }
    for (key, file) in [
        ("credentials", &n.credentials),
        ("tls_ca", &n.tls_ca),
        ("tls_cert", &n.tls_cert),
        ("tls_key", &n.tls_key),
        ("nkey_seed_file", &n.nkey_seed_file),
    ] {
        if let Some(file) = file
            && !file.is_file()
        {
            return Err((
                format!("nats.{key}"),
                format!("file {} does not exist", file.display()),
            ));
        }
    }
    if let Some(file) = &n.nkey_seed_file {
        crate::config::secret::nkey_seed(file).map_err(|r| p("nkey_seed_file", &r.0))?;
    }
    if n.connect_timeout.0.is_zero() {
        return Err(p("connect_timeout", "must be greater than zero"));
    }
    if n.request_timeout.0.is_zero() {
        return Err(p("request_timeout", "must be greater than zero"));
    }
    let policy = &n.publish;
    if !(1..=100).contains(&policy.attempts) {
        return Err(p(
            "publish.attempts",
            &format!("must be between 1 and 100 (got {})", policy.attempts),
        ));
    }
    if !(policy.multiplier.is_finite() && (1.0..=10.0).contains(&policy.multiplier)) {
        return Err(p(
            "publish.multiplier",
            &format!("must be between 1.0 and 10.0 (got {})", policy.multiplier),
        ));
    }
    if policy.max_delay.0 < policy.initial_delay.0 {
        return Err(p(
            "publish.max_delay",
            "must be at least publish.initial_delay",
        ));
    }
    if policy.timeout.0.is_zero() {
        return Err(p("publish.timeout", "must be greater than zero"));
    }
    Ok(())
}

fn name_check(n: &str) -> Result<(), Refused> {
    name(n)
}

/// Stream and consumer names end up in subjects: no dots, wildcards or spaces.
pub(super) fn name(name: &str) -> Result<(), Refused> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '.' | '*' | '>' | '/' | '\\') || c.is_whitespace() || c.is_control())
    {
        return Err(Refused(format!(
            "`{name}` contains `{c}`; use letters, digits, `-` and `_`"
        )));
    }
    if name.len() > 200 {
        return Err(Refused(format!("`{name}` is longer than 200 characters")));
    }
    Ok(())
}

fn subject_pattern(s: &str) -> Result<(), Refused> {
    if s.is_empty() {
        return Err("subject must not be empty".into());
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err(Refused(format!("subject `{s}` has an empty token")));
        }
        if t.chars().any(char::is_whitespace) {
            return Err(Refused(format!("subject `{s}` contains whitespace")));
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err(Refused(format!(
                "subject `{s}`: `>` must be the last token"
            )));
        }
        if t.len() > 1 && (t.contains('*') || t.contains('>')) {
            return Err(Refused(format!(
                "subject `{s}`: wildcards must be whole tokens"
            )));
        }
    }
    Ok(())
}

fn stream(s: &StreamConfig) -> Result<(), Problem> {
    name(&s.name).map_err(|r| ("name".into(), r.0))?;
    if s.subjects.is_empty() {
        return Err((
            "subjects".into(),
            "a stream needs at least one subject".into(),
        ));
    }
    for (j, subject) in s.subjects.iter().enumerate() {
        subject_pattern(subject).map_err(|r| (format!("subjects[{j}]"), r.0))?;
    }
    if !(1..=5).contains(&s.replicas) {
        return Err((
            "replicas".into(),
            format!("must be between 1 and 5 (got {})", s.replicas),
        ));
    }
    if !s.max_age.0.is_zero() && s.duplicate_window.0 > s.max_age.0 {
        return Err((
            "duplicate_window".into(),
            format!(
                "{:?} is longer than max_age ({:?})",
                s.duplicate_window.0, s.max_age.0
            ),
        ));
    }
    Ok(())
}

/// `(key, reason)` of TLS settings that cannot work together (whether the
/// files hold certificates is resolved at start, see `host::resolve`).
fn tls(db: &super::DatabaseConfig) -> Result<(), (&'static str, String)> {
    use super::SslMode;
    if matches!(db.sslmode, SslMode::VerifyCa | SslMode::VerifyFull) && db.sslrootcert.is_none() {
        return Err((
            "sslrootcert",
            "verify-ca and verify-full need the CA certificate(s) to verify the server with".into(),
        ));
    }
    if db.sslcert.is_some() != db.sslkey.is_some() {
        let missing = if db.sslcert.is_some() {
            "sslkey"
        } else {
            "sslcert"
        };
        return Err((missing, "`sslcert` and `sslkey` go together".into()));
    }
    Ok(())
}

/// A fleet cache key needs somewhere to keep the components (the deploy
/// bucket) and somewhere to load them from (this host's cache), and must
/// be long enough not to be guessed.
fn fleet_cache(config: &Config) -> Result<(), (String, String)> {
    let Some(key) = &config.engine.fleet_cache_key else {
        return Ok(());
    };
    let k = "engine.fleet_cache_key".to_owned();
    let len = key.expose().len();
    if len < 32 {
        return Err((
            k,
            format!("is {len} bytes long; use at least 32 (e.g. `openssl rand -base64 32`)"),
        ));
    }
    if config.host.deploy_bucket.is_empty() {
        return Err((
            k,
            "needs host.deploy_bucket: the fleet's compiled components are kept there".into(),
        ));
    }
    if config.engine.no_cache {
        return Err((
            k,
            "needs the compiled-component cache, which engine.no_cache turns off".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_subjects() {
        assert!(name("LEARNING").is_ok());
        assert!(name("a.b").is_err());
        assert!(name("a b").is_err());
        assert!(subject_pattern("learning.>").is_ok());
        assert!(subject_pattern("a.*.c").is_ok());
        assert!(subject_pattern("a.>.c").is_err());
        assert!(subject_pattern("a..c").is_err());
        assert!(subject_pattern("a.b*").is_err());
    }
}
