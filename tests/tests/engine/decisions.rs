//! Decisions and failures: every decision reaches JetStream as intended,
//! retries wait, failures end in the dead-letter stream exactly once, long
//! batches are kept alive, and bad messages are dead-lettered alone.

use jetplug_tests::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_reaches_jetstream() -> anyhow::Result<()> {
    let (_nats, _dir, host, stats, js) = running(plugins::TEST_NOOP, "max_deliver = 3").await?;
    publish(
        &js,
        "events.a",
        &["ok-1", "ok-2", "term:not an event", "retry:100"],
    )
    .await?;

    eventually(WAIT, "all settled and two dead letters", || async {
        Ok(all_settled(&js, 4).await? && dlq_messages(&js).await?.len() == 2)
    })
    .await?;
    assert_eq!(Stats::get(&stats.acked), 2);
    assert_eq!(
        Stats::get(&stats.retried),
        2,
        "retry:100 was retried on deliveries 1 and 2"
    );
    assert_eq!(Stats::get(&stats.dead_lettered), 2);

    let dlq = dlq_messages(&js).await?;
    let term = dlq
        .iter()
        .find(|m| &m.payload[..] == b"term:not an event")
        .context("term dead letter")?;
    assert_eq!(term.subject.as_str(), "dlq.events.main");
    assert_eq!(header(term, "Jetplug-Reason"), "not an event");
    assert_eq!(header(term, "Jetplug-Original-Subject"), "events.a");
    assert_eq!(header(term, "Jetplug-Original-Stream"), "EVENTS");
    assert_eq!(header(term, "Jetplug-Original-Sequence"), "3");
    assert_eq!(header(term, "Jetplug-Deliveries"), "1");
    assert_eq!(
        header(term, "Jetplug-Original-Consumer"),
        "jetplug-main-EVENTS"
    );
    let retried = dlq
        .iter()
        .find(|m| &m.payload[..] == b"retry:100")
        .context("retry dead letter")?;
    assert!(header(retried, "Jetplug-Reason").contains("retries exhausted"));
    assert_eq!(header(retried, "Jetplug-Deliveries"), "3");
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_delay_is_respected() -> anyhow::Result<()> {
    let (_nats, _dir, host, _stats, js) = running(plugins::TEST_NOOP, "max_deliver = 2").await?;
    let published = Instant::now();
    publish(&js, "events.a", &["retry:1500"]).await?;
    eventually(WAIT, "the dead letter", || async {
        Ok(dlq_messages(&js).await?.len() == 1)
    })
    .await?;
    // Delivery 1 asked for 1.5 s; delivery 2 (the last) dead-letters.
    assert!(
        published.elapsed() >= Duration::from_millis(1500),
        "redelivered early: {:?}",
        published.elapsed()
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_plugin_dead_letters_once_on_the_last_delivery() -> anyhow::Result<()> {
    let (_nats, _dir, host, stats, js) = running(plugins::TEST_PANIC, "max_deliver = 3").await?;
    publish(&js, "events.a", &["boom", "ok"]).await?;
    eventually(WAIT, "settled with one dead letter", || async {
        Ok(all_settled(&js, 2).await? && dlq_messages(&js).await?.len() == 1)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dlq = dlq_messages(&js).await?;
    assert_eq!(dlq.len(), 1, "exactly one dead letter");
    let reason = header(&dlq[0], "Jetplug-Reason");
    assert!(
        reason.starts_with("trap:") && reason.contains("delivery 3 of 3"),
        "{reason}"
    );
    assert_eq!(header(&dlq[0], "Jetplug-Deliveries"), "3");
    // `boom` failed on each of its 3 deliveries; `ok` succeeded once it was
    // redelivered without `boom` (or failed with it and was retried).
    assert!(Stats::get(&stats.failed_batches) >= 3);
    assert_eq!(Stats::get(&stats.acked), 1);
    host.stop().await
}

/// A plugin that fails on everything spends one delivery per failed batch
/// (not a whole batch's) until its breaker opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_plugin_takes_one_message_at_a_time_until_its_breaker_opens() -> anyhow::Result<()>
{
    let (_nats, _dir, host, stats, js) = running(
        plugins::TEST_PANIC,
        "max_deliver = 2\nbreaker = { consecutive_failures = 5, open_initial = \"5s\" }",
    )
    .await?;
    publish(&js, "events.a", &["boom"; 100]).await?;
    eventually(WAIT, "the breaker opens", || async {
        Ok(Stats::get(&stats.breaker_opened) >= 1)
    })
    .await?;
    // Let the fifth failure's messages be settled.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let spent = Stats::get(&stats.retried) + Stats::get(&stats.dead_lettered);
    // Five full batches would be 100; after the first failure (and the full
    // batch already pulled behind it) failures cost one message each.
    assert!(
        (5..=45).contains(&spent),
        "{spent} deliveries spent before the breaker opened"
    );
    assert_eq!(Stats::get(&stats.failed_batches), 5);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_batches_are_kept_alive_with_progress() -> anyhow::Result<()> {
    let (_nats, _dir, host, stats, js) =
        running(plugins::TEST_NOOP, "ack_wait = \"1s\"\nmax_deliver = 5").await?;
    publish(&js, "events.a", &["sleep:2500"]).await?;
    eventually(WAIT, "ack", || async { all_settled(&js, 1).await }).await?;
    assert_eq!(
        Stats::get(&stats.batches),
        1,
        "no redelivery while the batch ran"
    );
    assert_eq!(Stats::get(&stats.acked), 1);
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_plugin_receives_dead_letters_and_failures_keep_the_original()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    // test-capabilities logs and acks any payload it does not recognise.
    let extra = format!(
        "dead_letter = \"dl\"\nmax_deliver = 3\n\n[plugin.dl]\npath = \"{}\"\n\
         grants = {{ publish = [\"x\"], sql = [\"*\"], kv = [\"x\"] }}\n",
        plugins::TEST_CAPABILITIES
    );
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, &extra)?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    publish(&js, "events.a", &["term:rejected"]).await?;
    eventually(WAIT, "settled", || async { all_settled(&js, 1).await }).await?;
    assert_eq!(Stats::get(&stats.dead_lettered), 1);
    assert!(
        dlq_messages(&js).await?.is_empty(),
        "the plugin route replaces the built-in one"
    );
    host.stop().await?;

    // A dead-letter route that fails: the original is not terminated.
    let dir = tempfile::tempdir()?;
    let extra = format!(
        "dead_letter = \"dl\"\nmax_deliver = 3\n\n[plugin.dl]\npath = \"{}\"\n",
        plugins::TEST_PANIC
    );
    let nats = NatsServer::start().await?;
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, &extra)?);
    let stats = host.stats().await?;
    let js = self::js(&nats).await?;
    publish(&js, "events.a", &["term:rejected"]).await?;
    eventually(WAIT, "a failed dead letter", || async {
        Ok(Stats::get(&stats.dead_letter_failures) >= 1)
    })
    .await?;
    let mut c = consumer(&js).await?;
    let info = c.info().await?;
    assert_eq!(
        info.ack_floor.stream_sequence, 0,
        "the original was neither acked nor terminated"
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_is_dead_lettered_alone_with_the_memory_limit_as_reason()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "max_deliver = 2",
    )?;
    cfg.plugins.get_mut("p").context("plugin")?.limits.memory = jetplug::config::Size(1_536_000);
    let mut host = start(cfg);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    let big = "x".repeat(900_000);
    publish(&js, "events.a", &[big.as_str(), "small"]).await?;
    eventually(WAIT, "settled", || async {
        Ok(all_settled(&js, 2).await? && dlq_messages(&js).await?.len() == 1)
    })
    .await?;
    let dlq = dlq_messages(&js).await?;
    assert_eq!(dlq[0].payload.len(), 900_000, "the payload is kept whole");
    assert!(
        header(&dlq[0], "Jetplug-Reason").starts_with("memory-limit:"),
        "{}",
        header(&dlq[0], "Jetplug-Reason")
    );
    assert_eq!(
        Stats::get(&stats.acked),
        1,
        "the small message was processed"
    );
    host.stop().await
}

/// Publishes over a raw connection (async-nats only sends valid UTF-8):
/// `(subject, header line or empty, payload)`.
async fn publish_raw(port: u16, msgs: &[(&[u8], &[u8], &[u8])]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let mut info = [0u8; 4096];
    let _ = s.read(&mut info).await?;
    let mut out: Vec<u8> = b"CONNECT {\"verbose\":false,\"headers\":true}\r\n".to_vec();
    for (subject, header, payload) in msgs {
        let mut h = b"NATS/1.0\r\n".to_vec();
        h.extend_from_slice(header);
        h.extend_from_slice(b"\r\n\r\n");
        out.extend_from_slice(b"HPUB ");
        out.extend_from_slice(subject);
        out.extend_from_slice(format!(" {} {}\r\n", h.len(), h.len() + payload.len()).as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(payload);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"PING\r\n");
    s.write_all(&out).await?;
    let mut pong = Vec::new();
    while !String::from_utf8_lossy(&pong).contains("PONG") {
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).await?;
        anyhow::ensure!(n > 0, "server closed the raw connection");
        pong.extend_from_slice(&buf[..n]);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_subjects_and_headers_are_dead_lettered_and_spare_their_neighbours()
-> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "ack_wait = \"2s\"\nmax_deliver = 3",
    )?;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    let ok: (&[u8], &[u8], &[u8]) = (b"events.ok", b"X-Fine: yes", b"fine");
    let mut msgs = vec![ok; 5];
    msgs.push((b"events.\xff\xfe", b"", b"bad subject"));
    msgs.push((b"events.hdr", b"X-Bad: \xff\xfe", b"bad header"));
    msgs.extend(vec![ok; 5]);
    publish_raw(nats.port(), &msgs).await?;

    eventually(
        WAIT,
        "both undeliverable messages dead-lettered",
        || async { Ok(dlq_messages(&js).await?.len() == 2) },
    )
    .await?;
    eventually(WAIT, "all settled", || async { all_settled(&js, 12).await }).await?;
    assert_eq!(
        Stats::get(&stats.acked),
        10,
        "every healthy neighbour acked"
    );
    assert_eq!(Stats::get(&stats.dead_lettered), 2);
    let dlq = dlq_messages(&js).await?;
    for (payload, seq) in [(&b"bad subject"[..], "6"), (&b"bad header"[..], "7")] {
        let m = dlq
            .iter()
            .find(|m| &m.payload[..] == payload)
            .with_context(|| format!("dead letter for {payload:?}"))?;
        assert!(
            header(m, "Jetplug-Reason")
                .starts_with("undeliverable: its subject or headers are not valid UTF-8"),
            "{}",
            header(m, "Jetplug-Reason")
        );
        assert_eq!(header(m, "Jetplug-Original-Sequence"), seq);
    }
    let bad_subject = dlq
        .iter()
        .find(|m| &m.payload[..] == b"bad subject")
        .context("bad subject")?;
    assert!(header(bad_subject, "Jetplug-Original-Subject").contains('\u{FFFD}'));
    host.stop().await
}

/// A downstream that never comes back (here: a database nobody listens on,
/// which the plugin sees as `unavailable`) holds a batch at most
/// `breaker.max_hold`; then its messages go back to retry accounting and,
/// once their deliveries are spent, to the dead-letter queue — a permanent
/// error taken for an outage cannot stall a pipeline silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_held_past_max_hold_returns_to_retry_accounting() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let nobody = jetplug_tests::free_port()?;
    let config = main_config(dir.path(), &nats.url(), plugins::POSTGRES_INDEXER)
        .set("pipeline.main", "max_deliver", 2)
        .set("pipeline.main.breaker", "max_hold", "1s")
        .set("pipeline.main.breaker", "open_initial", "100ms")
        .set("pipeline.main.breaker", "open_max", "200ms")
        .set("plugin.p.grants", "sql", vec!["events"])
        .database(
            "events",
            &format!("postgres://postgres@127.0.0.1:{nobody}/postgres"),
        )
        .set("database.events", "timeout", "200ms");
    let mut host = start(config.load_in(dir.path())?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    publish(&js, "events.a", &[r#"{"n":1}"#, r#"{"n":2}"#]).await?;
    eventually(WAIT, "both dead-lettered", || async {
        Ok(dlq_messages(&js).await?.len() == 2)
    })
    .await?;
    assert!(Stats::get(&stats.held_batches) >= 1, "held first");
    assert!(Stats::get(&stats.held_expired) >= 1, "then released");
    let dlq = dlq_messages(&js).await?;
    let reason = header(&dlq[0], "Jetplug-Reason");
    assert!(reason.contains("retries exhausted"), "{reason}");
    host.stop().await
}

/// A batch held for a downstream outage is run again on the version it
/// started with, also when a new version is swapped in meanwhile (a held
/// batch is in flight: docs/hotswap.md); the next batches take the new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_batch_stays_on_its_version_through_a_swap() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut pg = jetplug_tests::Postgres::start().await?;
    pg.connect()
        .await?
        .batch_execute("create table tagged (v text)")
        .await?;
    let dir = tempfile::tempdir()?;
    let admin = jetplug_tests::free_port()?;
    let pg_url = pg.url();
    let version = |tag: &str| {
        main_config(dir.path(), &nats.url(), plugins::TEST_CAPABILITIES)
            .set("pipeline.main.breaker", "max_hold", "60s")
            .set("pipeline.main.breaker", "consecutive_failures", 1000)
            .set("plugin.p.grants", "sql", vec!["events"])
            .set("plugin.p.grants", "publish", vec!["x"])
            .set("plugin.p.grants", "kv", vec!["x"])
            .set("plugin.p.config", "tag", tag)
            .set("plugin.p.config", "on_unavailable", "retry")
            .database("events", &pg_url)
            .set("database.events", "timeout", "200ms")
            .set("admin", "address", format!("127.0.0.1:{admin}"))
    };
    let mut host = start(version("v1").load_in(dir.path())?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    pg.stop().await?;
    let insert = "sql-exec|events|insert into tagged values ('{tag}')";
    publish(&js, "events.a", &[insert]).await?;
    eventually(WAIT, "the batch held", || async {
        Ok(Stats::get(&stats.held_batches) >= 1)
    })
    .await?;
    // A new version (another configuration) while the batch is held.
    version("v2").write_in(dir.path())?;
    let addr = format!("127.0.0.1:{admin}");
    eventually(WAIT, "the new version swapped in", || async {
        let (_, body) = jetplug_tests::http_get(&addr, "/v1/plugins").await?;
        Ok(body.contains("\"previous\":[\""))
    })
    .await?;
    let held = Stats::get(&stats.held_batches);
    eventually(WAIT, "held again after the swap", || async {
        Ok(Stats::get(&stats.held_batches) > held)
    })
    .await?;
    pg.restart().await?;
    let db = pg.connect().await?;
    eventually(WAIT, "the held batch written", || async {
        Ok(jetplug_tests::scalar(&db, "select count(*) from tagged").await? == 1)
    })
    .await?;
    let row: String = db.query_one("select v from tagged", &[]).await?.get(0);
    assert_eq!(row, "v1", "the held batch ran on another version");
    // The next batch runs on the new version.
    publish(&js, "events.a", &[insert]).await?;
    eventually(WAIT, "the second written", || async {
        Ok(jetplug_tests::scalar(&db, "select count(*) from tagged where v = 'v2'").await? == 1)
    })
    .await?;
    host.stop().await
}

/// A re-binding does not drop what was taken in: a pull request answered
/// with an error status (injected here on the host's inbox) ends the
/// binding while a slow plugin leaves messages waiting in the pipeline;
/// they are run on the delivery they came with instead of waiting out
/// `ack_wait` to come back (each message is delivered exactly once).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebinding_runs_what_was_taken_in() -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "ack_wait = \"5s\"",
    )?;
    let client = async_nats::connect(nats.url()).await?;
    let mut requests = client
        .subscribe("$JS.API.CONSUMER.MSG.NEXT.EVENTS.jetplug-main-EVENTS")
        .await?;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    publish(&js, "events.a", &["sleep:20"; 100]).await?;
    let inbox = tokio::time::timeout(WAIT, requests.next())
        .await?
        .and_then(|m| m.reply)
        .context("no pull request seen")?;
    eventually(WAIT, "the first batch running", || async {
        Ok(Stats::get(&stats.batches) >= 1)
    })
    .await?;
    // A status no binding survives, while a window of messages waits.
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", nats.port())).await?;
    let mut info = [0u8; 4096];
    let _ = raw.read(&mut info).await?;
    let status = "NATS/1.0 500 Injected\r\n\r\n";
    let frame = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB {inbox} {n} {n}\r\n{status}\r\nPING\r\n",
        n = status.len()
    );
    raw.write_all(frame.as_bytes()).await?;
    eventually(WAIT, "all acked", || async {
        Ok(Stats::get(&stats.acked) >= 100)
    })
    .await?;
    let mut c = consumer(&js).await?;
    let info = c.info().await?;
    assert_eq!(
        info.delivered.consumer_sequence, 100,
        "each message delivered once (redelivered: {})",
        info.num_redelivered
    );
    host.stop().await
}
