//! The JetStream engine against a real nats-server: every decision reaches
//! JetStream as intended, retries wait, failures end in the dead-letter
//! stream exactly once, and the host survives NATS being down or restarted.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer, stream};
use futures::StreamExt;
use jetplug::config::Config;
use jetplug::host::{self, HostHandle};
use jetplug::pipeline::Stats;
use jetplug_tests::{NatsServer, eventually, plugins};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(30);

/// A config with streams EVENTS (events.>) and DLQ (dlq.>), one pipeline
/// `main` on EVENTS with `plugin`, and `extra` appended to the pipeline.
fn config(dir: &Path, url: &str, plugin: &str, extra: &str) -> anyhow::Result<Config> {
    let text = format!(
        r#"
[nats]
url = "{url}"
connect_delay = "200ms"
reconnect_delay = "200ms"

[host]
shutdown_timeout = "20s"

[engine]
cache_dir = "{cache}"

[[stream]]
name = "EVENTS"
subjects = ["events.>"]

[[stream]]
name = "DLQ"
subjects = ["dlq.>"]

[plugin.p]
path = "{plugin}"

[[pipeline]]
name = "main"
streams = ["EVENTS"]
plugin = "p"
batch = 20
batch_max_wait = "20ms"
backoff = {{ initial = "100ms", max = "1s" }}
{extra}
"#,
        cache = dir.join("cache").display(),
    );
    let path = dir.join("jetplug.toml");
    std::fs::write(&path, &text)?;
    Ok(Config::load(&path)?)
}

struct RunningHost {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), host::HostError>>,
    handle: tokio::sync::oneshot::Receiver<HostHandle>,
}

fn start(config: Config) -> RunningHost {
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(host::run(config, shutdown.clone(), move |h| {
        let _ = tx.send(h);
    }));
    RunningHost {
        shutdown,
        task,
        handle: rx,
    }
}

impl RunningHost {
    async fn stats(&mut self) -> anyhow::Result<Arc<Stats>> {
        let h = tokio::time::timeout(WAIT, &mut self.handle)
            .await
            .context("host did not start")??;
        Ok(h.stats["main"].clone())
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task)
            .await
            .context("host did not stop in time")???;
        Ok(())
    }
}

/// A nats-server and a host running `plugin` (with `extra` pipeline keys)
/// on it: the server, the temp dir, the host, its stats and a JetStream
/// context. Keep the server and dir bound until the test ends.
async fn running(
    plugin: &str,
    extra: &str,
) -> anyhow::Result<(
    NatsServer,
    tempfile::TempDir,
    RunningHost,
    Arc<Stats>,
    jetstream::Context,
)> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut host = start(config(dir.path(), &nats.url(), plugin, extra)?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    Ok((nats, dir, host, stats, js))
}

async fn js(nats: &NatsServer) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(async_nats::connect(nats.url()).await?))
}

async fn publish(js: &jetstream::Context, subject: &str, payloads: &[&str]) -> anyhow::Result<()> {
    for p in payloads {
        js.publish(subject.to_owned(), p.as_bytes().to_vec().into())
            .await?
            .await?;
    }
    Ok(())
}

async fn consumer(js: &jetstream::Context) -> anyhow::Result<PullConsumer> {
    js.get_stream("EVENTS")
        .await?
        .get_consumer("jetplug-main-EVENTS")
        .await
        .map_err(|e| anyhow::anyhow!("get consumer: {e}"))
}

/// All messages of the stream are settled: nothing pending, nothing unacked.
async fn all_settled(js: &jetstream::Context, total: u64) -> anyhow::Result<bool> {
    let mut c = consumer(js).await?;
    let info = c.info().await?;
    Ok(info.num_pending == 0
        && info.num_ack_pending == 0
        && info.delivered.stream_sequence >= total)
}

async fn dlq_messages(
    js: &jetstream::Context,
) -> anyhow::Result<Vec<async_nats::jetstream::message::StreamMessage>> {
    let mut s = js.get_stream("DLQ").await?;
    let n = s.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=n {
        out.push(s.get_raw_message(seq).await?);
    }
    Ok(out)
}

fn header<'a>(m: &'a async_nats::jetstream::message::StreamMessage, name: &str) -> &'a str {
    m.headers.get(name).map(|v| v.as_str()).unwrap_or("")
}

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
async fn timed_out_last_delivery_is_dead_lettered_from_the_advisory() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "ack_wait = \"1s\"\nmax_deliver = 1",
    )?;
    let js = js(&nats).await?;
    // Simulate a host that took the message's only delivery and died.
    jetplug::jetstream::streams::reconcile(&js, &cfg.streams).await?;
    let stream = js.get_stream("EVENTS").await?;
    let pc = cfg.pipeline("main").context("pipeline")?;
    let sc = cfg.stream("EVENTS").context("stream")?;
    let c = stream
        .create_consumer(jetplug::jetstream::consumer::config(pc, sc))
        .await?;
    publish(&js, "events.a", &["lost"]).await?;
    let mut batch = c.fetch().max_messages(1).messages().await?;
    let taken = batch
        .next()
        .await
        .context("no delivery")?
        .map_err(|e| anyhow::anyhow!("fetch: {e}"))?;
    assert_eq!(&taken.payload[..], b"lost");
    drop(batch);

    let mut host = start(cfg);
    let stats = host.stats().await?;
    eventually(WAIT, "dead letter from the advisory", || async {
        Ok(dlq_messages(&js).await?.len() == 1)
    })
    .await?;
    let dlq = dlq_messages(&js).await?;
    assert!(header(&dlq[0], "Jetplug-Reason").contains("max deliveries (1)"));
    assert_eq!(&dlq[0].payload[..], b"lost");
    assert_eq!(Stats::get(&stats.dead_lettered), 1);
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
        let seen: Vec<String> = dlq
            .iter()
            .filter(|m| header(m, "Jetplug-Original-Subject") == s)
            .map(|m| header(m, "Jetplug-Reason").to_owned())
            .collect();
        let mut sorted = seen.clone();
        sorted.sort();
        assert_eq!(seen, sorted, "{s} handled out of order");
        assert_eq!(seen.len(), 20);
    }
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
    // 2 running + 2 queued + 1 being collected + the client's pull-ahead.
    assert!(
        most_held <= 80,
        "the host held {most_held} messages at once"
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
