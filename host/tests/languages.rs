//! Plugins written in Python (componentize-py) and JavaScript
//! (componentize-js), built by `make plugins`, run in a real pipeline on
//! nats-server with their default limits. (The sandbox's hold on a Python
//! plugin — deadline, memory — is tested in `runtime.rs`.)

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use jetplug_tests::{NatsServer, Postgres, TestConfig, eventually, free_port, plugins, scalar};

const WAIT: Duration = Duration::from_secs(60);

fn built(path: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        Path::new(path).is_file(),
        "{path} is missing: `make plugins` builds the Python and JS plugins"
    );
    Ok(path)
}

/// EVENTS is validated by the Python schema validator and enriched by the
/// JavaScript enricher, side by side, with default limits — both with
/// `effects = "exactly-once"` (their ledger in database `db`; the
/// enricher's publishes relayed through the outbox).
fn write_config(
    dir: &Path,
    url: &str,
    admin: &str,
    pg: &str,
) -> anyhow::Result<std::path::PathBuf> {
    TestConfig::new(dir, url)
        .set("admin", "address", admin)
        .stream("EVENTS", &["learning.>"])
        .stream("ENRICHED", &["enriched.>"])
        .stream("DLQ", &["dlq.>"])
        .database("db", pg)
        .plugin("validator", built(plugins::SCHEMA_VALIDATOR_PY)?)
        .set("plugin.validator.grants", "sql", vec!["db"])
        .plugin("enricher", built(plugins::ENRICHER_JS)?)
        .set("plugin.enricher.grants", "publish", vec!["enriched.>"])
        .set("plugin.enricher.grants", "sql", vec!["db"])
        .set("plugin.enricher.config", "pass_mark", "60")
        .pipeline("validate", &["EVENTS"], "validator")
        .unset("pipeline.validate", "batch_max_wait")
        .set("pipeline.validate", "effects", "exactly-once")
        .pipeline("enrich", &["EVENTS"], "enricher")
        .unset("pipeline.enrich", "batch_max_wait")
        .set("pipeline.enrich", "effects", "exactly-once")
        .write_in(dir)
}

async fn count(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js
        .get_stream(stream)
        .await?
        .get_info()
        .await?
        .state
        .messages)
}

/// Every message of `stream`: (headers as pairs, payload).
async fn read_all(
    js: &jetstream::Context,
    stream: &str,
) -> anyhow::Result<Vec<(async_nats::HeaderMap, Vec<u8>)>> {
    let s = js.get_stream(stream).await?;
    let last = s.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        out.push((m.headers, m.payload.to_vec()));
    }
    Ok(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_plugins_run_in_a_pipeline() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = format!("127.0.0.1:{}", free_port()?);
    let config = write_config(dir.path(), &nats.url(), &admin, &pg.url())?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(
        jetplug::config::Config::load(&config)?,
        shutdown.clone(),
        |_| {},
    ));
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug_tests::wait_ready(&admin, WAIT).await?;

    // 40 valid events (every 8th with a score above the schema's maximum),
    // and 4 that are not JSON.
    let (mut valid, mut too_high, mut broken) = (0u64, 0u64, 0u64);
    for i in 0..44u64 {
        let body = if i % 11 == 10 {
            broken += 1;
            format!("{{\"student\": \"s-{i}\", broken")
        } else if i % 8 == 0 {
            too_high += 1;
            format!(r#"{{"student":"s-{i}","seq":{i},"score":150}}"#)
        } else {
            valid += 1;
            format!(r#"{{"student":"s-{i}","seq":{i},"score":{}}}"#, i * 2)
        };
        js.publish("learning.quiz.answered", body.into())
            .await?
            .await?;
    }

    // The validator dead-letters the invalid ones; the enricher publishes a
    // derived event for every JSON object and dead-letters the rest.
    let letters = too_high + broken + broken;
    let enriched = valid + too_high;
    eventually(WAIT, "dead letters and enriched events", || async {
        Ok(count(&js, "DLQ").await? >= letters && count(&js, "ENRICHED").await? >= enriched)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count(&js, "DLQ").await?, letters);
    assert_eq!(
        count(&js, "ENRICHED").await?,
        enriched,
        "one per event, no more"
    );
    let db = pg.connect().await?;
    for pipeline in ["validate", "enrich"] {
        assert_eq!(
            scalar(
                &db,
                &format!("select count(*) from jetplug.ledger, generate_series(first_seq, last_seq) where pipeline = '{pipeline}'")
            )
            .await?,
            44,
            "{pipeline}: every event in its ledger (acked or dead-lettered)"
        );
    }

    let mut reasons: Vec<(String, String)> = read_all(&js, "DLQ")
        .await?
        .into_iter()
        .map(|(h, _)| {
            let get = |n: &str| h.get(n).map(|v| v.as_str().to_owned()).unwrap_or_default();
            (get("Jetplug-Pipeline"), get("Jetplug-Reason"))
        })
        .collect();
    reasons.sort();
    let schema = reasons
        .iter()
        .filter(|(p, r)| {
            p == "validate" && r == "schema: $.score: 150 is more than the maximum 100"
        })
        .count() as u64;
    assert_eq!(schema, too_high, "{reasons:?}");
    for pipeline in ["validate", "enrich"] {
        let not_json = reasons
            .iter()
            .filter(|(p, r)| p == pipeline && r.starts_with("payload is not JSON"))
            .count() as u64;
        assert_eq!(not_json, broken, "{pipeline}: {reasons:?}");
    }

    let mut seqs = BTreeSet::new();
    for (_, payload) in read_all(&js, "ENRICHED").await? {
        let v: serde_json::Value = serde_json::from_slice(&payload)?;
        let score = v["score"].as_u64().unwrap_or(0);
        let want = if score >= 60 { "pass" } else { "fail" };
        assert_eq!(v["grade"], want, "{v}");
        assert_eq!(v["source"]["stream"], "EVENTS");
        assert!(seqs.insert(v["source"]["seq"].as_u64().unwrap_or(0)), "{v}");
    }
    assert_eq!(seqs.len() as u64, enriched);

    shutdown.cancel();
    host.await??;
    Ok(())
}
