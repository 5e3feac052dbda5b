//! Prometheus metrics. One registry per host; each pipeline keeps its own
//! counters (encoded by [`pipelines::Pipelines`] on scrape) and takes
//! handles for the few series whose labels vary at run time, so the hot
//! path only increments atomics.

pub mod pipelines;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;
use std::sync::LazyLock;
use std::sync::atomic::AtomicU64;

/// Spans for trace export by outcome: `exported`, `dropped` (queue full),
/// `failed` (export error). Global because the exporter runs outside any
/// host; registered as `jetplug_trace_spans_total`.
pub static SPANS: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

/// JetStream publishes retried under `[nats.publish]`, by source
/// (`plugin`, `dead-letter`). Global: the retry sits below the pipelines;
/// registered as `jetplug_publish_retries_total`.
pub static PUBLISH_RETRIES: LazyLock<Family<Labels, Counter>> = LazyLock::new(Family::default);

/// Label keys are names in this file; values are shared (`Arc<str>`), so
/// the thirty series of a pipeline hold its tenant, plugin and pipeline
/// names once, not thirty times (a fifth of an idle pipeline's memory).
pub type Labels = Vec<(&'static str, std::sync::Arc<str>)>;

/// Buckets of `jetplug_batch_duration_seconds`.
pub fn batch_histogram() -> Histogram {
    // 0.5 ms .. ~16 s
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Every metric the host exports (names are prefixed `jetplug_`).
#[derive(Debug)]
pub struct Metrics {
    pub batch_failures: Family<Labels, Counter>,
    pub dead_letters: Family<Labels, Counter>,
    pub consumer_pending: Family<Labels, Gauge>,
    pub consumer_ack_pending: Family<Labels, Gauge>,
    pub consumer_redelivered: Family<Labels, Gauge>,
    pub consumer_oldest_unacked_age: Family<Labels, Gauge<f64, AtomicU64>>,
    pub consumer_last_active_age: Family<Labels, Gauge<f64, AtomicU64>>,
    pub stream_messages: Family<Labels, Gauge>,
    pub stream_bytes: Family<Labels, Gauge>,
    pub stream_first_sequence: Family<Labels, Gauge>,
    pub stream_last_sequence: Family<Labels, Gauge>,
    pub stream_oldest_age: Family<Labels, Gauge<f64, AtomicU64>>,
    pub stream_consumers: Family<Labels, Gauge>,
    /// 1 when the host is ready (`/readyz` 200), else 0; set on scrape.
    pub ready: Gauge,
    /// 1 while connected to NATS, else 0; set on scrape.
    pub nats_connected: Gauge,
    pub plugin_info: Family<Labels, Gauge>,
    pub plugin_swaps: Family<Labels, Counter>,
    pub canary_percent: Family<Labels, Gauge>,
    pub canary_messages: Family<Labels, Gauge>,
    pub canary_decisions: Family<Labels, Counter>,
    pub shadow_messages: Family<Labels, Gauge>,
    pub shadow_agreed: Family<Labels, Gauge>,
    pub shadow_disagreements: Family<Labels, Gauge>,
    pub config_reloads: Family<Labels, Counter>,
    pub capability_errors: Family<Labels, Counter>,
    pub tenant_quota: Family<Labels, Gauge>,
    /// Every pipeline's own series, encoded on scrape.
    pub pipelines: pipelines::Pipelines,
    /// Every series name exposed (`jetplug_messages_total`, ...).
    pub series: Vec<String>,
}

impl Metrics {
    /// The metrics and the registry that encodes them.
    pub fn new() -> (Metrics, Registry) {
        let m = Metrics {
            batch_failures: Family::default(),
            dead_letters: Family::default(),
            consumer_pending: Family::default(),
            consumer_ack_pending: Family::default(),
            consumer_redelivered: Family::default(),
            consumer_oldest_unacked_age: Family::default(),
            consumer_last_active_age: Family::default(),
            stream_messages: Family::default(),
            stream_bytes: Family::default(),
            stream_first_sequence: Family::default(),
            stream_last_sequence: Family::default(),
            stream_oldest_age: Family::default(),
            stream_consumers: Family::default(),
            ready: Gauge::default(),
            nats_connected: Gauge::default(),
            plugin_info: Family::default(),
            plugin_swaps: Family::default(),
            canary_percent: Family::default(),
            canary_messages: Family::default(),
            canary_decisions: Family::default(),
            shadow_messages: Family::default(),
            shadow_agreed: Family::default(),
            shadow_disagreements: Family::default(),
            config_reloads: Family::default(),
            capability_errors: Family::default(),
            tenant_quota: Family::default(),
            pipelines: Default::default(),
            series: Vec::new(),
        };
        let mut r = Registry::with_prefix("jetplug");
        let mut series = Vec::new();
        macro_rules! reg {
            ($name:expr, $help:expr, $metric:expr $(,)?) => {{
                let metric = $metric;
                series.extend(series_of($name, type_of(&metric)));
                r.register($name, $help, metric);
            }};
        }
        reg!(
            "trace_spans",
            "Spans for trace export, by outcome (exported, dropped: the queue was full, failed: the collector refused or did not answer)",
            SPANS.clone(),
        );
        reg!(
            "publish_retries",
            "JetStream publishes retried after a transient failure ([nats.publish]), by source (plugin, dead-letter)",
            PUBLISH_RETRIES.clone(),
        );
        reg!(
            "batch_failures",
            "Failed batches, by pipeline and kind (trap, deadline, memory-limit, ...)",
            m.batch_failures.clone(),
        );
        reg!(
            "dead_letters",
            "Dead letters delivered, by pipeline and reason kind",
            m.dead_letters.clone(),
        );
        reg!(
            "consumer_pending",
            "Messages not yet delivered to the consumer",
            m.consumer_pending.clone(),
        );
        reg!(
            "consumer_ack_pending",
            "Messages delivered and not yet settled",
            m.consumer_ack_pending.clone(),
        );
        reg!(
            "consumer_redelivered",
            "Messages delivered more than once and not yet settled",
            m.consumer_redelivered.clone(),
        );
        reg!(
            "consumer_oldest_unacked_age_seconds",
            "Age of the oldest message the consumer has not settled (0 when none)",
            m.consumer_oldest_unacked_age.clone(),
        );
        reg!(
            "consumer_last_active_age_seconds",
            "Seconds since the consumer last delivered a message",
            m.consumer_last_active_age.clone(),
        );
        reg!(
            "stream_messages",
            "Messages in the stream (JetStream API)",
            m.stream_messages.clone(),
        );
        reg!(
            "stream_bytes",
            "Bytes in the stream (JetStream API)",
            m.stream_bytes.clone(),
        );
        reg!(
            "stream_first_sequence",
            "The stream's first retained sequence",
            m.stream_first_sequence.clone(),
        );
        reg!(
            "stream_last_sequence",
            "The stream's last sequence",
            m.stream_last_sequence.clone(),
        );
        reg!(
            "stream_oldest_message_age_seconds",
            "Age of the stream's oldest message (0 when empty)",
            m.stream_oldest_age.clone(),
        );
        reg!(
            "stream_consumers",
            "Consumers on the stream",
            m.stream_consumers.clone(),
        );
        reg!(
            "ready",
            "1 when the host is ready (connected, every consumer bound), else 0",
            m.ready.clone(),
        );
        reg!(
            "nats_connected",
            "1 while the host is connected to NATS, else 0",
            m.nats_connected.clone(),
        );
        reg!(
            "plugin_info",
            "Plugin versions: 1 for the running version, 0 for one swapped out",
            m.plugin_info.clone(),
        );
        reg!(
            "plugin_swaps",
            "Hot-swap attempts, by plugin and outcome (swapped, unchanged, load, init, ...)",
            m.plugin_swaps.clone(),
        );
        reg!(
            "canary_percent",
            "Share of the messages a canary version takes on this host (0 when none runs)",
            m.canary_percent.clone(),
        );
        reg!(
            "canary_messages",
            "Messages each version handled on this host during the running canary, by version (live, candidate)",
            m.canary_messages.clone(),
        );
        reg!(
            "canary_decisions",
            "Canaries ended, by plugin and outcome (promoted, rolled-back, aborted)",
            m.canary_decisions.clone(),
        );
        reg!(
            "shadow_messages",
            "Messages the running (or last) shadow compared on this host",
            m.shadow_messages.clone(),
        );
        reg!(
            "shadow_agreed",
            "Of those, messages on which the shadow agreed with the live version",
            m.shadow_agreed.clone(),
        );
        reg!(
            "shadow_disagreements",
            "Disagreements the running (or last) shadow found on this host, by kind (decision, sql, publish, kv, error)",
            m.shadow_disagreements.clone(),
        );
        reg!(
            "config_reloads",
            "Edits of the configuration file, by outcome (applied, restart-needed, refused, invalid)",
            m.config_reloads.clone(),
        );
        reg!(
            "capability_errors",
            "Capability calls that failed, by tenant, plugin, pipeline, capability and kind (access-denied, not-found, unavailable, invalid, other)",
            m.capability_errors.clone(),
        );
        reg!(
            "tenant_quota",
            "A tenant's configured limits, by tenant and quota (max_messages_per_second, max_concurrent_batches)",
            m.tenant_quota.clone(),
        );
        for family in pipelines::Series::ALL {
            let (name, kind, _) = family.describe();
            series.extend(series_of(name, kind));
        }
        r.register_collector(Box::new(m.pipelines.clone()));
        (Metrics { series, ..m }, r)
    }
}

fn type_of<M: TypedMetric>(_: &M) -> MetricType {
    M::TYPE
}

/// The series a metric family named `name` exposes.
fn series_of(name: &str, kind: MetricType) -> Vec<String> {
    let name = format!("jetplug_{name}");
    match kind {
        MetricType::Counter => vec![format!("{name}_total")],
        MetricType::Histogram => ["_bucket", "_sum", "_count"]
            .iter()
            .map(|s| format!("{name}{s}"))
            .collect(),
        _ => vec![name],
    }
}

/// Label set helper.
pub fn labels(pairs: &[(&'static str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (*k, std::sync::Arc::from(*v)))
        .collect()
}

/// The kind of a dead-letter reason, for a low-cardinality label.
pub fn reason_kind(reason: &str) -> &'static str {
    const KINDS: [&str; 7] = [
        "log-flood",
        "trap",
        "deadline",
        "memory-limit",
        "wrong-decision-count",
        "instantiate",
        "init",
    ];
    if let Some(k) = KINDS.iter().find(|k| reason.starts_with(&format!("{k}:"))) {
        return k;
    }
    if reason.starts_with("retries exhausted") {
        "retries-exhausted"
    } else if reason.starts_with("undeliverable") {
        "undeliverable"
    } else if reason.starts_with("no decision") {
        "no-decision"
    } else if reason.starts_with("max deliveries") {
        "max-deliveries"
    } else {
        "term"
    }
}

/// Every series name the host can expose (`jetplug_messages_total`,
/// `jetplug_batch_duration_seconds_bucket`, ...), for checks that docs and
/// dashboards name real metrics.
pub fn series_names() -> Vec<String> {
    Metrics::new().0.series
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_kinds() {
        assert_eq!(reason_kind("trap: plugin `p` trapped"), "trap");
        assert_eq!(reason_kind("memory-limit: ..."), "memory-limit");
        assert_eq!(reason_kind("retries exhausted: ..."), "retries-exhausted");
        assert_eq!(reason_kind("max deliveries (5) reached"), "max-deliveries");
        assert_eq!(
            reason_kind("no decision on the last delivery (5 of 5): ..."),
            "no-decision"
        );
        assert_eq!(reason_kind("payload is not JSON"), "term");
    }

    #[test]
    fn every_family_is_listed_with_its_series_suffix() {
        let names = series_names();
        assert!(
            names.contains(&"jetplug_messages_total".to_owned()),
            "{names:?}"
        );
        assert!(names.contains(&"jetplug_batch_duration_seconds_bucket".to_owned()));
        assert!(names.contains(&"jetplug_breaker_state".to_owned()));
        assert!(names.len() >= 20, "{names:?}");
    }

    #[test]
    fn pipeline_help_texts_end_like_the_registrys() {
        for family in pipelines::Series::ALL {
            let (name, _, help) = family.describe();
            assert!(
                help.ends_with('.') && !help.ends_with(".."),
                "{name}: {help}"
            );
        }
    }
}
