//! Host capabilities against real PostgreSQL and nats-server, driven by the
//! test-capabilities plugin: typed SQL, transactions, typed errors, outages
//! reported as `unavailable`, acknowledged and de-duplicated publishes, KV
//! with compare-and-set, and every call checked against the grant.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use jetplug::capability::{Backends, Grants};
use jetplug::config::{BucketConfig, DatabaseConfig, Dur, Size, Storage};
use jetplug::plugin::PluginInstance;
use jetplug_tests::{NatsServer, Postgres};

#[path = "support/caps.rs"]
mod support;

struct Rig {
    instance: PluginInstance,
    pg: Postgres,
    nats: NatsServer,
    js: jetstream::Context,
}

impl Rig {
    async fn start() -> anyhow::Result<Rig> {
        let pg = Postgres::start().await?;
        let nats = NatsServer::start().await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        js.create_stream(jetstream::stream::Config {
            name: "OUT".into(),
            subjects: vec!["out.>".into()],
            ..Default::default()
        })
        .await?;
        let buckets = BTreeMap::from([(
            "state".to_owned(),
            BucketConfig {
                history: 1,
                max_age: Dur::default(),
                max_bytes: Size::default(),
                storage: Storage::File,
                replicas: 1,
            },
        )]);
        jetplug::jetstream::buckets::ensure(&js, &buckets).await?;
        let databases = BTreeMap::from([(
            "main".to_owned(),
            DatabaseConfig {
                pool_size: 2,
                timeout: Dur(Duration::from_secs(2)),
                ..DatabaseConfig::new(pg.url())
            },
        )]);
        let backends = Backends::with_databases(&databases)?;
        backends.set_nats(js.clone());
        let grants = Grants {
            log: true,
            publish: vec!["out.>".into(), "nowhere.>".into()],
            sql: vec!["main".into()],
            kv: vec!["state".into(), "missing".into()],
            sql_role: None,
        };
        Ok(Rig {
            instance: support::caps(&support::runtime()?, grants, backends)?,
            pg,
            nats,
            js,
        })
    }

    /// Runs one command and returns the plugin's report.
    async fn ask(&mut self, payload: &str) -> anyhow::Result<String> {
        support::ask(&mut self.instance, payload).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_values_transactions_and_errors() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    assert_eq!(rig.ask("sql-roundtrip|main").await?, "ok");
    assert_eq!(rig.ask("sql-batch|main|250").await?, "ok:250");
    // A failing row rolls the whole batch back.
    let dup = rig.ask("sql-batch|main|300").await?;
    assert!(
        dup.starts_with("invalid: duplicate key value") && dup.contains("23505"),
        "{dup}"
    );
    let db = rig.pg.connect().await?;
    let n: i64 = db
        .query_one("select count(*) from batch_probe", &[])
        .await?
        .get(0);
    assert_eq!(n, 250);

    assert_eq!(rig.ask("sql-tx|main|commit").await?, "ok");
    assert_eq!(rig.ask("sql-tx|main|drop").await?, "ok");
    let n: i64 = db
        .query_one("select count(*) from tx_probe", &[])
        .await?
        .get(0);
    assert_eq!(n, 1, "the dropped transaction was rolled back");

    let syntax = rig.ask("sql-exec|main|selec 1").await?;
    assert!(
        syntax.starts_with("invalid: syntax error") && syntax.contains("42601"),
        "{syntax}"
    );
    let denied = rig.ask("sql-exec|billing|select 1").await?;
    assert!(
        denied.starts_with("access-denied") && denied.contains("billing"),
        "{denied}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_outage_is_unavailable_then_recovers() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    assert_eq!(rig.ask("sql-exec|main|select 1").await?, "ok:1");
    rig.pg.stop().await?;
    let down = rig.ask("sql-exec|main|select 1").await?;
    assert!(down.starts_with("unavailable"), "{down}");
    rig.pg.restart().await?;
    let mut last = String::new();
    for _ in 0..50 {
        last = rig.ask("sql-exec|main|select 1").await?;
        if last == "ok:1" {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("did not recover: {last}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_is_acknowledged_deduplicated_and_granted() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    assert_eq!(rig.ask("publish|out.a|id-1").await?, "ok:OUT:1:false");
    assert_eq!(rig.ask("publish|out.a|id-1").await?, "ok:OUT:1:true");
    assert_eq!(rig.ask("publish|out.b|").await?, "ok:OUT:2:false");
    let stored = rig.js.get_stream("OUT").await?.get_raw_message(2).await?;
    assert_eq!(stored.headers.get("x-probe").map(|v| v.as_str()), Some("1"));
    let denied = rig.ask("publish|elsewhere.a|").await?;
    assert!(
        denied.starts_with("access-denied") && denied.contains("elsewhere.a"),
        "{denied}"
    );
    let nostream = rig.ask("publish|nowhere.a|").await?;
    assert_eq!(nostream, "invalid: no stream captures subject `nowhere.a`");
    let _ = &rig.nats;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_get_put_compare_and_set() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    assert_eq!(rig.ask("kv-get|state|k").await?, "none");
    assert_eq!(rig.ask("kv-cas|state|k|v1|none").await?, "ok:1");
    let again = rig.ask("kv-cas|state|k|v1|none").await?;
    assert!(again.starts_with("invalid: revision"), "{again}");
    assert_eq!(rig.ask("kv-get|state|k").await?, "ok:v1:1");
    assert_eq!(rig.ask("kv-cas|state|k|v2|1").await?, "ok:2");
    assert!(rig.ask("kv-cas|state|k|v3|1").await?.starts_with("invalid"));
    assert_eq!(rig.ask("kv-put|state|k|v4").await?, "ok:3");
    assert_eq!(rig.ask("kv-del|state|k").await?, "ok");
    assert_eq!(rig.ask("kv-get|state|k").await?, "none");
    assert_eq!(rig.ask("kv-get|missing|k").await?, "not-found");
    let denied = rig.ask("kv-get|secrets|k").await?;
    assert!(
        denied.starts_with("access-denied") && denied.contains("secrets"),
        "{denied}"
    );
    Ok(())
}
