//! Exactly-once effects with real `jetplug` processes: a host SIGKILLed
//! mid-batch and started again, and dead letters redriven twice — the
//! deliberately naive plugin (`test-naive`: a plain INSERT, a counter
//! UPDATE and one publish per message) leaves every effect exactly once.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use async_nats::jetstream;
use jetplug::config::Config;
use jetplug_tests::{
    HostProcess, NatsServer, Postgres, TestConfig, eventually, free_port, jetplug, output_text,
    plugins, scalar,
};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(90);

/// EVENTS → the naive plugin in exactly-once mode; `database` is the one
/// its statements name (a wrong one is the "bug" of the redrive test).
fn naive(
    dir: &Path,
    nats: &str,
    pg: &Postgres,
    database: &str,
    file: &str,
) -> anyhow::Result<String> {
    let path = TestConfig::events(dir, nats)
        .stream("OUT", &["out.>"])
        .database("db", &pg.url())
        .plugin("p", plugins::TEST_NAIVE)
        .set("plugin.p.grants", "sql", vec!["db"])
        .set("plugin.p.grants", "publish", vec!["out.>"])
        .set("plugin.p.config", "database", database)
        .pipeline("main", &["EVENTS"], "p")
        .set("pipeline.main", "effects", "exactly-once")
        .set("pipeline.main", "batch", 50)
        .set("pipeline.main", "max_deliver", 2)
        .set("pipeline.main", "ack_wait", "3s")
        .set("pipeline.main.backoff", "initial", "100ms")
        .set("pipeline.main.backoff", "max", "200ms")
        .set("admin", "address", format!("127.0.0.1:{}", free_port()?))
        .write(&dir.join(file))?;
    Ok(path.display().to_string())
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

async fn messages(js: &jetstream::Context, stream: &str) -> anyhow::Result<u64> {
    Ok(js.get_stream(stream).await?.info().await?.state.messages)
}

async fn settled(js: &jetstream::Context, total: u64) -> anyhow::Result<bool> {
    let mut c: jetstream::consumer::PullConsumer = js
        .get_stream("EVENTS")
        .await?
        .get_consumer("jetplug-main-EVENTS")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let info = c.info().await?;
    Ok(info.num_pending == 0
        && info.num_ack_pending == 0
        && info.delivered.stream_sequence >= total)
}

async fn assert_exact(
    db: &tokio_postgres::Client,
    js: &jetstream::Context,
    n: i64,
) -> anyhow::Result<()> {
    assert_eq!(scalar(db, "select count(*) from orders").await?, n, "rows");
    assert_eq!(
        scalar(db, "select count(distinct payload) from orders").await?,
        n,
        "distinct rows"
    );
    assert_eq!(scalar(db, "select n from stock").await?, n, "counter");
    eventually(WAIT, "every publish relayed", || async {
        Ok(published(js).await?.len() as i64 == n)
    })
    .await?;
    let out = published(js).await?;
    assert!(out.values().all(|c| *c == 1), "each published once");
    Ok(())
}

/// The host SIGKILLed while batches are in flight (some committed and not
/// acked, some mid-transaction) and started again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_killed_mid_batch_and_restarted_leaves_every_effect_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let path = naive(dir.path(), &nats.url(), &pg, "db", "jetplug.toml")?;
    let config = Config::load(Path::new(&path))?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    const N: u64 = 2000;
    for i in 0..N {
        js.publish("events.a", format!("order-{i:05}").into_bytes().into())
            .await?;
    }
    eventually(WAIT, "all stored", || async {
        Ok(messages(&js, "EVENTS").await? == N)
    })
    .await?;
    let admin = config
        .admin
        .address
        .as_ref()
        .map(|a| a.0.to_string())
        .unwrap_or_default();
    let bin = jetplug_tests::jetplug_binary()?;
    let bin = bin.to_str().unwrap_or_default();
    let mut host = HostProcess::start(
        bin,
        Path::new(&path),
        admin.clone(),
        dir.path().join("a.log"),
    )?;
    host.ready().await?;
    eventually(WAIT, "a few hundred handled", || async {
        Ok(scalar(&db, "select count(*) from orders").await? >= 300)
    })
    .await?;
    host.kill()?;
    let at_kill = scalar(&db, "select count(*) from orders").await?;
    assert!(at_kill < N as i64, "killed mid-stream ({at_kill} rows)");

    let host = HostProcess::start(bin, Path::new(&path), admin, dir.path().join("b.log"))?;
    host.ready().await?;
    eventually(WAIT, "every message settled", || async {
        Ok(settled(&js, N).await.unwrap_or(false))
    })
    .await
    .map_err(|e| e.context(host.log()))?;
    drop(host);
    assert_eq!(messages(&js, "DLQ").await?, 0, "nothing dead-lettered");
    assert_exact(&db, &js, N as i64).await
}

/// Messages dead-lettered by a buggy version (its statements go to a
/// database outside the transaction: refused, retried, dead-lettered,
/// nothing committed), redriven after the fix — handled once — and a copy
/// redriven again: skipped by the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_redriven_twice_leave_every_effect_once() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = tables(&pg).await?;
    let dir = tempfile::tempdir()?;
    let buggy = naive(dir.path(), &nats.url(), &pg, "elsewhere", "buggy.toml")?;
    let fixed = naive(dir.path(), &nats.url(), &pg, "db", "fixed.toml")?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);

    let run = |path: String| {
        let shutdown = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let task = tokio::spawn({
            let shutdown = shutdown.clone();
            async move {
                jetplug::host::run(Config::load(Path::new(&path))?, shutdown, move |h| {
                    let _ = tx.send(h);
                })
                .await
                .map_err(anyhow::Error::from)
            }
        });
        (shutdown, task, rx)
    };

    let (stop, task, ready) = run(buggy);
    tokio::time::timeout(WAIT, ready).await??;
    for i in 0..3 {
        js.publish("events.a", format!("order-{i}").into_bytes().into())
            .await?
            .await?;
    }
    eventually(WAIT, "three dead letters", || async {
        Ok(messages(&js, "DLQ").await? == 3)
    })
    .await?;
    stop.cancel();
    task.await??;
    assert_eq!(scalar(&db, "select count(*) from orders").await?, 0);

    let (stop, task, ready) = run(fixed.clone());
    let handle = tokio::time::timeout(WAIT, ready).await??;
    let stats = handle.stats["main"].clone();
    let get = jetplug::pipeline::Stats::get;
    let out = jetplug(&["dlq", "redrive", "--config", &fixed])?;
    assert!(out.status.success(), "{}", output_text(&out));
    eventually(WAIT, "the redrives handled", || async {
        Ok(get(&stats.acked) == 3)
    })
    .await?;
    assert_exact(&db, &js, 3).await?;

    // The first redrive again (a copy of what it published, without its
    // id, which EVENTS remembers): skipped.
    let first = js.get_stream("EVENTS").await?.get_raw_message(4).await?;
    assert!(
        first.headers.get("Jetplug-Origin").is_some(),
        "sequence 4 is the first redrive"
    );
    let mut copy = async_nats::HeaderMap::new();
    for (k, vs) in first.headers.iter() {
        if k.to_string().eq_ignore_ascii_case("Nats-Msg-Id") {
            continue;
        }
        for v in vs {
            copy.append(k.to_string().as_str(), v.as_str());
        }
    }
    js.publish_with_headers("events.a", copy, first.payload.clone())
        .await?
        .await?;
    eventually(WAIT, "the second redrive skipped", || async {
        Ok(get(&stats.skipped) == 1)
    })
    .await?;
    stop.cancel();
    task.await??;
    assert_eq!(get(&stats.acked), 3, "the plugin did not run it again");
    assert_exact(&db, &js, 3).await
}

/// `jetplug check` connects to an exactly-once pipeline's database and
/// names a missing privilege with the GRANT that fixes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_a_missing_privilege_before_traffic_flows() -> anyhow::Result<()> {
    let pg = Postgres::start().await?;
    let admin = pg.connect().await?;
    admin
        .batch_execute("CREATE ROLE limited LOGIN; GRANT ALL ON SCHEMA public TO limited;")
        .await?;
    let dir = tempfile::tempdir()?;
    let url = pg.url().replace("postgres@", "limited@");
    let path = TestConfig::events(dir.path(), "nats://127.0.0.1:1")
        .stream("OUT", &["out.>"])
        .database("db", &url)
        .plugin("p", plugins::TEST_NAIVE)
        .set("plugin.p.grants", "sql", vec!["db"])
        .set("plugin.p.grants", "publish", vec!["out.>"])
        .pipeline("main", &["EVENTS"], "p")
        .set("pipeline.main", "effects", "exactly-once")
        .file_in(dir.path())?;
    let out = jetplug(&["check", "--config", &path])?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "pipeline `main` (exactly-once): user `limited` cannot create schema `jetplug`"
        ) && text.contains("GRANT CREATE ON DATABASE"),
        "{text}"
    );

    admin
        .batch_execute("GRANT CREATE ON DATABASE postgres TO limited")
        .await?;
    let out = jetplug(&["check", "--config", &path])?;
    assert!(out.status.success(), "{}", output_text(&out));

    // Tables an administrator created, without rights for the user.
    admin
        .batch_execute(
            "REVOKE CREATE ON DATABASE postgres FROM limited;
             CREATE SCHEMA jetplug;
             GRANT USAGE ON SCHEMA jetplug TO limited;
             CREATE TABLE jetplug.ledger (pipeline text, stream text, first_seq int8, last_seq int8,
                 outcome text, handled_at timestamptz, PRIMARY KEY (pipeline, stream, first_seq));
             CREATE TABLE jetplug.outbox (id bigserial PRIMARY KEY, pipeline text, msg_id text,
                 subject text, headers jsonb, payload bytea, queued_at timestamptz);",
        )
        .await?;
    let out = jetplug(&["check", "--config", &path])?;
    let text = output_text(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "lacks rights on \"jetplug\".\"ledger\": GRANT SELECT, INSERT, UPDATE, DELETE"
        ),
        "{text}"
    );
    Ok(())
}

/// The ledger itself, against a real PostgreSQL: a ledger of the first
/// layout (a row per message) is converted at start; two commits of
/// overlapping origins at once (two hosts both holding messages, one past
/// its `ack_wait`) — exactly one commits, the other is a conflict that
/// leaves nothing; two redrives of one dead letter at once — one commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_commits_conflict_and_an_old_ledger_is_converted() -> anyhow::Result<()> {
    use jetplug::capability::effects::{EffectsTx, Entry, Outcome, StoreError, Tables};

    let pg = Postgres::start().await?;
    let admin = pg.connect().await?;
    admin
        .batch_execute(
            "CREATE SCHEMA jetplug;
             CREATE TABLE jetplug.ledger (pipeline text NOT NULL, stream text NOT NULL,
                 seq int8 NOT NULL, outcome text NOT NULL DEFAULT 'ack',
                 handled_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (pipeline, stream, seq));
             INSERT INTO jetplug.ledger (pipeline, stream, seq) VALUES ('main', 'EVENTS', 5);
             INSERT INTO jetplug.ledger (pipeline, stream, seq, outcome)
                 VALUES ('main', 'EVENTS', 20, 'dead_letter');
             CREATE TABLE marks (n int8);",
        )
        .await?;
    let mut cfg = deadpool_postgres::Config::new();
    cfg.url = Some(pg.url());
    let pool = cfg.create_pool(
        Some(deadpool_postgres::Runtime::Tokio1),
        tokio_postgres::NoTls,
    )?;
    let tables = Tables::new("jetplug", "ledger", "outbox");
    tables.create(&pool.get().await?, "db").await?;
    let at = |s: u64| Entry {
        stream: "EVENTS".into(),
        sequence: s,
    };
    let handled = |seqs: Vec<u64>| {
        let (pool, tables) = (pool.clone(), tables.clone());
        async move {
            let origins: Vec<Entry> = seqs.into_iter().map(at).collect();
            let mut found = tables
                .handled(&pool.get().await?, "db", "main", &origins)
                .await?;
            found.sort_by_key(|(e, _)| e.sequence);
            anyhow::Ok(found)
        }
    };
    assert_eq!(
        handled(vec![4, 5, 6, 20]).await?,
        vec![(at(5), Outcome::Ack), (at(20), Outcome::DeadLetter)],
        "the old rows read as runs"
    );

    // Two batches at once, sharing sequence 8; each marks its effect.
    let batch = |name: &'static str, seqs: Vec<u64>| {
        let (pool, tables) = (pool.clone(), tables.clone());
        async move {
            let tx = EffectsTx::begin(&pool, "db", None, &tables, "main", name.into()).await?;
            let fresh: Vec<(Entry, Outcome)> =
                seqs.into_iter().map(|s| (at(s), Outcome::Ack)).collect();
            anyhow::Ok(tx.commit(&fresh, &[]).await)
        }
    };
    // Both get as far as writing the ledger before either commits: an
    // administrator's lock holds the ledger's writes back meanwhile.
    admin
        .batch_execute("BEGIN; LOCK TABLE jetplug.ledger IN SHARE MODE")
        .await?;
    let a = tokio::spawn(batch("a", vec![6, 7, 8]));
    let b = tokio::spawn(batch("b", vec![8, 9]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.batch_execute("COMMIT").await?;
    let (a, b) = (a.await??, b.await??);
    let conflicts = [&a, &b]
        .iter()
        .filter(|r| matches!(r, Err(StoreError::Conflict { .. })))
        .count();
    assert_eq!(conflicts, 1, "exactly one conflicts: {a:?} {b:?}");
    assert!(a.is_ok() || b.is_ok(), "the other commits: {a:?} {b:?}");
    let expected: Vec<u64> = if a.is_ok() { vec![6, 7, 8] } else { vec![8, 9] };
    let found = handled(vec![6, 7, 8, 9]).await?;
    assert_eq!(
        found.iter().map(|(e, _)| e.sequence).collect::<Vec<_>>(),
        expected,
        "only the winner's origins are in the ledger"
    );

    // A dead letter redriven on two hosts at once: one handles it.
    let redrive = || {
        let (pool, tables) = (pool.clone(), tables.clone());
        async move {
            let tx = EffectsTx::begin(&pool, "db", None, &tables, "main", "r".into()).await?;
            anyhow::Ok(tx.commit(&[], &[(at(20), Outcome::Ack)]).await)
        }
    };
    admin
        .batch_execute("BEGIN; LOCK TABLE jetplug.ledger IN SHARE MODE")
        .await?;
    let (a, b) = (tokio::spawn(redrive()), tokio::spawn(redrive()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.batch_execute("COMMIT").await?;
    let (a, b) = (a.await??, b.await??);
    assert!(
        a.is_ok() != b.is_ok(),
        "exactly one redrive commits: {a:?} {b:?}"
    );
    assert_eq!(
        handled(vec![20]).await?,
        vec![(at(20), Outcome::Ack)],
        "the dead letter's row is acked"
    );
    assert_eq!(
        scalar(
            &admin,
            "select count(*) from jetplug.ledger where pipeline = 'main'"
        )
        .await?,
        3,
        "runs, not rows per message: 5, 20 and the winner's one run ({expected:?})"
    );
    Ok(())
}
