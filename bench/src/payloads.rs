//! Payload size sweep: for 100 B, 1 KiB, 16 KiB, 256 KiB and 1 MiB
//! messages, the native async-nats consumer and jetplug with the no-op
//! plugin over the same stream (as in the throughput benchmark), in turn,
//! medians of `repeat` rounds; msg/s, MB/s, their ratio and the host's peak
//! memory, against what docs/performance.md's formula bounds it by.

use std::time::Duration;

use super::env::{self, Env};
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
    /// What the pipeline may hold at once: `batch × (3.5 × concurrency +
    /// 1.5)` messages (docs/reliability.md), in bytes.
    pub held_bound: u64,
}

const TIMEOUT: Duration = Duration::from_secs(600);
/// Bytes each size's run moves at most: larger payloads, fewer messages.
const BYTES_PER_RUN: u64 = 256 << 20;

/// Messages for one size: `count`, but at most [`BYTES_PER_RUN`] worth
/// and at least 200.
pub fn count_for(size: usize, count: u64) -> u64 {
    (BYTES_PER_RUN / size.max(1) as u64).clamp(200, count.max(200))
}

pub async fn run(env: &Env, s: Settings) -> anyhow::Result<Vec<Point>> {
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
        env.publish("bench_size.x", count, |_| payload.clone(), &bar)
            .await?;
        bar.finish_and_clear();
        let (mut pc, sc) = throughput::noop_on(&config, "BENCH_SIZE")?;
        let run_settings = Settings { count, size, ..s };
        let (mut native, mut jetplug, mut rss) = (Vec::new(), Vec::new(), None);
        for round in 0..s.repeat.max(1) {
            pc.name = format!("native{round}");
            native.push(throughput::native(env, &pc, &sc, run_settings).await?);
            let stream = env.js.get_stream("BENCH_SIZE").await?;
            let _ = stream
                .delete_consumer(&pc.consumer_name("BENCH_SIZE"))
                .await;
            let _ = stream.delete_consumer("jetplug-noop-BENCH_SIZE").await;
            let bar = env::bar(count, &format!("jetplug, {size} B"));
            let host = env.spawn_host(&path, &format!("payload-{size}.log"))?;
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
            host.stop()?;
            bar.finish_and_clear();
            jetplug.push(done.rate(count));
            let _ = stream.delete_consumer("jetplug-noop-BENCH_SIZE").await;
        }
        let held = f64::from(s.batch) * (3.5 * f64::from(s.concurrency) + 1.5);
        points.push(Point {
            size,
            count,
            native_per_sec: super::median(native),
            jetplug_per_sec: super::median(jetplug),
            host_peak_rss: rss,
            held_bound: (held * size as f64) as u64,
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
        assert_eq!(super::count_for(1 << 20, 50_000), 256);
        assert_eq!(super::count_for(1 << 20, 10), 200);
    }
}
