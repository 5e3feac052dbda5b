//! Hot swap against a real nats-server: a plugin file replaced under steady
//! load, broken versions refused, and fleet deploy / rollback across two
//! host processes. The test plugins `test-v1` and `test-v2` terminate every
//! message with the reason `handled-by:v1|v2`, so the dead letters tell
//! which version handled each message (`test-py`, its Python counterpart,
//! says `handled-by:py`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use jetplug::engine::cache::content_hash;
use jetplug_tests::{NatsServer, eventually, free_port, http_get, plugins};

const WAIT: Duration = Duration::from_secs(60);

/// Config: EVENTS and DLQ streams, plugin `p` from `dir/plugin.wasm`
/// (a copy of test-v1), one pipeline `main`.
fn write_config(dir: &Path, url: &str, admin: &str, extra: &str) -> anyhow::Result<PathBuf> {
    let wasm = dir.join("plugin.wasm");
    if !wasm.exists() {
        std::fs::copy(plugins::TEST_V1, &wasm)?;
    }
    let text = format!(
        r#"
[nats]
url = "{url}"
connect_delay = "200ms"
reconnect_delay = "200ms"

[host]
shutdown_timeout = "20s"
{extra}

[admin]
address = "{admin}"

[engine]
cache_dir = "{cache}"

[[stream]]
name = "EVENTS"
subjects = ["events.>"]

[[stream]]
name = "DLQ"
subjects = ["dlq.>"]

[plugin.p]
path = "{wasm}"
config = {{ refuse_version = "v2-if-asked" }}

[[pipeline]]
name = "main"
streams = ["EVENTS"]
plugin = "p"
batch = 50
batch_max_wait = "10ms"
concurrency = 2
"#,
        cache = dir.join("cache").display(),
        wasm = wasm.display(),
    );
    let path = dir.join(format!("jetplug-{}.toml", admin.replace([':', '.'], "_")));
    std::fs::write(&path, text)?;
    Ok(path)
}

/// Replaces `target` atomically (write a temporary file, rename it over).
fn replace_file(target: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = target.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, target)?;
    Ok(())
}

fn admin_addr() -> anyhow::Result<String> {
    Ok(format!("127.0.0.1:{}", free_port()?))
}

async fn running_hash(admin: &str) -> anyhow::Result<String> {
    let (_, body) = http_get(admin, "/v1/plugins").await?;
    let v: serde_json::Value = serde_json::from_str(&body)?;
    Ok(v["plugins"][0]["hash"].as_str().unwrap_or("").to_owned())
}

async fn metric(admin: &str, line_prefix: &str) -> anyhow::Result<u64> {
    let (_, m) = http_get(admin, "/metrics").await?;
    Ok(m.lines()
        .find(|l| l.starts_with(line_prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

/// Every dead letter's (original sequence, reason), read from the DLQ stream.
async fn dead_letters(js: &jetstream::Context) -> anyhow::Result<Vec<(u64, String)>> {
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

async fn dlq_count(js: &jetstream::Context) -> anyhow::Result<u64> {
    Ok(js.get_stream("DLQ").await?.get_info().await?.state.messages)
}

/// Publishes `n` messages, `per_tick` at a time every 10 ms (acks awaited per tick).
async fn publish_steadily(
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
async fn publish_until(
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
    eventually(WAIT, "ready", || async {
        Ok(http_get(&admin, "/readyz")
            .await
            .map(|r| r.0 == 200)
            .unwrap_or(false))
    })
    .await?;
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

    let dead = r#"jetplug_messages_total{pipeline="main",outcome="dead_letter"}"#;
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
    eventually(WAIT, "ready", || async {
        Ok(http_get(&admin, "/readyz")
            .await
            .map(|r| r.0 == 200)
            .unwrap_or(false))
    })
    .await?;
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

struct HostProcess {
    child: Child,
    admin: String,
    log: PathBuf,
}

impl HostProcess {
    fn start(config: &Path, admin: String, log: PathBuf) -> anyhow::Result<Self> {
        let child = Command::new(env!("CARGO_BIN_EXE_jetplug"))
            .args(["run", "--config"])
            .arg(config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(HostProcess { child, admin, log })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn ready(&self) -> anyhow::Result<()> {
        eventually(WAIT, "host ready", || async {
            Ok(http_get(&self.admin, "/readyz")
                .await
                .map(|r| r.0 == 200)
                .unwrap_or(false))
        })
        .await
        .with_context(|| self.log())
    }

    async fn runs(&self, hash: &str) -> anyhow::Result<()> {
        eventually(WAIT, "host to run the expected version", || async {
            Ok(running_hash(&self.admin).await? == hash)
        })
        .await
        .with_context(|| self.log())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn jetplug(args: &[&str]) -> std::io::Result<Output> {
    Command::new(env!("CARGO_BIN_EXE_jetplug"))
        .args(args)
        .output()
}

use jetplug_tests::output_text as text;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_deploy_and_rollback_across_two_host_processes() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let (admin_a, admin_b) = (admin_addr()?, admin_addr()?);
    // No file watching: versions arrive only through NATS.
    let conf_a = write_config(dir.path(), &nats.url(), &admin_a, "watch_plugins = false")?;
    let conf_b = write_config(dir.path(), &nats.url(), &admin_b, "watch_plugins = false")?;
    let conf = conf_a.to_str().context("utf-8 path")?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    let v2 = content_hash(&std::fs::read(plugins::TEST_V2)?);

    let a = HostProcess::start(&conf_a, admin_a, dir.path().join("a.log"))?;
    a.ready().await?;
    a.runs(&v1).await?;

    // Refused before anything is announced: not a plugin, unknown name.
    let out = jetplug(&[
        "plugin",
        "deploy",
        "p",
        plugins::TEST_NOT_A_PLUGIN,
        "-c",
        conf,
    ])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("is not a valid new version of `p`"),
        "{}",
        text(&out)
    );
    let out = jetplug(&["plugin", "deploy", "nosuch", plugins::TEST_V2, "-c", conf])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("declares no plugin `nosuch` (declared: p)"),
        "{}",
        text(&out)
    );
    let out = jetplug(&["plugin", "rollback", "p", "-c", conf])?;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("no earlier version to roll back to"),
        "{}",
        text(&out)
    );

    let out = jetplug(&["plugin", "deploy", "p", plugins::TEST_V2, "-c", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("deployed plugin `p`: version {}", &v2[..12])),
        "{}",
        text(&out)
    );
    a.runs(&v2).await?;
    // A host started after the deploy comes up on the deployed version.
    let b = HostProcess::start(&conf_b, admin_b, dir.path().join("b.log"))?;
    b.ready().await?;
    assert_eq!(running_hash(&b.admin).await?, v2, "{}", b.log());

    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    publish_steadily(&js, 300, 50).await?;
    eventually(WAIT, "300 handled", || async {
        Ok(dlq_count(&js).await? == 300)
    })
    .await?;

    let out = jetplug(&["plugin", "rollback", "p", "-c", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("rolled back plugin `p` to the file named in the configuration"),
        "{}",
        text(&out)
    );
    a.runs(&v1).await?;
    b.runs(&v1).await?;
    publish_steadily(&js, 300, 50).await?;
    eventually(WAIT, "600 handled", || async {
        Ok(dlq_count(&js).await? == 600)
    })
    .await?;

    let letters = dead_letters(&js).await?;
    let reasons: Vec<&str> = letters.iter().map(|(_, r)| r.as_str()).collect();
    assert!(
        reasons[..300].iter().all(|r| *r == "handled-by:v2"),
        "{reasons:?}"
    );
    assert!(
        reasons[300..].iter().all(|r| *r == "handled-by:v1"),
        "{reasons:?}"
    );
    let mut seqs: Vec<u64> = letters.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        600,
        "each message handled once across both hosts"
    );
    let handled = |admin: String| async move {
        let (_, p) = http_get(&admin, "/v1/pipelines").await?;
        let p: serde_json::Value = serde_json::from_str(&p)?;
        anyhow::Ok(p["pipelines"][0]["dead_lettered"].as_u64().unwrap_or(0))
    };
    let on_b = handled(b.admin.clone()).await?;
    assert_eq!(handled(a.admin.clone()).await? + on_b, 600);

    let out = jetplug(&["plugin", "history", "p", "-c", conf])?;
    assert!(out.status.success(), "{}", text(&out));
    let history = text(&out);
    assert!(
        history.contains(&format!("version {}", &v2[..12]))
            && history.contains("* ")
            && history
                .trim_end()
                .ends_with("the file named in the configuration"),
        "{history}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_are_validated_and_plugin_sections_reload_live() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let dir = tempfile::tempdir()?;
    let admin = admin_addr()?;
    let config = write_config(dir.path(), &nats.url(), &admin, "")?;
    let original = std::fs::read_to_string(&config)?;
    let host = HostProcess::start(&config, admin.clone(), dir.path().join("host.log"))?;
    host.ready().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    let reloads =
        |outcome: &'static str| format!(r#"jetplug_config_reloads_total{{outcome="{outcome}"}}"#);

    // Invalid: a wrong type in a pipeline. Reported with file and key; nothing changes.
    replace_file(
        &config,
        original
            .replace("batch = 50", "batch = \"many\"")
            .as_bytes(),
    )?;
    eventually(WAIT, "the invalid edit reported", || async {
        Ok(metric(&admin, &reloads("invalid")).await? == 1)
    })
    .await?;
    let log = host.log();
    assert!(
        log.contains("the edited configuration is invalid")
            && log.contains(&format!("{}:", config.display()))
            && log.contains("pipeline"),
        "{log}"
    );
    publish_steadily(&js, 20, 20).await?;
    eventually(WAIT, "traffic goes on", || async {
        Ok(dlq_count(&js).await? == 20)
    })
    .await?;

    // A plugin setting whose new `init` fails: refused, v1 keeps running.
    replace_file(&config, original.replace("v2-if-asked", "v1").as_bytes())?;
    eventually(WAIT, "the failing plugin settings refused", || async {
        Ok(metric(&admin, &reloads("refused")).await? == 1)
    })
    .await?;
    let v1 = content_hash(&std::fs::read(plugins::TEST_V1)?);
    assert_eq!(running_hash(&admin).await?, v1);

    // A new plugin file in the config: reloaded live.
    let other = dir.path().join("other.wasm");
    std::fs::copy(plugins::TEST_V2, &other)?;
    let edited = original.replace(
        &format!("path = \"{}\"", dir.path().join("plugin.wasm").display()),
        &format!("path = \"{}\"", other.display()),
    );
    assert_ne!(edited, original);
    replace_file(&config, edited.as_bytes())?;
    host.runs(&content_hash(&std::fs::read(plugins::TEST_V2)?))
        .await?;
    assert_eq!(metric(&admin, &reloads("applied")).await?, 1);
    publish_steadily(&js, 20, 20).await?;
    eventually(WAIT, "20 more", || async {
        Ok(dlq_count(&js).await? == 40)
    })
    .await?;
    let letters = dead_letters(&js).await?;
    assert!(letters[..20].iter().all(|(_, r)| r == "handled-by:v1"));
    assert!(
        letters[20..].iter().all(|(_, r)| r == "handled-by:v2"),
        "{letters:?}"
    );

    // Other sections: not applied, but said so.
    replace_file(
        &config,
        edited.replace("batch = 50", "batch = 60").as_bytes(),
    )?;
    eventually(WAIT, "restart-needed reported", || async {
        Ok(metric(&admin, &reloads("restart-needed")).await? == 1)
    })
    .await?;
    assert!(
        host.log()
            .contains("these changes take effect after a restart")
    );
    assert!(host.log().contains("[[pipeline]]"));
    Ok(())
}
