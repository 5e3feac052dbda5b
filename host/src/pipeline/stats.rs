//! A pipeline's counters: handles into the host's Prometheus metrics,
//! kept per pipeline so the hot path does not look labels up, and read
//! directly by tests and the admin API.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;

use crate::metrics::{Labels, Metrics, labels, reason_kind};

/// Counters per pipeline: handles into the host's Prometheus metrics, also
/// read directly by tests and the admin API.
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

/// The pipeline's labels (shared) and `more`.
fn with_base(base: &[(&'static str, Arc<str>)], more: &[(&'static str, &str)]) -> Labels {
    let mut l = base.to_vec();
    l.extend(labels(more));
    l
}

impl Stats {
    pub fn new(metrics: &Arc<Metrics>, pipeline: &str, tenant: &str, plugin: &str) -> Self {
        let base: [(&'static str, Arc<str>); 3] = [
            ("tenant", tenant.into()),
            ("plugin", plugin.into()),
            ("pipeline", pipeline.into()),
        ];
        let with = |more: &[(&'static str, &str)]| with_base(&base, more);
        let p = with(&[]);
        let outcome = |o: &str| {
            metrics
                .messages
                .get_or_create_owned(&with(&[("outcome", o)]))
        };
        let capability_calls = crate::capability::Capability::ALL.map(|c| {
            metrics
                .capability_calls
                .get_or_create_owned(&with(&[("capability", c.name())]))
        });
        Stats {
            batches: metrics.batches.get_or_create_owned(&p),
            failed_batches: Counter::default(),
            acked: outcome("ack"),
            retried: outcome("retry"),
            dead_lettered: outcome("dead_letter"),
            skipped: outcome("skipped"),
            dead_letter_failures: metrics.dead_letter_failures.get_or_create_owned(&p),
            dead_letters_held: metrics.dead_letters_held.get_or_create_owned(&p),
            pull_requests_lost: metrics.pull_requests_lost.get_or_create_owned(&p),
            captures: ["stored", "too-large", "failed"].map(|o| {
                metrics
                    .captures
                    .get_or_create_owned(&with(&[("outcome", o)]))
            }),
            held_batches: metrics.held_batches.get_or_create_owned(&p),
            held_expired: metrics.held_expired.get_or_create_owned(&p),
            effects_ledger: metrics.effects_ledger.get_or_create_owned(&p),
            effects_outbox: metrics.effects_outbox.get_or_create_owned(&p),
            outbox_relayed: metrics.effects_relayed.get_or_create_owned(&p),
            effects_reruns: metrics.effects_reruns.get_or_create_owned(&p),
            breaker_state: metrics.breaker_state.get_or_create_owned(&p),
            breaker_opened: metrics.breaker_opened.get_or_create_owned(&p),
            batch_seconds: metrics.batch_seconds.get_or_create_owned(&p),
            paused_seconds: metrics.paused_seconds.get_or_create_owned(&p),
            cpu_seconds: metrics.cpu_seconds.get_or_create_owned(&p),
            memory_high_water: metrics.memory_high_water.get_or_create_owned(&p),
            throttled_seconds: metrics.throttled_seconds.get_or_create_owned(&p),
            capability_calls,
            capability_errors: Default::default(),
            labels: base,
            metrics: metrics.clone(),
        }
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
