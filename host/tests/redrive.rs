//! Dead-letter redrive as an operator uses it, against real nats-server and
//! PostgreSQL: a redrive reaches only the pipeline that failed (the others
//! skip it), effects stay exactly-once by origin, filters and `--dry-run`
//! select, and a redrive killed midway resumes without loss or duplicate.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use jetplug::config::Config;
use jetplug_tests::{
    NatsServer, Postgres, TestConfig, eventually, noop_config, output_text as text, plugins, scalar,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(60);

use jetplug_tests::jetplug;

/// Runs a host on `config` until `done` holds, then stops it.
async fn run_until<F, Fut>(config: &Path, what: &str, done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(jetplug::host::run(
        Config::load(config)?,
        shutdown.clone(),
        |_| {},
    ));
    let result = eventually(WAIT, what, done).await;
    shutdown.cancel();
    task.await??;
    result
}

async fn count(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}

/// The AIVO pair on LEARNING: the indexer and analytics, analytics reading
/// from `database` (a wrong one is the "bug").
fn aivo(dir: &Path, nats: &str, pg: &str, database: &str) -> anyhow::Result<String> {
    let path = TestConfig::new(dir, nats)
        .stream("LEARNING", &["learning.>"])
        .stream("DLQ", &["dlq.>"])
        .database("events", pg)
        .database("other", pg)
        .plugin("indexer", plugins::POSTGRES_INDEXER)
        .set("plugin.indexer.grants", "sql", vec!["events"])
        .set("plugin.indexer.config", "database", "events")
        .plugin("aggregator", plugins::ANALYTICS_AGGREGATOR)
        .set("plugin.aggregator.grants", "sql", vec!["events"])
        .set("plugin.aggregator.config", "database", database)
        .pipeline("indexer", &["LEARNING"], "indexer")
        .pipeline("analytics", &["LEARNING"], "aggregator")
        .set("pipeline.analytics", "effects", "exactly-once")
        .set("pipeline.analytics", "max_deliver", 2)
        .set("pipeline.analytics.backoff", "initial", "100ms")
        .set("pipeline.analytics.backoff", "max", "200ms")
        .write(&dir.join(format!("jetplug-{database}.toml")))?;
    Ok(path.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_reaches_only_the_pipeline_that_failed_and_counts_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = pg.connect().await?;
    let dir = tempfile::tempdir()?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    // The bug: analytics asks for a database it was not granted, so it
    // retries until its deliveries are spent; the indexer is fine.
    let buggy = aivo(dir.path(), &nats.url(), &pg.url(), "other")?;
    let fixed = aivo(dir.path(), &nats.url(), &pg.url(), "events")?;
    jetplug::jetstream::streams::reconcile(&js, &Config::load(Path::new(&buggy))?.streams).await?;
    for i in 0..3 {
        js.publish(
            "learning.quiz.answered",
            format!(r#"{{"student":"s-{i}"}}"#).into_bytes().into(),
        )
        .await?
        .await?;
    }
    run_until(
        Path::new(&buggy),
        "3 indexed, 3 dead-lettered by analytics",
        || async {
            Ok(scalar(&db, "select count(*) from events")
                .await
                .unwrap_or(0)
                == 3
                && count(&js, "DLQ").await? == 3)
        },
    )
    .await?;
    let dlq = js.get_stream("DLQ").await?;
    let first = dlq.get_raw_message(1).await?;
    assert_eq!(first.subject.as_str(), "dlq.learning.analytics");
    let header = |k: &str| first.headers.get(k).map(|v| v.as_str().to_owned());
    assert_eq!(
        header("Jetplug-Origin"),
        header("Jetplug-Original-Sequence").map(|s| format!("LEARNING:{s}")),
        "the dead letter records its origin"
    );

    // The fix is deployed (a host on the fixed config), then the operator
    // redrives analytics' dead letters.
    let shutdown = CancellationToken::new();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(jetplug::host::run(
        Config::load(Path::new(&fixed))?,
        shutdown.clone(),
        move |h| {
            let _ = tx.send(h);
        },
    ));
    let handle = tokio::time::timeout(WAIT, rx).await??;
    let (indexer, analytics) = (
        handle.stats["indexer"].clone(),
        handle.stats["analytics"].clone(),
    );
    let get = jetplug::pipeline::Stats::get;

    let out = jetplug(&[
        "dlq",
        "redrive",
        "--config",
        &fixed,
        "--pipeline",
        "analytics",
    ])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("redriven 3 dead letters"),
        "{}",
        text(&out)
    );
    eventually(
        WAIT,
        "3 redrives counted by analytics, skipped by the indexer",
        || async { Ok(get(&analytics.acked) == 3 && get(&indexer.skipped) == 3) },
    )
    .await?;
    assert_eq!(
        count(&js, "DLQ").await?,
        0,
        "redriven dead letters are removed"
    );
    let counted = || {
        scalar(
            &db,
            "select coalesce(sum(count), 0)::int8 from event_counts",
        )
    };
    assert_eq!(counted().await?, 3, "each event counted once");
    assert_eq!(
        scalar(&db, "select count(*) from events").await?,
        3,
        "each event indexed once"
    );
    assert_eq!(
        get(&indexer.acked),
        0,
        "the indexer's plugin never ran the redrives"
    );

    // Redriving the same dead letters again (a copy put back, as an
    // interrupted run past the duplicate window would) changes nothing.
    let mut copy = async_nats::HeaderMap::new();
    for (k, vs) in first.headers.iter() {
        // Without its id, which the DLQ stream still remembers.
        if k.to_string().eq_ignore_ascii_case("Nats-Msg-Id") {
            continue;
        }
        for v in vs {
            copy.append(k.to_string().as_str(), v.as_str());
        }
    }
    js.publish_with_headers("dlq.learning.analytics", copy, first.payload.clone())
        .await?
        .await?;
    let out = jetplug(&["dlq", "redrive", "--config", &fixed])?;
    assert!(out.status.success(), "{}", text(&out));
    // Analytics runs exactly-once: its ledger has the origin, so the plugin
    // does not even run it again.
    eventually(WAIT, "the second redrive skipped", || async {
        Ok(get(&analytics.skipped) == 1 && get(&indexer.skipped) == 4)
    })
    .await?;
    assert_eq!(get(&analytics.acked), 3);
    assert_eq!(counted().await?, 3, "a second redrive adds no count");
    assert_eq!(scalar(&db, "select count(*) from events").await?, 3);
    assert_eq!(
        scalar(
            &db,
            "select count(*) from jetplug.ledger, generate_series(first_seq, last_seq) s
             where pipeline = 'analytics' and stream = 'LEARNING' and s <= 3 and outcome = 'ack'"
        )
        .await?,
        3,
        "analytics keyed its counts on the origins"
    );
    shutdown.cancel();
    task.await??;
    Ok(())
}

/// The `Jetplug-Redriven-From` of every redriven message in EVENTS.
async fn redriven(js: &jetstream::Context) -> anyhow::Result<Vec<String>> {
    let mut s = js.get_stream("EVENTS").await?;
    let last = s.info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        if let Some(v) = m.headers.get("Jetplug-Redriven-From") {
            out.push(v.as_str().to_owned());
        }
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_filters_dry_runs_and_resumes_after_a_kill() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &Config::load(Path::new(&config))?.streams).await?;
    const N: usize = 200;
    for i in 0..N {
        let (subject, reason) = if i % 4 == 0 {
            ("events.refunds", "refund rejected")
        } else {
            ("events.orders", "bad order")
        };
        js.publish(
            subject,
            format!("term:{reason}: id {i}").into_bytes().into(),
        )
        .await?
        .await?;
    }
    run_until(Path::new(&config), "all dead-lettered", || async {
        Ok(count(&js, "DLQ").await? == N as u64)
    })
    .await?;

    // Filters, shown with --dry-run: nothing changes.
    let dry = |extra: &[&str]| {
        let mut args = vec!["dlq", "redrive", "--config", &config, "--dry-run"];
        args.extend_from_slice(extra);
        jetplug(&args)
    };
    let out = dry(&["--subject", "events.refunds", "--reason", "^refund"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("would redrive 50 dead letters"),
        "{}",
        text(&out)
    );
    assert_eq!(
        text(&out).matches("would redrive #").count(),
        50,
        "each listed: {}",
        text(&out)
    );
    let out = dry(&["--pipeline", "other"])?;
    assert!(
        text(&out).contains("would redrive 0 dead letters"),
        "{}",
        text(&out)
    );
    let out = dry(&["--since", "1h", "--until", "2099-01-01T00:00:00Z"])?;
    assert!(
        text(&out).contains("would redrive 200 dead letters"),
        "{}",
        text(&out)
    );
    let out = dry(&["--since", "2099-01-01T00:00:00Z"])?;
    assert!(
        text(&out).contains("would redrive 0 dead letters"),
        "{}",
        text(&out)
    );
    let out = dry(&["--since", "yesterday"])?;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--since: `yesterday` is neither"),
        "{}",
        text(&out)
    );
    assert_eq!(
        count(&js, "DLQ").await?,
        N as u64,
        "a dry run changes nothing"
    );
    assert!(redriven(&js).await?.is_empty());

    // A rate-limited redrive killed midway, then run again.
    let mut child = Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(["dlq", "redrive", "--config", &config, "--rate", "100"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    eventually(WAIT, "some redriven", || async {
        Ok(count(&js, "DLQ").await? < N as u64 - 20)
    })
    .await?;
    child.kill()?;
    child.wait()?;
    let left = count(&js, "DLQ").await?;
    assert!(left > 0, "killed before the end (rate 100/s): {left} left");
    let out = jetplug(&["dlq", "redrive", "--config", &config])?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&js, "DLQ").await?, 0);
    let froms = redriven(&js).await?;
    let distinct: BTreeSet<&String> = froms.iter().collect();
    assert_eq!(distinct.len(), N, "every dead letter redriven");
    assert_eq!(froms.len(), N, "none stored twice");
    Ok(())
}

/// Publishes a dead letter as the built-in route would, from `pipeline`.
async fn dead_letter(
    js: &jetstream::Context,
    pipeline: &str,
    seq: u64,
    payload: &str,
) -> anyhow::Result<()> {
    let mut h = async_nats::HeaderMap::new();
    for (k, v) in [
        ("Jetplug-Original-Subject", "events.a".to_owned()),
        ("Jetplug-Original-Stream", "EVENTS".to_owned()),
        ("Jetplug-Original-Sequence", seq.to_string()),
        ("Jetplug-Pipeline", pipeline.to_owned()),
        ("Jetplug-Deliveries", "1".to_owned()),
        ("Jetplug-Reason", "term:failed".to_owned()),
    ] {
        h.insert(k, v.as_str());
    }
    js.publish_with_headers(
        format!("dlq.events.{pipeline}"),
        h,
        payload.as_bytes().to_vec().into(),
    )
    .await?
    .await?;
    Ok(())
}

/// A dead letter of a pipeline that is no longer in the config (renamed or
/// removed) would be skipped by every pipeline: redrive refuses it and keeps
/// it in the DLQ; `--to` re-addresses it to a pipeline that is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redrive_to_a_pipeline_not_in_the_config_is_refused_or_readdressed() -> anyhow::Result<()>
{
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &Config::load(Path::new(&config))?.streams).await?;
    dead_letter(&js, "renamed-away", 1, "orphan").await?;

    let out = jetplug(&["dlq", "redrive", "--config", &config])?;
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("cannot redrive DLQ #1: its pipeline `renamed-away` is not in")
            && t.contains("it stays in the DLQ"),
        "{t}"
    );
    assert_eq!(count(&js, "DLQ").await?, 1, "not removed");
    assert_eq!(count(&js, "EVENTS").await?, 0, "not republished");

    let out = jetplug(&["dlq", "redrive", "--config", &config, "--to", "nope"])?;
    assert!(!out.status.success());
    assert!(
        text(&out).contains("--to nope: no pipeline `nope`"),
        "{}",
        text(&out)
    );

    let out = jetplug(&["dlq", "redrive", "--config", &config, "--to", "main"])?;
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(count(&js, "DLQ").await?, 0);
    let events = js.get_stream("EVENTS").await?;
    let m = events.get_raw_message(1).await?;
    assert_eq!(&m.payload[..], b"orphan");
    assert_eq!(
        m.headers.get("Jetplug-Redrive-To").map(|v| v.as_str()),
        Some("main")
    );
    Ok(())
}

/// A redriven message that fails again is dead-lettered again while the
/// redrive still runs: the run redrives only what was in the DLQ when it
/// started, so it cannot chase its own new dead letters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_redrive_run_does_not_redrive_what_failed_again_during_it() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let config = noop_config(dir.path(), &nats.url())?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &Config::load(Path::new(&config))?.streams).await?;
    for seq in 1..=4 {
        dead_letter(&js, "main", seq, "term:fails again").await?;
    }
    // A host whose plugin terminates each redriven message at once.
    let shutdown = CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(
        Config::load(Path::new(&config))?,
        shutdown.clone(),
        |_| {},
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = jetplug(&["dlq", "redrive", "--config", &config, "--rate", "4"])?;
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("redriven 4 dead letters"), "{t}");
    eventually(WAIT, "the four failed again", || async {
        Ok(count(&js, "DLQ").await? == 4)
    })
    .await?;
    shutdown.cancel();
    host.await??;
    Ok(())
}
