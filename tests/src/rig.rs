//! The prelude the in-process host tests share (`use jetplug_tests::rig::*`):
//! a nats-server and a host started the same way (EVENTS and DLQ streams,
//! one pipeline `main`), its stats, a JetStream context, and small readers
//! of the streams.

pub use std::path::Path;
pub use std::sync::Arc;
pub use std::time::{Duration, Instant};

pub use crate::{NatsServer, TestConfig, eventually, plugins};
pub use anyhow::Context as _;
pub use async_nats::jetstream::{self, consumer::PullConsumer, stream};
pub use futures::StreamExt;
pub use jetplug::config::Config;
pub use jetplug::host::{self, HostHandle};
pub use jetplug::pipeline::Stats;
pub use tokio::task::JoinHandle;
pub use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(30);

/// A config with streams EVENTS (events.>) and DLQ (dlq.>), one pipeline
/// `main` on EVENTS with `plugin`, and `extra` (TOML keys) merged into the
/// pipeline.
pub fn config(dir: &Path, url: &str, plugin: &str, extra: &str) -> anyhow::Result<Config> {
    main_config(dir, url, plugin)
        .merge("pipeline.main", extra)?
        .load_in(dir)
}

/// The builder behind [`config`], for tests that write variants of it.
pub fn main_config(dir: &Path, url: &str, plugin: &str) -> TestConfig {
    TestConfig::main(dir, url, plugin)
        .set("nats", "connect_delay", "200ms")
        .set("nats", "reconnect_delay", "200ms")
        .set("host", "shutdown_timeout", "20s")
        .set("pipeline.main", "batch", 20)
        .set("pipeline.main.backoff", "initial", "100ms")
        .set("pipeline.main.backoff", "max", "1s")
}

#[derive(Debug)]
pub struct RunningHost {
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), host::HostError>>,
    pub handle: tokio::sync::oneshot::Receiver<HostHandle>,
    started: Option<HostHandle>,
}

pub fn start(config: Config) -> RunningHost {
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(host::run(config, shutdown.clone(), move |h| {
        let _ = tx.send(h);
    }));
    RunningHost {
        shutdown,
        task,
        handle: rx,
        started: None,
    }
}

impl RunningHost {
    /// The running host's shared parts (health, stats), once it started.
    pub async fn started(&mut self) -> anyhow::Result<HostHandle> {
        if let Some(h) = &self.started {
            return Ok(h.clone());
        }
        let h = tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .context("host did not start")??;
        self.started = Some(h.clone());
        Ok(h)
    }

    pub async fn stats(&mut self) -> anyhow::Result<Arc<Stats>> {
        Ok(self.started().await?.stats["main"].clone())
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("host did not stop in time")???;
        Ok(())
    }
}

/// A nats-server and a host running `plugin` (with `extra` pipeline keys)
/// on it: the server, the temp dir, the host, its stats and a JetStream
/// context. Keep the server and dir bound until the test ends.
pub async fn running(
    plugin: &str,
    extra: &str,
) -> anyhow::Result<(
    NatsServer,
    tempfile::TempDir,
    RunningHost,
    Arc<Stats>,
    jetstream::Context,
)> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut host = start(config(dir.path(), &nats.url(), plugin, extra)?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    Ok((nats, dir, host, stats, js))
}

pub async fn js(nats: &NatsServer) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(async_nats::connect(nats.url()).await?))
}

pub async fn publish(
    js: &jetstream::Context,
    subject: &str,
    payloads: &[&str],
) -> anyhow::Result<()> {
    for p in payloads {
        js.publish(subject.to_owned(), p.as_bytes().to_vec().into())
            .await?
            .await?;
    }
    Ok(())
}

pub async fn consumer(js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
    js.get_stream("EVENTS")
        .await?
        .get_consumer("jetplug-main-EVENTS")
        .await
        .map_err(|e| anyhow::anyhow!("get consumer: {e}"))
}

/// All messages of the stream are settled: nothing pending, nothing unacked.
pub async fn all_settled(js: &jetstream::Context, total: u64) -> anyhow::Result<bool> {
    let mut c = consumer(js).await?;
    let info = c.info().await?;
    Ok(info.num_pending == 0
        && info.num_ack_pending == 0
        && info.delivered.stream_sequence >= total)
}

pub async fn dlq_messages(
    js: &jetstream::Context,
) -> anyhow::Result<Vec<async_nats::jetstream::message::StreamMessage>> {
    let mut s = js.get_stream("DLQ").await?;
    let n = s.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=n {
        out.push(s.get_raw_message(seq).await?);
    }
    Ok(out)
}

pub fn header<'a>(m: &'a async_nats::jetstream::message::StreamMessage, name: &str) -> &'a str {
    m.headers.get(name).map(|v| v.as_str()).unwrap_or("")
}
