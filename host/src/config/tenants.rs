//! Tenant boundaries, checked at load: a pipeline may only consume inside its
//! tenant's `consume` patterns, and a plugin's grants and limits must fit
//! inside its tenant's. Without any `[tenant.*]` section there is one
//! implicit, unrestricted tenant.

use std::path::Path;

use super::{Config, ConfigError};
use crate::subject;

pub(super) fn validate(config: &Config, path: &Path) -> Result<(), ConfigError> {
    let invalid = |key: String, reason: String| ConfigError::Invalid {
        path: path.to_path_buf(),
        key,
        reason,
    };
    if config.tenants.is_empty() {
        return Ok(());
    }
    for (name, t) in &config.tenants {
        for (k, v) in [
            ("max_messages_per_second", t.limits.max_messages_per_second),
            ("max_concurrent_batches", t.limits.max_concurrent_batches),
            ("cpu_share", t.limits.cpu_share),
        ] {
            if v == Some(0) {
                return Err(invalid(
                    format!("tenant.{name}.limits.{k}"),
                    "must be at least 1 (leave it out for no limit)".into(),
                ));
            }
        }
        for db in &t.databases {
            if !config.databases.contains_key(db) {
                return Err(invalid(
                    format!("tenant.{name}.databases"),
                    format!("database `{db}` is not declared as [database.{db}]"),
                ));
            }
        }
    }
    for (name, p) in &config.plugins {
        let key = |k: &str| format!("plugin.{name}.{k}");
        let Some(t) = config.tenants.get(&p.tenant) else {
            return Err(invalid(
                key("tenant"),
                format!(
                    "tenant `{}` is not declared as [tenant.{}]",
                    p.tenant, p.tenant
                ),
            ));
        };
        let tn = &p.tenant;
        for (j, pattern) in p.grants.publish.iter().enumerate() {
            if !t.publish.iter().any(|o| subject::contains(o, pattern)) {
                return Err(invalid(
                    key(&format!("grants.publish[{j}]")),
                    format!(
                        "`{pattern}` is outside tenant `{tn}` (publish = {:?})",
                        t.publish
                    ),
                ));
            }
        }
        for (j, db) in p.grants.sql.iter().enumerate() {
            if db == "*" || !t.databases.contains(db) {
                return Err(invalid(
                    key(&format!("grants.sql[{j}]")),
                    format!(
                        "database `{db}` is outside tenant `{tn}` (databases = {:?})",
                        t.databases
                    ),
                ));
            }
        }
        for (j, b) in p.grants.kv.iter().enumerate() {
            if b == "*" || !t.buckets.contains(b) {
                return Err(invalid(
                    key(&format!("grants.kv[{j}]")),
                    format!(
                        "bucket `{b}` is outside tenant `{tn}` (buckets = {:?})",
                        t.buckets
                    ),
                ));
            }
        }
        if let Some(max) = t.limits.memory
            && p.limits.memory.0 > max.0
        {
            return Err(invalid(
                key("limits.memory"),
                format!(
                    "{} bytes exceeds tenant `{tn}`'s limit of {} bytes",
                    p.limits.memory.0, max.0
                ),
            ));
        }
        if let Some(max) = t.limits.deadline
            && p.limits.deadline.0 > max.0
        {
            return Err(invalid(
                key("limits.deadline"),
                format!(
                    "{:?} exceeds tenant `{tn}`'s limit of {:?}",
                    p.limits.deadline.0, max.0
                ),
            ));
        }
    }
    for (i, p) in config.pipelines.iter().enumerate() {
        let Some(plugin) = config.plugins.get(&p.plugin) else {
            continue; // reported by the pipeline checks
        };
        let Some(t) = config.tenants.get(&plugin.tenant) else {
            continue;
        };
        for (j, s) in p.streams.iter().enumerate() {
            let Some(stream) = config.stream(s) else {
                continue;
            };
            let filters = p.filters_for(stream);
            let consumed = if filters.is_empty() {
                &stream.subjects
            } else {
                &filters
            };
            if let Some(outside) = consumed
                .iter()
                .find(|c| !t.consume.iter().any(|o| subject::contains(o, c)))
            {
                return Err(invalid(
                    format!("pipeline[{i}].streams[{j}]"),
                    format!(
                        "pipeline `{}` would consume `{outside}` from stream `{s}`, outside tenant `{}` \
                         (consume = {:?}); narrow it with filter_subjects",
                        p.name, plugin.tenant, t.consume
                    ),
                ));
            }
        }
        if let Some(dl) = &p.dead_letter
            && let Some(dlp) = config.plugins.get(dl)
            && dlp.tenant != plugin.tenant
        {
            return Err(invalid(
                format!("pipeline[{i}].dead_letter"),
                format!(
                    "dead-letter plugin `{dl}` belongs to tenant `{}`, the pipeline to `{}`",
                    dlp.tenant, plugin.tenant
                ),
            ));
        }
    }
    Ok(())
}
