//! Crash safety with real processes: the host killed with SIGKILL mid-stream
//! and started again loses nothing and duplicates nothing — rows, counts and
//! dead letters all come out exact.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use jetplug_tests::{NatsServer, Postgres, TestConfig, eventually, plugins};

const WAIT: Duration = Duration::from_secs(90);

/// The AIVO example pointed at this test's servers and plugins.
fn aivo_config(dir: &Path, nats: &NatsServer, pg: &Postgres) -> anyhow::Result<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut config = TestConfig::from_file(&root.join("examples/aivo/jetplug.toml"))?
        .set("nats", "url", nats.url())
        .set("database.events", "url", pg.url())
        .set(
            "engine",
            "cache_dir",
            dir.join("cache").display().to_string(),
        )
        .plugin("indexer", plugins::POSTGRES_INDEXER)
        .plugin("aggregator", plugins::ANALYTICS_AGGREGATOR)
        .plugin("dlq-router", plugins::DLQ_ROUTER);
    // Redeliver what the killed host held after 3 s rather than 30 s.
    for p in config.pipelines() {
        config = config.set(&format!("pipeline.{p}"), "ack_wait", "3s");
    }
    let path = config.write_in(dir)?;
    Ok(path.display().to_string())
}

fn host(config: &str, log: &Path) -> anyhow::Result<Child> {
    Ok(jetplug_tests::jetplug_cmd()?
        .args(["run", "--config", config])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?)
}

/// [`jetplug_tests::scalar`], -1 while the table does not exist yet.
async fn scalar(db: &tokio_postgres::Client, sql: &str) -> i64 {
    jetplug_tests::scalar(db, sql).await.unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_stream_and_restarted_is_exact() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let dir = tempfile::tempdir()?;
    let config = aivo_config(dir.path(), &nats, &pg)?;
    let out = Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(["streams", "apply", "--config", &config])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = pg.connect().await?;
    let mut first = host(&config, &dir.path().join("host1.log"))?;
    // 3000 events over ~3 s, every 50th malformed (60: 40 on learning/focus),
    // so the kill below lands while traffic is still arriving.
    let mut publisher = Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args([
            "publish",
            "--config",
            &config,
            "--count",
            "3000",
            "--rate",
            "1000",
            "--malformed-every",
            "50",
        ])
        .stdout(Stdio::null())
        .spawn()?;
    eventually(WAIT, "indexing under way", || async {
        Ok(scalar(&db, "select count(*) from events").await > 300)
    })
    .await?;
    first.kill()?; // SIGKILL, mid-stream
    first.wait()?;
    let indexed_at_kill = scalar(&db, "select count(*) from events").await;
    assert!(
        indexed_at_kill < 2940,
        "killed too late to prove anything ({indexed_at_kill})"
    );

    let mut second = host(&config, &dir.path().join("host2.log"))?;
    assert!(publisher.wait()?.success());
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let result = eventually(
        WAIT,
        "everything indexed, counted and dead-lettered",
        || async {
            let dlq = js.get_stream("DLQ").await?.info().await?.state.messages;
            Ok(scalar(&db, "select count(*) from events").await == 2940
                && scalar(
                    &db,
                    "select coalesce(sum(count), 0)::int8 from event_counts",
                )
                .await
                    == scalar(
                        &db,
                        "select count(*) from events where domain in ('learning', 'focus')",
                    )
                    .await
                && dlq == 100)
        },
    )
    .await;
    second.kill()?;
    second.wait()?;
    result?;
    assert_eq!(
        scalar(
            &db,
            "select count(distinct (stream, stream_seq)) from events"
        )
        .await,
        2940
    );
    assert_eq!(
        scalar(&db, "select sum(count)::int8 from event_counts").await,
        scalar(
            &db,
            "select count(*) from events where domain in ('learning', 'focus')"
        )
        .await,
        "each learning/focus event counted exactly once"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        js.get_stream("DLQ").await?.info().await?.state.messages,
        100,
        "no duplicate dead letter"
    );
    // Nothing stranded: every message each consumer passed is in its
    // plugin's ledger or in the DLQ.
    let out = Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(["doctor", "--config", &config])
        .args([
            "--ledger",
            "indexer=events:select stream_seq from events where stream = $1",
        ])
        // (analytics runs exactly-once: doctor reads the host's ledger itself)
        .output()?;
    let text = jetplug_tests::output_text(&out);
    assert!(out.status.success(), "{text}");
    assert_eq!(
        text.matches("each handled or dead-lettered").count(),
        6,
        "every consumer checked: {text}"
    );
    Ok(())
}
