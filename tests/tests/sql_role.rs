//! Narrower SQL grants: a plugin whose `grants.sql_role` names a PostgreSQL
//! role runs its statements under that role (`SET ROLE`), so it can do
//! exactly what the role may — a statement outside its rights is
//! `access-denied` — and cannot leave the role. Its connections are reset
//! before anyone else uses them: a plugin without a role, sharing a pool of
//! one connection, keeps its own rights.

use std::collections::BTreeMap;

use jetplug::capability::{Backends, Grants};
use jetplug::config::DatabaseConfig;
use jetplug_tests::Postgres;

use jetplug_tests::caps::{ask, caps};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_runs_under_its_role_and_cannot_leave_it() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let db = pg.connect().await?;
    db.batch_execute(
        "create table allowed (v int); create table forbidden (v int);
         create table bulk_allowed (k int8 unique, doc jsonb, at timestamptz);
         create table bulk_forbidden (like bulk_allowed including all);
         create role indexer_writer nologin;
         grant insert on allowed to indexer_writer;
         grant insert, select (k) on bulk_allowed to indexer_writer;",
    )
    .await?;
    // One connection: both plugins use the same one, in turn.
    let databases = BTreeMap::from([(
        "db".to_owned(),
        DatabaseConfig {
            pool_size: 1,
            ..DatabaseConfig::new(pg.url())
        },
    )]);
    let backends = Backends::with_databases(&databases)?;
    let runtime = jetplug_tests::caps::runtime()?;
    let load = |role: Option<&str>| {
        let grants = Grants {
            log: true,
            publish: vec!["out.>".into()],
            sql: vec!["db".into()],
            kv: vec!["state".into()],
            sql_role: role.map(str::to_owned),
        };
        caps(&runtime, grants, backends.clone())
    };
    let mut writer = load(Some("indexer_writer"))?;
    let mut admin = load(None)?;

    assert_eq!(
        ask(&mut writer, "sql-exec|db|insert into allowed values (1)").await?,
        "ok:1"
    );
    let denied = ask(&mut writer, "sql-exec|db|insert into forbidden values (1)").await?;
    assert!(
        denied.starts_with("access-denied") && denied.contains("permission denied"),
        "{denied}"
    );
    let current = ask(
        &mut writer,
        "sql-exec|db|select 1 where current_user = 'indexer_writer'",
    )
    .await?;
    assert_eq!(current, "ok:1", "statements run as the role");
    for escape in [
        "sql-exec|db|RESET ROLE",
        "sql-exec|db|set  role postgres",
        "sql-exec|db|select set_config('role', 'postgres', false)",
        "sql-exec|db|SET SESSION AUTHORIZATION postgres",
    ] {
        let got = ask(&mut writer, escape).await?;
        assert!(got.starts_with("access-denied"), "{escape}: {got}");
    }
    // Bulk loads run under the role too: its staging table is its own; the
    // target needs INSERT, and skipping known keys SELECT on the key columns
    // (PostgreSQL checks it for ON CONFLICT).
    assert_eq!(
        ask(&mut writer, "sql-bulk|db|bulk_allowed|0|100|skip").await?,
        "ok:100"
    );
    assert_eq!(
        ask(&mut writer, "sql-bulk|db|bulk_allowed|50|150|skip").await?,
        "ok:50"
    );
    let bulk_denied = ask(&mut writer, "sql-bulk|db|bulk_forbidden|0|1|fail").await?;
    assert!(bulk_denied.starts_with("access-denied"), "{bulk_denied}");
    // In a transaction too.
    let tx = ask(&mut writer, "sql-tx|db|commit").await?;
    assert!(
        tx.starts_with("access-denied"),
        "create table is outside the role: {tx}"
    );

    // The same (only) connection, now for a plugin without a role.
    assert_eq!(
        ask(&mut admin, "sql-exec|db|insert into forbidden values (2)").await?,
        "ok:1"
    );
    assert_eq!(
        ask(
            &mut admin,
            "sql-exec|db|select 1 where current_user = 'postgres'"
        )
        .await?,
        "ok:1"
    );
    let n: i64 = db
        .query_one("select count(*) from forbidden", &[])
        .await?
        .get(0);
    assert_eq!(n, 1, "only the plugin without a role wrote there");
    Ok(())
}
