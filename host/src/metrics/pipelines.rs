//! A pipeline's own series (about thirty, with fixed labels) are not kept
//! in the registry's label maps: each pipeline keeps its counters, and one
//! collector encodes every live pipeline's at scrape time. At ten thousand
//! pipelines the maps cost more than the counters do (a label vector and a
//! map entry per series, 2 KiB a pipeline); the exposition is the same.

use std::sync::{Arc, Mutex, Weak};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder};
use prometheus_client::metrics::MetricType;

/// A family of per-pipeline series (labels tenant, plugin, pipeline and,
/// for some, one more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Series {
    Messages,
    Batches,
    Captures,
    BatchSeconds,
    PausedSeconds,
    DeadLetterFailures,
    DeadLettersHeld,
    PullRequestsLost,
    HeldBatches,
    EffectsLedger,
    EffectsOutbox,
    EffectsRelayed,
    EffectsReruns,
    HeldExpired,
    BreakerState,
    BreakerOpened,
    CpuSeconds,
    MemoryHighWater,
    CapabilityCalls,
    ThrottledSeconds,
}

impl Series {
    pub const ALL: [Series; 20] = [
        Series::Messages,
        Series::Batches,
        Series::Captures,
        Series::BatchSeconds,
        Series::PausedSeconds,
        Series::DeadLetterFailures,
        Series::DeadLettersHeld,
        Series::PullRequestsLost,
        Series::HeldBatches,
        Series::EffectsLedger,
        Series::EffectsOutbox,
        Series::EffectsRelayed,
        Series::EffectsReruns,
        Series::HeldExpired,
        Series::BreakerState,
        Series::BreakerOpened,
        Series::CpuSeconds,
        Series::MemoryHighWater,
        Series::CapabilityCalls,
        Series::ThrottledSeconds,
    ];

    /// Name (without the `jetplug_` prefix), type and help text (ending
    /// with a full stop, as the registry's own do).
    pub fn describe(self) -> (&'static str, MetricType, &'static str) {
        use MetricType::{Counter as C, Gauge as G, Histogram as H};
        match self {
            Series::Messages => (
                "messages",
                C,
                "Messages settled, by tenant, plugin, pipeline and outcome (ack, retry, dead_letter, skipped).",
            ),
            Series::Batches => ("batches", C, "Batches run, by pipeline."),
            Series::Captures => (
                "captures",
                C,
                "Captured plugin calls, by pipeline and outcome (stored, too-large: past capture_max_size, failed: the bucket refused it).",
            ),
            Series::BatchSeconds => (
                "batch_duration_seconds",
                H,
                "Time a plugin spent on a batch.",
            ),
            Series::PausedSeconds => (
                "plugin_paused_seconds",
                C,
                "Time plugin calls were paused so that other pipelines could run (slow lane pacing).",
            ),
            Series::DeadLetterFailures => (
                "dead_letter_failures",
                C,
                "Attempts to store a dead letter that the route did not take (the message is held and tried again).",
            ),
            Series::DeadLettersHeld => (
                "dead_letters_held",
                G,
                "Messages held now because their dead letter cannot be stored (alert when above 0).",
            ),
            Series::PullRequestsLost => (
                "pull_requests_lost",
                C,
                "Pull requests the server never answered (lost in a leader change or while a consumer settled), asked again.",
            ),
            Series::HeldBatches => (
                "held_batches",
                C,
                "Times a batch was held (kept and run again, no delivery spent) because a downstream is out.",
            ),
            Series::EffectsLedger => (
                "effects_ledger_entries",
                G,
                "Exactly-once pipelines: origins in the ledger now (pruned after effects_retention).",
            ),
            Series::EffectsOutbox => (
                "effects_outbox_queued",
                G,
                "Exactly-once pipelines: committed publishes not yet relayed to JetStream (alert when it grows).",
            ),
            Series::EffectsRelayed => (
                "effects_relayed",
                C,
                "Exactly-once pipelines: publishes relayed from the outbox.",
            ),
            Series::EffectsReruns => (
                "effects_reruns",
                C,
                "Exactly-once pipelines: runs of a batch again without the messages that asked to retry.",
            ),
            Series::HeldExpired => (
                "held_expired",
                C,
                "Batches held longer than breaker.max_hold, returned to retry accounting.",
            ),
            Series::BreakerState => (
                "breaker_state",
                G,
                "Circuit breaker: 0 closed, 1 open, 2 half-open.",
            ),
            Series::BreakerOpened => ("breaker_opened", C, "Times the circuit breaker opened."),
            Series::CpuSeconds => (
                "plugin_cpu_seconds",
                C,
                "Time plugin calls were running (wasm or host code, not waiting on a downstream), by tenant, plugin and pipeline.",
            ),
            Series::MemoryHighWater => (
                "instance_memory_high_water_bytes",
                G,
                "Largest linear memory of the pipeline's plugin instances, by tenant, plugin and pipeline.",
            ),
            Series::CapabilityCalls => (
                "capability_calls",
                C,
                "Capability calls (publish, sql, kv), by tenant, plugin, pipeline and capability.",
            ),
            Series::ThrottledSeconds => (
                "tenant_throttled_seconds",
                C,
                "Time a tenant's pullers waited for its limits.max_messages_per_second, by tenant and pipeline.",
            ),
        }
    }
}

/// What a pipeline's counters do at scrape time.
pub trait PipelineSeries: std::fmt::Debug + Send + Sync {
    /// Encodes this pipeline's series of `family`, one per label set.
    fn encode(&self, family: Series, encoder: &mut MetricEncoder) -> Result<(), std::fmt::Error>;
}

/// The live pipelines, registered once as a collector; a pipeline that is
/// dropped leaves the exposition with it.
#[derive(Debug, Clone, Default)]
pub struct Pipelines(Arc<Mutex<Entries>>);

#[derive(Debug, Default)]
struct Entries {
    list: Vec<Weak<dyn PipelineSeries>>,
    /// Length after the last sweep of dropped entries (sweeps are amortized).
    swept: usize,
}

impl Pipelines {
    /// Adds a pipeline's counters to the exposition.
    pub fn add(&self, pipeline: Weak<dyn PipelineSeries>) {
        let mut e = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if e.list.len() >= 2 * e.swept.max(64) {
            e.list.retain(|w| w.strong_count() > 0);
            e.swept = e.list.len();
        }
        e.list.push(pipeline);
    }

    fn live(&self) -> Vec<Arc<dyn PipelineSeries>> {
        let e = self.0.lock().unwrap_or_else(|p| p.into_inner());
        e.list.iter().filter_map(Weak::upgrade).collect()
    }
}

impl Collector for Pipelines {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let live = self.live();
        for family in Series::ALL {
            let (name, kind, help) = family.describe();
            let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
            for p in &live {
                p.encode(family, &mut metric)?;
            }
        }
        Ok(())
    }
}
