//! Fault injection with real processes: a PostgreSQL outage under load opens
//! the breaker, which stops pulling and keeps what it holds alive (with an
//! ack_wait of 1 s, not one message is redelivered), nothing from the outage
//! reaches the dead-letter stream, and everything is indexed and counted
//! exactly once after recovery; `jetplug doctor`'s check finds nothing
//! stranded after each fault.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetplug::config::{Config, Dur};
use jetplug::host;
use jetplug::pipeline::Stats;
use jetplug_tests::{NatsServer, Postgres, eventually, scalar};
use tokio_util::sync::CancellationToken;

/// Rows the indexer wrote, and events the aggregator counted.
async fn indexed_and_counted(db: &tokio_postgres::Client) -> anyhow::Result<(i64, i64)> {
    Ok((
        scalar(db, "select count(*) from events").await?,
        scalar(db, "select coalesce(sum(count), 0)::int8 from event_counts").await?,
    ))
}

/// The AIVO consumers whose plugins write to PostgreSQL.
const WRITERS: [(&str, &str); 5] = [
    ("indexer", "LEARNING"),
    ("indexer", "FOCUS"),
    ("indexer", "HOMEWORK"),
    ("analytics", "LEARNING"),
    ("analytics", "FOCUS"),
];

/// (messages delivered more than once and still unacknowledged, deliveries
/// in all) over the writers' consumers.
async fn redeliveries(js: &jetstream::Context) -> anyhow::Result<(u64, u64)> {
    let (mut redelivered, mut delivered) = (0, 0);
    for (pipeline, stream) in WRITERS {
        let mut c: jetstream::consumer::PullConsumer = js
            .get_stream(stream)
            .await?
            .get_consumer(pipeline)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let info = c.info().await?;
        redelivered += info.num_redelivered as u64;
        delivered += info.delivered.consumer_sequence;
    }
    Ok((redelivered, delivered))
}

/// What `jetplug doctor` checks, with the shipped plugins' ledgers: every
/// message each writer's consumer passed is indexed / counted or
/// dead-lettered (run with the host stopped: nothing in flight).
async fn nothing_stranded(
    js: &jetstream::Context,
    config: &Config,
    db: &tokio_postgres::Client,
) -> anyhow::Result<()> {
    for (pipeline, stream) in WRITERS {
        // The indexer's rows carry their origin; the aggregator runs
        // exactly-once, so the host's ledger says what it handled.
        let query = if pipeline == "indexer" {
            "select stream_seq from events where stream = $1"
        } else {
            "select generate_series(first_seq, last_seq) from jetplug.ledger where pipeline = 'analytics' and stream = $1"
        };
        let rows = db.query(query, &[&stream]).await?;
        let handled = rows
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect::<std::collections::BTreeSet<u64>>();
        let p = config.pipeline(pipeline).context("pipeline")?;
        let s = config.stream(stream).context("stream")?;
        let e = jetplug::deadletter::doctor::examine(js, config, p, s, Some(handled)).await?;
        let (checked, stranded) = e.checked.clone().context("checked")?;
        assert!(
            stranded.is_empty(),
            "{pipeline} on {stream}: stranded {stranded:?}"
        );
        assert!(!e.in_flight && checked > 0, "{pipeline} on {stream}: {e:?}");
        assert_eq!(e.max_deliver, None, "the spare delivery is set");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_opens_the_breaker_and_loses_nothing() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut pg = Postgres::start().await?;
    let cache = tempfile::tempdir()?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivo/jetplug.toml");
    let mut config = Config::load(&path)?;
    config.nats.url = nats.url().as_str().into();
    config.engine.cache_dir = Some(cache.path().to_path_buf());
    let db = config.databases.get_mut("events").context("events db")?;
    db.url = Some(jetplug::config::Secret::new(pg.url()));
    db.timeout = Dur(Duration::from_millis(500));
    for p in &mut config.pipelines {
        p.batch = 50;
        p.backoff.initial = Dur(Duration::from_millis(200));
        // Short, so that any message the host holds without keeping it
        // alive during the outage is redelivered (and counted) by JetStream.
        p.ack_wait = Dur(Duration::from_secs(1));
    }
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;

    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(host::run(config.clone(), shutdown.clone(), move |h| {
        let _ = tx.send(h);
    }));
    let handle = tokio::time::timeout(Duration::from_secs(30), rx).await??;
    let indexer: Arc<Stats> = handle.stats["indexer"].clone();
    let analytics: Arc<Stats> = handle.stats["analytics"].clone();

    // Steady traffic before, during and after a ~10 s outage.
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
        Ok(scalar(&client, "select count(*) from events")
            .await
            .unwrap_or(0)
            > 100)
    })
    .await?;
    drop(client);
    pg.stop().await?;
    let stopped = tokio::time::Instant::now();
    eventually(Duration::from_secs(30), "the breaker to open", || async {
        Ok(Stats::get(&indexer.breaker_opened) >= 1)
    })
    .await?;
    // Watch the consumers through a 10 s outage: JetStream redelivers nothing.
    let until = stopped + Duration::from_secs(10);
    while tokio::time::Instant::now() < until {
        let (redelivered, _) = redeliveries(&js).await?;
        assert_eq!(
            redelivered, 0,
            "a message was redelivered during the outage"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    pg.restart().await?;
    publisher.await??;

    let client = pg.connect().await?;
    eventually(
        Duration::from_secs(90),
        "every event indexed and counted",
        || async {
            let (events, counted) = indexed_and_counted(&client).await?;
            Ok(events == 1500 && counted == 1000)
        },
    )
    .await?;
    eventually(Duration::from_secs(30), "the breaker to close", || async {
        Ok(indexer.breaker_state.get() == 0)
    })
    .await?;
    let distinct: i64 = scalar(
        &client,
        "select count(distinct (stream, stream_seq)) from events",
    )
    .await?;
    assert_eq!(distinct, 1500, "no duplicate rows");
    let dlq = js.get_stream("DLQ").await?.info().await?.state.messages;
    assert_eq!(dlq, 0, "nothing from the outage was dead-lettered");
    assert!(
        Stats::get(&indexer.held_batches) >= 1,
        "batches were held, not spent"
    );
    // The breaker stopped pulling and everything held was kept alive: each
    // message was delivered once per pipeline, so no delivery was spent.
    let (_, delivered) = redeliveries(&js).await?;
    assert_eq!(
        delivered,
        1500 + 1000,
        "one delivery per message and pipeline (retried: indexer {}, analytics {})",
        Stats::get(&indexer.retried),
        Stats::get(&analytics.retried)
    );
    shutdown.cancel();
    task.await??;
    nothing_stranded(&js, &config, &client).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_stream_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let cache = tempfile::tempdir()?;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivo/jetplug.toml");
    let mut config = Config::load(&path)?;
    config.nats.url = nats.url().as_str().into();
    config.nats.reconnect_delay = Dur(Duration::from_millis(200));
    config.engine.cache_dir = Some(cache.path().to_path_buf());
    config.databases.get_mut("events").context("events db")?.url =
        Some(jetplug::config::Secret::new(pg.url()));
    for p in &mut config.pipelines {
        p.batch = 50;
        p.ack_wait = Dur(Duration::from_secs(3));
    }
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(host::run(config.clone(), shutdown.clone(), |_| {}));

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
        Ok(scalar(&db, "select count(*) from events").await? > 200)
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
            let (events, counted) = indexed_and_counted(&db).await?;
            Ok(events == i64::from(N) && counted == i64::from(N) * 2 / 3)
        },
    )
    .await?;
    let distinct: i64 = scalar(&db, "select count(distinct payload->>'i') from events").await?;
    assert_eq!(distinct, i64::from(N), "each published event indexed once");
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    assert_eq!(js.get_stream("DLQ").await?.info().await?.state.messages, 0);
    shutdown.cancel();
    task.await??;
    nothing_stranded(&js, &config, &db).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_plugins_fail_alone_and_their_messages_are_dead_lettered_with_the_reason()
-> anyhow::Result<()> {
    use jetplug_tests::{TestConfig, plugins};
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = TestConfig::new(dir.path(), &nats.url())
        .stream("DLQ", &["dlq.>"])
        .stream("GOOD", &["good.>"])
        .plugin("good", plugins::TEST_NOOP)
        .pipeline("good", &["GOOD"], "good");
    for (name, path, grants) in [
        ("loop", plugins::TEST_LOOP, ""),
        ("membomb", plugins::TEST_MEMBOMB, ""),
        ("panic", plugins::TEST_PANIC, ""),
        ("wrongcount", plugins::TEST_WRONG_COUNT, ""),
        ("flood", plugins::TEST_LOG_FLOOD, ""),
        (
            "sneaky",
            plugins::TEST_CAPABILITIES,
            r#"publish = ["allowed.>"]
sql = ["*"]
kv = ["*"]"#,
        ),
    ] {
        let (up, at) = (name.to_uppercase(), format!("pipeline.{name}"));
        config = config
            .stream(&up, &[&format!("{name}.>")])
            .plugin(name, path)
            .table(&format!("plugin.{name}.grants"))
            .merge(&format!("plugin.{name}.grants"), grants)?
            .set(&format!("plugin.{name}.limits"), "deadline", "200ms")
            .set(&format!("plugin.{name}.limits"), "memory", "16MiB")
            .pipeline(name, &[&up], name)
            .set(&at, "max_deliver", 2)
            .set(&format!("{at}.backoff"), "initial", "100ms")
            .set(&format!("{at}.backoff"), "max", "200ms")
            .set(&format!("{at}.breaker"), "consecutive_failures", 1000);
    }
    // The flood reaches its limit long before the deadline, also on a
    // loaded machine (10,000 lines could take the 200 ms there).
    config = config.set("plugin.flood.limits", "log_lines_per_batch", 1000);
    let config = config.load_in(dir.path())?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(host::run(config, shutdown.clone(), move |h| {
        let _ = tx.send(h);
    }));
    let handle = tokio::time::timeout(Duration::from_secs(30), rx).await??;
    for name in ["loop", "membomb", "panic", "wrongcount", "flood"] {
        for _ in 0..2 {
            js.publish(format!("{name}.x"), "boom".into())
                .await?
                .await?;
        }
    }
    for _ in 0..2 {
        js.publish("sneaky.x", "publish:forbidden.x".into())
            .await?
            .await?;
    }
    for i in 0..200 {
        js.publish("good.x", format!("m{i}").into_bytes().into())
            .await?
            .await?;
    }
    let good = handle.stats["good"].clone();
    eventually(
        Duration::from_secs(60),
        "good traffic acked and 12 dead letters",
        || async {
            Ok(Stats::get(&good.acked) == 200
                && js.get_stream("DLQ").await?.info().await?.state.messages == 12)
        },
    )
    .await?;
    let mut s = js.get_stream("DLQ").await?;
    let last = s.info().await?.state.last_sequence;
    let mut reasons = std::collections::BTreeMap::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        let reason = m
            .headers
            .get("Jetplug-Reason")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_default();
        reasons.insert(m.subject.to_string(), reason);
    }
    assert!(
        reasons["dlq.loop.loop"].starts_with("deadline:"),
        "{reasons:?}"
    );
    assert!(
        reasons["dlq.membomb.membomb"].starts_with("memory-limit:"),
        "{reasons:?}"
    );
    assert!(
        reasons["dlq.panic.panic"].starts_with("trap:")
            && reasons["dlq.panic.panic"].contains("refusing a batch"),
        "{reasons:?}"
    );
    assert!(
        reasons["dlq.wrongcount.wrongcount"].starts_with("wrong-decision-count:"),
        "{reasons:?}"
    );
    assert!(
        reasons["dlq.flood.flood"].starts_with("log-flood:"),
        "{reasons:?}"
    );
    assert!(
        reasons["dlq.sneaky.sneaky"].starts_with("access-denied:")
            && reasons["dlq.sneaky.sneaky"].contains("forbidden.x"),
        "{reasons:?}"
    );
    assert_eq!(
        Stats::get(&good.failed_batches),
        0,
        "the good pipeline never failed"
    );
    shutdown.cancel();
    task.await??;
    Ok(())
}
