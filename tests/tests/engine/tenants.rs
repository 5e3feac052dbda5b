//! Tenants seen and bounded: a tenant over its `max_messages_per_second`
//! is held to it (its pullers wait; nothing fails), another tenant is not
//! slowed, and what each consumes shows per tenant in the metrics and in
//! `GET /v1/tenants`.

use jetplug_tests::rig::*;

fn two_tenants(dir: &Path, url: &str, admin: &str) -> anyhow::Result<Config> {
    two_tenants_with(dir, url, admin, "max_messages_per_second = 50", "", "")
}

/// Tenants `slow` (events.a.>, pipeline `a`) and `fast` (events.b.>,
/// pipeline `b`) with these `limits` and pipeline lines.
fn two_tenants_with(
    dir: &Path,
    url: &str,
    admin: &str,
    slow_limits: &str,
    fast_limits: &str,
    pipeline: &str,
) -> anyhow::Result<Config> {
    let mut config = TestConfig::events(dir, url).set("admin", "address", admin);
    for (tenant, letter, limits) in [("slow", "a", slow_limits), ("fast", "b", fast_limits)] {
        let (plugin, subjects) = (format!("p{letter}"), format!("events.{letter}.>"));
        let at = format!("pipeline.{letter}");
        config = config
            .set(
                &format!("tenant.{tenant}"),
                "consume",
                vec![subjects.as_str()],
            )
            .table(&format!("tenant.{tenant}.limits"))
            .merge(&format!("tenant.{tenant}.limits"), limits)?
            .plugin(&plugin, plugins::TEST_NOOP)
            .set(&format!("plugin.{plugin}"), "tenant", tenant)
            .pipeline(letter, &["EVENTS"], &plugin)
            .set(&at, "filter_subjects", vec![subjects.as_str()])
            .merge(&at, pipeline)?;
    }
    config.load_in(dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_is_held_to_its_rate_and_seen_per_tenant() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = format!("127.0.0.1:{}", jetplug_tests::free_port()?);
    let mut host = start(two_tenants(dir.path(), &nats.url(), &admin)?);
    let h = tokio::time::timeout(WAIT, &mut host.handle).await??;
    let (a, b) = (h.stats["a"].clone(), h.stats["b"].clone());
    let js = js(&nats).await?;
    // Tenant `slow` floods at 10× its quota; `fast` sends as much.
    let flood: Vec<&str> = vec!["spin:1"; 500];
    let started = Instant::now();
    publish(&js, "events.a.x", &flood).await?;
    publish(&js, "events.b.x", &flood).await?;
    eventually(WAIT, "tenant fast done", || async {
        Ok(Stats::get(&b.acked) == 500)
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let elapsed = started.elapsed().as_secs_f64();
    let slow_done = Stats::get(&a.acked);
    // A token bucket: at most one second's burst plus the rate since.
    let bound = 50.0 + 50.0 * elapsed;
    assert!(
        (slow_done as f64) <= bound,
        "tenant slow: {slow_done} in {elapsed:.1} s, over 50/s (bound {bound:.0})"
    );
    assert!(slow_done > 0, "held to its rate, not stopped");
    assert!(a.throttled_seconds.get() > 0.0, "its wait is counted");
    assert_eq!(b.throttled_seconds.get(), 0.0);
    assert_eq!(
        Stats::get(&a.retried) + Stats::get(&a.dead_lettered),
        0,
        "nothing failed"
    );

    let (_, metrics) = jetplug_tests::http_get(&admin, "/metrics").await?;
    for line in [
        r#"jetplug_messages_total{tenant="fast",plugin="pb",pipeline="b",outcome="ack"} 500"#,
        r#"jetplug_plugin_cpu_seconds_total{tenant="slow",plugin="pa",pipeline="a"}"#,
        r#"jetplug_instance_memory_high_water_bytes{tenant="fast",plugin="pb",pipeline="b"}"#,
        r#"jetplug_tenant_throttled_seconds_total{tenant="slow",plugin="pa",pipeline="a"}"#,
        r#"jetplug_tenant_quota{tenant="slow",quota="max_messages_per_second"} 50"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in\n{metrics}");
    }
    let (code, body) = jetplug_tests::http_get(&admin, "/v1/tenants").await?;
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body)?;
    let tenant = |name: &str| {
        v["tenants"]
            .as_array()
            .and_then(|ts| ts.iter().find(|t| t["tenant"] == name))
            .cloned()
            .unwrap_or_default()
    };
    let (slow, fast) = (tenant("slow"), tenant("fast"));
    assert_eq!(slow["quotas"]["max_messages_per_second"], 50, "{body}");
    assert_eq!(fast["messages"]["ack"], 500, "{body}");
    assert!(slow["throttled_seconds"].as_f64() > Some(0.0), "{body}");
    assert!(fast["cpu_seconds"].as_f64() > Some(0.0), "{body}");
    assert!(fast["memory_high_water_bytes"].as_i64() > Some(0), "{body}");
    assert_eq!(fast["pipelines"][0], "b", "{body}");
    host.stop().await
}

/// Capability calls and their errors are counted per capability and kind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_calls_and_errors_are_counted() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = format!("127.0.0.1:{}", jetplug_tests::free_port()?);
    let extra = format!(
        "\n[admin]\naddress = \"{admin}\"\n\n[plugin.p.grants]\npublish = [\"events.out\"]\nsql = [\"*\"]\nkv = [\"none\"]\n"
    );
    let mut host = start(config(
        dir.path(),
        &nats.url(),
        plugins::TEST_CAPABILITIES,
        &extra,
    )?);
    let stats = host.stats().await?;
    let js = js(&nats).await?;
    // Two publishes inside the grant (EVENTS stores `events.out`), one
    // outside it (access-denied), one KV get on a bucket that is not there.
    publish(
        &js,
        "events.in",
        &[
            "publish:events.out",
            "publish:events.out",
            "publish:dlq.x",
            "kv:none",
        ],
    )
    .await?;
    eventually(WAIT, "all settled", || async {
        // (The two published messages come back on EVENTS and are acked too.)
        Ok(Stats::get(&stats.acked) + Stats::get(&stats.dead_lettered) >= 6)
    })
    .await?;
    let (_, metrics) = jetplug_tests::http_get(&admin, "/metrics").await?;
    let base = r#"tenant="default",plugin="p",pipeline="main""#;
    for line in [
        format!(r#"jetplug_capability_calls_total{{{base},capability="publish"}} 3"#),
        format!(r#"jetplug_capability_calls_total{{{base},capability="kv"}} 1"#),
        format!(
            r#"jetplug_capability_errors_total{{{base},capability="publish",kind="access-denied"}} 1"#
        ),
    ] {
        assert!(metrics.contains(&line), "missing {line} in\n{metrics}");
    }
    assert!(
        metrics.contains(&format!(
            r#"jetplug_capability_errors_total{{{base},capability="kv",kind="#
        )),
        "the missing bucket is an error: {metrics}"
    );
    host.stop().await
}

/// `limits.cpu_share`: two tenants computing at once get CPU in proportion
/// to their shares (1 and 3), read from the per-tenant CPU metric.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn competing_tenants_get_cpu_by_their_shares() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = format!("127.0.0.1:{}", jetplug_tests::free_port()?);
    let config = two_tenants_with(
        dir.path(),
        &nats.url(),
        &admin,
        "cpu_share = 1",
        "cpu_share = 3",
        "batch = 1\nconcurrency = 1",
    )?;
    let mut host = start(config);
    let h = tokio::time::timeout(WAIT, &mut host.handle).await??;
    let (a, b) = (h.stats["a"].clone(), h.stats["b"].clone());
    let js = js(&nats).await?;
    let work: Vec<&str> = vec!["spin:40"; 400];
    publish(&js, "events.a.x", &work).await?;
    publish(&js, "events.b.x", &work).await?;
    // Both compute for a while, side by side.
    eventually(WAIT, "both tenants computing", || async {
        Ok(b.cpu_seconds.get() > 2.0 && a.cpu_seconds.get() > 0.2)
    })
    .await?;
    let (cpu_a, cpu_b) = (a.cpu_seconds.get(), b.cpu_seconds.get());
    assert!(
        cpu_b >= 1.8 * cpu_a,
        "share 3 against share 1: b used {cpu_b:.2} s, a {cpu_a:.2} s"
    );
    let (_, body) = jetplug_tests::http_get(&admin, "/v1/tenants").await?;
    assert!(body.contains(r#""cpu_share":3"#), "{body}");
    host.stop().await
}

/// One tenant's rate quota shared by a pipeline that pulls one message at
/// a time and one that pulls a hundred: taking tokens one by one as they
/// refill kept the large pull waiting forever (its pipeline starved while
/// its messages waited); pullers are served in turn, so both get through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_quota_does_not_starve_its_large_batch_pipeline() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let mut config = TestConfig::events(dir.path(), &nats.url())
        .set("tenant.t", "consume", vec!["events.>"])
        .set("tenant.t.limits", "max_messages_per_second", 200)
        .plugin("p", plugins::TEST_NOOP)
        .set("plugin.p", "tenant", "t");
    for (name, batch) in [("small", 1), ("large", 100)] {
        let at = format!("pipeline.{name}");
        let subject = format!("events.{name}");
        config = config
            .pipeline(name, &["EVENTS"], "p")
            .set(&at, "filter_subjects", vec![subject.as_str()])
            .set(&at, "batch", batch)
            .set(&at, "batch_max_wait", "5ms");
    }
    let js = js(&nats).await?;
    let config = config.load_in(dir.path())?;
    jetplug::jetstream::streams::reconcile(&js, &config.streams).await?;
    // A backlog for both before the host starts; the small pipeline's
    // lasts longer (40 s at the quota) than the wait below.
    publish(&js, "events.small", &["s"; 8000]).await?;
    publish(&js, "events.large", &["l"; 300]).await?;
    let mut host = start(config);
    let h = tokio::time::timeout(WAIT, &mut host.handle)
        .await
        .context("host did not start")??;
    let large = h.stats["large"].clone();
    let small = h.stats["small"].clone();
    eventually(WAIT, "the large-batch pipeline served", || async {
        Ok(Stats::get(&large.acked) >= 300)
    })
    .await?;
    assert!(Stats::get(&small.acked) > 0, "both pipelines served");
    host.stop().await
}
