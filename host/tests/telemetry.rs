//! Trace context and OTLP export, against a real nats-server, PostgreSQL,
//! a `jetplug run` process and an OTLP/HTTP receiver started here (it
//! decodes the protobuf requests with `opentelemetry-proto`): the chain
//! producer → host message span → plugin capability spans → published
//! message, batches linked to their messages, dead letters keeping the
//! original trace headers, and an unresponsive collector that neither slows
//! nor fails message handling (its spans dropped and counted).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use futures::StreamExt;
use jetplug_tests::{
    HostProcess, NatsServer, Postgres, TestConfig, eventually, free_port, http_get, plugins,
};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;

const WAIT: Duration = Duration::from_secs(60);

/// Spans received by the test's OTLP endpoint.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<Span>>>);

impl Received {
    fn spans(&self) -> Vec<Span> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// An OTLP/HTTP (protobuf) receiver on a free port; returns its base URL.
async fn receiver(received: Received) -> anyhow::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let received = received.clone();
            async move {
                let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                    return axum::http::StatusCode::BAD_REQUEST;
                };
                let mut spans = received.0.lock().unwrap_or_else(|e| e.into_inner());
                for rs in req.resource_spans {
                    for ss in rs.scope_spans {
                        spans.extend(ss.spans);
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(format!("http://{addr}"))
}

fn config(
    dir: &Path,
    nats: &str,
    pg: &str,
    admin: &str,
    telemetry: &str,
) -> anyhow::Result<std::path::PathBuf> {
    TestConfig::new(dir, nats)
        .set("admin", "address", admin)
        .table("telemetry")
        .merge("telemetry", telemetry)?
        .stream("EVENTS", &["events.>"])
        .stream("OUT", &["out.>"])
        .stream("DLQ", &["dlq.>"])
        .database("db", pg)
        .table("kv.cache")
        .plugin("caps", plugins::TEST_CAPABILITIES)
        .set("plugin.caps.grants", "sql", vec!["db"])
        .set("plugin.caps.grants", "publish", vec!["out.>"])
        .set("plugin.caps.grants", "kv", vec!["cache"])
        .pipeline("main", &["EVENTS"], "caps")
        .unset("pipeline.main", "batch_max_wait")
        .write_in(dir)
}

/// A `jetplug run` with `[telemetry]` set to `telemetry`, ready; its admin
/// address and a JetStream context.
async fn start_host(
    dir: &Path,
    nats: &NatsServer,
    pg: &Postgres,
    telemetry: &str,
) -> anyhow::Result<(HostProcess, String, jetstream::Context)> {
    let admin = format!("127.0.0.1:{}", free_port()?);
    let path = config(dir, &nats.url(), &pg.url(), &admin, telemetry)?;
    let host = HostProcess::start(
        env!("CARGO_BIN_EXE_jetplug"),
        &path,
        admin.clone(),
        dir.join("host.log"),
    )?;
    host.ready().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    Ok((host, admin, js))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn attr(span: &Span, key: &str) -> Option<String> {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.clone())
        .map(|v| match v {
            Value::StringValue(s) => s,
            Value::IntValue(i) => i.to_string(),
            other => format!("{other:?}"),
        })
}

/// A producer's trace context: (traceparent, trace id, span id).
fn producer(n: u8) -> (String, String, String) {
    let trace = format!(
        "{:032x}",
        0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4700u128 + u128::from(n)
    );
    let span = format!("{:016x}", 0x00f0_67aa_0ba9_0200u64 + u64::from(n));
    (format!("00-{trace}-{span}-01"), trace, span)
}

async fn publish_traced(
    js: &jetstream::Context,
    subject: &str,
    payload: &str,
    traceparent: Option<&str>,
) -> anyhow::Result<()> {
    let mut headers = HeaderMap::new();
    if let Some(tp) = traceparent {
        headers.insert("traceparent", tp);
        headers.insert("tracestate", "vendor=producer");
    }
    js.publish_with_headers(subject.to_owned(), headers, payload.to_owned().into())
        .await?
        .await?;
    Ok(())
}

/// The headers of every message in `stream`, in order.
async fn headers_in(
    js: &jetstream::Context,
    stream: &str,
    want: usize,
) -> anyhow::Result<Vec<HeaderMap>> {
    let consumer = js
        .get_stream(stream)
        .await?
        .create_consumer(pull::Config::default())
        .await?;
    let mut out = Vec::new();
    let mut msgs = consumer
        .fetch()
        .max_messages(want)
        .expires(Duration::from_secs(5))
        .messages()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    while let Some(m) = msgs.next().await {
        let m = m.map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(m.headers.clone().unwrap_or_default());
    }
    Ok(out)
}

fn traceparent_of(h: &HeaderMap) -> Option<String> {
    h.get("traceparent").map(|v| v.as_str().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_follow_the_producer_through_the_plugin_into_published_messages() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let received = Received::default();
    let endpoint = receiver(received.clone()).await?;
    let dir = tempfile::tempdir()?;
    let (host, admin, js) = start_host(
        dir.path(),
        &nats,
        &pg,
        &format!(
            "endpoint = \"{endpoint}\"\nservice_name = \"trace-test\"\nresource = {{ \"deployment.environment\" = \"test\" }}"
        ),
    )
    .await?;
    let payload = "all|db|out.x|cache";

    // Three traced messages and one without trace context, then (alone) a
    // fourth traced one: a batch of one runs under its message's span.
    for n in 1..=3 {
        publish_traced(&js, "events.a", payload, Some(&producer(n).0)).await?;
    }
    publish_traced(&js, "events.a", payload, None).await?;
    eventually(WAIT, "the first four handled", || async {
        Ok(headers_in(&js, "DLQ", 10).await?.len() >= 4)
    })
    .await?;
    let (tp, trace_id, producer_span) = producer(9);
    publish_traced(&js, "events.a", payload, Some(&tp)).await?;

    // Each message: a span whose parent is its producer's, and the plugin's
    // sql, publish and kv calls under the span its call ran under.
    let cap_names = ["sql execute", "publish publish", "kv put"];
    eventually(WAIT, "spans of every message and capability call", || {
        let received = received.clone();
        async move {
            let spans = received.spans();
            let traced = (1..=3).chain([9]).all(|n| {
                let (_, t, s) = producer(n);
                spans
                    .iter()
                    .any(|sp| hex(&sp.trace_id) == t && hex(&sp.parent_span_id) == s)
            });
            let caps = spans
                .iter()
                .filter(|s| cap_names.contains(&s.name.as_str()))
                .count();
            Ok(traced && caps >= 5 * 3)
        }
    })
    .await
    .with_context_log(&host)?;
    let spans = received.spans();

    let message = spans
        .iter()
        .find(|s| hex(&s.trace_id) == trace_id && hex(&s.parent_span_id) == producer_span)
        .ok_or_else(|| anyhow::anyhow!("no span for message 9"))?;
    assert_eq!(message.name, "process events.a");
    assert_eq!(attr(message, "jetplug.pipeline").as_deref(), Some("main"));
    assert_eq!(
        attr(message, "messaging.nats.stream").as_deref(),
        Some("EVENTS")
    );
    assert_eq!(
        attr(message, "jetplug.decision").as_deref(),
        Some("dead-letter")
    );
    assert!(
        message.events.iter().any(|e| e.name == "log"),
        "the plugin's log line is an event on the message span: {message:?}"
    );
    let mut publish_span = None;
    for name in cap_names {
        let cap = spans
            .iter()
            .find(|s| s.name == name && s.parent_span_id == message.span_id)
            .ok_or_else(|| anyhow::anyhow!("no `{name}` span under message 9's span"))?;
        assert_eq!(
            hex(&cap.trace_id),
            trace_id,
            "{name} is in the producer's trace"
        );
        if name == "publish publish" {
            publish_span = Some(hex(&cap.span_id));
        }
    }

    // The message the plugin published carries the publish span's context.
    let out = headers_in(&js, "OUT", 5).await?;
    assert_eq!(out.len(), 5);
    let last = traceparent_of(&out[4])
        .ok_or_else(|| anyhow::anyhow!("no traceparent on the published message"))?;
    assert_eq!(
        last,
        format!("00-{trace_id}-{}-01", publish_span.unwrap_or_default()),
        "published traceparent = the publish call's span"
    );

    // Dead letters keep the original trace headers.
    let dlq = headers_in(&js, "DLQ", 5).await?;
    assert_eq!(dlq.len(), 5);
    assert_eq!(traceparent_of(&dlq[4]).as_deref(), Some(tp.as_str()));
    assert_eq!(
        dlq[4].get("tracestate").map(|v| v.as_str()),
        Some("vendor=producer")
    );

    // The message without context started a trace of its own.
    let roots: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "process events.a" && s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one message came without trace context");

    // Every message span is either its call's span (a batch of one) or
    // linked from the batch span its call ran under; capability spans hang
    // under call spans only.
    let messages: Vec<&Span> = spans
        .iter()
        .filter(|s| s.name == "process events.a")
        .collect();
    assert_eq!(messages.len(), 5);
    for m in &messages {
        let alone = spans
            .iter()
            .any(|c| cap_names.contains(&c.name.as_str()) && c.parent_span_id == m.span_id);
        let linked = spans.iter().any(|b| {
            b.name == "process batch main"
                && b.links
                    .iter()
                    .any(|l| l.span_id == m.span_id && l.trace_id == m.trace_id)
        });
        assert!(
            alone ^ linked,
            "message span {} is alone xor in a batch",
            hex(&m.span_id)
        );
    }

    // Export is counted.
    let (_, metrics) = http_get(&admin, "/metrics").await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("jetplug_trace_spans_total{outcome=\"exported\"}")),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_collector_neither_slows_nor_fails_messages() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    // A collector that accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", silent.local_addr()?);
    let held = Arc::new(Mutex::new(Vec::new()));
    let keep = held.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = silent.accept().await {
            keep.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
        }
    });
    let dir = tempfile::tempdir()?;
    let (host, admin, js) = start_host(
        dir.path(),
        &nats,
        &pg,
        &format!("endpoint = \"{endpoint}\"\nqueue_size = 16\nexport_timeout = \"30s\""),
    )
    .await?;
    let count = 300;
    for n in 0..count {
        publish_traced(
            &js,
            "events.a",
            "sql:db",
            Some(&producer((n % 200) as u8).0),
        )
        .await?;
    }
    // All handled (acked) while the first export still waits for an answer.
    eventually(WAIT, "every message acked", || async {
        let (_, m) = http_get(&admin, "/metrics").await?;
        Ok(metric(&m, "jetplug_messages_total", "outcome=\"ack\"") >= count as f64)
    })
    .await
    .with_context_log(&host)?;
    let (_, m) = http_get(&admin, "/metrics").await?;
    assert!(
        metric(&m, "jetplug_trace_spans_total", "outcome=\"dropped\"") > 0.0,
        "spans beyond the queue are dropped and counted:\n{m}"
    );
    assert_eq!(
        metric(&m, "jetplug_trace_spans_total", "outcome=\"exported\""),
        0.0
    );
    Ok(())
}

/// The sum of `name`'s series whose labels contain `label`.
fn metric(text: &str, name: &str, label: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

trait WithLog<T> {
    fn with_context_log(self, host: &HostProcess) -> anyhow::Result<T>;
}

impl<T> WithLog<T> for anyhow::Result<T> {
    fn with_context_log(self, host: &HostProcess) -> anyhow::Result<T> {
        self.map_err(|e| e.context(format!("host log:\n{}", host.log())))
    }
}

/// A batch held for a downstream outage settles what the plugin decided
/// at once and runs the rest again: each decision lands on its own
/// message's span, also when the held message is not first in its batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_decision_of_a_held_batch_lands_on_its_own_message() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let received = Received::default();
    let endpoint = receiver(received.clone()).await?;
    let dir = tempfile::tempdir()?;
    // Both messages in one batch: stored before the host pulls.
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    js.create_stream(jetstream::stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        ..Default::default()
    })
    .await?;
    publish_traced(&js, "events.a", "hello", None).await?;
    publish_traced(&js, "events.a", "sql-exec|down|select 1", None).await?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    // A database nothing listens on: its calls are `unavailable`.
    let down = format!("postgres://postgres@127.0.0.1:{}/postgres", free_port()?);
    let path = TestConfig::new(dir.path(), &nats.url())
        .set("admin", "address", admin.as_str())
        .table("telemetry")
        .set("telemetry", "endpoint", endpoint.as_str())
        .stream("EVENTS", &["events.>"])
        .stream("DLQ", &["dlq.>"])
        .database("down", &down)
        .set("database.down", "timeout", "200ms")
        .plugin("caps", plugins::TEST_CAPABILITIES)
        .set("plugin.caps.grants", "sql", vec!["down"])
        .set("plugin.caps.grants", "publish", vec!["out.>"])
        .set("plugin.caps.grants", "kv", vec!["cache"])
        .table("kv.cache")
        .set("plugin.caps.config", "on_unavailable", "retry")
        .pipeline("main", &["EVENTS"], "caps")
        .set("pipeline.main", "batch", 2)
        .set("pipeline.main", "max_deliver", 2)
        .set("pipeline.main.breaker", "max_hold", "1s")
        .set("pipeline.main.breaker", "consecutive_failures", 1000)
        .write_in(dir.path())?;
    let host = HostProcess::start(
        env!("CARGO_BIN_EXE_jetplug"),
        &path,
        admin,
        dir.path().join("host.log"),
    )?;
    host.ready().await.with_context_log(&host)?;
    // (sequence, delivery) → the decision on that delivery's span.
    let decisions = || {
        received
            .spans()
            .iter()
            .filter(|s| s.name == "process events.a")
            .filter_map(|s| {
                let seq = attr(s, "messaging.nats.sequence")?;
                let delivered = attr(s, "messaging.nats.delivered")?;
                Some(((seq, delivered), attr(s, "jetplug.decision")))
            })
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let last = ("2".to_owned(), "2".to_owned());
    eventually(WAIT, "the held message's last delivery traced", || async {
        Ok(decisions().contains_key(&last))
    })
    .await
    .with_context_log(&host)?;
    let got = decisions();
    let decision = |seq: &str, delivered: &str| {
        got.get(&(seq.to_owned(), delivered.to_owned()))
            .cloned()
            .flatten()
    };
    assert_eq!(decision("1", "1").as_deref(), Some("ack"), "{got:?}");
    assert_eq!(decision("2", "1").as_deref(), Some("retry"), "{got:?}");
    assert_eq!(
        decision("2", "2").as_deref(),
        Some("dead-letter"),
        "{got:?}"
    );
    Ok(())
}
