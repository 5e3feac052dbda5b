//! On a 3-node cluster: the native consumer and jetplug (no-op plugin) on a
//! stream with three replicas, jetplug with one host and with two hosts
//! sharing the pipeline's durable consumer — what replication costs and
//! what a second host adds.

use super::env::{self, Env};
use super::throughput::{self, Settings};

/// What [`run`] measured, in messages per second.
#[derive(Debug, Clone)]
pub struct Report {
    pub native_per_sec: f64,
    pub one_host_per_sec: f64,
    pub two_hosts_per_sec: f64,
}

const TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

fn body(env: &Env, batch: u32, concurrency: u32) -> String {
    format!(
        r#"
[[stream]]
name = "BENCH_R3"
subjects = ["bench_r3.>"]
replicas = 3

[plugin.noop]
path = "{noop}"

[[pipeline]]
name = "noop"
streams = ["BENCH_R3"]
plugin = "noop"
batch = {batch}
batch_max_wait = "5ms"
concurrency = {concurrency}
"#,
        noop = env.plugin("test_noop.wasm").display(),
    )
}

pub async fn run(env: &Env, s: Settings) -> anyhow::Result<Report> {
    // Two configs: the same pipeline (so the same durable consumer), each
    // host with its own admin port.
    let (path_a, config) = env.config("cluster-a", "cache", &body(env, s.batch, s.concurrency))?;
    let (path_b, _) = env.config("cluster-b", "cache", &body(env, s.batch, s.concurrency))?;
    env.fresh_streams(&config).await.map_err(|e| {
        anyhow::anyhow!(
            "{e:#}: the cluster figures need a 3-node JetStream cluster \
             (give --cluster with its URLs; `make bench` starts one)"
        )
    })?;
    let payload = vec![b'x'; s.size];
    let bar = env::bar(s.count, "publishing (R3)");
    env.publish("bench_r3.x", s.count, |_| payload.clone(), &bar)
        .await?;
    bar.finish_and_clear();

    let (mut pc, sc) = throughput::noop_on(&config, "BENCH_R3")?;
    let consumer = "jetplug-noop-BENCH_R3";
    let stream = env.js.get_stream("BENCH_R3").await?;

    pc.name = "native-r3".into();
    let native_per_sec = throughput::native(env, &pc, &sc, s).await?;
    let _ = stream.delete_consumer(&pc.consumer_name("BENCH_R3")).await;

    let mut rates = Vec::new();
    for hosts in [vec![&path_a], vec![&path_a, &path_b]] {
        let _ = stream.delete_consumer(consumer).await;
        let bar = env::bar(s.count, &format!("jetplug on R3, {} host(s)", hosts.len()));
        let running = hosts
            .iter()
            .enumerate()
            .map(|(i, p)| env.spawn_host(p, &format!("cluster-{i}.log")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let run = env::wait_acked(&env.js, "BENCH_R3", consumer, s.count, TIMEOUT, &bar).await?;
        for h in running {
            h.stop()?;
        }
        bar.finish_and_clear();
        rates.push(run.rate(s.count));
    }
    let _ = stream.delete_consumer(consumer).await;
    Ok(Report {
        native_per_sec,
        one_host_per_sec: rates[0],
        two_hosts_per_sec: rates[1],
    })
}
