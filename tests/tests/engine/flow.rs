//! Flow control: per-subject ordering, tenant ceilings, and a slow plugin
//! bounding what the host holds.

use jetplug_tests::rig::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_subject_ordering_keeps_each_subject_in_order() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let extra = "ordering = \"subject\"\nconcurrency = 4\nmax_ack_pending = 100";
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, extra)?);
    host.stats().await?;
    let js = js(&nats).await?;
    let subjects = ["events.a", "events.b", "events.c", "events.d", "events.e"];
    for i in 0..20 {
        for s in subjects {
            js.publish(s, format!("term:{s}-{i:02}").into_bytes().into())
                .await?
                .await?;
        }
    }
    eventually(WAIT, "100 dead letters", || async {
        Ok(dlq_messages(&js).await?.len() == 100)
    })
    .await?;
    let dlq = dlq_messages(&js).await?;
    for s in subjects {
        assert_in_order(&dlq, s, 20);
    }
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_ceiling_limits_concurrent_batches() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    // Four workers, but the tenant allows one batch at a time.
    let extra = "concurrency = 4\nmax_ack_pending = 100\n\n\
                 [tenant.default]\nconsume = [\"events.>\"]\nlimits = { max_concurrent_batches = 1 }\n";
    let cfg = config(dir.path(), &nats.url(), plugins::TEST_NOOP, extra)?;
    let mut cfg = cfg;
    cfg.pipelines[0].batch = 1;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    let started = Instant::now();
    publish(
        &js,
        "events.a",
        &["sleep:400", "sleep:400", "sleep:400", "sleep:400"],
    )
    .await?;
    eventually(WAIT, "4 acks", || async {
        Ok(Stats::get(&stats.acked) == 4)
    })
    .await?;
    // In parallel this would take ~0.4 s; one at a time it takes at least 1.6 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1600),
        "batches overlapped: {:?}",
        started.elapsed()
    );
    host.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_plugin_bounds_what_the_host_holds_and_nothing_is_redelivered() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let extra = "ack_wait = \"1s\"\nconcurrency = 2\nmax_ack_pending = 1000";
    let mut cfg = config(dir.path(), &nats.url(), plugins::TEST_NOOP, extra)?;
    cfg.pipelines[0].batch = 10;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    // 300 messages of 20 ms each: ~3 s of work for 2 workers, published at once.
    let payloads = vec!["sleep:20"; 300];
    publish(&js, "events.slow", &payloads).await?;
    let mut most_held = 0;
    let start = Instant::now();
    while Stats::get(&stats.acked) < 300 && start.elapsed() < WAIT {
        let mut c = consumer(&js).await?;
        most_held = most_held.max(c.info().await?.num_ack_pending);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(Stats::get(&stats.acked), 300);
    // 2 batches running + 2 queued + what is owed and buffered: the pull
    // window (a batch per worker and one more) plus the half window left
    // when the next request goes out.
    let (batch, workers) = (10, 2);
    let window = batch * (workers + 1);
    let bound = 2 * workers * batch + window + window / 2;
    assert!(
        most_held <= bound,
        "the host held {most_held} messages at once (bound {bound})"
    );
    let mut c = consumer(&js).await?;
    assert_eq!(
        c.info().await?.num_redelivered,
        0,
        "acks stayed within ack_wait"
    );
    eprintln!("most messages held at once: {most_held}");
    host.stop().await
}

/// `ordering = "token:2"`: one key's messages are handled in order, and a
/// slow key holds up only itself — the other keys flow past it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_key_does_not_stall_the_other_keys() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let extra = "ordering = \"token:2\"\nconcurrency = 4\nmax_ack_pending = 1000";
    let mut host = start(config(dir.path(), &nats.url(), plugins::TEST_NOOP, extra)?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    // Key `slow`: 10 messages of 500 ms each (5 s in all, one at a time).
    let slow: Vec<String> = (0..10).map(|_| "sleep:500".to_owned()).collect();
    let slow: Vec<&str> = slow.iter().map(String::as_str).collect();
    publish(&js, "events.slow.x", &slow).await?;
    // Ten other keys, 20 quick messages each, in order per key.
    for i in 0..20 {
        for k in 0..10 {
            js.publish(
                format!("events.k{k}.x"),
                format!("term:k{k}-{i:02}").into_bytes().into(),
            )
            .await?
            .await?;
        }
    }
    eventually(WAIT, "the 200 quick messages settled", || async {
        Ok(Stats::get(&stats.dead_lettered) == 200)
    })
    .await?;
    let slow_done = Stats::get(&stats.acked);
    assert!(
        slow_done <= 5,
        "the quick keys waited for the slow one: {slow_done} of its 10 were done first"
    );
    eventually(WAIT, "the slow key done", || async {
        Ok(Stats::get(&stats.acked) == 10)
    })
    .await?;
    let dlq = dlq_messages(&js).await?;
    for k in 0..10 {
        assert_in_order(&dlq, &format!("events.k{k}.x"), 20);
    }
    host.stop().await
}

/// The dead letters of `subject` (reasons numbered in publish order) came
/// in order, all `n` of them.
fn assert_in_order(dlq: &[async_nats::jetstream::message::StreamMessage], subject: &str, n: usize) {
    let seen: Vec<String> = dlq
        .iter()
        .filter(|m| header(m, "Jetplug-Original-Subject") == subject)
        .map(|m| header(m, "Jetplug-Reason").to_owned())
        .collect();
    let mut sorted = seen.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "{subject} handled out of order");
    assert_eq!(seen.len(), n);
}

/// `exclusive` with a first batch that runs longer than `pin_timeout`: the
/// host running it keeps asking (a request every third of `pin_timeout`)
/// also while its worker is busy and its queue is full, so the pin stays
/// with it and a standby host never handles a message meanwhile (which
/// would break the stream's order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_pipeline_keeps_its_pin_through_a_slow_batch() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let extra = "exclusive = true\npin_timeout = \"1s\"\nack_wait = \"20s\"";
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let mut a = start(config(
        dir_a.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        extra,
    )?);
    let stats_a = a.stats().await?;
    let js = js(&nats).await?;
    publish(&js, "events.a", &["sleep:4000"]).await?;
    eventually(WAIT, "the slow batch running on the first host", || async {
        Ok(Stats::get(&stats_a.batches) == 1)
    })
    .await?;
    let mut b = start(config(
        dir_b.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        extra,
    )?);
    let stats_b = b.stats().await?;
    // Enough batches to fill the first host's queue, then more after the
    // pin would have timed out.
    for _ in 0..3 {
        publish(&js, "events.a", &["q"; 5]).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    publish(&js, "events.a", &["q"; 5]).await?;
    eventually(WAIT, "all 21 acked", || async {
        Ok(Stats::get(&stats_a.acked) + Stats::get(&stats_b.acked) == 21)
    })
    .await?;
    assert_eq!(
        Stats::get(&stats_b.acked),
        0,
        "the standby host handled messages while the pinned one still ran"
    );
    a.stop().await?;
    b.stop().await
}

/// Messages of 1 MiB in batches of up to 100: a batch is cut by bytes too
/// (`batch_max_bytes`, 8 MiB by default), so it never overruns the plugin's
/// 64 MiB — every message acked, no batch failed, none over 8 MiB. (Cut by
/// count alone, batches of tens of MiB reached the plugin, and past its
/// memory the pipeline crawled along one message at a time: `jetplug-bench
/// payloads` at 1 MiB.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_messages_are_batched_by_bytes() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = js(&nats).await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "batch = 100\nmax_ack_pending = 200",
    )?;
    jetplug::jetstream::streams::reconcile(&js, &cfg.streams).await?;
    let big = "x".repeat(1 << 20);
    let payloads: Vec<&str> = std::iter::repeat_n(big.as_str(), 60).collect();
    publish(&js, "events.big", &payloads).await?;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    eventually(WAIT, "all 60 settled", || async {
        all_settled(&js, 60).await
    })
    .await?;
    host.stop().await?;
    assert_eq!(Stats::get(&stats.acked), 60);
    assert_eq!(
        Stats::get(&stats.failed_batches),
        0,
        "no batch overran the plugin's memory"
    );
    assert!(
        Stats::get(&stats.batches) >= 60 / 8,
        "{} batches: at most 8 MiB each",
        Stats::get(&stats.batches)
    );
    Ok(())
}
