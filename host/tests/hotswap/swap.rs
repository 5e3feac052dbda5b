//! A plugin file replaced under load (Rust to Rust, Rust to Python), and
//! broken versions refused while traffic continues.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_hands_each_message_to_exactly_one_version() -> anyhow::Result<()> {
    swap_under_load(plugins::TEST_V2, "handled-by:v2").await
}

/// A Rust plugin replaced by a Python one (componentize-py, `make plugins`)
/// under load: the same guarantees as between two Rust versions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_from_rust_to_python_under_load() -> anyhow::Result<()> {
    swap_under_load(plugins::TEST_PY, "handled-by:py").await
}

/// Runs test-v1 under ~5000 messages/s, replaces its file with `new` after
/// 2000 messages, keeps publishing 1500 more after the swap, and checks that
/// every message was handled by exactly one version, settled once, and
/// everything published after the swap by `new` (whose reason is `new_reason`).
async fn swap_under_load(new: &str, new_reason: &str) -> anyhow::Result<()> {
    let new_bytes = std::fs::read(new)
        .with_context(|| format!("{new} (Python and JS plugins are built by `make plugins`)"))?;
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = admin_addr()?;
    let config = write_config(dir.path(), &nats.url(), &admin, "")?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(
        jetplug::config::Config::load(&config)?,
        shutdown.clone(),
        |_| {},
    ));
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    jetplug_tests::wait_ready(&admin, WAIT).await?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    let v2 = content_hash(&new_bytes);
    assert_eq!(running_hash(&admin).await?, v1);

    // ~5000 messages/s until well after the swap.
    let stop = tokio_util::sync::CancellationToken::new();
    let publisher = tokio::spawn(publish_until(js.clone(), 50, stop.clone()));
    eventually(WAIT, "2000 messages handled", || async {
        Ok(dlq_count(&js).await? >= 2000)
    })
    .await?;
    replace_file(&dir.path().join("plugin.wasm"), &new_bytes)?;
    eventually(WAIT, "the swap to the new version", || async {
        Ok(running_hash(&admin).await? == v2)
    })
    .await?;
    // Everything published from now on must be handled by the new version.
    let stream = js.get_stream("EVENTS").await?;
    let after_swap = stream.get_info().await?.state.last_sequence;
    eventually(WAIT, "1500 more published after the swap", || async {
        Ok(js
            .get_stream("EVENTS")
            .await?
            .get_info()
            .await?
            .state
            .last_sequence
            >= after_swap + 1500)
    })
    .await?;
    stop.cancel();
    let n = publisher.await?? as u64;

    eventually(WAIT, "every message dead-lettered", || async {
        Ok(dlq_count(&js).await? >= n)
    })
    .await?;
    // Give a double settle time to show up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let letters = dead_letters(&js).await?;
    assert_eq!(
        letters.len() as u64,
        n,
        "one dead letter per message, no more"
    );
    let mut by_seq: BTreeMap<u64, &str> = BTreeMap::new();
    for (seq, reason) in &letters {
        assert!(
            by_seq.insert(*seq, reason.as_str()).is_none(),
            "message {seq} was handled twice"
        );
    }
    assert_eq!(by_seq.len() as u64, n);
    assert_eq!(by_seq.keys().next_back(), Some(&n));
    let v1_count = by_seq.values().filter(|r| **r == "handled-by:v1").count();
    let v2_count = by_seq.values().filter(|r| **r == new_reason).count();
    assert_eq!(
        v1_count + v2_count,
        n as usize,
        "every message names its version"
    );
    assert!(
        v1_count >= 2000 && v2_count >= 1500,
        "v1 {v1_count}, new {v2_count}"
    );
    let late_v1: Vec<_> = by_seq
        .range(after_swap + 1..)
        .filter(|(_, r)| **r != new_reason)
        .collect();
    assert!(
        late_v1.is_empty(),
        "published after the swap, handled by v1: {late_v1:?}"
    );

    let dead = r#"jetplug_messages_total{tenant="default",plugin="p",pipeline="main",outcome="dead_letter"}"#;
    assert_eq!(metric(&admin, dead).await?, n, "settled exactly once each");
    assert_eq!(
        metric(
            &admin,
            r#"jetplug_plugin_swaps_total{plugin="p",outcome="swapped"}"#
        )
        .await?,
        1
    );
    let (_, m) = http_get(&admin, "/metrics").await?;
    assert!(m.contains(&format!(
        r#"jetplug_plugin_info{{plugin="p",tenant="default",hash="{v2}"}} 1"#
    )));
    assert!(m.contains(&format!(
        r#"jetplug_plugin_info{{plugin="p",tenant="default",hash="{v1}"}} 0"#
    )));
    let (_, p) = http_get(&admin, "/v1/plugins").await?;
    let p: serde_json::Value = serde_json::from_str(&p)?;
    assert_eq!(p["plugins"][0]["previous"], serde_json::json!([v1]));
    shutdown.cancel();
    host.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_versions_are_refused_and_traffic_continues() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = admin_addr()?;
    let config = write_config(dir.path(), &nats.url(), &admin, "")?;
    // This run's config makes v2's `init` fail.
    let text = std::fs::read_to_string(&config)?.replace("v2-if-asked", "v2");
    std::fs::write(&config, text)?;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let host = tokio::spawn(jetplug::host::run(
        jetplug::config::Config::load(&config)?,
        shutdown.clone(),
        |_| {},
    ));
    jetplug_tests::wait_ready(&admin, WAIT).await?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    let wasm = dir.path().join("plugin.wasm");
    let refused = |outcome: &'static str| {
        format!(r#"jetplug_plugin_swaps_total{{plugin="p",outcome="{outcome}"}}"#)
    };

    replace_file(&wasm, b"this is not wasm")?;
    eventually(WAIT, "garbage refused", || async {
        Ok(metric(&admin, &refused("load")).await? == 1)
    })
    .await?;
    replace_file(&wasm, &std::fs::read(plugins::TEST_NOT_A_PLUGIN)?)?;
    eventually(WAIT, "a component that is not a plugin refused", || async {
        Ok(metric(&admin, &refused("load")).await? == 2)
    })
    .await?;
    replace_file(&wasm, &std::fs::read(plugins::TEST_V2)?)?;
    eventually(WAIT, "a version whose init fails refused", || async {
        Ok(metric(&admin, &refused("init")).await? == 1)
    })
    .await?;
    assert_eq!(running_hash(&admin).await?, v1);
    assert_eq!(metric(&admin, &refused("swapped")).await?, 0);

    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_steadily(&js, 100, 50).await?;
    eventually(WAIT, "100 handled", || async {
        Ok(dlq_count(&js).await? == 100)
    })
    .await?;
    let letters = dead_letters(&js).await?;
    assert!(
        letters.iter().all(|(_, r)| r == "handled-by:v1"),
        "{letters:?}"
    );

    // Putting the good version back is not a swap (same hash).
    replace_file(&wasm, &std::fs::read(plugins::TEST_V1)?)?;
    eventually(WAIT, "unchanged noticed", || async {
        Ok(metric(&admin, &refused("unchanged")).await? == 1)
    })
    .await?;
    shutdown.cancel();
    host.await??;
    Ok(())
}
