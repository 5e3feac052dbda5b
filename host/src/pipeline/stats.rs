//! A pipeline's counters: kept per pipeline so the hot path does not look
//! labels up, encoded into the host's Prometheus exposition on scrape
//! (see `metrics::pipelines`), and read directly by tests and the admin API.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use prometheus_client::encoding::{EncodeMetric, MetricEncoder};

use crate::metrics::pipelines::{PipelineSeries, Series};
use crate::metrics::{Labels, Metrics, labels, reason_kind};

/// Counters per pipeline, exposed on scrape and read directly by tests and
/// the admin API.
#[derive(Debug)]
pub struct Stats {
    pub batches: Counter,
    pub failed_batches: Counter,
    pub acked: Counter,
    pub retried: Counter,
    pub dead_lettered: Counter,
    /// Redriven messages addressed to other pipelines, acked unrun.
    pub skipped: Counter,
    pub dead_letter_failures: Counter,
    /// Messages held now because their dead letter could not be stored.
    pub dead_letters_held: Gauge,
    /// Captures by outcome: stored, too large, refused by the bucket.
    pub captures: [Counter; 3],
    /// Pull requests that got no answer (lost by the server) and were made again.
    pub pull_requests_lost: Counter,
    /// Batches held (not settled) because the breaker opened on a downstream outage.
    pub held_batches: Counter,
    /// Batches held past `breaker.max_hold`, back to retry accounting.
    pub held_expired: Counter,
    /// Exactly-once: origins in the ledger, publishes in the outbox.
    pub effects_ledger: Gauge,
    pub effects_outbox: Gauge,
    pub outbox_relayed: Counter,
    /// Exactly-once: batches run again without their retried messages.
    pub effects_reruns: Counter,
    /// 0 closed, 1 open, 2 half-open.
    pub breaker_state: Gauge,
    pub breaker_opened: Counter,
    batch_seconds: Histogram,
    pub paused_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    pub cpu_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Largest instance memory seen, bytes.
    pub memory_high_water: Gauge,
    pub throttled_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// Calls per capability, in `Capability::ALL` order.
    pub capability_calls: [Counter; 4],
    /// Capability calls that failed (all kinds).
    pub capability_errors: std::sync::atomic::AtomicU64,
    /// tenant, plugin, pipeline.
    labels: [(&'static str, Arc<str>); 3],
    metrics: Arc<Metrics>,
}

impl PipelineSeries for Stats {
    fn encode(&self, family: Series, enc: &mut MetricEncoder) -> Result<(), std::fmt::Error> {
        let base = &self.labels[..];
        let one =
            |enc: &mut MetricEncoder, m: &dyn EncodeMetric| m.encode(enc.encode_family(&base)?);
        let each =
            |enc: &mut MetricEncoder, key: &'static str, ms: &[(&str, &dyn EncodeMetric)]| {
                ms.iter().try_for_each(|(value, m)| {
                    m.encode(enc.encode_family(&(base, [(key, *value)].as_slice()))?)
                })
            };
        match family {
            Series::Messages => each(
                enc,
                "outcome",
                &[
                    ("ack", &self.acked),
                    ("retry", &self.retried),
                    ("dead_letter", &self.dead_lettered),
                    ("skipped", &self.skipped),
                ],
            ),
            Series::Batches => one(enc, &self.batches),
            Series::Captures => {
                let [stored, too_large, failed] = &self.captures;
                each(
                    enc,
                    "outcome",
                    &[
                        ("stored", stored),
                        ("too-large", too_large),
                        ("failed", failed),
                    ],
                )
            }
            Series::BatchSeconds => one(enc, &self.batch_seconds),
            Series::PausedSeconds => one(enc, &self.paused_seconds),
            Series::DeadLetterFailures => one(enc, &self.dead_letter_failures),
            Series::DeadLettersHeld => one(enc, &self.dead_letters_held),
            Series::PullRequestsLost => one(enc, &self.pull_requests_lost),
            Series::HeldBatches => one(enc, &self.held_batches),
            Series::EffectsLedger => one(enc, &self.effects_ledger),
            Series::EffectsOutbox => one(enc, &self.effects_outbox),
            Series::EffectsRelayed => one(enc, &self.outbox_relayed),
            Series::EffectsReruns => one(enc, &self.effects_reruns),
            Series::HeldExpired => one(enc, &self.held_expired),
            Series::BreakerState => one(enc, &self.breaker_state),
            Series::BreakerOpened => one(enc, &self.breaker_opened),
            Series::CpuSeconds => one(enc, &self.cpu_seconds),
            Series::MemoryHighWater => one(enc, &self.memory_high_water),
            Series::CapabilityCalls => {
                let all = crate::capability::Capability::ALL;
                let calls: [(&str, &dyn EncodeMetric); 4] =
                    std::array::from_fn(|i| (all[i].name(), &self.capability_calls[i] as _));
                each(enc, "capability", &calls)
            }
            Series::ThrottledSeconds => one(enc, &self.throttled_seconds),
        }
    }
}

/// The pipeline's labels (shared) and `more`.
fn with_base(base: &[(&'static str, Arc<str>)], more: &[(&'static str, &str)]) -> Labels {
    let mut l = base.to_vec();
    l.extend(labels(more));
    l
}

impl Stats {
    /// A pipeline's counters, added to the host's exposition.
    pub fn new(metrics: &Arc<Metrics>, pipeline: &str, tenant: &str, plugin: &str) -> Arc<Self> {
        let stats = Arc::new(Stats {
            batches: Counter::default(),
            failed_batches: Counter::default(),
            acked: Counter::default(),
            retried: Counter::default(),
            dead_lettered: Counter::default(),
            skipped: Counter::default(),
            dead_letter_failures: Counter::default(),
            dead_letters_held: Gauge::default(),
            pull_requests_lost: Counter::default(),
            captures: Default::default(),
            held_batches: Counter::default(),
            held_expired: Counter::default(),
            effects_ledger: Gauge::default(),
            effects_outbox: Gauge::default(),
            outbox_relayed: Counter::default(),
            effects_reruns: Counter::default(),
            breaker_state: Gauge::default(),
            breaker_opened: Counter::default(),
            batch_seconds: crate::metrics::batch_histogram(),
            paused_seconds: Counter::default(),
            cpu_seconds: Counter::default(),
            memory_high_water: Gauge::default(),
            throttled_seconds: Counter::default(),
            capability_calls: Default::default(),
            capability_errors: Default::default(),
            labels: [
                ("tenant", tenant.into()),
                ("plugin", plugin.into()),
                ("pipeline", pipeline.into()),
            ],
            metrics: metrics.clone(),
        });
        let series: Arc<dyn PipelineSeries> = stats.clone();
        metrics.pipelines.add(Arc::downgrade(&series));
        stats
    }

    fn labels_with(&self, more: &[(&'static str, &str)]) -> crate::metrics::Labels {
        with_base(&self.labels, more)
    }

    /// Records what one plugin call used (CPU, memory, capability calls).
    pub(crate) fn used(&self, u: &crate::plugin::CallUsage) {
        self.cpu_seconds.inc_by(u.cpu.as_secs_f64());
        let memory = i64::try_from(u.memory).unwrap_or(i64::MAX);
        if memory > self.memory_high_water.get() {
            self.memory_high_water.set(memory);
        }
        for (c, cap) in crate::capability::Capability::ALL.iter().enumerate() {
            let calls = u.capabilities.calls[c];
            if calls == 0 {
                continue;
            }
            self.capability_calls[c].inc_by(calls);
            for (k, kind) in crate::capability::ERROR_KINDS.iter().enumerate() {
                let n = u.capabilities.errors[c][k];
                if n > 0 {
                    self.metrics
                        .capability_errors
                        .get_or_create(
                            &self.labels_with(&[("capability", cap.name()), ("kind", kind)]),
                        )
                        .inc_by(n);
                    self.capability_errors
                        .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    }

    /// A tenant quota made a puller wait this long.
    pub(crate) fn throttled(&self, d: Duration) {
        if !d.is_zero() {
            self.throttled_seconds.inc_by(d.as_secs_f64());
        }
    }

    pub fn get(counter: &Counter) -> u64 {
        counter.get()
    }

    pub(crate) fn add(counter: &Counter, n: u64) {
        counter.inc_by(n);
    }

    pub(crate) fn batch_failed(&self, kind: &str) {
        self.failed_batches.inc();
        self.metrics
            .batch_failures
            .get_or_create(&self.labels_with(&[("kind", kind)]))
            .inc();
    }

    pub(crate) fn batch_took(&self, d: Duration) {
        self.batch_seconds.observe(d.as_secs_f64());
    }

    /// A call was paused this long for other pipelines (pacing).
    pub(crate) fn paused(&self, d: Duration) {
        if !d.is_zero() {
            self.paused_seconds.inc_by(d.as_secs_f64());
        }
    }

    pub(crate) fn dead_letter(&self, reason: &str) {
        self.dead_lettered.inc();
        self.metrics
            .dead_letters
            .get_or_create(&self.labels_with(&[("reason", reason_kind(reason))]))
            .inc();
    }

    pub(crate) fn consumer(&self, stream: &str, f: &crate::jetstream::figures::ConsumerFigures) {
        let l = self.labels_with(&[("stream", stream)]);
        let m = &self.metrics;
        let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
        m.consumer_pending.get_or_create(&l).set(n(f.pending));
        m.consumer_ack_pending
            .get_or_create(&l)
            .set(n(f.ack_pending));
        m.consumer_redelivered
            .get_or_create(&l)
            .set(n(f.redelivered));
        m.consumer_oldest_unacked_age
            .get_or_create(&l)
            .set(f.oldest_unacked_age.as_secs_f64());
        if let Some(age) = f.last_active_age {
            m.consumer_last_active_age
                .get_or_create(&l)
                .set(age.as_secs_f64());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scrape(r: &prometheus_client::registry::Registry) -> String {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, r).expect("encode");
        text
    }

    #[test]
    fn a_pipelines_series_are_exposed_while_it_lives() {
        let (metrics, registry) = Metrics::new();
        let metrics = Arc::new(metrics);
        let a = Stats::new(&metrics, "a", "t", "p");
        let b = Stats::new(&metrics, "b", "t", "p");
        a.acked.inc_by(3);
        a.capability_calls[1].inc();
        a.batch_took(Duration::from_millis(2));
        b.breaker_state.set(1);
        let text = scrape(&registry);
        for line in [
            r#"jetplug_messages_total{tenant="t",plugin="p",pipeline="a",outcome="ack"} 3"#,
            r#"jetplug_messages_total{tenant="t",plugin="p",pipeline="b",outcome="skipped"} 0"#,
            r#"jetplug_capability_calls_total{tenant="t",plugin="p",pipeline="a",capability="publish"} 1"#,
            r#"jetplug_batch_duration_seconds_count{tenant="t",plugin="p",pipeline="a"} 1"#,
            r#"jetplug_breaker_state{tenant="t",plugin="p",pipeline="b"} 1"#,
            r#"jetplug_captures_total{tenant="t",plugin="p",pipeline="b",outcome="too-large"} 0"#,
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert_eq!(text.matches("# TYPE jetplug_messages counter").count(), 1);
        assert!(text.contains(
            "# HELP jetplug_breaker_state Circuit breaker: 0 closed, 1 open, 2 half-open.\n"
        ));
        drop(b);
        let text = scrape(&registry);
        assert!(!text.contains(r#"pipeline="b""#), "{text}");
        assert!(text.contains(r#"pipeline="a""#));
    }
}
