//! The engine's commands as a user runs them: `check`, `streams diff|apply`,
//! `replay` and `run` (stopped with SIGTERM), against a real nats-server.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use jetplug_tests::{NatsServer, TestConfig, eventually, http_get, noop_config, plugins};

const WAIT: Duration = Duration::from_secs(30);

use jetplug_tests::jetplug;
use jetplug_tests::output_text as text;

/// `jetplug replay --config CONFIG --pipeline PIPELINE RANGE...`.
fn replay(config: &str, pipeline: &str, range: &[&str]) -> std::io::Result<Output> {
    let mut args = vec!["replay", "--config", config, "--pipeline", pipeline];
    args.extend_from_slice(range);
    jetplug(&args)
}

async fn publish(url: &str, n: usize) -> anyhow::Result<jetstream::Context> {
    let js = jetstream::new(async_nats::connect(url).await?);
    for i in 0..n {
        js.publish("events.x", format!("m{i}").into_bytes().into())
            .await?
            .await?;
    }
    Ok(js)
}

#[tokio::test]
async fn check_validates_without_connecting() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Nothing listens on port 1: check must not try.
    let config = noop_config(dir.path(), "nats://127.0.0.1:1")?;
    let out = jetplug(&["check", "--config", &config])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("ok (2 streams, 1 plugins loaded, 1 pipelines)"),
        "{}",
        text(&out)
    );

    let bad = TestConfig::noop(dir.path(), "nats://127.0.0.1:1")
        .set("stream.EVENTS", "retention", "sometimes")
        .file_in(dir.path())?;
    let out = jetplug(&["check", "--config", &bad])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("stream[0].retention"), "{}", text(&out));

    // A plugin whose init fails: named, and its reason said once.
    let failing = TestConfig::noop(dir.path(), "nats://127.0.0.1:1")
        .set("plugin.noop.config", "fail_init", "no table given")
        .write(&dir.path().join("failing.toml"))?;
    let out = jetplug(&["check", "--config", &failing.display().to_string()])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("plugin `noop`") && t.contains("no table given"),
        "{t}"
    );
    assert_eq!(t.matches("no table given").count(), 1, "said once: {t}");
    Ok(())
}

#[tokio::test]
async fn streams_diff_and_apply() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = TestConfig::noop(dir.path(), &nats.url())
        .set("stream.EVENTS", "max_age", "1h")
        .file_in(dir.path())?;
    let out = jetplug(&["streams", "diff", "--config", &config])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("+ EVENTS: create"), "{}", text(&out));
    assert!(
        jetstream::new(async_nats::connect(nats.url()).await?)
            .get_stream("EVENTS")
            .await
            .is_err(),
        "diff must not create anything"
    );

    let out = jetplug(&["streams", "apply", "--config", &config])?;
    assert!(out.status.success(), "{}", text(&out));
    let config = TestConfig::noop(dir.path(), &nats.url())
        .set("stream.EVENTS", "max_age", "2h")
        .file_in(dir.path())?;
    let out = jetplug(&["streams", "diff", "--config", &config])?;
    assert!(
        text(&out).contains("~ EVENTS: update") && text(&out).contains("max_age: 1h -> 2h"),
        "{}",
        text(&out)
    );
    jetplug(&["streams", "apply", "--config", &config])?;
    let out = jetplug(&["streams", "diff", "--config", &config])?;
    assert!(
        text(&out).contains("= EVENTS: up to date"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[tokio::test]
async fn replay_runs_history_and_names_a_start_below_retention() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = TestConfig::noop(dir.path(), &nats.url())
        .set("stream.EVENTS", "max_messages", 8)
        .file_in(dir.path())?;
    assert!(
        jetplug(&["streams", "apply", "--config", &config])?
            .status
            .success()
    );
    publish(&nats.url(), 10).await?;

    let out = replay(&config, "main", &["--from-seq", "4", "--to-seq", "6"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("replayed 3 messages of `EVENTS` (up to sequence 6): 3 ack"),
        "{}",
        text(&out)
    );

    let out = replay(&config, "main", &["--from-seq", "3"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("replayed 8 messages"), "{}", text(&out));

    // Resuming after the last sequence a run reported.
    let out = replay(&config, "main", &["--after-seq", "6"])?;
    assert!(
        text(&out).contains("replayed 4 messages of `EVENTS` (up to sequence 10)"),
        "{}",
        text(&out)
    );
    let out = replay(&config, "main", &["--after-seq", "10"])?;
    assert!(text(&out).contains("nothing to replay"), "{}", text(&out));

    // From a time: only what was stored at or after it, kept for 5 minutes
    // by the server if nothing reads it (as the replay server did).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let since = humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string();
    tokio::time::sleep(Duration::from_millis(100)).await;
    publish(&nats.url(), 2).await?;
    let out = replay(
        &config,
        "main",
        &["--from-time", &since, "--inactive-threshold", "5m"],
    )?;
    assert!(
        text(&out).contains("replayed 2 messages of `EVENTS` (up to sequence 12)"),
        "{}",
        text(&out)
    );
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let stream = js.get_stream("EVENTS").await?;
    let mut names = stream.consumer_names();
    let mut thresholds = Vec::new();
    while let Some(name) = futures::StreamExt::next(&mut names).await {
        let info = stream.consumer_info(name?).await?;
        if info.config.description.as_deref() == Some("jetplug replay") {
            thresholds.push(info.config.inactive_threshold);
        }
    }
    assert!(
        thresholds.contains(&Duration::from_secs(300)),
        "{thresholds:?}"
    );
    assert!(
        thresholds.contains(&Duration::from_secs(30)),
        "the default: {thresholds:?}"
    );
    let out = replay(&config, "main", &["--from-time", "yesterday"])?;
    assert!(
        text(&out).contains("--from-time `yesterday` is not an RFC 3339 time"),
        "{}",
        text(&out)
    );

    let out = replay(&config, "main", &["--from-seq", "2"])?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("sequence 2 is below the first retained sequence 5"),
        "{}",
        text(&out)
    );
    let out = replay(&config, "nope", &["--from-seq", "2"])?;
    assert!(text(&out).contains("no pipeline `nope`"), "{}", text(&out));

    // The durable consumer was never touched by replay.
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    assert!(
        js.get_stream("EVENTS")
            .await?
            .get_consumer::<jetstream::consumer::pull::Config>("jetplug-main-EVENTS")
            .await
            .is_err()
    );
    Ok(())
}

#[tokio::test]
async fn run_consumes_and_exits_cleanly_on_sigterm() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(["run", "--config", &config])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    eventually(WAIT, "the stream to be created", || async {
        Ok(js.get_stream("EVENTS").await.is_ok())
    })
    .await?;
    publish(&nats.url(), 50).await?;
    eventually(WAIT, "all 50 acked", || async {
        let mut c = js
            .get_stream("EVENTS")
            .await?
            .get_consumer::<jetstream::consumer::pull::Config>("jetplug-main-EVENTS")
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(c.info().await?.ack_floor.stream_sequence == 50)
    })
    .await?;
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()?;
    assert!(status.success());
    let exit = tokio::task::spawn_blocking(move || child.wait()).await??;
    assert_eq!(exit.code(), Some(0));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_list_and_redrive_return_messages_to_their_subjects() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(
        jetplug::config::Config::load(Path::new(&config))?,
        shutdown.clone(),
        |_| {},
    ));
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    eventually(WAIT, "streams", || async {
        Ok(js.get_stream("DLQ").await.is_ok())
    })
    .await?;
    for i in 0..3 {
        js.publish(
            "events.orders",
            format!("term:bad order: id {i}").into_bytes().into(),
        )
        .await?
        .await?;
    }
    eventually(WAIT, "3 dead letters", || async {
        Ok(js.get_stream("DLQ").await?.info().await?.state.messages == 3)
    })
    .await?;
    shutdown.cancel();
    host.await??;

    let out = jetplug(&["dlq", "list", "--config", &config])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("3 dead letters in `DLQ`"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("     3  dlq.events.main  bad order\n"),
        "{}",
        text(&out)
    );
    assert!(
        text(&out).contains("via main, 1 deliveries): bad order: id 1"),
        "{}",
        text(&out)
    );

    let out = jetplug(&["dlq", "redrive", "--config", &config, "--limit", "2"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("redriven 2 dead letters"),
        "{}",
        text(&out)
    );
    let mut dlq = js.get_stream("DLQ").await?;
    assert_eq!(
        dlq.info().await?.state.messages,
        1,
        "redriven dead letters are removed"
    );
    let events = js.get_stream("EVENTS").await?;
    for seq in [4, 5] {
        let m = events.get_raw_message(seq).await?;
        assert_eq!(m.subject.as_str(), "events.orders");
        assert!(String::from_utf8_lossy(&m.payload).starts_with("term:bad order"));
        assert!(
            m.headers.get("Jetplug-Reason").is_none(),
            "dead-letter facts are not sent back"
        );
        assert_eq!(
            m.headers
                .get("Jetplug-Redriven-From")
                .map(|v| v.as_str().starts_with("DLQ:")),
            Some(true)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints_and_metrics() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let addr = format!("127.0.0.1:{}", jetplug_tests::free_port()?);
    let mut cfg = jetplug::config::Config::load(Path::new(&config))?;
    cfg.admin.address = Some(jetplug::config::AdminAddr(addr.parse()?));
    cfg.host.stats_interval = jetplug::config::Dur(Duration::from_millis(200));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(cfg, shutdown.clone(), |_| {}));

    eventually(WAIT, "ready", || async {
        Ok(http_get(&addr, "/readyz")
            .await
            .map(|r| r.0 == 200)
            .unwrap_or(false))
    })
    .await?;
    assert_eq!(http_get(&addr, "/healthz").await?, (200, "ok\n".to_owned()));
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    for p in ["a", "b", "c", "term:rejected"] {
        js.publish("events.x", p.as_bytes().to_vec().into())
            .await?
            .await?;
    }
    eventually(WAIT, "metrics", || async {
        Ok(http_get(&addr, "/metrics")
            .await?
            .1
            .contains(r#"jetplug_messages_total{tenant="default",plugin="noop",pipeline="main",outcome="ack"} 3"#)
            && http_get(&addr, "/metrics").await?.1.contains(
                r#"jetplug_messages_total{tenant="default",plugin="noop",pipeline="main",outcome="dead_letter"} 1"#,
            ))
    })
    .await?;
    let (_, m) = http_get(&addr, "/metrics").await?;
    let hash = jetplug::engine::cache::content_hash(&std::fs::read(plugins::TEST_NOOP)?);
    for want in [
        r#"jetplug_dead_letters_total{tenant="default",plugin="noop",pipeline="main",reason="term"} 1"#.to_owned(),
        r#"jetplug_messages_total{tenant="default",plugin="noop",pipeline="main",outcome="dead_letter"} 1"#.to_owned(),
        r#"jetplug_breaker_state{tenant="default",plugin="noop",pipeline="main"} 0"#.to_owned(),
        format!(r#"jetplug_plugin_info{{plugin="noop",tenant="default",hash="{hash}"}} 1"#),
        r#"jetplug_batch_duration_seconds_count{tenant="default",plugin="noop",pipeline="main"}"#.to_owned(),
        r#"jetplug_plugin_paused_seconds_total{tenant="default",plugin="noop",pipeline="main"}"#.to_owned(),
    ] {
        assert!(m.contains(&want), "missing {want} in\n{m}");
    }
    // Figures read from the JetStream API.
    let series = |m: &str, name: &str| -> Option<f64> {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    let consumer = r#"{tenant="default",plugin="noop",pipeline="main",stream="EVENTS"}"#;
    eventually(WAIT, "stream and consumer figures", || async {
        let (_, m) = http_get(&addr, "/metrics").await?;
        Ok(
            series(&m, r#"jetplug_stream_messages{stream="EVENTS"}"#) == Some(4.0)
                && series(&m, r#"jetplug_stream_last_sequence{stream="EVENTS"}"#) == Some(4.0)
                && series(&m, &format!("jetplug_consumer_pending{consumer}")) == Some(0.0),
        )
    })
    .await?;
    let (_, m) = http_get(&addr, "/metrics").await?;
    for (name, want) in [
        (
            r#"jetplug_stream_first_sequence{stream="EVENTS"}"#.to_owned(),
            1.0,
        ),
        (
            r#"jetplug_stream_consumers{stream="EVENTS"}"#.to_owned(),
            1.0,
        ),
        ("jetplug_ready ".to_owned(), 1.0),
        ("jetplug_nats_connected ".to_owned(), 1.0),
        (format!("jetplug_consumer_redelivered{consumer}"), 0.0),
        (
            format!("jetplug_consumer_oldest_unacked_age_seconds{consumer}"),
            0.0,
        ),
    ] {
        assert_eq!(series(&m, &name), Some(want), "{name} in\n{m}");
    }
    assert!(
        series(
            &m,
            r#"jetplug_stream_oldest_message_age_seconds{stream="EVENTS"}"#
        )
        .is_some_and(|age| age > 0.0 && age < 600.0),
        "{m}"
    );
    assert!(
        series(
            &m,
            &format!("jetplug_consumer_last_active_age_seconds{consumer}")
        )
        .is_some_and(|age| age < 600.0),
        "{m}"
    );
    // A message held by a slow batch: the oldest unsettled one ages.
    js.publish("events.x", b"sleep:4000".to_vec().into())
        .await?
        .await?;
    eventually(WAIT, "the held message ages", || async {
        let (_, m) = http_get(&addr, "/metrics").await?;
        Ok(
            series(&m, &format!("jetplug_consumer_ack_pending{consumer}")) == Some(1.0)
                && series(
                    &m,
                    &format!("jetplug_consumer_oldest_unacked_age_seconds{consumer}"),
                )
                .is_some_and(|age| age >= 0.5),
        )
    })
    .await?;

    let (_, p) = http_get(&addr, "/v1/pipelines").await?;
    let p: serde_json::Value = serde_json::from_str(&p)?;
    assert_eq!(p["pipelines"][0]["name"], "main");
    assert_eq!(p["pipelines"][0]["acked"], 3);
    assert_eq!(p["pipelines"][0]["breaker"], "closed");
    let (_, v) = http_get(&addr, "/v1/plugins").await?;
    let v: serde_json::Value = serde_json::from_str(&v)?;
    assert_eq!(v["plugins"][0]["hash"], hash.as_str());
    assert_eq!(v["plugins"][0]["imports"], serde_json::json!(["log"]));

    let out = jetplug(&["plugin", "list", "--admin", &addr])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "noop                 default      {}",
            &hash[..12]
        )),
        "{}",
        text(&out)
    );
    shutdown.cancel();
    host.await??;
    let out = jetplug(&["plugin", "list", "--admin", &addr])?;
    assert!(
        text(&out).contains("cannot reach the admin API"),
        "{}",
        text(&out)
    );
    Ok(())
}

#[tokio::test]
async fn publish_retries_through_outages_but_names_a_missing_stream() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let out = jetplug(&["streams", "apply", "--config", &config])?;
    assert!(out.status.success(), "{}", text(&out));
    let out = jetplug(&[
        "publish",
        "--config",
        &config,
        "--subject",
        "events.x",
        "--count",
        "20",
    ])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("published 20 events"), "{}", text(&out));
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    assert_eq!(
        js.get_stream("EVENTS")
            .await?
            .get_info()
            .await?
            .state
            .messages,
        20
    );

    let out = jetplug(&[
        "publish",
        "--config",
        &config,
        "--subject",
        "nostream.x",
        "--count",
        "1",
    ])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no stream captures `nostream.x`: declare one in [[stream]]"),
        "{}",
        text(&out)
    );
    Ok(())
}
