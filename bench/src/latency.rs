//! Latency as a user sees it from outside: a producer publishes at a fixed
//! rate, a plugin publishes each message on, and a core NATS subscriber
//! times publish → republish. Measured with the default batch settings, at
//! a low rate (where waiting for a batch to fill would show), 1,000 msg/s
//! and a high one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;

use super::env::{self, Env};

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    /// Messages per rate measured.
    pub count: u64,
    /// The rates measured, messages per second, in turn.
    pub rates: Vec<u64>,
}

/// Latency at one rate.
#[derive(Debug, Clone, Copy)]
pub struct Point {
    pub rate: u64,
    pub p50: Duration,
    pub p90: Duration,
    pub p99: Duration,
}

const TIMEOUT: Duration = Duration::from_secs(120);

fn body(env: &Env) -> String {
    format!(
        r#"
[[stream]]
name = "LAT_IN"
subjects = ["lat.in"]

[[stream]]
name = "LAT_OUT"
subjects = ["lat.out"]

[plugin.forward]
path = "{plugin}"
grants = {{ publish = ["lat.out"] }}
config = {{ to = "lat.out" }}

# Default batch settings: what a user gets without tuning.
[[pipeline]]
name = "forward"
streams = ["LAT_IN"]
plugin = "forward"
"#,
        plugin = env.plugin("bench_forward.wasm").display(),
    )
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

/// p50, p90 and p99 at each rate of `s.rates`.
pub async fn run(env: &Env, s: Settings) -> anyhow::Result<Vec<Point>> {
    let (path, config) = env.config("latency", "cache", &body(env))?;
    env.fresh_streams(&config).await?;
    let host = env.spawn_host(&path, "latency.log")?;
    let client = async_nats::connect(&env.nats_url).await?;
    let mut out = client.subscribe("lat.out").await?;
    client.flush().await?;
    // Until the pipeline forwards (the host is up and consuming).
    let warm = async {
        loop {
            env.js
                .publish("lat.in", now_nanos().to_string().into())
                .await?
                .await?;
            if tokio::time::timeout(Duration::from_millis(200), out.next())
                .await
                .is_ok()
            {
                return anyhow::Ok(());
            }
        }
    };
    tokio::time::timeout(TIMEOUT, warm)
        .await
        .map_err(|_| anyhow::anyhow!("the forwarding pipeline did not start; see latency.log"))??;
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), out.next()).await {}

    let mut points = Vec::new();
    for rate in s.rates {
        let bar = env::bar(s.count, &format!("latency at {rate} msg/s"));
        let js = env.js.clone();
        let (count, period) = (s.count, Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        let producer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let mut acks = Vec::new();
            for _ in 0..count {
                tick.tick().await;
                acks.push(js.publish("lat.in", now_nanos().to_string().into()).await?);
                if acks.len() >= 256 {
                    for a in acks.drain(..) {
                        a.await?;
                    }
                }
            }
            for a in acks {
                a.await?;
            }
            anyhow::Ok(())
        });
        let mut samples = Vec::with_capacity(s.count as usize);
        while (samples.len() as u64) < s.count {
            let Ok(Some(m)) = tokio::time::timeout(TIMEOUT, out.next()).await else {
                anyhow::bail!(
                    "messages stopped arriving after {} of {}",
                    samples.len(),
                    s.count
                );
            };
            let sent: u128 = String::from_utf8_lossy(&m.payload).parse().unwrap_or(0);
            samples.push(Duration::from_nanos(now_nanos().saturating_sub(sent) as u64));
            bar.inc(1);
        }
        producer.await??;
        bar.finish_and_clear();
        samples.sort();
        let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
        points.push(Point {
            rate,
            p50: at(0.50),
            p90: at(0.90),
            p99: at(0.99),
        });
    }
    host.stop()?;
    Ok(points)
}
