//! The host's life beside NATS: graceful shutdown, NATS down at start or
//! restarted mid-stream, a deleted consumer, stream reconciliation.

use jetplug_tests::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_and_settles_in_flight_batches() -> anyhow::Result<()> {
    let (_nats, _dir, host, stats, js) = running(plugins::TEST_NOOP, "").await?;
    publish(&js, "events.a", &["sleep:1500"]).await?;
    eventually(WAIT, "batch started", || async {
        Ok(Stats::get(&stats.batches) == 1)
    })
    .await?;
    host.stop().await?;
    assert_eq!(
        Stats::get(&stats.acked),
        1,
        "the in-flight batch was finished"
    );
    let mut c = consumer(&js).await?;
    let info = c.info().await?;
    assert_eq!(info.num_ack_pending, 0, "and settled before exit");
    assert_eq!(info.ack_floor.stream_sequence, 1);
    Ok(())
}

/// `[nats] url` as a list whose first server is down: the host tries the
/// next one and works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_list_skips_a_dead_first_server() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dead = format!("nats://127.0.0.1:{}", jetplug_tests::free_port()?);
    let dir = tempfile::tempdir()?;
    let list = format!("{dead}, {}", nats.url());
    let mut host = start(config(dir.path(), &list, plugins::TEST_NOOP, "")?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    publish(&js, "events.a", &["one", "two"]).await?;
    eventually(WAIT, "both acked", || async {
        Ok(Stats::get(&stats.acked) == 2)
    })
    .await?;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_when_nats_comes_up_later() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    nats.kill().await?;
    let dir = tempfile::tempdir()?;
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        !host.task.is_finished(),
        "the host must keep retrying, not exit"
    );
    nats.restart().await?;
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    publish(&js, "events.a", &["a", "b", "c"]).await?;
    eventually(WAIT, "consumed", || async {
        Ok(Stats::get(&stats.acked) == 3)
    })
    .await?;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart_mid_stream_loses_nothing() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?);
    let stats = host.stats().await?;
    const N: u64 = 3000;
    {
        let js = js(&nats).await?;
        let mut acks = Vec::new();
        for i in 0..N {
            acks.push(
                js.publish("events.load", format!("m{i}").into_bytes().into())
                    .await?,
            );
        }
        for a in acks {
            a.await?;
        }
    }
    eventually(WAIT, "some progress", || async {
        Ok(Stats::get(&stats.acked) > 0)
    })
    .await?;
    nats.kill().await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    nats.restart().await?;
    let js = js(&nats).await?;
    eventually(
        Duration::from_secs(60),
        "every message settled after the restart",
        || async { all_settled(&js, N).await },
    )
    .await?;
    let mut c = consumer(&js).await?;
    assert_eq!(c.info().await?.ack_floor.stream_sequence, N, "none lost");
    assert!(Stats::get(&stats.acked) >= N);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_consumer_is_recreated() -> anyhow::Result<()> {
    let (_nats, _dir, host, stats, js) = running(plugins::TEST_NOOP, "").await?;
    publish(&js, "events.a", &["1"]).await?;
    eventually(WAIT, "first ack", || async {
        Ok(Stats::get(&stats.acked) == 1)
    })
    .await?;
    js.get_stream("EVENTS")
        .await?
        .delete_consumer("jetplug-main-EVENTS")
        .await?;
    publish(&js, "events.a", &["2"]).await?;
    // Recreated with deliver = all: it sees both messages again.
    eventually(WAIT, "consumer recreated", || async {
        Ok(Stats::get(&stats.acked) >= 2)
    })
    .await?;
    eventually(WAIT, "all settled", || async { all_settled(&js, 2).await }).await?;
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_updates_max_age_and_keeps_refused_fields() -> anyhow::Result<()> {
    use jetplug::jetstream::streams::{self, Applied, Plan};
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let js = js(&nats).await?;
    let mut cfg = config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?;
    cfg.streams[0].max_age = jetplug::config::Dur(Duration::from_secs(3600));
    let first = streams::reconcile(&js, &cfg.streams).await?;
    assert_eq!(first[0].1, Applied::Created);

    cfg.streams[0].max_age = jetplug::config::Dur(Duration::from_secs(7200));
    cfg.streams[0].storage = jetplug::config::Storage::Memory;
    let plans = streams::plan(&js, &cfg.streams).await?;
    let Plan::Update(changes) = &plans[0].plan else {
        anyhow::bail!("expected an update, got {:?}", plans[0].plan);
    };
    assert!(changes.iter().any(|c| c.field == "max_age" && c.editable));
    assert!(changes.iter().any(|c| c.field == "storage" && !c.editable));
    let applied = streams::apply(&js, &plans[0]).await?;
    assert!(matches!(&applied, Applied::Updated { refused } if refused.len() == 1));
    let mut s = js.get_stream("EVENTS").await?;
    let info = s.info().await?;
    assert_eq!(info.config.max_age, Duration::from_secs(7200));
    assert_eq!(
        info.config.storage,
        stream::StorageType::File,
        "existing storage kept"
    );
    let again = streams::plan(&js, &cfg.streams).await?;
    assert!(
        matches!(&again[0].plan, Plan::Update(c) if c.len() == 1),
        "only the refused drift remains"
    );
    Ok(())
}

/// An account whose operators already keep every advisory in a stream of
/// their own: the host cannot make its advisory stream (the subjects
/// overlap), says so, and runs anyway, hearing advisories live.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_advisory_stream_that_cannot_be_made_does_not_stop_the_host() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = js(&nats).await?;
    js.create_stream(stream::Config {
        name: "OPS_ADVISORIES".into(),
        subjects: vec!["$JS.EVENT.ADVISORY.>".into()],
        ..Default::default()
    })
    .await?;
    let dir = tempfile::tempdir()?;
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?);
    let stats = host.stats().await?;
    publish(&js, "events.a", &["one", "two"]).await?;
    eventually(WAIT, "both acked", || async {
        Ok(Stats::get(&stats.acked) == 2)
    })
    .await?;
    assert!(
        js.get_stream("JETPLUG_ADVISORIES").await.is_err(),
        "not made"
    );
    host.stop().await
}

/// A consumer the server refuses (here: one of the pipeline's name already
/// exists with another deliver policy, which JetStream cannot update) is a
/// permanent error: the host stops with it, naming the consumer, instead
/// of retrying the bind forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_the_server_refuses_stops_the_host_with_that_error() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?;
    let name = config.pipelines[0].consumer_name("EVENTS");
    let js = js(&nats).await?;
    let events = js
        .create_stream(stream::Config {
            name: "EVENTS".into(),
            subjects: vec!["events.>".into()],
            ..Default::default()
        })
        .await?;
    events
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some(name.clone()),
            deliver_policy: jetstream::consumer::DeliverPolicy::New,
            ..Default::default()
        })
        .await?;
    let host = start(config);
    let ended = tokio::time::timeout(WAIT, host.task)
        .await
        .context("the host kept retrying a consumer the server refuses")??;
    let err = ended.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        err.contains("pipeline `main`") && err.contains(&name) && err.contains("refuses"),
        "{err}"
    );
    Ok(())
}
