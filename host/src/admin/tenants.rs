//! `GET /v1/tenants`: what each tenant consumes, summed over its pipelines
//! (the same counters as the per-tenant metrics), beside its quotas.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::State;
use serde_json::{Value, json};

use super::AdminState;
use crate::capability::Capability;
use crate::pipeline::Stats;

#[derive(Default)]
struct Usage {
    pipelines: Vec<String>,
    acked: u64,
    retried: u64,
    dead_lettered: u64,
    skipped: u64,
    batches: u64,
    failed_batches: u64,
    cpu_seconds: f64,
    paused_seconds: f64,
    throttled_seconds: f64,
    memory_high_water_bytes: i64,
    capability_calls: BTreeMap<&'static str, u64>,
    capability_errors: u64,
}

pub(super) async fn tenants(State(s): State<Arc<AdminState>>) -> axum::Json<Value> {
    let mut by: BTreeMap<String, Usage> = s
        .tenants
        .keys()
        .map(|t| (t.clone(), Usage::default()))
        .collect();
    for p in s.pipelines.get().into_iter().flatten() {
        let u = by.entry(p.tenant.clone()).or_default();
        let st = &p.stats;
        u.pipelines.push(p.cfg.name.clone());
        u.acked += Stats::get(&st.acked);
        u.retried += Stats::get(&st.retried);
        u.dead_lettered += Stats::get(&st.dead_lettered);
        u.skipped += Stats::get(&st.skipped);
        u.batches += Stats::get(&st.batches);
        u.failed_batches += Stats::get(&st.failed_batches);
        u.cpu_seconds += st.cpu_seconds.get();
        u.paused_seconds += st.paused_seconds.get();
        u.throttled_seconds += st.throttled_seconds.get();
        u.memory_high_water_bytes = u.memory_high_water_bytes.max(st.memory_high_water.get());
        for (c, cap) in Capability::ALL.iter().enumerate().skip(1) {
            *u.capability_calls.entry(cap.name()).or_default() += st.capability_calls[c].get();
        }
        u.capability_errors += st.capability_errors.load(Ordering::Relaxed);
    }
    let list: Vec<Value> = by
        .into_iter()
        .map(|(name, u)| {
            let limits = s.tenants.get(&name);
            json!({
                "tenant": name,
                "pipelines": u.pipelines,
                "messages": {
                    "ack": u.acked, "retry": u.retried,
                    "dead_letter": u.dead_lettered, "skipped": u.skipped,
                },
                "batches": u.batches,
                "failed_batches": u.failed_batches,
                "cpu_seconds": u.cpu_seconds,
                "paused_seconds": u.paused_seconds,
                "throttled_seconds": u.throttled_seconds,
                "memory_high_water_bytes": u.memory_high_water_bytes,
                "capability_calls": u.capability_calls,
                "capability_errors": u.capability_errors,
                "quotas": {
                    "max_messages_per_second": limits.and_then(|l| l.max_messages_per_second),
                    "max_concurrent_batches": limits.and_then(|l| l.max_concurrent_batches),
                    "cpu_share": limits.and_then(|l| l.cpu_share),
                    "memory": limits.and_then(|l| l.memory).map(|m| m.0),
                    "deadline_ms": limits.and_then(|l| l.deadline).map(|d| d.0.as_millis() as u64),
                },
            })
        })
        .collect();
    axum::Json(json!({ "tenants": list }))
}
