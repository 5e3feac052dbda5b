//! Nothing stranded: a message leaves JetStream's redelivery only acked
//! after a decision or terminated after its dead letter is stored — when a
//! last delivery ends without a decision, when the dead-letter route has
//! nowhere to go, and when the host is stopped at any moment of a failing
//! pipeline.

use std::collections::BTreeSet;

use jetplug_tests::rig::*;

/// A consumer made the way the host makes it, and one delivery taken by a
/// "host" that then dies without settling it.
async fn take_and_die(js: &jetstream::Context, cfg: &Config, payload: &[u8]) -> anyhow::Result<()> {
    let pc = cfg.pipeline("main").context("pipeline")?;
    let sc = cfg.stream("EVENTS").context("stream")?;
    let c = js
        .get_stream("EVENTS")
        .await?
        .create_consumer(jetplug::jetstream::consumer::config(pc, sc))
        .await?;
    let mut batch = c.fetch().max_messages(1).messages().await?;
    let taken = batch
        .next()
        .await
        .context("no delivery")?
        .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
    assert_eq!(&taken.payload[..], payload);
    Ok(())
}

/// A server, a pipeline with `max_deliver = 1` and `ack_wait = 1s` (its
/// streams and the advisory stream made), and one message `payload` whose
/// only delivery a "host" took and never settled.
async fn one_delivery_lost(
    payload: &str,
) -> anyhow::Result<(NatsServer, tempfile::TempDir, Config, jetstream::Context)> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "ack_wait = \"1s\"\nmax_deliver = 1",
    )?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &cfg.provisioned_streams()).await?;
    publish(&js, "events.a", &[payload]).await?;
    take_and_die(&js, &cfg, payload.as_bytes()).await?;
    Ok((nats, dir, cfg, js))
}

/// The last delivery taken by a host that died: JetStream delivers it once
/// more (the host's spare delivery) and the host dead-letters it without
/// running the plugin, whether or not anyone heard an advisory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_delivery_without_a_decision_comes_back_and_is_dead_lettered() -> anyhow::Result<()>
{
    let (_nats, _dir, cfg, js) = one_delivery_lost("lost").await?;
    // No host runs while the delivery times out.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    let mut host = start(cfg);
    let stats = host.stats().await?;
    eventually(WAIT, "the dead letter", || async {
        Ok(dlq_messages(&js).await?.len() == 1 && all_settled(&js, 1).await?)
    })
    .await?;
    let dlq = dlq_messages(&js).await?;
    let reason = header(&dlq[0], "Jetplug-Reason");
    assert!(
        reason.starts_with("no decision on the last delivery (1 of 1)"),
        "{reason}"
    );
    assert_eq!(header(&dlq[0], "Jetplug-Deliveries"), "2");
    assert_eq!(&dlq[0].payload[..], b"lost");
    assert_eq!(Stats::get(&stats.dead_lettered), 1);
    assert_eq!(Stats::get(&stats.batches), 0, "the plugin never ran it");
    host.stop().await
}

/// The second line: the spare delivery itself taken and never settled (a
/// host died twice over). JetStream gives up and says so in a
/// MAX_DELIVERIES advisory — emitted here while no host runs — which the
/// advisory stream keeps until a host starts and turns it into the dead
/// letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spare_delivery_that_timed_out_is_dead_lettered_from_the_advisory() -> anyhow::Result<()>
{
    let (_nats, _dir, cfg, js) = one_delivery_lost("lost twice").await?;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    take_and_die(&js, &cfg, b"lost twice").await?;
    // The server gives up when it next looks for something to deliver:
    // another pull, with no host listening for the advisory.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let pc = cfg.pipeline("main").context("pipeline")?;
    let c: PullConsumer = js
        .get_stream("EVENTS")
        .await?
        .get_consumer(&pc.consumer_name("EVENTS"))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut none = c
        .fetch()
        .max_messages(1)
        .expires(Duration::from_secs(1))
        .messages()
        .await?;
    assert!(none.next().await.is_none(), "given up, not delivered again");
    eventually(WAIT, "the advisory kept, with no host running", || async {
        let mut kept = js.get_stream("JETPLUG_ADVISORIES").await?;
        Ok(kept.info().await?.state.messages == 1)
    })
    .await?;

    let mut host = start(cfg);
    let stats = host.stats().await?;
    eventually(WAIT, "dead letter from the advisory", || async {
        Ok(dlq_messages(&js).await?.len() == 1)
    })
    .await?;
    let dlq = dlq_messages(&js).await?;
    assert!(
        header(&dlq[0], "Jetplug-Reason").contains("max deliveries (2)"),
        "{}",
        header(&dlq[0], "Jetplug-Reason")
    );
    assert_eq!(&dlq[0].payload[..], b"lost twice");
    assert_eq!(Stats::get(&stats.dead_lettered), 1);
    host.stop().await
}

/// Case 2 of the stranded-message report: the dead-letter stream is gone
/// while the host runs. Each message to dead-letter is held (kept alive, no
/// delivery spent, counted) until a stream takes its dead letter again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_with_nowhere_to_go_holds_its_message_until_a_stream_takes_it()
-> anyhow::Result<()> {
    let (_nats, _dir, host, stats, js) = running(
        plugins::TEST_NOOP,
        "ack_wait = \"1s\"\nmax_deliver = 2\nconcurrency = 2",
    )
    .await?;
    js.delete_stream("DLQ").await?;
    let payloads: Vec<String> = (0..5).map(|i| format!("term:rejected {i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;
    eventually(WAIT, "dead letters held", || async {
        Ok(Stats::get(&stats.dead_letter_failures) >= 4 && stats.dead_letters_held.get() >= 1)
    })
    .await?;
    // Held across several ack_waits: kept alive, not redelivered.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut c = consumer(&js).await?;
    let info = c.info().await?;
    assert_eq!(info.ack_floor.stream_sequence, 0, "nothing settled");
    assert_eq!(info.num_redelivered, 0, "no delivery spent while held");
    assert_eq!(Stats::get(&stats.dead_lettered), 0);

    js.create_stream(stream::Config {
        name: "DLQ".into(),
        subjects: vec!["dlq.>".into()],
        ..Default::default()
    })
    .await?;
    eventually(WAIT, "every dead letter stored", || async {
        Ok(dlq_messages(&js).await?.len() == 5 && all_settled(&js, 5).await?)
    })
    .await?;
    assert_eq!(Stats::get(&stats.dead_lettered), 5);
    assert_eq!(stats.dead_letters_held.get(), 0);
    host.stop().await
}

/// Case 1 of the stranded-message report: a plugin that traps on every
/// batch, and the host stopped at many moments while messages are retried,
/// run alone on their last delivery and dead-lettered — gracefully (as by
/// SIGTERM) or abruptly (its drain cut short, as by a kill, and no host
/// running while the deliveries it held time out); then a host with a
/// plugin that terminates everything.
/// Every message ends in the dead-letter stream — from the failing
/// pipeline or the final one — and the consumer has settled all of them:
/// none passed without a dead letter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_a_failing_pipeline_at_any_moment_strands_nothing() -> anyhow::Result<()> {
    const N: u64 = 150;
    let nats = NatsServer::start().await?;
    let js = js(&nats).await?;
    let extra = "ack_wait = \"2s\"\nmax_deliver = 3\n\
                 breaker = { open_initial = \"100ms\", open_max = \"300ms\" }";
    let dir = tempfile::tempdir()?;
    let failing = config(dir.path(), &nats.url(), plugins::TEST_PANIC, extra)?;
    jetplug::jetstream::streams::reconcile(&js, &failing.streams).await?;
    let payloads: Vec<String> = (0..N).map(|i| format!("term:final {i}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;

    // (run for, abrupt: the drain is cut short as by a kill, then no host
    // runs while the deliveries it held time out)
    let rounds = [
        (150u64, false),
        (400, true),
        (700, false),
        (250, true),
        (900, false),
        (550, true),
    ];
    for (round, (ms, abrupt)) in rounds.into_iter().enumerate() {
        let mut cfg = failing.clone();
        if abrupt {
            cfg.host.shutdown_timeout = jetplug::config::Dur(Duration::from_millis(1));
        }
        let mut host = start(cfg);
        host.stats().await?;
        tokio::time::sleep(Duration::from_millis(ms)).await;
        host.stop()
            .await
            .with_context(|| format!("round {round}"))?;
        if abrupt {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
    }
    let dir = tempfile::tempdir()?;
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, extra)?);
    let stats = host.stats().await?;
    eventually(Duration::from_secs(60), "every message settled", || async {
        all_settled(&js, N).await
    })
    .await?;
    host.stop().await?;
    let seqs: BTreeSet<u64> = dlq_messages(&js)
        .await?
        .iter()
        .filter_map(|m| header(m, "Jetplug-Original-Sequence").parse().ok())
        .collect();
    let missing: Vec<u64> = (1..=N).filter(|s| !seqs.contains(s)).collect();
    assert!(
        missing.is_empty(),
        "stranded (settled without a dead letter): {missing:?}; {} dead-lettered by the final host",
        Stats::get(&stats.dead_lettered)
    );
    Ok(())
}
