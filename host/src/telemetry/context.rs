//! Trace context in and out: the spans for a batch and its messages (each
//! message's span a child of the `traceparent` it arrived with), the span a
//! plugin call's capability calls hang under, and `traceparent` on the
//! messages a plugin publishes.
//!
//! A plugin handles a batch in one call, so its capability calls cannot be
//! told apart by message: a batch of one runs under that message's span; a
//! larger batch runs under a batch span linked to every message's span.

use std::sync::{Arc, Mutex};

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{Status, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::{TARGET, enabled};
use crate::bindings::Message;

/// The span a plugin call runs under, shared by the instance's capabilities
/// (set for each call, `Span::none()` between calls and with export off).
#[derive(Debug, Clone, Default)]
pub struct CallTrace(Arc<Mutex<Option<Span>>>);

impl CallTrace {
    pub fn set(&self, span: Option<Span>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = span;
    }

    /// A span for one capability call, child of the call's span.
    pub fn capability(&self, capability: &'static str, op: &'static str, target: &str) -> Span {
        if !enabled() {
            return Span::none();
        }
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(parent) = guard.as_ref().filter(|s| !s.is_disabled()) else {
            return Span::none();
        };
        tracing::info_span!(target: TARGET, parent: parent, "capability",
            otel.name = %format!("{capability} {op}"), otel.kind = "client",
            jetplug.capability = capability, jetplug.target = target)
    }

    /// A plugin's log line, as an event on the call's span.
    pub fn log(&self, level: &'static str, message: &str) {
        if !enabled() {
            return;
        }
        let guard = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(span) = guard.as_ref().filter(|s| !s.is_disabled()) {
            span.add_event(
                "log",
                vec![
                    opentelemetry::KeyValue::new("level", level),
                    opentelemetry::KeyValue::new("message", message.to_owned()),
                ],
            );
        }
    }
}

/// Marks `span` as failed with `error`.
pub fn fail(span: &Span, error: &dyn std::fmt::Display) {
    if !span.is_disabled() {
        span.set_status(Status::error(error.to_string()));
    }
}

/// Adds `span`'s `traceparent`/`tracestate` to `headers`, unless the
/// plugin set a `traceparent` itself (a dead letter keeps its original).
pub fn inject(span: &Span, headers: &mut HeaderMap) {
    if span.is_disabled() || headers.get("traceparent").is_some() {
        return;
    }
    TraceContextPropagator::new().inject_context(&span.context(), &mut HeaderInjector(headers));
}

/// The trace context a message arrived with, if it carries a valid one.
pub fn extract(headers: &[(String, String)]) -> Option<opentelemetry::Context> {
    let cx = TraceContextPropagator::new().extract(&Headers(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

/// The spans of one batch: one per message, and the one the plugin call
/// runs under.
#[derive(Debug, Default)]
pub struct BatchTrace {
    messages: Vec<Span>,
    call: Option<Span>,
}

impl BatchTrace {
    /// Spans for `msgs` (nothing with export off).
    pub fn start(pipeline: &str, plugin: &str, msgs: &[Message]) -> Self {
        if !enabled() {
            return BatchTrace::default();
        }
        let messages: Vec<Span> = msgs
            .iter()
            .map(|m| {
                let span = tracing::info_span!(target: TARGET, parent: None, "message",
                    otel.name = %format!("process {}", m.subject), otel.kind = "consumer",
                    messaging.system = "nats", messaging.destination.name = %m.subject,
                    messaging.nats.stream = %m.stream, messaging.nats.sequence = m.stream_seq,
                    messaging.nats.delivered = m.delivered, jetplug.pipeline = pipeline,
                    jetplug.plugin = plugin, jetplug.decision = tracing::field::Empty);
                if let Some(cx) = extract(&m.headers) {
                    let _ = span.set_parent(cx);
                }
                span
            })
            .collect();
        let call = if messages.len() == 1 {
            messages[0].clone()
        } else {
            let batch = tracing::info_span!(target: TARGET, parent: None, "batch",
                otel.name = %format!("process batch {pipeline}"), otel.kind = "consumer",
                jetplug.pipeline = pipeline, jetplug.plugin = plugin,
                messaging.batch.message_count = messages.len());
            for m in &messages {
                batch.add_link(m.context().span().span_context().clone());
            }
            batch
        };
        BatchTrace {
            messages,
            call: Some(call),
        }
    }

    /// The span the plugin call runs under (none with export off).
    pub fn call(&self) -> Option<Span> {
        self.call.clone()
    }

    /// Records the host's decision for the message at `index`.
    pub fn decided(&self, index: usize, decision: &str) {
        if let Some(span) = self.messages.get(index) {
            span.record("jetplug.decision", decision);
        }
    }

    /// The trace of the message at `index` alone (a message run again on
    /// its own after its batch failed).
    pub fn only(&self, index: usize) -> BatchTrace {
        match self.messages.get(index) {
            Some(span) => BatchTrace {
                messages: vec![span.clone()],
                call: Some(span.clone()),
            },
            None => BatchTrace::default(),
        }
    }

    /// Marks the call failed (the whole batch).
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        if let Some(call) = &self.call {
            fail(call, error);
        }
    }
}

struct Headers<'a>(&'a [(String, String)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_a_valid_traceparent_only() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cx = extract(&[("Traceparent".into(), tp.into())]).expect("valid");
        assert_eq!(
            cx.span().span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(extract(&[("traceparent".into(), "00-garbage".into())]).is_none());
        assert!(extract(&[]).is_none());
    }

    #[test]
    fn nothing_is_traced_with_export_off() {
        let t = BatchTrace::start("p", "plugin", &[]);
        assert!(t.call().is_none());
        let call = CallTrace::default();
        assert!(call.capability("sql", "query", "db").is_disabled());
        let mut headers = HeaderMap::new();
        inject(&Span::none(), &mut headers);
        assert!(headers.get("traceparent").is_none());
    }
}
