//! A 3-node JetStream cluster (real nats-server processes): replicated
//! streams are created and reconciled, and a host given the server list
//! keeps consuming when the node leading its stream is killed.

#[path = "engine/rig.rs"]
mod rig;

use jetplug::jetstream::streams::{self, Applied};
use jetplug_tests::NatsCluster;
use rig::*;

async fn cluster_js(cluster: &NatsCluster) -> anyhow::Result<jetstream::Context> {
    let servers = cluster
        .urls()
        .split(',')
        .map(|u| u.parse())
        .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?;
    Ok(jetstream::new(async_nats::connect(servers).await?))
}

/// The name of the node leading `stream`, once it has one.
async fn leader(js: &jetstream::Context, stream: &str) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        let info = js.get_stream(stream).await?.get_info().await?;
        if let Some(name) = info.cluster.and_then(|c| c.leader) {
            return Ok(name);
        }
        anyhow::ensure!(start.elapsed() < WAIT, "`{stream}` has no leader after {WAIT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_streams_are_created_and_reconciled() -> anyhow::Result<()> {
    let cluster = NatsCluster::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = config(dir.path(), &cluster.urls(), plugins::TEST_NOOP, "")?;
    for s in &mut config.streams {
        s.replicas = 3;
    }
    let js = cluster_js(&cluster).await?;

    // DLQ exists with one replica (as an older deployment left it): drift 1 → 3.
    js.create_stream(stream::Config {
        name: "DLQ".into(),
        subjects: vec!["dlq.>".into()],
        num_replicas: 1,
        ..Default::default()
    })
    .await?;
    let applied = streams::reconcile(&js, &config.streams).await?;
    assert_eq!(
        applied,
        vec![
            ("EVENTS".to_owned(), Applied::Created),
            ("DLQ".to_owned(), Applied::Updated { refused: vec![] }),
        ]
    );
    for name in ["EVENTS", "DLQ"] {
        eventually(WAIT, "three replicas, all current", || async {
            let info = js.get_stream(name).await?.get_info().await?;
            let cluster = info.cluster.unwrap_or_default();
            Ok(info.config.num_replicas == 3
                && cluster.leader.is_some()
                && cluster.replicas.len() == 2
                && cluster.replicas.iter().all(|r| r.current))
        })
        .await?;
    }
    // Reconciling again changes nothing.
    let again = streams::reconcile(&js, &config.streams).await?;
    assert!(again.iter().all(|(_, a)| *a == Applied::Unchanged), "{again:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_keeps_consuming_when_the_stream_leader_dies() -> anyhow::Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = config(dir.path(), &cluster.urls(), plugins::TEST_NOOP, "")?;
    for s in &mut config.streams {
        s.replicas = 3;
    }
    let mut host = start(config);
    let stats = host.stats().await?;
    let js = cluster_js(&cluster).await?;
    let first: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    publish(&js, "events.a", &first).await?;
    eventually(WAIT, "the first 100 acked", || async {
        Ok(Stats::get(&stats.acked) == 100)
    })
    .await?;

    let leader_name = leader(&js, "EVENTS").await?;
    let victim = cluster
        .index_of(&leader_name)
        .ok_or_else(|| anyhow::anyhow!("unknown leader {leader_name}"))?;
    cluster.kill(victim).await?;
    // Publishing goes on while a new leader is elected (retrying refusals).
    for i in 0..100 {
        let payload = format!("b{i}");
        eventually(WAIT, "a publish accepted", || async {
            Ok(match js.publish("events.b", payload.clone().into()).await {
                Ok(ack) => ack.await.is_ok(),
                Err(_) => false,
            })
        })
        .await?;
    }
    eventually(WAIT, "all 200 acked after the leader died", || async {
        Ok(Stats::get(&stats.acked) >= 200)
    })
    .await?;
    assert_ne!(leader(&js, "EVENTS").await?, leader_name, "a new leader");
    cluster.restart(victim).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(Stats::get(&stats.acked), 200, "each message handled once");
    assert_eq!(Stats::get(&stats.dead_lettered), 0);
    host.stop().await
}
