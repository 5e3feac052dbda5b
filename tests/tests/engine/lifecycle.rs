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

/// Where a new consumer starts: `deliver = "new"` skips what the stream
/// held before, `deliver = "by_start_time"` starts at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_consumer_starts_where_deliver_says() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let js = js(&nats).await?;
    let dir = tempfile::tempdir()?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        "deliver = \"new\"",
    )?;
    jetplug::jetstream::streams::reconcile(&js, &cfg.streams).await?;
    publish(&js, "events.old", &["1", "2", "3"]).await?;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    eventually(WAIT, "consumer made", || async {
        Ok(consumer(&js).await.is_ok())
    })
    .await?;
    publish(&js, "events.new", &["4", "5"]).await?;
    eventually(WAIT, "the new two settled", || async {
        all_settled(&js, 5).await
    })
    .await?;
    host.stop().await?;
    assert_eq!(Stats::get(&stats.acked), 2, "the three older ones skipped");

    // by_start_time, on a fresh consumer: from a moment between two groups.
    js.get_stream("EVENTS")
        .await?
        .delete_consumer("jetplug-main-EVENTS")
        .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&js, "events.later", &["6", "7", "8"]).await?;
    let cfg = config(
        dir.path(),
        &nats.url(),
        plugins::TEST_NOOP,
        &format!("deliver = \"by_start_time\"\nstart_time = \"{since}\""),
    )?;
    let mut host = start(cfg);
    let stats = host.stats().await?;
    eventually(WAIT, "the later three settled", || async {
        all_settled(&js, 8).await
    })
    .await?;
    host.stop().await?;
    assert_eq!(
        Stats::get(&stats.acked),
        3,
        "only those stored after the time"
    );
    Ok(())
}

/// `connect_attempts = 3` with no server: `jetplug run` gives up after
/// three attempts and exits 1, naming the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finite_number_of_connect_attempts_ends_the_start() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = format!("nats://127.0.0.1:{}", jetplug_tests::free_port()?);
    let path = main_config(dir.path(), &url, plugins::TEST_NOOP)
        .set("nats", "connect_attempts", 3)
        .set("nats", "connect_timeout", "1s")
        .write_in(dir.path())?;
    let mut child = jetplug_tests::jetplug_cmd()?
        .arg("run")
        .arg("--config")
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    // A guard, not a goal: a host that retries forever never exits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            anyhow::bail!("still retrying after 60 s: connect_attempts was ignored");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = child.wait_with_output()?;
    let text = jetplug_tests::output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(&format!("cannot connect to NATS at {url} after 3 attempts")),
        "{text}"
    );
    Ok(())
}

/// `max_reconnect_attempts = 2`, and `reconnect = false`: after the server
/// goes away the client gives up, and the host says so — not ready, not
/// live — and does not come back by itself when the server does (a
/// restart is needed, which is what the liveness probe is for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limited_reconnect_gives_up_and_the_host_is_not_ready() -> anyhow::Result<()> {
    gives_up(|c| c.set("nats", "max_reconnect_attempts", 2)).await?;
    gives_up(|c| c.set("nats", "reconnect", false)).await
}

async fn gives_up(limit: impl FnOnce(TestConfig) -> TestConfig) -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let cfg =
        limit(main_config(dir.path(), &nats.url(), plugins::TEST_NOOP)).load_in(dir.path())?;
    let mut host = start(cfg);
    let started = host.started().await?;
    let health = started.health.clone();
    eventually(WAIT, "ready", || async { Ok(health.ready()) }).await?;
    assert!(!health.gave_up());
    nats.kill().await?;
    eventually(WAIT, "gave up reconnecting", || async {
        Ok(health.gave_up())
    })
    .await?;
    assert!(!health.ready() && !health.connected());
    nats.restart().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !health.connected() && !health.ready(),
        "a client that gave up stays down"
    );
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

/// `jetplug streams purge|delete`: refused without a terminal or `--yes`
/// (nothing removed), then `--subject`, `--keep` and a whole purge remove
/// exactly what they say; `delete` removes the stream and says a host
/// would re-create the declared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_purged_and_deleted_with_confirmation() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let js = js(&nats).await?;
    let cfg = config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?;
    jetplug::jetstream::streams::reconcile(&js, &cfg.streams).await?;
    let file = dir.path().join("jetplug.toml");
    let file = file.to_str().context("path")?;
    publish(&js, "events.a", &["1", "2", "3", "4"]).await?;
    publish(&js, "events.b", &["5", "6", "7"]).await?;
    let messages = |js: jetstream::Context| async move {
        anyhow::Ok(js.get_stream("EVENTS").await?.info().await?.state.messages)
    };
    let run = |args: &[&str]| -> anyhow::Result<(bool, String)> {
        let out = jetplug_tests::jetplug_cmd()?
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    };

    let (ok, text) = run(&["streams", "purge", "EVENTS", "-c", file])?;
    assert!(!ok && text.contains("pass --yes"), "{text}");
    assert_eq!(messages(js.clone()).await?, 7, "nothing purged unconfirmed");

    let (ok, text) = run(&[
        "streams",
        "purge",
        "EVENTS",
        "--subject",
        "events.a",
        "--keep",
        "1",
        "--yes",
        "-c",
        file,
    ])?;
    assert!(ok && text.contains("purged 3 message(s)"), "{text}");
    assert_eq!(messages(js.clone()).await?, 4);
    let (ok, text) = run(&[
        "streams",
        "purge",
        "EVENTS",
        "--subject",
        "events.b",
        "--yes",
        "-c",
        file,
    ])?;
    assert!(ok && text.contains("purged 3 message(s)"), "{text}");
    let (ok, text) = run(&["streams", "purge", "EVENTS", "--yes", "-c", file])?;
    assert!(ok && text.contains("purged 1 message(s)"), "{text}");
    assert_eq!(messages(js.clone()).await?, 0);

    let (ok, text) = run(&["streams", "delete", "EVENTS", "-c", file])?;
    assert!(!ok && text.contains("pass --yes"), "{text}");
    assert!(js.get_stream("EVENTS").await.is_ok(), "kept unconfirmed");
    let (ok, text) = run(&["streams", "delete", "EVENTS", "--yes", "-c", file])?;
    assert!(ok && text.contains("deleted stream `EVENTS`"), "{text}");
    assert!(text.contains("re-creates it"), "{text}");
    assert!(js.get_stream("EVENTS").await.is_err(), "deleted");
    let (ok, text) = run(&["streams", "delete", "NOPE", "--yes", "-c", file])?;
    assert!(!ok && text.contains("NOPE"), "{text}");
    Ok(())
}

/// The settings the systems jetplug replaces set on their streams —
/// compression, duplicate window, per-subject limit, discard policy — are
/// created as declared and each updated in place when the declaration
/// changes; the AIVO topology's retention, storage, ages and sizes are
/// what its streams get.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_creates_and_updates_the_settings_operators_set() -> anyhow::Result<()> {
    use jetplug::config::{Compression, Discard, Dur, Size};
    use jetplug::jetstream::streams::{self, Applied, Plan};
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let js = js(&nats).await?;
    let mut cfg = config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?;
    let events = &mut cfg.streams[0];
    events.compression = Compression::S2;
    events.duplicate_window = Dur(Duration::from_secs(600));
    events.max_messages_per_subject = 5;
    events.discard = Discard::New;
    events.max_bytes = Size(64 << 20);
    let made = streams::reconcile(&js, &cfg.streams[..1]).await?;
    assert_eq!(made[0].1, Applied::Created);
    let c = js.get_stream("EVENTS").await?.info().await?.config.clone();
    assert_eq!(c.compression, Some(stream::Compression::S2));
    assert_eq!(c.duplicate_window, Duration::from_secs(600));
    assert_eq!(c.max_messages_per_subject, 5);
    assert_eq!(c.discard, stream::DiscardPolicy::New);
    assert_eq!(c.max_bytes, 64 << 20);

    let events = &mut cfg.streams[0];
    events.compression = Compression::None;
    events.duplicate_window = Dur(Duration::from_secs(60));
    events.max_messages_per_subject = 0;
    events.discard = Discard::Old;
    let plans = streams::plan(&js, &cfg.streams[..1]).await?;
    let Plan::Update(changes) = &plans[0].plan else {
        anyhow::bail!("expected an update, got {:?}", plans[0].plan);
    };
    let mut fields: Vec<_> = changes.iter().map(|c| (c.field, c.editable)).collect();
    fields.sort();
    assert_eq!(
        fields,
        [
            ("compression", true),
            ("discard", true),
            ("duplicate_window", true),
            ("max_messages_per_subject", true),
        ]
    );
    streams::apply(&js, &plans[0]).await?;
    let c = js.get_stream("EVENTS").await?.info().await?.config.clone();
    assert_eq!(c.compression, Some(stream::Compression::None));
    assert_eq!(c.duplicate_window, Duration::from_secs(60));
    assert_eq!(c.max_messages_per_subject, -1);
    assert_eq!(c.discard, stream::DiscardPolicy::Old);
    let again = streams::plan(&js, &cfg.streams[..1]).await?;
    assert_eq!(again[0].plan, Plan::Unchanged);

    let aivo =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/aivo/jetplug.toml");
    let aivo = jetplug::config::Config::load(&aivo)?;
    streams::reconcile(&js, &aivo.streams).await?;
    for declared in &aivo.streams {
        let c = js
            .get_stream(&declared.name)
            .await?
            .info()
            .await?
            .config
            .clone();
        let want = streams::desired(declared);
        let name = &declared.name;
        assert_eq!(c.retention, want.retention, "{name}");
        assert_eq!(c.storage, want.storage, "{name}");
        assert_eq!(c.max_age, declared.max_age.0, "{name}");
        assert_eq!(c.max_bytes, want.max_bytes, "{name}");
        assert_eq!(c.max_messages, want.max_messages, "{name}");
        assert_eq!(c.subjects, declared.subjects, "{name}");
    }
    let learning = js
        .get_stream("LEARNING")
        .await?
        .info()
        .await?
        .config
        .clone();
    assert_eq!(learning.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(learning.max_bytes, 10_000_000_000);
    Ok(())
}

/// `manage = false`: a missing stream is an error naming the key (the
/// host waits for it instead of creating it); one made by its owner is
/// used as it is, its drift reported and left alone. A managed stream
/// whose update the server refuses (subjects overlapping another stream)
/// is logged, kept, and consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmanaged_stream_is_only_checked_and_a_refused_update_keeps_it() -> anyhow::Result<()> {
    use jetplug::jetstream::streams::{self, Applied, Plan};
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let js = js(&nats).await?;
    let mut cfg = config(dir.path(), &nats.url(), plugins::TEST_NOOP, "")?;
    cfg.streams[0].manage = false;
    let err = streams::plan(&js, &cfg.streams[..1])
        .await
        .err()
        .ok_or_else(|| anyhow::anyhow!("a missing unmanaged stream was planned"))?;
    assert!(err.to_string().contains("manage = false"), "{err}");

    let mut host = start(cfg.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!host.task.is_finished(), "the host waits for the stream");
    assert!(js.get_stream("EVENTS").await.is_err(), "and never makes it");
    // Its owner makes it, with limits of their own.
    js.create_stream(stream::Config {
        name: "EVENTS".into(),
        subjects: vec!["events.>".into()],
        max_age: Duration::from_secs(600),
        max_messages: 50,
        ..Default::default()
    })
    .await?;
    let stats = host.stats().await?;
    publish(&js, "events.a", &["one", "two"]).await?;
    eventually(WAIT, "both acked", || async {
        Ok(Stats::get(&stats.acked) == 2)
    })
    .await?;
    let plans = streams::plan(&js, &cfg.streams[..1]).await?;
    let Plan::Unmanaged(differences) = &plans[0].plan else {
        anyhow::bail!("expected a check, got {:?}", plans[0].plan);
    };
    assert!(
        differences.iter().any(|c| c.field == "max_age"),
        "{differences:?}"
    );
    assert!(matches!(
        streams::apply(&js, &plans[0]).await?,
        Applied::Checked { differences } if !differences.is_empty()
    ));
    let info = js.get_stream("EVENTS").await?.info().await?.config.clone();
    assert_eq!(
        info.max_age,
        Duration::from_secs(600),
        "left as its owner made it"
    );
    assert_eq!(info.max_messages, 50);
    host.stop().await?;

    // Managed again, asking for what the server refuses: subjects that
    // overlap another stream's (DLQ's).
    cfg.streams[0].manage = true;
    cfg.streams[0].subjects.push("dlq.extra.>".into());
    assert!(js.get_stream("DLQ").await.is_ok());
    let plans = streams::plan(&js, &cfg.streams[..1]).await?;
    assert!(matches!(&plans[0].plan, Plan::Update(c) if c.iter().any(|c| c.field == "subjects")));
    let applied = streams::apply(&js, &plans[0]).await?;
    assert!(
        matches!(&applied, Applied::UpdateRefused { reason } if !reason.is_empty()),
        "{applied:?}"
    );
    let mut host = start(cfg);
    let stats = host.stats().await?;
    publish(&js, "events.a", &["three"]).await?;
    eventually(WAIT, "the existing stream consumed", || async {
        Ok(Stats::get(&stats.acked) >= 1)
    })
    .await?;
    assert_eq!(
        js.get_stream("EVENTS").await?.info().await?.config.subjects,
        ["events.>"],
        "the existing stream kept"
    );
    host.stop().await
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
