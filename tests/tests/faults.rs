//! Fault injection with real processes: a PostgreSQL outage under load opens
//! the breaker, nothing from the outage reaches the dead-letter stream, and
//! everything is indexed and counted exactly once after recovery.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetplug::config::{Config, Dur};
use jetplug::host;
use jetplug::pipeline::Stats;
use jetplug_tests::{NatsServer, Postgres, eventually};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_opens_the_breaker_and_loses_nothing() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut pg = Postgres::start().await?;
    let cache = tempfile::tempdir()?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivo/jetplug.toml");
    let mut config = Config::load(&path)?;
    config.nats.url = nats.url();
    config.engine.cache_dir = Some(cache.path().to_path_buf());
    let db = config.databases.get_mut("events").context("events db")?;
    db.url = pg.url();
    db.timeout = Dur(Duration::from_millis(500));
    for p in &mut config.pipelines {
        p.batch = 50;
        p.backoff.initial = Dur(Duration::from_millis(200));
    }
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;

    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(host::run(config, shutdown.clone(), move |h| {
        let _ = tx.send(h);
    }));
    let handle = tokio::time::timeout(Duration::from_secs(30), rx).await??;
    let indexer: Arc<Stats> = handle.stats["indexer"].clone();

    // Steady traffic before, during and after a ~8 s outage.
    let publisher = {
        let js = js.clone();
        tokio::spawn(async move {
            for i in 0..1500u32 {
                let subject = [
                    "learning.quiz.answered",
                    "focus.session.started",
                    "homework.assignment.submitted",
                ][i as usize % 3];
                js.publish(subject, format!(r#"{{"i":{i}}}"#).into_bytes().into())
                    .await?
                    .await?;
                tokio::time::sleep(Duration::from_millis(8)).await;
            }
            anyhow::Ok(())
        })
    };
    let client = pg.connect().await?;
    eventually(Duration::from_secs(30), "indexing under way", || async {
        Ok(client
            .query_one("select count(*) from events", &[])
            .await
            .map(|r| r.get::<_, i64>(0))
            .unwrap_or(0)
            > 100)
    })
    .await?;
    drop(client);
    pg.stop().await?;
    eventually(Duration::from_secs(30), "the breaker to open", || async {
        Ok(indexer.breaker_opened.load(Ordering::Relaxed) >= 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    pg.restart().await?;
    publisher.await??;

    let client = pg.connect().await?;
    eventually(
        Duration::from_secs(90),
        "every event indexed and counted",
        || async {
            let events: i64 = client
                .query_one("select count(*) from events", &[])
                .await?
                .get(0);
            let counted: i64 = client
                .query_one(
                    "select coalesce(sum(count), 0)::int8 from event_counts",
                    &[],
                )
                .await?
                .get(0);
            Ok(events == 1500 && counted == 1000)
        },
    )
    .await?;
    eventually(Duration::from_secs(30), "the breaker to close", || async {
        Ok(indexer.breaker_state.load(Ordering::Relaxed) == 0)
    })
    .await?;
    let distinct: i64 = client
        .query_one(
            "select count(distinct (stream, stream_seq)) from events",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(distinct, 1500, "no duplicate rows");
    let dlq = js.get_stream("DLQ").await?.info().await?.state.messages;
    assert_eq!(dlq, 0, "nothing from the outage was dead-lettered");
    assert!(
        Stats::get(&indexer.held_batches) >= 1,
        "batches were held, not spent"
    );
    shutdown.cancel();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let cache = tempfile::tempdir()?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivo/jetplug.toml");
    let mut config = Config::load(&path)?;
    config.nats.url = nats.url();
    config.nats.reconnect_delay = Dur(Duration::from_millis(200));
    config.engine.cache_dir = Some(cache.path().to_path_buf());
    config.databases.get_mut("events").context("events db")?.url = pg.url();
    for p in &mut config.pipelines {
        p.batch = 50;
        p.ack_wait = Dur(Duration::from_secs(3));
    }
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host::run(config, shutdown.clone(), |_| {}));

    // The publisher retries through the outage; message ids make a retried
    // publish that had in fact been stored count once.
    const N: u32 = 1500;
    let url = nats.url();
    let publisher = tokio::spawn(async move {
        let client = async_nats::ConnectOptions::new()
            .reconnect_delay_callback(|_| Duration::from_millis(200))
            .connect(url)
            .await?;
        let js = jetstream::new(client);
        for i in 0..N {
            let subject = [
                "learning.quiz.answered",
                "focus.session.started",
                "homework.assignment.submitted",
            ][i as usize % 3];
            loop {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("m-{i}").as_str());
                let sent = async {
                    js.publish_with_headers(
                        subject,
                        headers,
                        format!(r#"{{"i":{i}}}"#).into_bytes().into(),
                    )
                    .await?
                    .await
                }
                .await;
                if sent.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        anyhow::Ok(())
    });
    let db = pg.connect().await?;
    eventually(Duration::from_secs(30), "indexing under way", || async {
        Ok(db
            .query_one("select count(*) from events", &[])
            .await?
            .get::<_, i64>(0)
            > 200)
    })
    .await?;
    nats.kill().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    nats.restart().await?;
    publisher.await??;

    eventually(
        Duration::from_secs(90),
        "every event indexed and counted",
        || async {
            let events: i64 = db
                .query_one("select count(*) from events", &[])
                .await?
                .get(0);
            let counted: i64 = db
                .query_one(
                    "select coalesce(sum(count), 0)::int8 from event_counts",
                    &[],
                )
                .await?
                .get(0);
            Ok(events == i64::from(N) && counted == i64::from(N) * 2 / 3)
        },
    )
    .await?;
    let distinct: i64 = db
        .query_one("select count(distinct payload->>'i') from events", &[])
        .await?
        .get(0);
    assert_eq!(distinct, i64::from(N), "each published event indexed once");
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    assert_eq!(js.get_stream("DLQ").await?.info().await?.state.messages, 0);
    shutdown.cancel();
    task.await??;
    Ok(())
}
