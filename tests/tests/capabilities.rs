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

struct Rig {
    instance: PluginInstance,
    backends: std::sync::Arc<Backends>,
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
            instance: jetplug_tests::caps::caps(
                &jetplug_tests::caps::runtime()?,
                grants,
                backends.clone(),
            )?,
            backends,
            pg,
            nats,
            js,
        })
    }

    /// Runs one command and returns the plugin's report.
    async fn ask(&mut self, payload: &str) -> anyhow::Result<String> {
        jetplug_tests::caps::ask(&mut self.instance, payload).await
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
async fn sql_insert_rows_bulk_loads_all_or_nothing_and_skips_known_keys() -> anyhow::Result<()> {
    let mut rig = Rig::start().await?;
    assert_eq!(rig.ask("sql-bulk-roundtrip|main").await?, "ok");
    assert_eq!(
        rig.ask("sql-bulk|main|bulk_probe|0|1000|skip").await?,
        "ok:1000"
    );
    // Half of these are there already: skipped and not counted.
    assert_eq!(
        rig.ask("sql-bulk|main|bulk_probe|500|1500|skip").await?,
        "ok:500"
    );
    // Without skip, one known key fails the whole call and none of it stays.
    let dup = rig.ask("sql-bulk|main|bulk_probe|1400|1600|fail").await?;
    assert!(
        dup.starts_with("invalid: duplicate key value") && dup.contains("23505"),
        "{dup}"
    );
    let db = rig.pg.connect().await?;
    let (rows, keys, max, at): (i64, i64, i64, f64) = {
        let r = db
            .query_one(
                "select count(*), count(distinct k), max(k), extract(epoch from max(at))::float8 from bulk_probe",
                &[],
            )
            .await?;
        (r.get(0), r.get(1), r.get(2), r.get(3))
    };
    assert_eq!((rows, keys, max, at), (1500, 1500, 1499, 1499.0));
    // The connection that failed is not handed out half-used: the next call works.
    assert_eq!(
        rig.ask("sql-bulk|main|bulk_probe|1500|1600|fail").await?,
        "ok:100"
    );

    let missing = rig.ask("sql-bulk|main|no_such_table|0|1|skip").await?;
    assert!(
        missing.starts_with("invalid:") && missing.contains("no_such_table"),
        "{missing}"
    );
    let bad_name = rig.ask("sql-bulk|main|a.b.c|0|1|skip").await?;
    assert!(bad_name.contains("`name` or `schema.name`"), "{bad_name}");
    let denied = rig.ask("sql-bulk|billing|bulk_probe|0|1|skip").await?;
    assert!(
        denied.starts_with("access-denied") && denied.contains("billing"),
        "{denied}"
    );
    Ok(())
}

/// A component built against the first WIT package (sql@0.1.0) calls into
/// the current host's `sql` for real.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_against_wit_0_1_0_uses_sql() -> anyhow::Result<()> {
    let rig = Rig::start().await?;
    let spec = jetplug::plugin::PluginSpec {
        grants: Grants {
            sql: vec!["main".into()],
            ..Grants::default()
        },
        ..jetplug::plugin::PluginSpec::new("frozen", jetplug_tests::plugins::TEST_WIT_0_1_0)
    };
    let plugin =
        jetplug::plugin::load_with(&jetplug_tests::caps::runtime()?, spec, rig.backends.clone())?;
    let mut frozen = PluginInstance::new(std::sync::Arc::new(plugin));
    assert_eq!(
        jetplug_tests::caps::ask(&mut frozen, "sql:main").await?,
        "ack"
    );
    // An ungranted database is refused by the host: the plugin retries.
    let missing = frozen
        .handle([jetplug_tests::caps::msg("sql:nowhere")])
        .await?;
    assert!(
        matches!(missing[..], [jetplug::Decision::Retry(_)]),
        "{missing:?}"
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
