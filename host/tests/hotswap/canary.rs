//! Canary deploys across two host processes sharing a consumer: a
//! candidate that terminates a fifth of its messages is rolled back
//! automatically, fleet-wide, with no message lost or handled by both
//! versions and its dead letters redrivable; a candidate as good as the
//! running version is promoted; a host started mid-canary joins it.
//!
//! `test-canary-v1` runs with `v1 = "ack"`, the candidate `test-canary-v2` with
//! `v2 = "term-percent:20"` (or `"ack"`); both publish every payload they
//! handle to `handled.v1|v2`, so the HANDLED stream says which version
//! handled each message.

use std::collections::BTreeMap;

use super::*;

/// Two hosts' configs: `p` (test-canary-v1) acks, and as v2 behaves as
/// `v2`.
fn configs(dir: &Path, url: &str, admins: [&str; 2], v2: &str) -> anyhow::Result<[PathBuf; 2]> {
    std::fs::copy(plugins::TEST_CANARY_V1, dir.join("canary.wasm"))?;
    let write = |admin: &str| {
        hotswap_config(dir, url, admin)?
            .set(
                "plugin.p",
                "path",
                dir.join("canary.wasm").to_string_lossy().as_ref(),
            )
            .stream("HANDLED", &["handled.>"])
            .set("plugin.p.grants", "publish", vec!["handled.>"])
            .set("plugin.p.config", "v1", "ack")
            .set("plugin.p.config", "v2", v2)
            .set("plugin.p.config", "tag", "handled")
            .merge("host", "watch_plugins = false")?
            .write(&config_path(dir, admin))
    };
    Ok([write(admins[0])?, write(admins[1])?])
}

/// `n` distinct payloads `m-<first + i>`, 50 every 10 ms.
async fn publish_distinct(js: &jetstream::Context, first: usize, n: usize) -> anyhow::Result<()> {
    for chunk in (first..first + n).collect::<Vec<_>>().chunks(50) {
        let mut acks = Vec::new();
        for i in chunk {
            acks.push(js.publish("events.x", format!("m-{i}").into()).await?);
        }
        for a in acks {
            a.await?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// How often each payload was handled, and by which versions.
async fn handled(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, Vec<String>>> {
    let s = js.get_stream("HANDLED").await?;
    let last = s.get_info().await?.state.last_sequence;
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        let version = m.subject.rsplit('.').next().unwrap_or("").to_owned();
        out.entry(String::from_utf8_lossy(&m.payload).into_owned())
            .or_default()
            .push(version);
    }
    Ok(out)
}

async fn canary_of(admin: &str) -> anyhow::Result<serde_json::Value> {
    let (_, body) = http_get(admin, "/v1/plugins").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["plugins"][0]["canary"].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_terminates_a_fifth_is_rolled_back_on_every_host() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (admin_a, admin_b) = (admin_addr()?, admin_addr()?);
    let [conf_a, conf_b] = configs(
        dir.path(),
        &nats.url(),
        [&admin_a, &admin_b],
        "term-percent:20",
    )?;
    let conf = conf_a.to_str().context("utf-8 path")?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_CANARY_V1)?);
    let a = host_process(&conf_a, admin_a, dir.path().join("a.log"))?;
    a.ready().await?;
    runs(&a, &v1).await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_distinct(&js, 0, 200).await?;

    // Judged early: a clearly worse candidate is not kept for 100 000.
    let out = deploy(
        conf,
        plugins::TEST_CANARY_V2,
        &["--canary", "30", "--decide-after-messages", "100000"],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("takes 30 % of the messages"),
        "{}",
        text(&out)
    );
    let out = deploy(conf, plugins::TEST_CANARY_V2, &["--canary", "5"])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("promote or abort it first"),
        "{}",
        text(&out)
    );
    eventually(WAIT, "host a runs the canary", || async {
        Ok(canary_of(&a.admin).await?["percent"] == 30)
    })
    .await
    .with_context(|| a.log())?;
    // A host started mid-canary joins it.
    let b = host_process(&conf_b, admin_b, dir.path().join("b.log"))?;
    b.ready().await?;
    eventually(WAIT, "host b joins the canary", || async {
        Ok(canary_of(&b.admin).await?["percent"] == 30)
    })
    .await
    .with_context(|| b.log())?;

    publish_distinct(&js, 200, 1800).await?;
    let rolled_back = "jetplug_canary_decisions_total{plugin=\"p\",outcome=\"rolled-back\"}";
    for host in [&a, &b] {
        eventually(WAIT, "the canary rolled back on this host", || async {
            Ok(metric(&host.admin, rolled_back).await? == 1)
        })
        .await
        .with_context(|| host.log())?;
        assert!(canary_of(&host.admin).await?.is_null());
        assert_eq!(
            running_hash(&host.admin).await?,
            v1,
            "the running version stays"
        );
    }
    let out = jetplug(&["plugin", "canary", "p", "-c", conf])?;
    assert!(
        text(&out).contains("rolled-back") && text(&out).contains("term rate"),
        "{}",
        text(&out)
    );
    let out = jetplug(&["plugin", "history", "p", "-c", conf])?;
    assert!(
        text(&out).contains("started") && text(&out).contains("rolled-back by"),
        "{}",
        text(&out)
    );

    // Every message handled by exactly one version, none lost.
    eventually(WAIT, "all 2000 handled", || async {
        Ok(handled(&js).await?.len() == 2000)
    })
    .await?;
    let by = handled(&js).await?;
    let twice: Vec<_> = by.iter().filter(|(_, v)| v.len() > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    let on_v2 = by.values().filter(|v| v[0] == "v2").count();
    assert!(on_v2 > 0, "the candidate got messages");
    let letters = dead_letters(&js).await?;
    assert!(
        !letters.is_empty() && letters.iter().all(|(_, r)| r == "canary-term:v2"),
        "{letters:?}"
    );

    // Its dead letters go back through the running version.
    let out = jetplug(&["dlq", "redrive", "--config", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    eventually(WAIT, "the redriven ones handled by v1", || async {
        let by = handled(&js).await?;
        Ok(by.values().filter(|v| v.len() == 2).count() == letters.len())
    })
    .await?;
    let by = handled(&js).await?;
    assert!(
        by.values()
            .filter(|v| v.len() == 2)
            .all(|v| v == &["v2".to_owned(), "v1".to_owned()]),
        "redriven to the running version"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_as_good_as_the_running_version_is_promoted_on_every_host() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (admin_a, admin_b) = (admin_addr()?, admin_addr()?);
    let [conf_a, conf_b] = configs(dir.path(), &nats.url(), [&admin_a, &admin_b], "ack")?;
    let conf = conf_a.to_str().context("utf-8 path")?;
    let v2 = content_hash(&std::fs::read(plugins::TEST_CANARY_V2)?);
    let a = host_process(&conf_a, admin_a, dir.path().join("a.log"))?;
    let b = host_process(&conf_b, admin_b, dir.path().join("b.log"))?;
    a.ready().await?;
    b.ready().await?;
    let out = deploy(
        conf,
        plugins::TEST_CANARY_V2,
        &["--canary", "50", "--decide-after-messages", "200"],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    for host in [&a, &b] {
        eventually(WAIT, "the canary running", || async {
            Ok(canary_of(&host.admin).await?["percent"] == 50)
        })
        .await
        .with_context(|| host.log())?;
    }
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_distinct(&js, 0, 1500).await?;
    runs(&a, &v2).await?;
    runs(&b, &v2).await?;
    let promoted = "jetplug_canary_decisions_total{plugin=\"p\",outcome=\"promoted\"}";
    for host in [&a, &b] {
        eventually(WAIT, "the promotion seen on this host", || async {
            Ok(metric(&host.admin, promoted).await? == 1)
        })
        .await
        .with_context(|| host.log())?;
    }
    let out = jetplug(&["plugin", "canary", "p", "-c", conf])?;
    assert!(text(&out).contains("promoted"), "{}", text(&out));
    eventually(WAIT, "all 1500 handled once", || async {
        let by = handled(&js).await?;
        Ok(by.len() == 1500 && by.values().all(|v| v.len() == 1))
    })
    .await?;
    assert_eq!(dlq_count(&js).await?, 0, "nothing terminated");

    // By hand: a canary promoted or aborted with the CLI.
    let out = jetplug(&["plugin", "abort", "p", "-c", conf])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no canary or shadow of plugin `p` is running"),
        "{}",
        text(&out)
    );
    let out = deploy(conf, plugins::TEST_CANARY_V1, &["--canary", "10"])?;
    assert!(out.status.success(), "{}", text(&out));
    let out = jetplug(&["plugin", "abort", "p", "-c", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    for host in [&a, &b] {
        eventually(WAIT, "the abort seen on this host", || async {
            let aborted = "jetplug_canary_decisions_total{plugin=\"p\",outcome=\"aborted\"}";
            Ok(metric(&host.admin, aborted).await? == 1 || canary_of(&host.admin).await?.is_null())
        })
        .await
        .with_context(|| host.log())?;
        assert_eq!(
            running_hash(&host.admin).await?,
            v2,
            "aborting keeps the running version"
        );
    }
    Ok(())
}

/// The candidate may be any component: a Python version of a Rust plugin
/// (both terminate every message, so it is as good, and promoted). With
/// `host.trusted_keys`, a candidate with no trusted signature is refused
/// on the host and the canary rolled back, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_candidate_is_promoted_and_an_unsigned_one_refused() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = admin_addr()?;
    let conf = write_config(dir.path(), &nats.url(), &admin, "watch_plugins = false")?;
    let conf_s = conf.to_str().context("utf-8 path")?;
    let host = host_process(&conf, admin.clone(), dir.path().join("host.log"))?;
    host.ready().await?;
    let out = deploy(
        conf_s,
        plugins::TEST_PY,
        &["--canary", "50", "--decide-after-messages", "50"],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    eventually(
        WAIT,
        "the Python candidate compiled and running",
        || async { Ok(canary_of(&host.admin).await?["percent"] == 50) },
    )
    .await
    .with_context(|| host.log())?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_steadily(&js, 400, 50).await?;
    let py = content_hash(&std::fs::read(plugins::TEST_PY)?);
    runs(&host, &py).await?;
    let letters = dead_letters(&js).await?;
    assert!(
        letters.iter().any(|(_, r)| r == "handled-by:py")
            && letters.iter().any(|(_, r)| r == "handled-by:v1"),
        "both versions handled a share before the promotion"
    );
    drop(host);

    // Signed deploys: a forged, unsigned candidate is refused.
    let key = dir.path().join("deploy.key");
    let out = jetplug(&["plugin", "keygen", "--out", key.to_str().context("utf-8")?])?;
    let public = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or("")
        .to_owned();
    let admin = admin_addr()?;
    let conf = write_config(
        dir.path(),
        &nats.url(),
        &admin,
        &format!("watch_plugins = false\ntrusted_keys = [\"{public}\"]"),
    )?;
    let conf_s = conf.to_str().context("utf-8 path")?;
    let host = host_process(&conf, admin, dir.path().join("signed.log"))?;
    host.ready().await?;
    let out = deploy(conf_s, plugins::TEST_V2, &["--canary", "20"])?;
    assert_eq!(
        out.status.code(),
        Some(1),
        "the CLI refuses it first: {}",
        text(&out)
    );
    let fleet = jetplug::hotswap::fleet::Fleet::open(&js, "jetplug-plugins").await?;
    let bytes = std::fs::read(plugins::TEST_V2)?;
    fleet
        .start_canary("p", &bytes, None, 20, Default::default())
        .await?;
    eventually(WAIT, "the unsigned canary rolled back", || async {
        let o = jetplug(&["plugin", "canary", "p", "-c", conf_s])?;
        Ok(text(&o).contains("rolled-back") && text(&o).contains("refused on host"))
    })
    .await
    .with_context(|| host.log())?;
    Ok(())
}

/// A JavaScript candidate in a tenant's pipeline (one batch of the tenant
/// at a time): promoted, every message settled once, counted for the
/// tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_javascript_candidate_in_a_tenant_pipeline_is_promoted() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = admin_addr()?;
    let wasm = dir.path().join("canary.wasm");
    std::fs::copy(plugins::TEST_CANARY_V1, &wasm)?;
    let conf = TestConfig::main(dir.path(), &nats.url(), &wasm)
        .set("admin", "address", admin.as_str())
        .set("plugin.p", "tenant", "acme")
        .set("plugin.p.grants", "publish", vec!["handled.>"])
        .merge("host", "watch_plugins = false")?
        .merge(
            "tenant.acme",
            "consume = [\"events.>\"]\npublish = [\"handled.>\"]\nlimits = { max_concurrent_batches = 1 }",
        )?
        .write(&config_path(dir.path(), &admin))?;
    let conf_s = conf.to_str().context("utf-8 path")?;
    let host = host_process(&conf, admin, dir.path().join("host.log"))?;
    host.ready().await?;
    let out = deploy(
        conf_s,
        plugins::BENCH_JS,
        &["--canary", "50", "--decide-after-messages", "100"],
    )?;
    assert!(out.status.success(), "{}", text(&out));
    eventually(
        WAIT,
        "the JavaScript candidate compiled and running",
        || async { Ok(canary_of(&host.admin).await?["percent"] == 50) },
    )
    .await
    .with_context(|| host.log())?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_steadily(&js, 600, 50).await?;
    let bench_js = content_hash(&std::fs::read(plugins::BENCH_JS)?);
    runs(&host, &bench_js).await?;
    let acked = r#"jetplug_messages_total{tenant="acme",plugin="p",pipeline="main",outcome="ack"}"#;
    eventually(WAIT, "all 600 acked for the tenant", || async {
        Ok(metric(&host.admin, acked).await? == 600)
    })
    .await
    .with_context(|| host.log())?;
    assert_eq!(dlq_count(&js).await?, 0);
    Ok(())
}
