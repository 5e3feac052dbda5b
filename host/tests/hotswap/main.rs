//! Hot swap against a real nats-server: a plugin file replaced under steady
//! load, broken versions refused, and fleet deploy / rollback across two
//! host processes. The test plugins `test-v1` and `test-v2` terminate every
//! message with the reason `handled-by:v1|v2`, so the dead letters tell
//! which version handled each message (`test-py`, its Python counterpart,
//! says `handled-by:py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetplug::engine::cache::content_hash;
use jetplug_tests::output_text as text;
use jetplug_tests::{
    HostProcess, NatsServer, TestConfig, eventually, free_port, http_get, plugins,
};

pub(crate) const WAIT: Duration = Duration::from_secs(60);

/// Config: EVENTS and DLQ streams, plugin `p` from `dir/plugin.wasm`
/// (a copy of test-v1), one pipeline `main`, the admin API at `admin`.
pub(crate) fn hotswap_config(dir: &Path, url: &str, admin: &str) -> anyhow::Result<TestConfig> {
    let wasm = dir.join("plugin.wasm");
    if !wasm.exists() {
        std::fs::copy(plugins::TEST_V1, &wasm)?;
    }
    Ok(TestConfig::main(dir, url, &wasm)
        .set("nats", "connect_delay", "200ms")
        .set("nats", "reconnect_delay", "200ms")
        .set("host", "shutdown_timeout", "20s")
        .set("admin", "address", admin)
        .set("plugin.p.config", "refuse_version", "v2-if-asked")
        .set("pipeline.main", "batch", 50)
        .set("pipeline.main", "batch_max_wait", "10ms")
        .set("pipeline.main", "concurrency", 2))
}

/// Where the host with admin address `admin` keeps its config.
pub(crate) fn config_path(dir: &Path, admin: &str) -> PathBuf {
    dir.join(format!("jetplug-{}.toml", admin.replace([':', '.'], "_")))
}

/// [`hotswap_config`] with `host_extra` keys in `[host]`, written.
pub(crate) fn write_config(
    dir: &Path,
    url: &str,
    admin: &str,
    host_extra: &str,
) -> anyhow::Result<PathBuf> {
    hotswap_config(dir, url, admin)?
        .merge("host", host_extra)?
        .write(&config_path(dir, admin))
}

/// Replaces `target` atomically (write a temporary file, rename it over).
pub(crate) fn replace_file(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

pub(crate) fn admin_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

pub(crate) async fn running_hash(admin: &str) -> anyhow::Result<String> {
    let (_, body) = http_get(admin, "/v1/plugins").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["plugins"][0]["hash"].as_str().unwrap_or("").to_owned())
}

pub(crate) async fn metric(admin: &str, line_prefix: &str) -> anyhow::Result<u64> {
    let (_, m) = http_get(admin, "/metrics").await?;
    Ok(m.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Every dead letter's (original sequence, reason), read from the DLQ stream.
pub(crate) async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<Vec<(u64, String)>> {
    let s = js.get_stream("DLQ").await?;
    let last = s.get_info().await?.state.last_sequence;
    let mut out = Vec::new();
    for seq in 1..=last {
        let m = s.get_raw_message(seq).await?;
        let h = |n: &str| {
            m.headers
                .get(n)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        out.push((h("Jetplug-Original-Sequence").parse()?, h("Jetplug-Reason")));
    }
    Ok(out)
}

pub(crate) async fn dlq_count(js: &jetstream::Context) -> anyhow::Result<u64> {
    Ok(js.get_stream("DLQ").await?.get_info().await?.state.messages)
}

/// Publishes `n` messages, `per_tick` at a time every 10 ms (acks awaited per tick).
pub(crate) async fn publish_steadily(
    js: &jetstream::Context,
    n: usize,
    per_tick: usize,
) -> anyhow::Result<()> {
    let mut sent = 0;
    while sent < n {
        let mut acks = Vec::new();
        for _ in 0..per_tick.min(n - sent) {
            acks.push(js.publish("events.x", "m".into()).await?);
            sent += 1;
        }
        for a in acks {
            a.await?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Publishes `per_tick` messages every 10 ms (acks awaited per tick) until
/// `stop` is cancelled; returns how many were published.
pub(crate) async fn publish_until(
    js: jetstream::Context,
    per_tick: usize,
    stop: tokio_util::sync::CancellationToken,
) -> anyhow::Result<usize> {
    let mut sent = 0;
    while !stop.is_cancelled() {
        let mut acks = Vec::new();
        for _ in 0..per_tick {
            acks.push(js.publish("events.x", "m".into()).await?);
            sent += 1;
        }
        for a in acks {
            a.await?;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(sent)
}

/// Starts `jetplug run` on `config` as a child process.
pub(crate) fn host_process(
    config: &Path,
    admin: String,
    log: PathBuf,
) -> anyhow::Result<HostProcess> {
    HostProcess::start(env!("CARGO_BIN_EXE_jetplug"), config, admin, log)
}

/// Waits until `host` runs the plugin version `hash`.
pub(crate) async fn runs(host: &HostProcess, hash: &str) -> anyhow::Result<()> {
    eventually(WAIT, "host to run the expected version", || async {
        Ok(running_hash(&host.admin).await? == hash)
    })
    .await
    .with_context(|| host.log())
}

pub(crate) use jetplug_tests::jetplug;

/// `jetplug plugin deploy p FILE EXTRA… -c CONF`: every test's plugin is `p`.
pub(crate) fn deploy(
    conf: &str,
    file: &str,
    extra: &[&str],
) -> std::io::Result<std::process::Output> {
    let mut args = vec!["plugin", "deploy", "p", file];
    args.extend_from_slice(extra);
    args.extend(["-c", conf]);
    jetplug(&args)
}

mod canary;
mod config_edits;
mod fleet;
mod fleet_cache;
mod shadow;
mod signed;
mod swap;
