//! `[[pipeline]]` checks: streams, plugins, dead-letter routes, delivery
//! policy and exactly-once effects, each refusal naming what to fix.

use super::super::{Config, DeliverPolicy, Effects, PipelineConfig};
use super::{Problem, name, subject_pattern};

/// `effects = "exactly-once"` needs one database the plugin may use (the
/// ledger and outbox live there) and no KV grant (KV writes cannot join
/// the database transaction).
fn effects(config: &Config, p: &PipelineConfig) -> Result<(), Problem> {
    let e = |k: &str, r: String| Err((k.to_owned(), r));
    if p.effects != Effects::ExactlyOnce {
        if p.effects_database.is_some() {
            return e(
                "effects_database",
                "only used with effects = \"exactly-once\"".into(),
            );
        }
        return Ok(());
    }
    let Some(plugin) = config.plugins.get(&p.plugin) else {
        return Ok(());
    };
    if !plugin.grants.kv.is_empty() {
        return e(
            "effects",
            format!(
                "plugin `{}` has a kv grant, and KV writes cannot join the database transaction \
                 that makes effects exactly-once: keep that state in the effects database, or \
                 run this pipeline with effects = \"at-least-once\"",
                p.plugin
            ),
        );
    }
    let Some(db) = p.effects_database(plugin) else {
        return e(
            "effects_database",
            if plugin.grants.sql.is_empty() {
                format!(
                    "effects = \"exactly-once\" keeps its ledger in a database, and plugin `{}` \
                     has no sql grant: grant it one (grants.sql) or name one here",
                    p.plugin
                )
            } else {
                format!(
                    "plugin `{}` may use several databases ({:?}): name the one whose \
                     transaction holds its effects",
                    p.plugin, plugin.grants.sql
                )
            },
        );
    };
    if !config.databases.contains_key(db) {
        return e(
            "effects_database",
            format!("database `{db}` is not declared as [database.{db}]"),
        );
    }
    if !plugin.grants.sql.iter().any(|g| g == "*" || g == db) {
        return e(
            "effects_database",
            format!(
                "plugin `{}` is not granted database `{db}` (grants.sql = {:?})",
                p.plugin, plugin.grants.sql
            ),
        );
    }
    for (key, name) in [
        ("effects_schema", &p.effects_schema),
        ("effects_ledger_table", &p.effects_ledger_table),
        ("effects_outbox_table", &p.effects_outbox_table),
    ] {
        let plain = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain || name.len() > 48 {
            return e(
                key,
                format!(
                    "`{name}` is not a plain SQL name (lowercase letters, digits, _; at most 48)"
                ),
            );
        }
    }
    if p.effects_ledger_table == p.effects_outbox_table {
        return e(
            "effects_outbox_table",
            "the ledger and the outbox need two tables".into(),
        );
    }
    Ok(())
}

pub(super) fn pipeline(config: &Config, p: &PipelineConfig) -> Result<(), Problem> {
    let e = |k: &str, r: String| Err((k.to_owned(), r));
    name(&p.name).map_err(|r| ("name".to_owned(), r.0))?;
    if p.streams.is_empty() {
        return e("streams", "a pipeline needs at least one stream".into());
    }
    for (j, s) in p.streams.iter().enumerate() {
        if config.stream(s).is_none() {
            return e(
                &format!("streams[{j}]"),
                format!("stream `{s}` is not declared in [[stream]]"),
            );
        }
    }
    if let Some(c) = &p.consumer {
        name(c).map_err(|r| ("consumer".to_owned(), r.0))?;
    }
    for (j, s) in p.filter_subjects.iter().enumerate() {
        subject_pattern(s).map_err(|r| (format!("filter_subjects[{j}]"), r.0))?;
    }
    if !p.filter_subjects.is_empty() {
        for s in p.streams.iter().filter_map(|s| config.stream(s)) {
            if !p
                .filter_subjects
                .iter()
                .any(|f| s.subjects.iter().any(|ss| crate::subject::overlaps(f, ss)))
            {
                return e(
                    "filter_subjects",
                    format!(
                        "no filter subject matches anything in stream `{}` ({:?})",
                        s.name, s.subjects
                    ),
                );
            }
        }
    }
    if p.exclusive && p.pin_timeout.0 < std::time::Duration::from_secs(1) {
        return e(
            "pin_timeout",
            "must be at least 1s (pulls are renewed every third of it)".into(),
        );
    }
    if !config.plugins.contains_key(&p.plugin) {
        return e(
            "plugin",
            format!(
                "plugin `{}` is not declared as [plugin.{}]",
                p.plugin, p.plugin
            ),
        );
    }
    if let Some(dl) = &p.dead_letter
        && !config.plugins.contains_key(dl)
    {
        return e(
            "dead_letter",
            format!("plugin `{dl}` is not declared as [plugin.{dl}]"),
        );
    }
    if p.dead_letter.is_none() {
        for s in &p.streams {
            let subject = p.dead_letter_subject(s);
            if !config.streams.iter().any(|st| st.captures(&subject)) {
                return e(
                    "dead_letter",
                    format!(
                        "pipeline `{}` dead-letters messages from `{s}` to `{subject}`, which no \
                         declared stream captures, so they could never be stored: declare a stream \
                         with subjects = [\"dlq.>\"] (or name a dead-letter plugin in `dead_letter`)",
                        p.name
                    ),
                );
            }
        }
    }
    effects(config, p)?;
    match (p.deliver, p.start_sequence, &p.start_time) {
        (DeliverPolicy::ByStartSequence, None, _) => {
            return e(
                "start_sequence",
                "required with deliver = \"by_start_sequence\"".into(),
            );
        }
        (DeliverPolicy::ByStartSequence, Some(0), _) => {
            return e("start_sequence", "sequences start at 1".into());
        }
        (DeliverPolicy::ByStartTime, _, None) => {
            return e(
                "start_time",
                "required with deliver = \"by_start_time\"".into(),
            );
        }
        (d, Some(_), _) if d != DeliverPolicy::ByStartSequence => {
            return e(
                "start_sequence",
                "only allowed with deliver = \"by_start_sequence\"".into(),
            );
        }
        (d, _, Some(_)) if d != DeliverPolicy::ByStartTime => {
            return e(
                "start_time",
                "only allowed with deliver = \"by_start_time\"".into(),
            );
        }
        _ => {}
    }
    if let Some(t) = &p.start_time {
        humantime::parse_rfc3339_weak(t).map_err(|err| {
            (
                "start_time".to_owned(),
                format!("`{t}` is not an RFC 3339 time ({err})"),
            )
        })?;
    }
    if p.ack_wait.0 < std::time::Duration::from_secs(1) {
        return e("ack_wait", "must be at least 1s".into());
    }
    if p.max_deliver == 0 {
        return e("max_deliver", "must be at least 1".into());
    }
    if !(1..=10_000).contains(&p.batch) {
        return e(
            "batch",
            format!("must be between 1 and 10000 (got {})", p.batch),
        );
    }
    if p.batch_max_bytes.0 < 1024 {
        return e("batch_max_bytes", "must be at least 1KiB".into());
    }
    if let Some(plugin) = config.plugins.get(&p.plugin)
        && p.batch_max_bytes.0 > plugin.limits.memory.0
    {
        return e(
            "batch_max_bytes",
            format!(
                "{} bytes is more than plugin `{}`'s limits.memory ({} bytes), and a batch is \
                 copied into that memory whole: lower it, or raise the plugin's memory",
                p.batch_max_bytes.0, p.plugin, plugin.limits.memory.0
            ),
        );
    }
    if !(1..=256).contains(&p.concurrency) {
        return e(
            "concurrency",
            format!("must be between 1 and 256 (got {})", p.concurrency),
        );
    }
    if p.max_ack_pending < p.batch.saturating_mul(p.concurrency) {
        return e(
            "max_ack_pending",
            format!(
                "{} is less than batch × concurrency ({}); batches could never fill",
                p.max_ack_pending,
                p.batch.saturating_mul(p.concurrency)
            ),
        );
    }
    if p.backoff.initial.0.is_zero() || p.backoff.max.0 < p.backoff.initial.0 {
        return e("backoff", "needs 0 < initial <= max".into());
    }
    let b = &p.breaker;
    if b.consecutive_failures == 0 {
        return e("breaker.consecutive_failures", "must be at least 1".into());
    }
    if !(b.failure_rate > 0.0 && b.failure_rate <= 1.0) {
        return e(
            "breaker.failure_rate",
            format!("must be in (0, 1] (got {})", b.failure_rate),
        );
    }
    if b.open_initial.0.is_zero() || b.open_max.0 < b.open_initial.0 {
        return e("breaker", "needs 0 < open_initial <= open_max".into());
    }
    Ok(())
}
