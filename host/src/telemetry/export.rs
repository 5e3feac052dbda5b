//! A bounded span queue in front of the OTLP exporter, with counts of what
//! was exported, dropped (queue full) and failed (the collector refused or
//! did not answer), so an unreachable collector shows in the metrics and
//! never holds up the code that ends a span.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};

use crate::metrics::{SPANS, labels};

fn count(outcome: &str, n: usize) {
    SPANS
        .get_or_create(&labels(&[("outcome", outcome)]))
        .inc_by(n as u64);
}

/// Spans per export request.
const BATCH: usize = 512;
/// How often queued spans are sent when fewer than a batch are waiting.
const DELAY: Duration = Duration::from_secs(1);

/// Queues at most `max` finished spans; the rest are dropped and counted.
#[derive(Debug)]
pub struct BoundedProcessor {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    max: usize,
}

impl BoundedProcessor {
    pub fn new<E: SpanExporter + 'static>(exporter: E, max: usize) -> Self {
        let queued = Arc::new(AtomicUsize::new(0));
        let exporter = Counting {
            inner: exporter,
            queued: queued.clone(),
        };
        // The inner queue has room for everything this one lets through,
        // so the counts here are exact.
        let config = BatchConfigBuilder::default()
            .with_max_queue_size(max + BATCH)
            .with_max_export_batch_size(BATCH)
            .with_scheduled_delay(DELAY)
            .build();
        BoundedProcessor {
            inner: BatchSpanProcessor::builder(exporter)
                .with_batch_config(config)
                .build(),
            queued,
            max,
        }
    }
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            count("dropped", 1);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter, counting each batch's outcome and freeing its queue room.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
    queued: Arc<AtomicUsize>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::AcqRel);
        let result = self.inner.export(batch).await;
        count(if result.is_ok() { "exported" } else { "failed" }, n);
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
