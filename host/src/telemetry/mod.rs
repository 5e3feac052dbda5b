//! OpenTelemetry traces: a message's W3C trace context (`traceparent`,
//! `tracestate`) flows from its producer through the host's span for
//! handling it, the plugin's capability calls, and into the messages the
//! plugin publishes.
//!
//! Export is optional (`[telemetry] endpoint`) and must never slow or fail
//! message handling: finished spans go into a bounded queue that a
//! background thread sends over OTLP/HTTP; a span that does not fit is
//! dropped and counted (`jetplug_trace_spans_total{outcome}`), never waited
//! for. With export off, no span is created at all.

pub mod context;
mod export;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use crate::config::{OtlpProtocol, TelemetryConfig};

pub use context::CallTrace;

/// The target of every span the host creates for tracing (log filters may
/// name it; the log output leaves these spans out).
pub const TARGET: &str = "jetplug::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported (set once, when the layer is installed).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Why trace export could not start.
#[derive(Debug, thiserror::Error)]
#[error("telemetry.endpoint: cannot set up the OTLP exporter: {0}")]
pub struct TelemetryError(String);

/// The running exporter; [`Telemetry::shutdown`] sends what is queued.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes queued spans (bounded by `timeout`) and stops the exporter.
    pub fn shutdown(self, timeout: Duration) {
        if let Err(e) = self.provider.shutdown_with_timeout(timeout) {
            tracing::warn!(error = %e, "trace export did not finish cleanly");
        }
    }
}

/// The tracing layer that turns the host's spans into OpenTelemetry spans
/// and exports them, when `config` has an endpoint; `None` otherwise.
pub fn layer<S>(
    config: &TelemetryConfig,
) -> Result<Option<(impl Layer<S> + use<S>, Telemetry)>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
{
    let Some(url) = config.traces_url() else {
        return Ok(None);
    };
    let protocol = match config.protocol {
        OtlpProtocol::HttpProtobuf => Protocol::HttpBinary,
        OtlpProtocol::HttpJson => Protocol::HttpJson,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(protocol)
        .with_endpoint(url)
        .with_timeout(config.export_timeout.0)
        .build()
        .map_err(|e| TelemetryError(e.to_string()))?;
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attributes(
            config
                .resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(export::BoundedProcessor::new(exporter, config.queue_size))
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build();
    let tracer = provider.tracer("jetplug");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
            meta.target() == TARGET
        }));
    ENABLED.store(true, Ordering::Relaxed);
    Ok(Some((layer, Telemetry { provider })))
}
