//! Shadow rollouts, fleet-wide: each host's report in the fleet's KV, the
//! merged report, and the end of the window.
//!
//! Why reports go to the KV: a shadow's evidence is spread over every
//! host that ran it, and the CLI (or whichever host decides at the end of
//! the window) must see all of it without knowing the hosts. Each host
//! writes its own report under `NAME.shadow.HOST` every few seconds and
//! when the shadow ends; a report carries the rollout's id, so reports of
//! an earlier shadow are never mixed in. A host that dies mid-shadow loses
//! nothing but its last few seconds of comparisons: the shadow settles no
//! message.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::kv;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::Swapper;
use super::fleet::{Fleet, FleetError};
use super::rollout::{Ended, Outcome, Rollout, ShadowRules, host_name, now};
use crate::metrics::labels;
use crate::plugin::Shadow;
use crate::plugin::shadow::Summary;

/// How often a host writes its report while a shadow runs.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// One host's report, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostReport {
    pub host: String,
    pub at: String,
    pub summary: Summary,
}

/// Every host's report of a shadow, merged.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Merged {
    pub hosts: Vec<String>,
    pub batches: u64,
    pub messages: u64,
    pub agreed: u64,
    pub disagreements: BTreeMap<String, u64>,
    pub examples: Vec<crate::plugin::shadow::Example>,
    /// Per host: live and shadow figures (rates, p99, peak memory).
    pub versions: Vec<HostReport>,
}

impl Merged {
    pub fn agreement(&self) -> f64 {
        if self.messages == 0 {
            1.0
        } else {
            self.agreed as f64 / self.messages as f64
        }
    }
}

fn key(plugin: &str, host: &str) -> String {
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("{plugin}.shadow.{host}")
}

/// Writes this host's report of `shadow` and its metrics.
pub(super) async fn report(fleet: &Fleet, swapper: &Swapper, name: &str, shadow: &Shadow) {
    let summary = shadow.summary();
    let m = swapper.metrics();
    let plugin = [("plugin", name)];
    m.shadow_messages
        .get_or_create(&labels(&plugin))
        .set(i64::try_from(summary.report.messages).unwrap_or(i64::MAX));
    m.shadow_agreed
        .get_or_create(&labels(&plugin))
        .set(i64::try_from(summary.report.agreed).unwrap_or(i64::MAX));
    for (kind, n) in &summary.report.disagreements {
        m.shadow_disagreements
            .get_or_create(&labels(&[("plugin", name), ("kind", kind)]))
            .set(i64::try_from(*n).unwrap_or(i64::MAX));
    }
    let host = host_name();
    let r = HostReport {
        host: host.clone(),
        at: now(),
        summary,
    };
    let Ok(json) = serde_json::to_vec(&r) else {
        return;
    };
    if let Err(e) = fleet.kv.put(key(name, &host), json.into()).await {
        tracing::warn!(plugin = %name, error = %e, "cannot write this host's shadow report");
    }
}

/// A running shadow's second: its report now and then, and at the end of
/// its window the fleet's verdict.
pub(super) async fn tick(
    fleet: &Fleet,
    swapper: &Swapper,
    name: &str,
    r: &Rollout,
    rules: &ShadowRules,
) {
    let Some(shadow) = swapper.slots().get(name).and_then(|s| s.shadow()) else {
        return;
    };
    if shadow.id != r.id {
        return;
    }
    let elapsed = humantime::parse_rfc3339(&r.started_at)
        .ok()
        .and_then(|t| SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    let over = elapsed >= Duration::from_secs(rules.for_secs);
    if over || elapsed.as_secs().is_multiple_of(REPORT_EVERY.as_secs()) {
        report(fleet, swapper, name, &shadow).await;
    }
    if !over {
        return;
    }
    let merged = match merged(fleet, name, &r.id).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(plugin = %name, error = %e, "cannot read the shadow's reports; trying again");
            return;
        }
    };
    let agreement = merged.agreement();
    let summary = format!(
        "{} messages compared on {} host(s), agreement {:.4}{}",
        merged.messages,
        merged.hosts.len(),
        agreement,
        if merged.disagreements.is_empty() {
            String::new()
        } else {
            format!(", disagreements {:?}", merged.disagreements)
        }
    );
    let (outcome, reason) = match rules.promote_if {
        Some(want) if merged.messages > 0 && agreement >= want => (
            Outcome::Promoted,
            format!("{summary}: at least {want} agreed"),
        ),
        Some(want) => (
            Outcome::Finished,
            format!("{summary}: below {want}, not promoted"),
        ),
        None => (Outcome::Finished, summary),
    };
    let ended = Ended {
        outcome,
        at: now(),
        reason,
        by: host_name(),
        live: None,
        candidate: None,
    };
    match fleet.end_canary(name, Some(&r.id), ended).await {
        Ok(_) | Err(FleetError::CanaryEnded(_)) | Err(FleetError::NoCanary(_)) => {}
        Err(e) => tracing::warn!(plugin = %name, error = %e,
            "cannot record the shadow's end; trying again in a second"),
    }
}

/// Every host's report of shadow `id` of `plugin`, merged.
pub async fn merged(fleet: &Fleet, plugin: &str, id: &str) -> Result<Merged, FleetError> {
    let prefix = format!("{plugin}.shadow.");
    let read = |e: &dyn std::fmt::Display| FleetError::Read {
        plugin: plugin.to_owned(),
        bucket: fleet.bucket.clone(),
        reason: e.to_string(),
    };
    let mut out = Merged::default();
    let mut keys = fleet.kv.keys().await.map_err(|e| read(&e))?;
    let mut mine = Vec::new();
    while let Some(k) = keys.next().await {
        let k = k.map_err(|e| read(&e))?;
        if k.starts_with(&prefix) {
            mine.push(k);
        }
    }
    for k in mine {
        let Some(e) = fleet.kv.entry(&k).await.map_err(|e| read(&e))? else {
            continue;
        };
        if e.operation != kv::Operation::Put {
            continue;
        }
        let Ok(r) = serde_json::from_slice::<HostReport>(&e.value) else {
            continue;
        };
        if r.summary.id != id {
            continue;
        }
        let s = &r.summary.report;
        out.hosts.push(r.host.clone());
        out.batches += s.batches;
        out.messages += s.messages;
        out.agreed += s.agreed;
        for (kind, n) in &s.disagreements {
            *out.disagreements.entry(kind.clone()).or_default() += n;
        }
        for ex in &s.examples {
            if out.examples.iter().filter(|e| e.kind == ex.kind).count() < 5 {
                out.examples.push(ex.clone());
            }
        }
        out.versions.push(r);
    }
    Ok(out)
}
