//! Payload size sweep: for 100 B, 1 KiB, 16 KiB, 256 KiB and 1 MiB
//! messages, the native async-nats consumer and jetplug with the no-op
//! plugin over the same stream (as in the throughput benchmark), in turn,
//! medians of `repeat` rounds; msg/s, MB/s, their ratio and the host's peak
//! memory, against what docs/performance.md's formula bounds it by; and the
//! CPU each side spends per message (the constants of docs/scaling.md's
//! model).

use std::time::Duration;

use super::env::{self, Env, cpu_seconds};
use super::throughput::{self, Settings};

/// The sizes swept, in bytes.
pub const SIZES: [usize; 5] = [100, 1 << 10, 16 << 10, 256 << 10, 1 << 20];

/// One size's figures.
#[derive(Debug, Clone)]
pub struct Point {
    pub size: usize,
    pub count: u64,
    pub native_per_sec: f64,
    pub jetplug_per_sec: f64,
    pub host_peak_rss: Option<u64>,
    /// What the pipeline may hold at once, bytes: `min(batch × size,
    /// batch_max_bytes) × (3.5 × concurrency + 1.5)` (docs/reliability.md).
    pub held_bound: u64,
    /// CPU per message, medians: the host process and nats-server while
    /// jetplug consumes; the bench process and nats-server while the native
    /// consumer does. nats-server's only when its process id is known.
    pub cpu: Cpu,
}

/// CPU seconds per message (medians of the rounds).
#[derive(Debug, Clone, Copy, Default)]
pub struct Cpu {
    pub host: f64,
    pub host_nats: Option<f64>,
    pub native: f64,
    pub native_nats: Option<f64>,
    /// nats-server while the messages were published and stored (one
    /// publisher, acknowledged publishes).
    pub store_nats: Option<f64>,
}

/// CPU seconds of this process and of nats-server (if known), so far.
fn cpu_now(pid: u32, nats_pid: Option<u32>) -> anyhow::Result<(f64, Option<f64>)> {
    Ok((cpu_seconds(pid)?, nats_pid.map(cpu_seconds).transpose()?))
}

/// Per message between two readings of [`cpu_now`].
fn per_message(a: (f64, Option<f64>), b: (f64, Option<f64>), n: u64) -> (f64, Option<f64>) {
    let n = n.max(1) as f64;
    ((b.0 - a.0) / n, a.1.zip(b.1).map(|(a, b)| (b - a) / n))
}

const TIMEOUT: Duration = Duration::from_secs(600);
/// `batch_max_bytes`' default, which the bench's pipeline keeps.
const BATCH_MAX_BYTES: f64 = (8 << 20) as f64;
/// Bytes each size's run moves at most: larger payloads, fewer messages.
/// A gibibyte keeps a 1 MiB run about a second long: at 256 MiB it lasted
/// a quarter of one, and its ratio swung from 0.83 to 1.13 between runs.
const BYTES_PER_RUN: u64 = 1 << 30;

/// Messages for one size: `count`, but at most [`BYTES_PER_RUN`] worth
/// and at least 200.
pub fn count_for(size: usize, count: u64) -> u64 {
    (BYTES_PER_RUN / size.max(1) as u64).clamp(200, count.max(200))
}

/// `nats_pid`: the nats-server's process, for its CPU figures.
pub async fn run(env: &Env, s: Settings, nats_pid: Option<u32>) -> anyhow::Result<Vec<Point>> {
    let mut points = Vec::new();
    for size in SIZES {
        let count = count_for(size, s.count);
        let (path, config) = env.config(
            &format!("payload-{size}"),
            "cache",
            &throughput::body(env, "BENCH_SIZE", s.batch, s.concurrency),
        )?;
        env.fresh_streams(&config).await?;
        let payload = vec![b'x'; size];
        let bar = env::bar(count, &format!("publishing {size} B"));
        let before = nats_pid.map(cpu_seconds).transpose()?;
        env.publish("bench_size.x", count, |_| payload.clone(), &bar)
            .await?;
        let store_nats = per_message(
            (0.0, before),
            (0.0, nats_pid.map(cpu_seconds).transpose()?),
            count,
        )
        .1;
        bar.finish_and_clear();
        let (mut pc, sc) = throughput::noop_on(&config, "BENCH_SIZE")?;
        let run_settings = Settings { count, size, ..s };
        let (mut native, mut jetplug, mut rss) = (Vec::new(), Vec::new(), None);
        let mut cpu: [Vec<f64>; 4] = Default::default();
        for round in 0..s.repeat.max(1) {
            pc.name = format!("native{round}");
            let before = cpu_now(std::process::id(), nats_pid)?;
            native.push(throughput::native(env, &pc, &sc, run_settings).await?);
            let (mine, server) = per_message(before, cpu_now(std::process::id(), nats_pid)?, count);
            cpu[2].push(mine);
            cpu[3].extend(server);
            let stream = env.js.get_stream("BENCH_SIZE").await?;
            let _ = stream
                .delete_consumer(&pc.consumer_name("BENCH_SIZE"))
                .await;
            let _ = stream.delete_consumer("jetplug-noop-BENCH_SIZE").await;
            let bar = env::bar(count, &format!("jetplug, {size} B"));
            let host = env.spawn_host(&path, &format!("payload-{size}.log"))?;
            let before = (0.0, nats_pid.map(cpu_seconds).transpose()?);
            let done = env::wait_acked(
                &env.js,
                "BENCH_SIZE",
                "jetplug-noop-BENCH_SIZE",
                count,
                TIMEOUT,
                &bar,
            )
            .await?;
            rss = rss.max(host.peak_rss());
            let (mine, server) = per_message(before, cpu_now(host.pid(), nats_pid)?, count);
            cpu[0].push(mine);
            cpu[1].extend(server);
            host.stop()?;
            bar.finish_and_clear();
            jetplug.push(done.rate(count));
            let _ = stream.delete_consumer("jetplug-noop-BENCH_SIZE").await;
        }
        // Batches and pull requests are cut by bytes too (the default
        // `batch_max_bytes`), so a batch weighs at most that much.
        let batch_bytes = (f64::from(s.batch) * size as f64).min(BATCH_MAX_BYTES);
        let held = batch_bytes * (3.5 * f64::from(s.concurrency) + 1.5);
        points.push(Point {
            size,
            count,
            native_per_sec: super::median(native),
            jetplug_per_sec: super::median(jetplug),
            host_peak_rss: rss,
            held_bound: held as u64,
            cpu: {
                let [host, host_nats, native, native_nats] = cpu.map(|v| {
                    let any = !v.is_empty();
                    (super::median(v), any)
                });
                Cpu {
                    host: host.0,
                    host_nats: host_nats.1.then_some(host_nats.0),
                    native: native.0,
                    native_nats: native_nats.1.then_some(native_nats.0),
                    store_nats,
                }
            },
        });
    }
    let _ = env.js.delete_stream("BENCH_SIZE").await;
    Ok(points)
}

#[cfg(test)]
mod tests {
    #[test]
    fn large_payloads_move_fewer_messages() {
        assert_eq!(super::count_for(100, 50_000), 50_000);
        assert_eq!(super::count_for(1 << 20, 50_000), 1024);
        assert_eq!(super::count_for(16 << 10, 50_000), 50_000);
        assert_eq!(super::count_for(1 << 20, 10), 200);
    }
}
