//! End to end: a native async-nats consumer (the baseline: pull, ack each
//! message, nothing else) against jetplug running the no-op plugin, over
//! the same stream, message count, batch size and consumer settings, and
//! beside them the same consumer written with nats-py (what a Python team
//! would run without jetplug). Also cold start to the first message and the
//! host's memory.

use std::time::Duration;

use anyhow::Context as _;
use futures::StreamExt;

use super::env::{self, Env};
use jetplug::jetstream::consumer;

/// Settings for [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub count: u64,
    pub size: usize,
    pub batch: u32,
    /// Workers of the jetplug pipeline (`concurrency`).
    pub concurrency: u32,
    /// Runs of each consumer; the median is reported.
    pub repeat: u32,
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub native_per_sec: f64,
    pub jetplug_per_sec: f64,
    /// The nats-py consumer's msg/s, or why it did not run.
    pub natspy_per_sec: Result<f64, String>,
    pub cold_start_compile: Duration,
    pub cold_start_cached: Duration,
    pub host_peak_rss: Option<u64>,
}

const TIMEOUT: Duration = Duration::from_secs(600);
/// How long the native consumer waits for a message before it opens its
/// pull stream again.
const NATIVE_STALL: Duration = Duration::from_secs(5);
/// How often it may do so in one run.
const NATIVE_REOPEN: u32 = 5;

/// A jetplug.toml body: `stream` and a `noop` pipeline on it.
pub(crate) fn body(env: &Env, stream: &str, batch: u32, concurrency: u32) -> String {
    format!(
        r#"
[[stream]]
name = "{stream}"
subjects = ["{subj}.>"]

[plugin.noop]
path = "{noop}"

[[pipeline]]
name = "noop"
streams = ["{stream}"]
plugin = "noop"
batch = {batch}
batch_max_wait = "5ms"
concurrency = {concurrency}
"#,
        subj = stream.to_lowercase(),
        noop = env.plugin("test_noop.wasm").display(),
    )
}

pub async fn run(env: &Env, s: Settings) -> anyhow::Result<Report> {
    // Cold start to the first message: a fresh cache, then the warm one.
    let (start_path, start_cfg) = env.config(
        "cold-start",
        "cache",
        &body(env, "BENCH_START", s.batch, s.concurrency),
    )?;
    env.fresh_streams(&start_cfg).await?;
    let hidden = indicatif::ProgressBar::hidden();
    env.publish("bench_start.x", 1, |_| b"x".to_vec(), &hidden)
        .await?;
    let mut cold = Vec::new();
    for _ in 0..2 {
        let host = env.spawn_host(&start_path, "cold-start.log")?;
        let run = env::wait_acked(
            &env.js,
            "BENCH_START",
            "jetplug-noop-BENCH_START",
            1,
            TIMEOUT,
            &hidden,
        )
        .await?;
        cold.push(run.first_ack.duration_since(host.started));
        host.stop()?;
        env.js
            .get_stream("BENCH_START")
            .await?
            .delete_consumer("jetplug-noop-BENCH_START")
            .await?;
    }

    let (path, config) = env.config(
        "throughput",
        "cache",
        &body(env, "BENCH", s.batch, s.concurrency),
    )?;
    env.fresh_streams(&config).await?;
    let payload = vec![b'x'; s.size];
    let bar = env::bar(s.count, "publishing");
    env.publish("bench.x", s.count, |_| payload.clone(), &bar)
        .await?;
    bar.finish_and_clear();

    // Native baseline and jetplug in turn, `repeat` times each (fresh
    // consumers every time); the medians are reported.
    let (mut pc, sc) = noop_on(&config, "BENCH")?;
    let (mut native_rates, mut jetplug_rates) = (Vec::new(), Vec::new());
    let natspy_with = natspy_setup(env).await?;
    let mut natspy_rates = natspy_with
        .as_ref()
        .map(|_| Vec::new())
        .map_err(Clone::clone);
    let mut host_peak_rss = None;
    for round in 0..s.repeat.max(1) {
        pc.name = format!("native{round}");
        native_rates.push(native(env, &pc, &sc, s).await?);
        let stream = env.js.get_stream("BENCH").await?;
        let _ = stream.delete_consumer(&pc.consumer_name("BENCH")).await;
        if let (Ok(with), Ok(rates)) = (&natspy_with, &mut natspy_rates) {
            pc.name = format!("natspy{round}");
            rates.push(natspy(env, with, &pc, &sc, s).await?);
            let _ = stream.delete_consumer(&pc.consumer_name("BENCH")).await;
        }
        let _ = stream.delete_consumer("jetplug-noop-BENCH").await;
        // jetplug: the same messages through the no-op plugin, host in its own process.
        let bar = env::bar(s.count, "jetplug + no-op plugin");
        let host = env.spawn_host(&path, "throughput.log")?;
        let run = env::wait_acked(
            &env.js,
            "BENCH",
            "jetplug-noop-BENCH",
            s.count,
            TIMEOUT,
            &bar,
        )
        .await?;
        host_peak_rss = host_peak_rss.max(host.peak_rss());
        host.stop()?;
        bar.finish_and_clear();
        jetplug_rates.push(run.rate(s.count));
        let _ = stream.delete_consumer("jetplug-noop-BENCH").await;
    }

    Ok(Report {
        native_per_sec: super::median(native_rates),
        jetplug_per_sec: super::median(jetplug_rates),
        natspy_per_sec: natspy_rates.map(super::median),
        cold_start_compile: cold[0],
        cold_start_cached: cold[1],
        host_peak_rss,
    })
}

/// The `noop` pipeline of a benchmark config and its stream `stream`.
pub(crate) fn noop_on(
    config: &jetplug::config::Config,
    stream: &str,
) -> anyhow::Result<(
    jetplug::config::PipelineConfig,
    jetplug::config::StreamConfig,
)> {
    let pc = config
        .pipeline("noop")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no noop pipeline"))?;
    let sc = config
        .stream(stream)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no {stream} stream"))?;
    Ok((pc, sc))
}

/// One run of the native consumer (a fresh durable named after `pc`) over
/// the whole stream: pull with the pipeline's batch size, ack each message.
pub(crate) async fn native(
    env: &Env,
    pc: &jetplug::config::PipelineConfig,
    sc: &jetplug::config::StreamConfig,
    s: Settings,
) -> anyhow::Result<f64> {
    let bar = env::bar(s.count, "native async-nats consumer");
    let c = env
        .js
        .get_stream(&sc.name)
        .await?
        .create_consumer(consumer::config(pc, sc))
        .await?;
    let (count, batch) = (s.count, s.batch as usize);
    let max_bytes = usize::try_from(pc.batch_max_bytes.0).unwrap_or(usize::MAX);
    // The consumer acks whatever it is given until the stream's ack floor
    // says the run is done: a message redelivered after its ack_wait (large
    // payloads on a busy machine) is acked again rather than left behind.
    let mut task = tokio::spawn(async move {
        let (mut n, mut reopened) = (0, 0);
        let mut seen = std::collections::HashSet::new();
        loop {
            // A pull stream that fails or goes quiet is opened again (the
            // durable consumer keeps the progress): on a fresh clustered
            // consumer a pull request can be lost while it elects a leader,
            // and the stream then waited for ever.
            // Cut by bytes as jetplug's batches are (`batch_max_bytes`):
            // uncut, a request for 100 messages of 1 MiB overruns what the
            // server buffers for a client, and it drops them.
            let mut messages = c
                .stream()
                .max_messages_per_batch(batch)
                .max_bytes_per_batch(max_bytes)
                .messages()
                .await?;
            loop {
                let m = match tokio::time::timeout(NATIVE_STALL, messages.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "native consumer: pull stream failed; reopening");
                        break;
                    }
                    Ok(None) | Err(_) => break,
                };
                // Stream sequences, not deliveries, count toward the run.
                let seq = m
                    .info()
                    .map_err(|e| anyhow::anyhow!("{e}"))?
                    .stream_sequence;
                m.ack().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                if seen.insert(seq) {
                    n += 1;
                }
            }
            if n < count {
                reopened += 1;
                anyhow::ensure!(
                    reopened <= NATIVE_REOPEN,
                    "the native consumer stalled {reopened} times after {n} of {count} messages"
                );
            }
        }
    });
    let durable = pc.consumer_name(&sc.name);
    let wait = env::wait_acked(&env.js, &sc.name, &durable, count, TIMEOUT, &bar);
    // A failed consumer ends the wait at once instead of at the timeout.
    let run = tokio::select! {
        run = wait => {
            task.abort();
            run?
        }
        done = &mut task => {
            let failed: anyhow::Result<()> = done?;
            return Err(failed.err().unwrap_or_else(|| anyhow::anyhow!("the native consumer ended")));
        }
    };
    bar.finish_and_clear();
    Ok(run.rate(count))
}

/// The nats-py consumer's script, written next to the run's configs.
const NATSPY_SCRIPT: &str = include_str!("py/natspy_consumer.py");

/// The interpreter and script for the nats-py consumer, or why it cannot
/// run: the interpreter is `$JETPLUG_BENCH_PYTHON` or `python3`, and needs
/// nats-py (`make bench` installs it into .local/venv). Checked once a run.
async fn natspy_setup(env: &Env) -> anyhow::Result<Result<(String, std::path::PathBuf), String>> {
    let python = std::env::var("JETPLUG_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let probe = tokio::process::Command::new(&python)
        .args(["-c", "import nats"])
        .output()
        .await;
    if !matches!(probe, Ok(out) if out.status.success()) {
        return Ok(Err(format!(
            "skipped: `{python}` cannot import nats (nats-py; `make bench` installs it)"
        )));
    }
    let script = env.dir.path().join("natspy_consumer.py");
    std::fs::write(&script, NATSPY_SCRIPT)?;
    Ok(Ok((python, script)))
}

/// One run of the nats-py consumer over the whole stream (the same consumer
/// settings as the native one).
pub(crate) async fn natspy(
    env: &Env,
    (python, script): &(String, std::path::PathBuf),
    pc: &jetplug::config::PipelineConfig,
    sc: &jetplug::config::StreamConfig,
    s: Settings,
) -> anyhow::Result<f64> {
    let durable = pc.consumer_name(&sc.name);
    env.js
        .get_stream(&sc.name)
        .await?
        .create_consumer(consumer::config(pc, sc))
        .await?;
    let bar = env::bar(s.count, "nats-py consumer");
    let mut child = tokio::process::Command::new(python)
        .arg(script)
        .args([&env.nats_url, &sc.name, &durable])
        .args([s.count.to_string(), s.batch.to_string()])
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {python}"))?;
    let run = env::wait_acked(&env.js, &sc.name, &durable, s.count, TIMEOUT, &bar).await?;
    let status = child.wait().await?;
    anyhow::ensure!(status.success(), "the nats-py consumer failed: {status}");
    bar.finish_and_clear();
    Ok(run.rate(s.count))
}
