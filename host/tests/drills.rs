//! Fault drills on a 3-node JetStream cluster with two `jetplug run`
//! processes under steady load through the postgres-indexer and the
//! analytics aggregator (real processes throughout): SIGKILL the node that
//! leads the stream (then restart it), SIGKILL one host, SIGKILL the node a
//! host is connected to. After all of them every message is indexed once
//! and counted once and nothing is dead-lettered because of the faults.
//! The failover time of each (fault → rows flowing again) is printed and
//! written to `target/drills.txt`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use jetplug_tests::{
    HostProcess, NatsCluster, Postgres, TestConfig, eventually, free_port, plugins, scalar,
    stream_leader,
};

const WAIT: Duration = Duration::from_secs(90);

fn write_config(
    dir: &Path,
    cluster: &NatsCluster,
    pg: &Postgres,
    admin: &str,
) -> anyhow::Result<PathBuf> {
    let mut config = TestConfig::new(dir, &cluster.urls())
        .set("nats", "connect_delay", "200ms")
        .set("nats", "reconnect_delay", "200ms")
        .set("host", "shutdown_timeout", "10s")
        .set("host", "deploy_bucket", "")
        .set("admin", "address", admin)
        .stream("LEARNING", &["learning.>"])
        .set("stream.LEARNING", "replicas", 3)
        .stream("DLQ", &["dlq.>"])
        .set("stream.DLQ", "replicas", 3)
        .database("events", &pg.url());
    for (pipeline, plugin, path) in [
        ("indexer", "indexer", plugins::POSTGRES_INDEXER),
        ("analytics", "aggregator", plugins::ANALYTICS_AGGREGATOR),
    ] {
        let at = format!("pipeline.{pipeline}");
        config = config
            .plugin(plugin, path)
            .set(&format!("plugin.{plugin}.grants"), "sql", vec!["events"])
            .pipeline(pipeline, &["LEARNING"], plugin)
            .unset(&at, "batch_max_wait")
            .set(&at, "batch", 100)
            .set(&at, "ack_wait", "5s")
            .set(&at, "max_deliver", 20);
    }
    // The aggregator has no dedupe code: its counts are exact only with
    // the host making them exactly-once (as in the AIVO example).
    config = config.set("pipeline.analytics", "effects", "exactly-once");
    let path = dir.join(format!("jetplug-{}.toml", admin.replace([':', '.'], "_")));
    config.write(&path)?;
    Ok(path)
}

/// Publishes one event every `every` until `stop`, each with its own
/// message id (a retried publish is stored once); counts the acknowledged.
fn publisher(
    js: jetstream::Context,
    every: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(async move {
        let mut i = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let body = format!(
                r#"{{"student":"s-{}","seq":{i},"score":{}}}"#,
                i % 97,
                i % 100
            );
            let started = Instant::now();
            loop {
                let publish = PublishMessage::build()
                    .payload(body.clone().into())
                    .message_id(format!("drill-{i}"));
                let acked = match js.send_publish("learning.quiz.answered", publish).await {
                    Ok(ack) => ack.await.is_ok(),
                    Err(_) => false,
                };
                if acked {
                    break;
                }
                anyhow::ensure!(started.elapsed() < WAIT, "publish {i} never acknowledged");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            sent.fetch_add(1, Ordering::Relaxed);
            i += 1;
            tokio::time::sleep(every).await;
        }
        Ok(())
    })
}

/// Rows in `events`.
async fn indexed(db: &tokio_postgres::Client) -> i64 {
    scalar(db, "select count(*) from events").await.unwrap_or(0)
}

/// Time from now until `more` rows beyond the current count are indexed.
async fn failover(db: &tokio_postgres::Client, more: i64) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let base = indexed(db).await;
    eventually(WAIT, "rows flowing again", || async {
        Ok(indexed(db).await >= base + more)
    })
    .await?;
    Ok(start.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_and_host_failures_lose_and_duplicate_nothing() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let pg = Postgres::start().await?;
    let db = pg.connect().await?;
    let dir = tempfile::tempdir()?;
    let mut hosts = Vec::new();
    for name in ["a", "b"] {
        let admin = format!("127.0.0.1:{}", free_port()?);
        let config = write_config(dir.path(), &cluster, &pg, &admin)?;
        let host = HostProcess::start(
            env!("CARGO_BIN_EXE_jetplug"),
            &config,
            admin,
            dir.path().join(format!("host-{name}.log")),
        )?;
        host.ready().await?;
        hosts.push(host);
    }
    let js = cluster.jetstream().await?;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let load = publisher(
        js.clone(),
        Duration::from_millis(2),
        stop.clone(),
        sent.clone(),
    );
    eventually(WAIT, "traffic indexed", || async {
        Ok(indexed(&db).await >= 300)
    })
    .await?;

    // Both hosts share the work: each has acknowledged messages of its own.
    for host in &hosts {
        eventually(WAIT, "every host gets work", || async {
            let (_, metrics) = jetplug_tests::http_get(&host.admin, "/metrics").await?;
            Ok(metrics
                .lines()
                .filter(|l| {
                    l.starts_with("jetplug_messages_total{") && l.contains("outcome=\"ack\"")
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>()
                > 0.0)
        })
        .await
        .with_context(|| host.log())?;
    }

    let mut report = Vec::new();
    // 1. The node leading the stream dies, then comes back.
    let name = stream_leader(&js, "LEARNING", WAIT).await?;
    let node = cluster
        .index_of(&name)
        .with_context(|| format!("unknown node {name}"))?;
    cluster.kill(node).await?;
    report.push(("stream leader node SIGKILLed", failover(&db, 200).await?));
    cluster.restart(node).await?;

    // 2. One host dies; the other carries on, and the dead host's
    //    unacknowledged messages come back after their ack_wait.
    hosts[0].kill()?;
    report.push(("one host SIGKILLed", failover(&db, 200).await?));

    // 3. The node the remaining host is connected to dies.
    let mut victim = None;
    for i in 0..3 {
        if cluster.connections_named(i, "jetplug").await? > 0 {
            victim = Some(i);
        }
    }
    let victim = victim.context("no node serves the remaining host")?;
    cluster.kill(victim).await?;
    report.push(("the host's node SIGKILLed", failover(&db, 200).await?));
    cluster.restart(victim).await?;

    stop.store(true, Ordering::Relaxed);
    load.await??;
    let total = sent.load(Ordering::Relaxed) as i64;
    let stored = js
        .get_stream("LEARNING")
        .await?
        .get_info()
        .await?
        .state
        .messages as i64;
    assert_eq!(stored, total, "one stored message per acknowledged publish");
    eventually(WAIT, "everything indexed and counted", || async {
        Ok(indexed(&db).await >= total
            && scalar(
                &db,
                "select coalesce(sum(count), 0)::bigint from event_counts",
            )
            .await?
                >= total)
    })
    .await
    .with_context(|| hosts[1].log())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(indexed(&db).await, total, "indexed once each");
    assert_eq!(
        scalar(
            &db,
            "select count(distinct (stream, stream_seq)) from events"
        )
        .await?,
        total
    );
    assert_eq!(
        scalar(
            &db,
            "select coalesce(sum(count), 0)::bigint from event_counts"
        )
        .await?,
        total,
        "counted once each"
    );
    let dead = js.get_stream("DLQ").await?.get_info().await?.state.messages;
    assert_eq!(dead, 0, "nothing dead-lettered because of the faults");

    let mut text =
        format!("drills: {total} events through indexer + aggregator, 2 hosts, 3 nodes\n");
    for (fault, took) in &report {
        text.push_str(&format!(
            "  {fault}: rows flowing again after {:.2} s\n",
            took.as_secs_f64()
        ));
    }
    println!("{text}");
    let out = Path::new(plugins::ROOT).join("target/drills.txt");
    std::fs::write(out, text)?;
    Ok(())
}
