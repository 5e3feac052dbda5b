//! Exactly-once effects (`effects = "exactly-once"`), proven with a
//! deliberately naive plugin (`test-naive`: a plain INSERT, a counter
//! UPDATE and one publish per message, no dedupe code) against real
//! nats-server and PostgreSQL processes. The same plugin in the default
//! mode shows the duplicates, so each test can fail.

use std::collections::BTreeMap;

use jetplug_tests::rig::*;
use jetplug_tests::{Postgres, TestConfig, scalar};

/// EVENTS → the naive plugin (pipeline `main`), its publishes into OUT.
fn naive_config(dir: &Path, nats: &str, pg: &Postgres, effects: &str) -> TestConfig {
    TestConfig::events(dir, nats)
        .stream("OUT", &["out.>"])
        .database("db", &pg.url())
        .plugin("p", plugins::TEST_NAIVE)
        .set("plugin.p.grants", "sql", vec!["db"])
        .set("plugin.p.grants", "publish", vec!["out.>"])
        .pipeline("main", &["EVENTS"], "p")
        .set("pipeline.main", "effects", effects)
        .set("pipeline.main", "batch", 20)
        .set("pipeline.main", "max_deliver", 3)
        .set("pipeline.main.backoff", "initial", "100ms")
        .set("pipeline.main.backoff", "max", "200ms")
        .set("nats", "reconnect_delay", "200ms")
}

fn naive(dir: &Path, nats: &str, pg: &Postgres, effects: &str) -> anyhow::Result<Config> {
    naive_config(dir, nats, pg, effects).load_in(dir)
}

async fn tables(pg: &Postgres) -> anyhow::Result<tokio_postgres::Client> {
    let db = pg.connect().await?;
    db.batch_execute(
        "CREATE TABLE orders (payload text);
         CREATE TABLE stock (n int8);
         INSERT INTO stock VALUES (0);",
    )
    .await?;
    Ok(db)
}

/// The payloads published to OUT, with how often each was stored.
async fn published(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, u64>> {
    let mut s = js.get_stream("OUT").await?;
    let n = s.info().await?.state.last_sequence;
    let mut out = BTreeMap::new();
    for seq in 1..=n {
        let m = s.get_raw_message(seq).await?;
        *out.entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_insert(0) += 1;
    }
    Ok(out)
}

/// Twenty plain messages, one that always asks to retry and one that
/// traps after its first statement, mixed in one batch.
fn traffic() -> Vec<String> {
    let mut p: Vec<String> = (0..20).map(|i| format!("order-{i:02}")).collect();
    p.insert(5, "retry".into());
    p.insert(12, "trap".into());
    p
}

async fn run(effects: &str) -> anyhow::Result<(i64, i64, BTreeMap<String, u64>, Arc<Stats>, u64)> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let config = naive(dir.path(), &nats.url(), &pg, effects)?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let payloads = traffic();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;
    let mut host = start(config);
    let stats = host.stats().await?;
    eventually(Duration::from_secs(60), "every message settled", || async {
        all_settled(&js, payloads.len() as u64).await
    })
    .await?;
    // The relay runs after each commit; give a late one a moment.
    eventually(WAIT, "the outbox relayed", || async {
        Ok(published(&js).await?.values().sum::<u64>() >= 20)
    })
    .await?;
    host.stop().await?;
    let orders = scalar(
        &db,
        "select count(*) from orders where payload like 'order-%'",
    )
    .await?;
    let stock = scalar(&db, "select n from stock").await?;
    let dead = dlq_messages(&js).await?.len() as u64;
    Ok((orders, stock, published(&js).await?, stats, dead))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_plugin_repeats_its_effects_at_least_once() -> anyhow::Result<()> {
    let (orders, stock, out, _, dead) = run("at-least-once").await?;
    // The trap fails the batch: everything before it in the batch ran and
    // runs again; the retried message repeats every delivery.
    assert!(orders > 20, "duplicate rows expected, got {orders}");
    assert!(stock > 20, "a double count expected, got {stock}");
    assert!(
        out.values().any(|n| *n > 1),
        "a repeated publish expected: {out:?}"
    );
    assert_eq!(dead, 2, "retry and trap end in the dead-letter queue");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_naive_plugin_is_exact_exactly_once() -> anyhow::Result<()> {
    let (orders, stock, out, stats, dead) = run("exactly-once").await?;
    assert_eq!(orders, 20, "one row per acked message");
    // The retried message's UPDATE never committed, nor the trap's INSERT.
    assert_eq!(stock, 20, "one count per acked message");
    assert_eq!(out.len(), 20, "{out:?}");
    assert!(
        out.values().all(|n| *n == 1),
        "each published once: {out:?}"
    );
    assert!(out.keys().all(|k| k.starts_with("order-")), "{out:?}");
    assert_eq!(dead, 2, "retry and trap end in the dead-letter queue");
    assert!(
        Stats::get(&stats.effects_reruns) >= 1,
        "the batch ran again without its retry"
    );
    Ok(())
}

/// Every message delivered again after its commit (a consumer re-created
/// from the start, as after acks lost with a crash): skipped by the
/// ledger, no effect repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_after_the_commit_is_skipped() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    // Tables of its own names, too.
    let config = naive_config(dir.path(), &nats.url(), &pg, "exactly-once")
        .set("pipeline.main", "effects_schema", "shop_fx")
        .set("pipeline.main", "effects_ledger_table", "handled")
        .set("pipeline.main", "effects_outbox_table", "to_send")
        .load_in(dir.path())?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let payloads: Vec<String> = (0..30).map(|i| format!("order-{i:02}")).collect();
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;
    let mut host = start(config.clone());
    let stats = host.stats().await?;
    eventually(WAIT, "all acked", || async {
        Ok(Stats::get(&stats.acked) == 30)
    })
    .await?;
    host.stop().await?;
    assert_eq!(scalar(&db, "select count(*) from orders").await?, 30);

    // The consumer forgets every ack: all 30 come back.
    js.get_stream("EVENTS")
        .await?
        .delete_consumer(&config.pipelines[0].consumer_name("EVENTS"))
        .await?;
    let mut host = start(config);
    let stats = host.stats().await?;
    eventually(WAIT, "all skipped", || async {
        Ok(Stats::get(&stats.skipped) == 30)
    })
    .await?;
    host.stop().await?;
    assert_eq!(Stats::get(&stats.acked), 0, "nothing ran again");
    assert_eq!(scalar(&db, "select count(*) from orders").await?, 30);
    assert_eq!(scalar(&db, "select n from stock").await?, 30);
    let out = published(&js).await?;
    assert_eq!(out.len(), 30);
    assert!(out.values().all(|n| *n == 1), "{out:?}");
    assert_eq!(
        scalar(
            &db,
            "select count(*) from shop_fx.handled, generate_series(first_seq, last_seq) where pipeline = 'main'"
        )
        .await?,
        30
    );
    assert_eq!(
        scalar(&db, "select count(*) from shop_fx.to_send").await?,
        0
    );
    Ok(())
}

/// Rows, the counter and OUT are exactly one per message of `payloads`.
async fn assert_exact(
    db: &tokio_postgres::Client,
    js: &jetstream::Context,
    n: usize,
) -> anyhow::Result<()> {
    assert_eq!(
        scalar(db, "select count(*) from orders").await?,
        n as i64,
        "rows"
    );
    assert_eq!(
        scalar(db, "select count(distinct payload) from orders").await?,
        n as i64,
        "distinct rows"
    );
    assert_eq!(
        scalar(db, "select n from stock").await?,
        n as i64,
        "counter"
    );
    eventually(WAIT, "every publish relayed", || async {
        Ok(published(js).await?.len() == n)
    })
    .await?;
    let out = published(js).await?;
    assert!(
        out.values().all(|c| *c == 1),
        "each published once: {:?}",
        out.iter().filter(|(_, c)| **c > 1).collect::<Vec<_>>()
    );
    Ok(())
}

fn orders(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("order-{i:04}")).collect()
}

/// Two hosts share the pipeline's consumer: both get work, every effect
/// happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_sharing_the_consumer_are_exact() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let (da, db_dir) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let config = naive(da.path(), &nats.url(), &pg, "exactly-once")?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let mut a = start(config);
    let mut b = start(naive(db_dir.path(), &nats.url(), &pg, "exactly-once")?);
    let (sa, sb) = (a.stats().await?, b.stats().await?);
    let payloads = orders(600);
    for chunk in payloads.chunks(50) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        publish(&js, "events.a", &refs).await?;
    }
    eventually(Duration::from_secs(60), "all acked", || async {
        Ok(Stats::get(&sa.acked) + Stats::get(&sb.acked) >= 600)
    })
    .await?;
    a.stop().await?;
    b.stop().await?;
    assert!(
        Stats::get(&sa.acked) > 0 && Stats::get(&sb.acked) > 0,
        "both hosts got work: {} and {}",
        Stats::get(&sa.acked),
        Stats::get(&sb.acked)
    );
    assert_exact(&db, &js, 600).await
}

/// nats-server SIGKILLed mid-stream (acks of committed batches lost with
/// it) and restarted: the redeliveries are skipped, the outbox is relayed
/// after the restart, every effect happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_stream_leaves_every_effect_once() -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let config = naive(dir.path(), &nats.url(), &pg, "exactly-once")?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let payloads = orders(800);
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;
    let mut host = start(config);
    let stats = host.stats().await?;
    eventually(WAIT, "some acked", || async {
        Ok(Stats::get(&stats.acked) >= 100)
    })
    .await?;
    nats.kill().await?;
    let at_kill = Stats::get(&stats.acked);
    assert!(at_kill < 800, "killed mid-stream ({at_kill} acked)");
    tokio::time::sleep(Duration::from_millis(500)).await;
    nats.restart().await?;
    let js = self::js(&nats).await?;
    eventually(Duration::from_secs(90), "every message settled", || async {
        Ok(all_settled(&js, 800).await.unwrap_or(false))
    })
    .await?;
    host.stop().await?;
    assert_exact(&db, &js, 800).await
}

/// PostgreSQL SIGKILLed mid-stream and restarted: the batches in flight
/// roll back and are held until it is back, every effect happens once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_during_commits_leaves_every_effect_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let mut pg = Postgres::start().await?;
    tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let config = naive(dir.path(), &nats.url(), &pg, "exactly-once")?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let payloads = orders(800);
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;
    let mut host = start(config);
    let stats = host.stats().await?;
    eventually(WAIT, "some acked", || async {
        Ok(Stats::get(&stats.acked) >= 100)
    })
    .await?;
    pg.kill().await?;
    let at_kill = Stats::get(&stats.acked);
    assert!(at_kill < 800, "killed mid-stream ({at_kill} acked)");
    tokio::time::sleep(Duration::from_secs(1)).await;
    pg.restart().await?;
    eventually(Duration::from_secs(90), "every message settled", || async {
        Ok(all_settled(&js, 800).await.unwrap_or(false))
    })
    .await?;
    host.stop().await?;
    assert!(
        dlq_messages(&js).await?.is_empty(),
        "nothing dead-lettered for an outage"
    );
    let db = pg.connect().await?;
    assert_exact(&db, &js, 800).await
}

/// A new version swapped in (the plugin's config edited in the file)
/// while messages flow: every effect happens once across the swap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_swap_under_load_leaves_every_effect_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let admin = format!("127.0.0.1:{}", jetplug_tests::free_port()?);
    let version = |rev: &str| -> anyhow::Result<TestConfig> {
        Ok(naive_config(dir.path(), &nats.url(), &pg, "exactly-once")
            .set("admin", "address", admin.as_str())
            .set("plugin.p.config", "rev", rev))
    };
    let config = version("1")?.load_in(dir.path())?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let mut host = start(config);
    let stats = host.stats().await?;
    let payloads = orders(1500);
    let publisher = {
        let js = js.clone();
        let payloads = payloads.clone();
        tokio::spawn(async move {
            for chunk in payloads.chunks(25) {
                let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
                publish(&js, "events.a", &refs).await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            anyhow::Ok(())
        })
    };
    eventually(WAIT, "traffic flowing", || async {
        Ok(Stats::get(&stats.acked) >= 300)
    })
    .await?;
    // Written whole, then renamed over: the watcher sees one edit.
    let tmp = dir.path().join("next.toml");
    version("2")?.write(&tmp)?;
    std::fs::rename(&tmp, dir.path().join("jetplug.toml"))?;
    eventually(WAIT, "the new version swapped in", || async {
        let (_, m) = jetplug_tests::http_get(&admin, "/metrics").await?;
        Ok(m.contains(r#"jetplug_plugin_swaps_total{plugin="p",outcome="swapped"} 1"#))
    })
    .await?;
    let during = Stats::get(&stats.acked);
    publisher.await??;
    eventually(Duration::from_secs(60), "every message settled", || async {
        all_settled(&js, 1500).await
    })
    .await?;
    host.stop().await?;
    assert!(during < 1500, "swapped mid-stream ({during} acked)");
    assert_exact(&db, &js, 1500).await
}

/// Under `grants.sql_role` the plugin's statements run as that role inside
/// the batch transaction; the host writes the ledger and outbox as its own
/// user, so the role needs no rights on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exactly_once_works_under_a_sql_role_without_rights_on_the_ledger() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    db.batch_execute(
        "CREATE ROLE naive_role;
         GRANT INSERT ON orders TO naive_role;
         GRANT SELECT, UPDATE ON stock TO naive_role;",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let config = naive_config(dir.path(), &nats.url(), &pg, "exactly-once")
        .set("plugin.p.grants", "sql_role", "naive_role")
        .load_in(dir.path())?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let payloads = orders(100);
    let refs: Vec<&str> = payloads.iter().map(String::as_str).collect();
    publish(&js, "events.a", &refs).await?;
    let mut host = start(config);
    let stats = host.stats().await?;
    eventually(WAIT, "all acked", || async {
        Ok(Stats::get(&stats.acked) == 100)
    })
    .await?;
    host.stop().await?;
    assert_eq!(
        scalar(
            &db,
            "select count(*) from information_schema.role_table_grants
             where grantee = 'naive_role' and table_schema = 'jetplug'"
        )
        .await?,
        0,
        "the role was given nothing on the ledger or outbox"
    );
    assert_exact(&db, &js, 100).await
}

/// A publish to a subject no stream captures is refused when made (the
/// plugin sees `invalid` and retries it until it is dead-lettered), not
/// queued to block the outbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_no_stream_captures_is_refused_not_queued() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let config = naive_config(dir.path(), &nats.url(), &pg, "exactly-once")
        .set("stream.OUT", "subjects", vec!["out.events.a"])
        .load_in(dir.path())?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    publish(&js, "events.a", &["order-1", "order-2"]).await?;
    publish(&js, "events.b", &["order-3"]).await?;
    let mut host = start(config);
    host.stats().await?;
    eventually(WAIT, "every message settled", || async {
        all_settled(&js, 3).await
    })
    .await?;
    host.stop().await?;
    let dlq = dlq_messages(&js).await?;
    assert_eq!(dlq.len(), 1, "order-3 dead-lettered");
    assert_eq!(&dlq[0].payload[..], b"order-3");
    // Its capture holds the refused publish the plugin kept retrying on.
    let id = jetplug_tests::rig::header(&dlq[0], "Jetplug-Capture");
    let store = jetplug::capture::store::Captures::existing(&js, "JETPLUG_CAPTURES").await?;
    let capture = jetplug::capture::Capture::parse(&store.get(id).await?)?;
    let publish = capture.calls.iter().find(|c| c.call == "publish.publish");
    assert!(
        publish.is_some_and(|c| c.target == "out.events.b" && c.error.is_some()),
        "{:?}",
        capture.calls
    );
    assert_eq!(scalar(&db, "select count(*) from jetplug.outbox").await?, 0);
    assert_exact(&db, &js, 2).await
}

/// Ledger entries older than `effects_retention` are pruned (at start, then
/// every 10 minutes) and the ledger's size is in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_is_pruned_past_its_retention_and_sized() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let config = |retention: &str| {
        naive_config(dir.path(), &nats.url(), &pg, "exactly-once")
            .set("pipeline.main", "effects_retention", retention)
            .load_in(dir.path())
    };
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config("1h")?.streams).await?;
    publish(&js, "events.a", &["order-1", "order-2", "order-3"]).await?;
    let mut host = start(config("1h")?);
    let stats = host.stats().await?;
    eventually(WAIT, "all acked", || async {
        Ok(Stats::get(&stats.acked) == 3)
    })
    .await?;
    host.stop().await?;
    // Started again within the retention: kept, and counted at start.
    let mut host = start(config("1h")?);
    let stats = host.stats().await?;
    eventually(WAIT, "the gauge counts the ledger", || async {
        Ok(stats.effects_ledger.get() == 3)
    })
    .await?;
    host.stop().await?;
    let ledger = "select count(*) from jetplug.ledger, generate_series(first_seq, last_seq) where pipeline = 'main'";
    assert_eq!(scalar(&db, ledger).await?, 3);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // Started again past a 1 s retention: pruned, and the gauge says so.
    let mut host = start(config("1s")?);
    let stats = host.stats().await?;
    eventually(WAIT, "the ledger pruned", || async {
        Ok(scalar(&db, ledger).await? == 0)
    })
    .await?;
    eventually(WAIT, "the gauge updated", || async {
        Ok(stats.effects_ledger.get() == 0)
    })
    .await?;
    host.stop().await?;
    assert_exact(&db, &js, 3).await
}

/// A bulk load (the indexer's `insert-rows`: `COPY`) joins the batch's
/// transaction: every event is one row, and the load opens no transaction
/// of its own inside it (PostgreSQL would log a warning for every batch).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_load_joins_the_batch_transaction() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let dir = tempfile::tempdir()?;
    let config = TestConfig::events(dir.path(), &nats.url())
        .database("events", &pg.url())
        .plugin("indexer", plugins::POSTGRES_INDEXER)
        .set("plugin.indexer.grants", "sql", vec!["events"])
        .pipeline("main", &["EVENTS"], "indexer")
        .set("pipeline.main", "effects", "exactly-once")
        .set("pipeline.main", "batch", 50)
        .load_in(dir.path())?;
    let js = js(&nats).await?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    let events: Vec<String> = (0..200).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    let refs: Vec<&str> = events.iter().map(String::as_str).collect();
    publish(&js, "events.order.created", &refs).await?;
    let host = start(config);
    eventually(Duration::from_secs(60), "every event settled", || async {
        all_settled(&js, 200).await
    })
    .await?;
    host.stop().await?;
    let db = pg.connect().await?;
    assert_eq!(scalar(&db, "select count(*) from events").await?, 200);
    let log = pg.log();
    assert!(
        !log.contains("already a transaction in progress"),
        "a nested BEGIN in the batch transaction: {log}"
    );
    Ok(())
}
