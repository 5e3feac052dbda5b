//! Shadow deploys against real nats-server and PostgreSQL processes: the
//! live version is `test-naive` (a plain INSERT, a counter UPDATE and one
//! publish per message, exactly-once), the shadow `test-naive-v2`, which
//! inserts `PAYLOAD-v2` instead. The database and the output stream end
//! exactly as the live version alone leaves them — also with a second host
//! SIGKILLed mid-shadow — and the report shows the SQL disagreement with
//! an example. A shadow that agrees is promoted by `--promote-if`.

use jetplug_tests::{Postgres, scalar};

use super::*;

fn naive_config(dir: &Path, url: &str, pg: &Postgres, admin: &str) -> anyhow::Result<PathBuf> {
    let wasm = dir.join("naive.wasm");
    if !wasm.exists() {
        std::fs::copy(plugins::TEST_NAIVE, &wasm)?;
    }
    TestConfig::events(dir, url)
        .stream("OUT", &["out.>"])
        .database("db", &pg.url())
        .plugin("p", &wasm)
        .set("plugin.p.grants", "sql", vec!["db"])
        .set("plugin.p.grants", "publish", vec!["out.>"])
        .pipeline("main", &["EVENTS"], "p")
        .set("pipeline.main", "effects", "exactly-once")
        .set("pipeline.main", "batch", 20)
        .set("nats", "reconnect_delay", "200ms")
        .set("admin", "address", admin)
        .merge("host", "watch_plugins = false")?
        .write(&config_path(dir, admin))
}

async fn publish_orders(js: &jetstream::Context, from: usize, n: usize) -> anyhow::Result<()> {
    for i in from..from + n {
        js.publish("events.a", format!("order-{i:04}").into())
            .await?
            .await?;
    }
    Ok(())
}

async fn shadow_of(admin: &str) -> anyhow::Result<serde_json::Value> {
    let (_, body) = http_get(admin, "/v1/plugins").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["plugins"][0]["shadow"].clone())
}

/// Payloads stored in OUT, with how often each was stored.
async fn out(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, u64>> {
    let s = js.get_stream("OUT").await?;
    let last = s.get_info().await?.state.last_sequence;
    let mut counts = BTreeMap::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        *counts
            .entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_insert(0) += 1;
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_that_writes_other_rows_changes_nothing_and_reports_it() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::start().await?;
    let db = pg.connect().await?;
    db.batch_execute(
        "CREATE TABLE orders (payload text); CREATE TABLE stock (n int8); INSERT INTO stock VALUES (0);",
    )
    .await?;
    let dir = tempfile::tempdir()?;
    let (admin_a, admin_b) = (admin_addr()?, admin_addr()?);
    let conf_a = naive_config(dir.path(), &nats.url(), &pg, &admin_a)?;
    let conf_b = naive_config(dir.path(), &nats.url(), &pg, &admin_b)?;
    let conf = conf_a.to_str().context("utf-8 path")?;
    let a = host_process(&conf_a, admin_a, dir.path().join("a.log"))?;
    a.ready().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_orders(&js, 0, 50).await?;

    let out_ = deploy(conf, plugins::TEST_NAIVE_V2, &["--shadow", "--for", "8s"])?;
    assert!(out_.status.success(), "{}", text(&out_));
    assert!(
        text(&out_).contains("its effects held back"),
        "{}",
        text(&out_)
    );
    eventually(WAIT, "host a runs the shadow", || async {
        Ok(!shadow_of(&a.admin).await?.is_null())
    })
    .await
    .with_context(|| a.log())?;
    // A second host joins, and dies mid-shadow.
    let mut b = host_process(&conf_b, admin_b, dir.path().join("b.log"))?;
    b.ready().await?;
    publish_orders(&js, 50, 150).await?;
    b.kill()?;
    publish_orders(&js, 200, 100).await?;

    let out_ = jetplug(&["plugin", "shadow", "p", "-c", conf])?;
    assert!(out_.status.success(), "{}", text(&out_));
    eventually(WAIT, "the shadow's window ends", || async {
        let o = jetplug(&["plugin", "shadow", "p", "-c", conf])?;
        Ok(text(&o).contains("finished at"))
    })
    .await
    .with_context(|| a.log())?;
    eventually(WAIT, "every order handled", || async {
        Ok(scalar(&db, "select n from stock").await? == 300)
    })
    .await
    .with_context(|| a.log())?;

    // Exactly as the live version alone: rows, counter, output.
    assert_eq!(scalar(&db, "select count(*) from orders").await?, 300);
    assert_eq!(
        scalar(&db, "select count(*) from orders where payload like '%-v2'").await?,
        0,
        "the shadow's rows were rolled back"
    );
    assert_eq!(
        scalar(&db, "select count(distinct payload) from orders").await?,
        300
    );
    eventually(WAIT, "every publish relayed", || async {
        Ok(out(&js).await?.len() == 300)
    })
    .await?;
    let published = out(&js).await?;
    assert!(
        published.values().all(|n| *n == 1),
        "each published once, none by the shadow"
    );

    let report = text(&jetplug(&["plugin", "shadow", "p", "-c", conf])?);
    assert!(report.contains("disagreements, sql:"), "{report}");
    assert!(
        report.contains("-v2") && report.contains("INSERT INTO orders"),
        "an example of the rows: {report}"
    );
    assert!(!report.contains("disagreements, publish"), "{report}");
    assert!(!report.contains("agreement 100.00 %"), "{report}");
    let history = text(&jetplug(&["plugin", "history", "p", "-c", conf])?);
    assert!(
        history.contains("shadow") && history.contains("finished"),
        "{history}"
    );

    // A shadow that agrees, promoted when its window ends.
    let v1 = content_hash(&std::fs::read(plugins::TEST_NAIVE)?);
    let out_ = deploy(
        conf,
        plugins::TEST_NAIVE,
        &["--shadow", "--for", "6s", "--promote-if", "99"],
    )?;
    assert!(out_.status.success(), "{}", text(&out_));
    eventually(WAIT, "host a runs the second shadow", || async {
        Ok(!shadow_of(&a.admin).await?.is_null())
    })
    .await?;
    publish_orders(&js, 300, 100).await?;
    eventually(WAIT, "the agreeing shadow promoted", || async {
        let o = jetplug(&["plugin", "shadow", "p", "-c", conf])?;
        Ok(text(&o).contains("promoted at"))
    })
    .await
    .with_context(|| a.log())?;
    let report = text(&jetplug(&["plugin", "shadow", "p", "-c", conf])?);
    assert!(report.contains("agreement 100.00 %"), "{report}");
    assert_eq!(running_hash(&a.admin).await?, v1);
    eventually(WAIT, "the last orders handled", || async {
        Ok(scalar(&db, "select n from stock").await? == 400)
    })
    .await?;
    assert_eq!(scalar(&db, "select count(*) from orders").await?, 400);
    Ok(())
}
