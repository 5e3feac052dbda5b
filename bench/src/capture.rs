//! What capture costs on the happy path: the no-op pipeline of the
//! throughput benchmark with `capture = "off"`, `"failures"` (the default:
//! every call is recorded, nothing is kept since nothing fails) and `"all"`
//! (every call is stored in the capture bucket), run in turn over the same
//! stream; medians of `repeat` rounds.

use std::time::Duration;

use super::env::{self, Env};
pub use super::throughput::Settings;

/// msg/s of the no-op pipeline by capture mode.
#[derive(Debug, Clone)]
pub struct Report {
    pub off: f64,
    pub failures: f64,
    pub all: f64,
}

const TIMEOUT: Duration = Duration::from_secs(600);
pub const MODES: [&str; 3] = ["off", "failures", "all"];

/// The throughput benchmark's no-op pipeline, capturing as `mode`.
fn body(env: &Env, s: Settings, mode: &str) -> String {
    let pipeline = super::throughput::body(env, "BENCH_CAPTURE", s.batch, s.concurrency);
    format!("{pipeline}capture = \"{mode}\"\n")
}

pub async fn run(env: &Env, s: Settings) -> anyhow::Result<Report> {
    let mut configs = Vec::new();
    for mode in MODES {
        configs.push(env.config(&format!("capture-{mode}"), "cache", &body(env, s, mode))?);
    }
    env.fresh_streams(&configs[0].1).await?;
    let _ = env.js.delete_object_store("JETPLUG_CAPTURES").await;
    let payload = vec![b'x'; s.size];
    let bar = env::bar(s.count, "publishing");
    env.publish("bench_capture.x", s.count, |_| payload.clone(), &bar)
        .await?;
    bar.finish_and_clear();
    let mut rates = [Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..s.repeat.max(1) {
        for (i, mode) in MODES.iter().enumerate() {
            let stream = env.js.get_stream("BENCH_CAPTURE").await?;
            let _ = stream.delete_consumer("jetplug-noop-BENCH_CAPTURE").await;
            let bar = env::bar(s.count, &format!("no-op plugin, capture = {mode}"));
            let host = env.spawn_host(&configs[i].0, &format!("capture-{mode}.log"))?;
            let run = env::wait_acked(
                &env.js,
                "BENCH_CAPTURE",
                "jetplug-noop-BENCH_CAPTURE",
                s.count,
                TIMEOUT,
                &bar,
            )
            .await?;
            host.stop()?;
            bar.finish_and_clear();
            rates[i].push(run.rate(s.count));
        }
    }
    let [off, failures, all] = rates.map(super::median);
    Ok(Report { off, failures, all })
}
