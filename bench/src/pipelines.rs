//! Many tenants' pipelines on one host: `pipelines` durable consumers over
//! `streams` streams, one tenant and one plugin entry per stream (Rust,
//! Python and JavaScript no-op handlers in turn), on one host and its own
//! nats-server. Measured: time from start to every consumer ready; the
//! host's resident memory per idle pipeline (beyond the same host with
//! only the busy pipelines); idle CPU of the host and of nats-server;
//! throughput of `busy` pipelines beside all the idle ones against the
//! same pipelines alone (on a fresh server, and on the server still
//! holding the idle ones' consumers: the host's share of the loss); and the first message of an idle pipeline (its
//! plugin instance is made then), by language.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::env::{Env, HostProcess, cpu_seconds};

/// Settings for [`run`].
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub pipelines: u32,
    pub streams: u32,
    /// Pipelines given traffic (on streams of Rust entries).
    pub busy: u32,
    /// Messages per busy pipeline.
    pub count: u64,
    /// Seconds the idle CPU is measured over.
    pub idle_seconds: u64,
}

/// What [`run`] measured.
#[derive(Debug, Clone)]
pub struct Report {
    pub settings: Settings,
    /// Start to every consumer ready (`/readyz`).
    pub ready: Duration,
    /// Host RSS with every pipeline idle, and with only the busy ones.
    pub rss_all: u64,
    pub rss_busy_only: u64,
    /// Share of one core, idle, over `idle_seconds`.
    pub host_cpu: f64,
    pub nats_cpu: f64,
    pub nats_rss: u64,
    /// Messages per second of the busy pipelines, alone and beside the
    /// rest (medians of [`ROUNDS`] rounds).
    pub alone_per_sec: f64,
    pub beside_per_sec: f64,
    /// The busy pipelines in a host of their own again, the idle ones'
    /// streams and consumers still on the server (medians of [`ROUNDS`]).
    pub alone_same_server_per_sec: f64,
    /// First message of an idle pipeline to its acknowledgement, median
    /// per language (Rust, Python, JavaScript).
    pub cold: Vec<(&'static str, Duration)>,
}

impl Report {
    /// Resident memory per idle pipeline, bytes.
    pub fn per_idle_pipeline(&self) -> u64 {
        let idle = u64::from(self.settings.pipelines.saturating_sub(self.settings.busy)).max(1);
        self.rss_all.saturating_sub(self.rss_busy_only) / idle
    }
}

const LANGUAGES: [&str; 3] = ["Rust", "Python", "JavaScript"];
/// Idle pipelines whose first message is timed, per language.
const COLD_SAMPLES: u32 = 3;
/// Traffic rounds alone and beside the idle pipelines (medians: one round
/// varies by 15 % on a 2-core VM).
const ROUNDS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(300);

/// The stream of pipeline `k` (pipelines are spread evenly).
fn stream_of(k: u32, s: &Settings) -> u32 {
    (u64::from(k) * u64::from(s.streams) / u64::from(s.pipelines)) as u32
}

/// The first pipeline on stream `j`.
fn first_on(j: u32, s: &Settings) -> u32 {
    (u64::from(j) * u64::from(s.pipelines)).div_ceil(u64::from(s.streams)) as u32
}

/// Pipelines given traffic: on streams whose entry is Rust, spread out.
fn busy_pipelines(s: &Settings) -> Vec<u32> {
    let step = (s.streams / s.busy.max(1)).max(1);
    (0..s.busy)
        .map(|i| {
            let mut j = (i * step) % s.streams;
            j -= j % 3;
            first_on(j, s)
        })
        .collect()
}

fn body(files: &[PathBuf; 3], s: &Settings, only: Option<&[u32]>) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let wanted: Vec<u32> = match only {
        Some(ks) => ks.to_vec(),
        None => (0..s.pipelines).collect(),
    };
    let mut streams: Vec<u32> = wanted.iter().map(|k| stream_of(*k, s)).collect();
    streams.dedup();
    for j in &streams {
        let file = files[*j as usize % 3].display();
        let _ = write!(
            text,
            "[[stream]]\nname = \"MANY{j}\"\nsubjects = [\"many{j}.>\"]\n\n\
             [tenant.t{j}]\nconsume = [\"many{j}.>\"]\n\n\
             [plugin.p{j}]\npath = \"{file}\"\ntenant = \"t{j}\"\nconfig = {{ mode = \"noop\" }}\n\n"
        );
    }
    for k in wanted {
        let j = stream_of(k, s);
        let _ = write!(
            text,
            "[[pipeline]]\nname = \"q{k}\"\nstreams = [\"MANY{j}\"]\n\
             filter_subjects = [\"many{j}.{k}.>\"]\nplugin = \"p{j}\"\n\n"
        );
    }
    text
}

/// Resident memory of process `pid`, bytes.
fn rss_of(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .context("no VmRSS")?
        .parse()?;
    Ok(kib * 1024)
}

async fn wait_ready(
    host: &mut HostProcess,
    config: &jetplug::config::Config,
) -> anyhow::Result<Duration> {
    let addr = config.admin.address.context("admin address")?.0;
    loop {
        if jetplug::admin::client::get(addr, "/readyz", None)
            .await
            .is_ok()
        {
            return Ok(host.started.elapsed());
        }
        anyhow::ensure!(
            host.alive(),
            "the host stopped before it was ready (see its log)"
        );
        anyhow::ensure!(
            host.started.elapsed() < TIMEOUT,
            "the host was not ready within {TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The busy pipelines in a host of their own: msg/s of each of `rounds`,
/// and the host's RSS after them.
async fn alone_rounds(
    env: &Env,
    files: &[PathBuf; 3],
    s: &Settings,
    busy: &[u32],
    rounds: std::ops::Range<u32>,
    log: &str,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let (path, config) = env.config("many-busy", "cache", &body(files, s, Some(busy)))?;
    let mut host = env.spawn_host(&path, log)?;
    wait_ready(&mut host, &config).await?;
    let mut rates = Vec::new();
    for round in rounds {
        rates.push(traffic(env, s, busy, round).await?);
    }
    let rss = rss_of(host.pid())?;
    host.stop()?;
    Ok((rates, rss))
}

/// Publishes `count` messages to each busy pipeline and returns messages
/// per second from the first publish to the last acknowledgement.
async fn traffic(env: &Env, s: &Settings, busy: &[u32], round: u32) -> anyhow::Result<f64> {
    let started = Instant::now();
    let payload = bytes::Bytes::from_static(&[b'x'; 256]);
    let mut acks = Vec::new();
    for i in 0..s.count {
        for k in busy {
            let subject = format!("many{}.{k}.r{round}.{i}", stream_of(*k, s));
            acks.push(env.js.publish(subject, payload.clone()).await?);
        }
        if acks.len() >= 2000 {
            for a in acks.drain(..) {
                a.await.context("publish not acknowledged")?;
            }
        }
    }
    for a in acks {
        a.await.context("publish not acknowledged")?;
    }
    let want = s.count * u64::from(round + 1);
    for k in busy {
        wait_floor(env, stream_of(*k, s), *k, want).await?;
    }
    Ok((s.count * busy.len() as u64) as f64 / started.elapsed().as_secs_f64())
}

/// Waits until pipeline `k`'s consumer has settled `n` messages (its
/// stream holds only its own).
async fn wait_floor(env: &Env, stream: u32, k: u32, n: u64) -> anyhow::Result<()> {
    let handle = env.js.get_stream_no_info(format!("MANY{stream}")).await?;
    let name = format!("jetplug-q{k}-MANY{stream}");
    let start = Instant::now();
    loop {
        let info =
            tokio::time::timeout(Duration::from_millis(250), handle.consumer_info(&name)).await;
        if let Ok(Ok(info)) = info
            && info.num_pending == 0
            && info.num_ack_pending == 0
            && info.delivered.stream_sequence > 0
            && info.delivered.consumer_sequence >= n
        {
            return Ok(());
        }
        anyhow::ensure!(
            start.elapsed() < TIMEOUT,
            "pipeline q{k} did not settle {n} messages in time"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// First message of idle pipeline `k` to its acknowledgement.
async fn cold(env: &Env, s: &Settings, k: u32) -> anyhow::Result<Duration> {
    let j = stream_of(k, s);
    let started = Instant::now();
    env.js
        .publish(format!("many{j}.{k}.cold"), "{}".into())
        .await?
        .await?;
    wait_floor(env, j, k, 1).await?;
    Ok(started.elapsed())
}

pub async fn run(env_plugins: &Path, guest: &Path, s: Settings) -> anyhow::Result<Report> {
    anyhow::ensure!(
        s.streams >= 3 && s.pipelines >= 2 * s.streams && s.busy >= 1 && s.busy * 3 <= s.streams,
        "pipelines: need at least 3 streams, two pipelines per stream and at most a third of the streams busy"
    );
    let mut server = jetplug_tests::NatsServer::start().await?;
    let env = Env::new(&server.url(), env_plugins).await?;
    let guest = std::path::absolute(guest)?;
    let files = [
        env.plugin("test_noop.wasm"),
        guest.join("bench-py.wasm"),
        guest.join("bench-js.wasm"),
    ];
    for f in &files {
        anyhow::ensure!(
            f.is_file(),
            "{} not found: `make plugins` builds it",
            f.display()
        );
    }
    let nats_pid = server.pid().context("nats-server pid")?;
    let busy = busy_pipelines(&s);

    // The busy pipelines alone.
    let (alone, rss_busy_only) =
        alone_rounds(&env, &files, &s, &busy, 0..ROUNDS, "many-busy.log").await?;

    // Everything, its plugins compiled beforehand (`jetplug check` fills
    // the cache), as on any start but a host's first: compiling is the
    // `languages` scenario's figure, and its memory is not a pipeline's.
    let (path, config) = env.config("many-all", "cache", &body(&files, &s, None))?;
    let checked = std::process::Command::new(super::env::host_binary()?)
        .args(["--log", "warn", "check", "--config"])
        .arg(&path)
        .output()
        .context("cannot run jetplug check")?;
    anyhow::ensure!(
        checked.status.success(),
        "jetplug check failed: {}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let mut host = env.spawn_host(&path, "many-all.log")?;
    let ready = wait_ready(&mut host, &config).await?;
    // Past the start's own work (first stats rounds, timers settling).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let (h0, n0, t0) = (
        cpu_seconds(host.pid())?,
        cpu_seconds(nats_pid)?,
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(s.idle_seconds)).await;
    let took = t0.elapsed().as_secs_f64();
    let host_cpu = (cpu_seconds(host.pid())? - h0) / took;
    let nats_cpu = (cpu_seconds(nats_pid)? - n0) / took;
    let rss_all = rss_of(host.pid())?;
    let nats_rss = rss_of(nats_pid)?;
    let mut beside = Vec::new();
    for round in ROUNDS..2 * ROUNDS {
        beside.push(traffic(&env, &s, &busy, round).await?);
    }
    let mut cold_times = Vec::new();
    for (lang_i, lang) in LANGUAGES.iter().enumerate() {
        let mut times = Vec::new();
        for n in 0..COLD_SAMPLES {
            // Streams of this language, away from the busy ones.
            let j = (3 * (n + 1) * 7 + lang_i as u32 + 1) % s.streams;
            let j = j - j % 3 + lang_i as u32;
            // The second pipeline of its stream: never a busy one.
            let k = first_on(j.min(s.streams - 1), &s) + 1;
            times.push(cold(&env, &s, k).await?.as_secs_f64());
        }
        cold_times.push((*lang, Duration::from_secs_f64(super::median(times))));
    }
    host.stop()?;

    // The busy pipelines alone again, in a host of their own, the idle
    // ones' streams and consumers still on the server: what is lost
    // beside against this is the host's doing; against the first rounds,
    // the server's too (nats-server holding 10,000 consumers is slower).
    let (alone_same_server, _) = alone_rounds(
        &env,
        &files,
        &s,
        &busy,
        2 * ROUNDS..3 * ROUNDS,
        "many-busy-again.log",
    )
    .await?;
    server.stop().await?;
    Ok(Report {
        settings: s,
        ready,
        rss_all,
        rss_busy_only,
        host_cpu,
        nats_cpu,
        nats_rss,
        alone_per_sec: super::median(alone),
        beside_per_sec: super::median(beside),
        alone_same_server_per_sec: super::median(alone_same_server),
        cold: cold_times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s() -> Settings {
        Settings {
            pipelines: 10_000,
            streams: 1_000,
            busy: 10,
            count: 1,
            idle_seconds: 1,
        }
    }

    #[test]
    fn pipelines_spread_over_streams_and_busy_ones_are_rust() {
        let s = s();
        assert_eq!(stream_of(0, &s), 0);
        assert_eq!(stream_of(9_999, &s), 999);
        assert_eq!(first_on(1, &s), 10);
        let busy = busy_pipelines(&s);
        assert_eq!(busy.len(), 10);
        for k in busy {
            assert_eq!(stream_of(k, &s) % 3, 0, "pipeline {k} is on a Rust entry");
        }
    }
}
