//! A 3-node JetStream cluster (real nats-server processes): replicated
//! streams are created and reconciled, and a host given the server list
//! keeps consuming when the node leading its stream is killed.

use jetplug::jetstream::streams::{self, Applied};
use jetplug_tests::rig::*;
use jetplug_tests::{NatsCluster, stream_leader};

/// One cluster at a time: three nodes per test on a 2-core machine make
/// parallel clusters slow enough to time out JetStream requests.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Publishes each payload until JetStream acknowledges it (a new R3 stream
/// may answer "no responders" for a moment on some node); a message id per
/// payload keeps a retried one from being stored twice.
async fn publish_acked(
    js: &jetstream::Context,
    subject: &str,
    payloads: &[&str],
) -> anyhow::Result<()> {
    for (i, p) in payloads.iter().enumerate() {
        let id = format!("{subject}-{i}");
        let start = Instant::now();
        loop {
            let msg = async_nats::jetstream::message::PublishMessage::build()
                .payload(p.as_bytes().to_vec().into())
                .message_id(&id);
            if let Ok(ack) = js.send_publish(subject.to_owned(), msg).await
                && ack.await.is_ok()
            {
                break;
            }
            anyhow::ensure!(
                start.elapsed() < WAIT,
                "publish to {subject} never acknowledged"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicated_streams_are_created_and_reconciled() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = config(dir.path(), &cluster.urls(), plugins::TEST_NOOP, "")?;
    for s in &mut config.streams {
        s.replicas = 3;
    }
    let js = cluster.jetstream().await?;

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
    assert!(
        again.iter().all(|(_, a)| *a == Applied::Unchanged),
        "{again:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_keeps_consuming_when_the_stream_leader_dies() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let mut cluster = NatsCluster::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = config(dir.path(), &cluster.urls(), plugins::TEST_NOOP, "")?;
    for s in &mut config.streams {
        s.replicas = 3;
    }
    let mut host = start(config);
    let stats = host.stats().await?;
    let js = cluster.jetstream().await?;
    let first: Vec<String> = (0..100).map(|i| format!("a{i}")).collect();
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    publish_acked(&js, "events.a", &first).await?;
    eventually(WAIT, "the first 100 acked", || async {
        Ok(Stats::get(&stats.acked) == 100)
    })
    .await?;

    let leader_name = stream_leader(&js, "EVENTS", WAIT).await?;
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
    assert_ne!(
        stream_leader(&js, "EVENTS", WAIT).await?,
        leader_name,
        "a new leader"
    );
    cluster.restart(victim).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(Stats::get(&stats.acked), 200, "each message handled once");
    assert_eq!(Stats::get(&stats.dead_lettered), 0);
    host.stop().await
}

/// Two hosts with the same configuration on the cluster share the
/// pipeline's durable consumer: both get work, every message is handled
/// once, and a MAX_DELIVERIES advisory is dead-lettered by one host only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_the_work_and_dead_letter_advisories_once() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    // The lost delivery's advisory comes one ack_wait after it was taken;
    // both hosts must be listening by then (a loaded CI machine can take
    // seconds to compile the plugin and join the cluster).
    let extra = "ack_wait = \"10s\"\nmax_deliver = 1";
    let configs = dirs
        .iter()
        .map(|d| {
            let mut c = config(d.path(), &cluster.urls(), plugins::TEST_NOOP, extra)?;
            c.streams.iter_mut().for_each(|s| s.replicas = 3);
            Ok(c)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let js = cluster.jetstream().await?;

    // A delivery taken by a host that then died: its advisory comes while
    // both hosts run.
    streams::reconcile(&js, &configs[0].streams).await?;
    // A new R3 stream takes publishes once it has elected a leader.
    for name in ["EVENTS", "DLQ"] {
        stream_leader(&js, name, WAIT).await?;
    }
    let pc = configs[0].pipeline("main").context("pipeline")?;
    let sc = configs[0].stream("EVENTS").context("stream")?;
    let c = js
        .get_stream("EVENTS")
        .await?
        .create_consumer(jetplug::jetstream::consumer::config(pc, sc))
        .await?;
    publish_acked(&js, "events.lost", &["lost"]).await?;
    // A waiting pull, retried while the new R3 consumer elects its leader
    // (the server answers 503 until then).
    // Both its last delivery and the host's spare one (see
    // `jetstream::consumer`) are taken and lost, so only the advisory is left.
    let pulling = Instant::now();
    for delivery in 1..=2 {
        let taken = loop {
            let mut batch = c
                .batch()
                .max_messages(1)
                .expires(Duration::from_secs(5))
                .messages()
                .await?;
            if let Some(Ok(m)) = batch.next().await {
                break m;
            }
            anyhow::ensure!(
                pulling.elapsed() < 2 * WAIT,
                "the lost message was never delivered"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert_eq!(&taken.payload[..], b"lost");
        assert_eq!(
            taken.info().map_err(|e| anyhow::anyhow!("{e}"))?.delivered,
            delivery
        );
    }

    let mut hosts = Vec::new();
    for c in configs {
        let mut h = start(c);
        let stats = h.stats().await?;
        hosts.push((h, stats));
    }
    // Each message sleeps a little so that both hosts pull while the other works.
    let payloads = vec!["sleep:5"; 400];
    publish_acked(&js, "events.work", &payloads).await?;
    let acked = |hosts: &Vec<(RunningHost, Arc<Stats>)>| {
        hosts
            .iter()
            .map(|(_, s)| Stats::get(&s.acked))
            .collect::<Vec<_>>()
    };
    eventually(WAIT, "400 acked across the hosts", || async {
        Ok(acked(&hosts).iter().sum::<u64>() >= 400)
    })
    .await?;
    eventually(WAIT, "the lost delivery dead-lettered", || async {
        Ok(dlq_messages(&js).await?.len() == 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let per_host = acked(&hosts);
    assert_eq!(
        per_host.iter().sum::<u64>(),
        400,
        "each message once: {per_host:?}"
    );
    assert!(
        per_host.iter().all(|n| *n > 0),
        "every host got work: {per_host:?}"
    );
    let dead: Vec<u64> = hosts
        .iter()
        .map(|(_, s)| Stats::get(&s.dead_lettered))
        .collect();
    assert_eq!(
        dead.iter().sum::<u64>(),
        1,
        "one host dead-lettered it: {dead:?}"
    );
    let dlq = dlq_messages(&js).await?;
    assert_eq!(dlq.len(), 1);
    let reason = header(&dlq[0], "Jetplug-Reason");
    assert!(reason.contains("max deliveries (2)"), "{reason}");
    for (h, _) in hosts {
        h.stop().await?;
    }
    Ok(())
}

/// `exclusive = true`: one host at a time consumes the pipeline (pinned
/// client), the other stands by, and takes over once the first stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_pipeline_runs_on_one_host_and_another_takes_over() -> anyhow::Result<()> {
    let _serial = SERIAL.lock().await;
    let cluster = NatsCluster::start().await?;
    let dirs = [tempfile::tempdir()?, tempfile::tempdir()?];
    let extra = "exclusive = true\npin_timeout = \"5s\"";
    let mut hosts = Vec::new();
    for d in &dirs {
        let mut c = config(d.path(), &cluster.urls(), plugins::TEST_NOOP, extra)?;
        c.streams.iter_mut().for_each(|s| s.replicas = 3);
        let mut h = start(c);
        let stats = h.stats().await?;
        hosts.push((h, stats));
    }
    let js = cluster.jetstream().await?;
    let first = vec!["sleep:2"; 200];
    publish_acked(&js, "events.a", &first).await?;
    let acked = |hosts: &Vec<(RunningHost, Arc<Stats>)>| {
        hosts
            .iter()
            .map(|(_, s)| Stats::get(&s.acked))
            .collect::<Vec<_>>()
    };
    eventually(WAIT, "200 acked", || async {
        Ok(acked(&hosts).iter().sum::<u64>() >= 200)
    })
    .await?;
    let counts = acked(&hosts);
    assert!(
        counts.contains(&200) && counts.contains(&0),
        "one host took all: {counts:?}"
    );
    let pinned = counts.iter().position(|n| *n == 200).unwrap_or(0);

    // The pinned host goes away; the standby takes over within the pin timeout.
    let (gone, _) = hosts.remove(pinned);
    gone.stop().await?;
    let later = vec!["x"; 50];
    publish_acked(&js, "events.b", &later).await?;
    let stats = hosts[0].1.clone();
    eventually(WAIT, "the standby host took over", || async {
        Ok(Stats::get(&stats.acked) == 50)
    })
    .await?;
    let (standby, _) = hosts.remove(0);
    standby.stop().await
}
