//! What the end-to-end benchmarks share: a NATS connection, fresh streams,
//! fast publishing with progress, a host run as a child process (as in
//! production, so its RSS is its own), and timing by the consumer's own
//! counters, read the same way for jetplug and the native baseline.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;

use jetplug::config::Config;

/// Where the benchmarks run.
#[derive(Debug)]
pub struct Env {
    pub nats_url: String,
    pub js: jetstream::Context,
    /// Configs, caches and logs for this run.
    pub dir: tempfile::TempDir,
    /// Where the plugin components are (`*.wasm`).
    pub plugins: PathBuf,
}

impl Env {
    pub async fn new(nats_url: &str, plugins: &Path) -> anyhow::Result<Env> {
        let servers = jetplug::config::ServerList::from(nats_url)
            .addrs()
            .map_err(|(i, reason)| anyhow::anyhow!("--nats: server {i}: {reason}"))?;
        let client = async_nats::connect(servers)
            .await
            .with_context(|| format!("cannot connect to nats-server at {nats_url}"))?;
        let js = jetstream::new(client);
        // A cluster that has just started may still be electing its
        // JetStream meta leader: ask for a while before giving up.
        let mut attempt = 0;
        while let Err(e) = js.query_account().await {
            attempt += 1;
            if attempt >= 30 {
                return Err(anyhow::Error::from(e).context(format!(
                    "{nats_url} does not answer JetStream requests (run nats-server with -js)"
                )));
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let plugins = std::path::absolute(plugins)?;
        for p in ["test_noop.wasm", "postgres_indexer.wasm"] {
            anyhow::ensure!(
                plugins.join(p).is_file(),
                "{} not found: build the plugins first (`make plugins`) or pass --plugins DIR",
                plugins.join(p).display()
            );
        }
        Ok(Env {
            nats_url: nats_url.to_owned(),
            js,
            dir: tempfile::tempdir()?,
            plugins,
        })
    }

    pub fn plugin(&self, file: &str) -> PathBuf {
        self.plugins.join(file)
    }

    /// Writes a jetplug.toml with `body` appended to the common head and loads it.
    pub fn config(&self, name: &str, cache: &str, body: &str) -> anyhow::Result<(PathBuf, Config)> {
        let text = format!(
            r#"
[nats]
url = "{url}"

[host]
watch_plugins = false
deploy_bucket = ""

[admin]
address = "127.0.0.1:{admin}"

[engine]
cache_dir = "{cache}"
{body}
{dlq}
"#,
            url = self.nats_url,
            admin = free_port()?,
            cache = self.dir.path().join(cache).display(),
            // Every pipeline's dead letters need a stream to go to.
            dlq = if body.contains("\"dlq.>\"") {
                ""
            } else {
                "[[stream]]\nname = \"BENCH_DLQ\"\nsubjects = [\"dlq.>\"]\n"
            },
        );
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text)?;
        let config = Config::load(&path)?;
        Ok((path, config))
    }

    /// Deletes and re-creates the config's streams (empty).
    pub async fn fresh_streams(&self, config: &Config) -> anyhow::Result<()> {
        for s in &config.streams {
            let _ = self.js.delete_stream(&s.name).await;
        }
        jetplug::jetstream::streams::reconcile(&self.js, &config.streams)
            .await
            .context(
                "cannot create the benchmark streams; run the benchmark against a dedicated \
                 nats-server (`make bench` starts one)",
            )?;
        Ok(())
    }

    /// Publishes `n` messages made by `payload(i)` to `subject`, acks awaited in windows.
    pub async fn publish(
        &self,
        subject: &str,
        n: u64,
        mut payload: impl FnMut(u64) -> Vec<u8>,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<()> {
        // Publishes awaiting their acknowledgement, at most: 2000 of 1 MiB
        // were more than nats-server takes in at once (429, too many
        // requests).
        const WINDOW: usize = 2000;
        const WINDOW_BYTES: usize = 32 << 20;
        let mut i = 0;
        while i < n {
            let (mut acks, mut bytes) = (Vec::with_capacity(WINDOW), 0);
            while i < n && acks.len() < WINDOW && bytes < WINDOW_BYTES {
                let body = payload(i);
                bytes += body.len();
                acks.push(self.js.publish(subject.to_owned(), body.into()).await?);
                i += 1;
            }
            for a in acks {
                a.await.context("publish not acknowledged")?;
            }
            bar.set_position(i);
        }
        Ok(())
    }

    /// Starts `jetplug run --config PATH` as a child process (the binary
    /// from [`host_binary`]).
    pub fn spawn_host(&self, config: &Path, log: &str) -> anyhow::Result<HostProcess> {
        let exe = host_binary()?;
        let log = std::fs::File::create(self.dir.path().join(log))?;
        let child = Command::new(exe)
            .args(["--log", "warn", "run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("cannot start the host")?;
        Ok(HostProcess {
            child,
            started: Instant::now(),
        })
    }
}

/// A host child process; killed if dropped.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    pub started: Instant,
}

impl HostProcess {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Peak resident memory so far (VmHWM), in bytes (Linux).
    pub fn peak_rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }

    /// SIGTERM, then wait (SIGKILL after 3 s: the measurement is over, and a
    /// host draining hostile pipelines may take its whole shutdown_timeout).
    pub fn stop(mut self) -> anyhow::Result<()> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child.kill()?;
        Ok(())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// When a consumer delivered its first message, when the first was
/// acknowledged, when a tenth were (the end of the warm-up), and when all
/// `n` were.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    /// When the wait began (the host had just been started).
    pub started: Instant,
    pub first_delivery: Instant,
    pub first_ack: Instant,
    /// When the ack floor passed a tenth of the messages, and its value then.
    pub warm: (Instant, u64),
    pub done: Instant,
}

impl Run {
    /// Sustained messages per second: from the end of the warm-up (a tenth
    /// of the messages settled) to the last acknowledgement, so start-up
    /// costs (connecting, first pulls, plugin init) do not count.
    pub fn rate(&self, n: u64) -> f64 {
        let (at, floor) = self.warm;
        let took = self.done.duration_since(at).as_secs_f64();
        // Past half settled when first seen (a late look; settled
        // deliveries run ahead of the floor): too little left to time.
        if took < 1e-3 || floor.saturating_mul(2) > n {
            // The run was not watched while it went (a poll answered late):
            // count from the first delivery seen, or from the start of the
            // wait if even that came with the end (start-up included, so the
            // figure is low rather than absurd).
            let mut all = self.done.duration_since(self.first_delivery).as_secs_f64();
            if all < 1e-3 {
                all = self.done.duration_since(self.started).as_secs_f64();
            }
            return n as f64 / all.max(1e-3);
        }
        n.saturating_sub(floor) as f64 / took
    }
}

/// How long one poll of [`wait_acked`] waits for the server.
const POLL_TIMEOUT: Duration = Duration::from_millis(250);

/// Polls the consumer until its ack floor reaches `n` (or `timeout`).
pub async fn wait_acked(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    n: u64,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
) -> anyhow::Result<Run> {
    let start = Instant::now();
    let mut first_ack = None;
    let mut first_delivery = None;
    let mut warm = None;
    let handle = js
        .get_stream_no_info(stream)
        .await
        .with_context(|| format!("stream `{stream}`"))?;
    loop {
        // One request per poll, and a poll that gets no answer soon is
        // given up: a consumer-info request sent while a new clustered
        // consumer settles can go unanswered until its timeout (5 s, twice
        // with a retry), and a run watched that late looked ~10 s long.
        let info = tokio::time::timeout(POLL_TIMEOUT, handle.consumer_info(consumer)).await;
        if let Ok(Ok(info)) = info {
            let floor = info.ack_floor.stream_sequence;
            if info.delivered.consumer_sequence > 0 && first_delivery.is_none() {
                first_delivery = Some(Instant::now());
            }
            // The floor moves once the oldest message is settled; a message
            // acknowledged out of order counts once the floor passes it.
            if (floor > 0 || info.num_ack_pending < info.delivered.consumer_sequence as usize)
                && first_ack.is_none()
            {
                first_ack = Some(Instant::now());
            }
            // Settled so far: the floor lags what is settled out of order
            // (whole batches of later workers), so a rate counted from a
            // floor that then jumps came out high; the deliveries less
            // what awaits its ack do not lag (a redelivery counts twice).
            let settled = info
                .delivered
                .consumer_sequence
                .saturating_sub(info.num_ack_pending as u64)
                .max(floor);
            if settled >= n / 10 && warm.is_none() {
                warm = Some((Instant::now(), settled.min(n)));
            }
            bar.set_position(floor.min(n));
            if floor >= n && info.num_ack_pending == 0 {
                let done = Instant::now();
                let first_ack = first_ack.unwrap_or(done);
                return Ok(Run {
                    started: start,
                    first_delivery: first_delivery.unwrap_or(first_ack),
                    first_ack,
                    warm: warm.unwrap_or((first_ack, 0)),
                    done,
                });
            }
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "consumer `{consumer}` on `{stream}` did not settle {n} messages within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Sum of the samples of `metric` (e.g. `jetplug_batch_failures_total`)
/// whose labels contain any of `label_values`, scraped from a host's admin API.
pub async fn scrape_sum(
    config: &Config,
    metric: &str,
    label_values: &[&str],
) -> anyhow::Result<f64> {
    let addr = config
        .admin
        .address
        .context("the benchmark config has an admin address")?;
    let text = jetplug::admin::client::get(addr.0, "/metrics", config.admin.token.as_ref()).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with(metric) && label_values.iter().any(|v| l.contains(v)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum())
}

/// A progress bar for `n` steps labelled `what`.
pub fn bar(n: u64, what: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(n);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg:<40} [{bar:30}] {pos}/{len} {per_sec}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// The `jetplug` binary the host figures are measured on: `JETPLUG_BIN`,
/// else the `jetplug` next to this executable (cargo puts both in
/// `target/<profile>/`).
pub fn host_binary() -> anyhow::Result<std::path::PathBuf> {
    jetplug_tests::jetplug_binary()
}

/// CPU seconds (user + system) of process `pid` so far.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces): utime is the
    // 12th, stime the 13th.
    let rest = stat.rsplit_once(')').context("malformed /proc stat")?.1;
    let mut f = rest.split_whitespace().skip(11);
    let mut next = || f.next().context("short /proc stat");
    let ticks: f64 = next()?.parse::<f64>()? + next()?.parse::<f64>()?;
    Ok(ticks / USER_HZ)
}

/// The unit of /proc's CPU times (`USER_HZ`: 100 on every Linux ABI the
/// host builds for).
const USER_HZ: f64 = 100.0;

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::Run;

    #[test]
    fn a_run_seen_only_at_its_end_is_timed_from_the_start_of_the_wait() {
        let started = Instant::now();
        let done = started + Duration::from_secs(2);
        let unseen = Run {
            started,
            first_delivery: done,
            first_ack: done,
            warm: (done, 1000),
            done,
        };
        assert!((unseen.rate(1000) - 500.0).abs() < 1e-6);
        let watched = Run {
            warm: (started + Duration::from_secs(1), 100),
            ..unseen
        };
        assert!((watched.rate(1000) - 900.0).abs() < 1e-6);
        // All settled at the first look, the floor caught up later: timed
        // from the first delivery, not a rate of zero.
        let late = Run {
            first_delivery: started,
            warm: (started + Duration::from_secs(1), 1000),
            ..unseen
        };
        assert!((late.rate(1000) - 500.0).abs() < 1e-6);
    }
}
