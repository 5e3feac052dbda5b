//! The same handlers in Rust, Python and JavaScript (`bench-rust`,
//! `bench-py`, `bench-js` built with componentize-js and with
//! componentize-qjs: a no-op, and one that parses every payload as JSON):
//! messages per second through the host (nats-server, a host child
//! process, one pipeline), and cold start — compiling the component, from
//! the fleet (another host's compiled code, `engine.fleet_cache_key`), then
//! from the local compiled-component cache — so authors can weigh a language.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::dispatch;
use super::env::{self, Env};
use jetplug::engine::cache::{CacheOutcome, FleetKey};
use jetplug::engine::{EngineSettings, Runtime};
use jetplug::hotswap::artifacts::Pulled;
use jetplug::hotswap::fleet::Fleet;
use jetplug::plugin::{self, Plugin, PluginInstance, PluginSpec};

/// Settings for [`run`].
#[derive(Debug, Clone)]
pub struct Settings {
    pub count: u64,
    pub batch: u32,
    pub concurrency: u32,
    /// (language, component) pairs, e.g. ("Rust", .../bench_rust.wasm).
    pub plugins: Vec<(&'static str, PathBuf)>,
}

/// One language and handler.
#[derive(Debug, Clone)]
pub struct Row {
    pub language: &'static str,
    pub handler: &'static str,
    pub per_sec: f64,
    pub compile: Duration,
    /// Start on a host whose cache is empty, from another host's compiled
    /// code in the deploy bucket: fetch, verify, import, load, `init`.
    pub fleet: Duration,
    pub cached: Duration,
    /// Memory (PSS) per further live instance (no-op handler, after one
    /// batch), when it could be read.
    pub instance_memory: Option<u64>,
}

/// Instances measured beside the first for the memory per instance.
const EXTRA_INSTANCES: usize = 6;

const TIMEOUT: Duration = Duration::from_secs(600);
const MODES: [&str; 2] = ["noop", "json"];

/// A JSON event like those the pipelines get.
const EVENT: &[u8] =
    br#"{"student":"s-1","seq":1,"score":7,"tags":["a","b"],"note":"a short JSON event"}"#;

fn body(path: &std::path::Path, mode: &str, batch: u32, concurrency: u32) -> String {
    format!(
        r#"
[[stream]]
name = "BENCH_LANG"
subjects = ["bench_lang.>"]

[plugin.p]
path = "{path}"
config = {{ mode = "{mode}" }}

[[pipeline]]
name = "lang"
streams = ["BENCH_LANG"]
plugin = "p"
batch = {batch}
concurrency = {concurrency}
"#,
        path = path.display(),
    )
}

pub async fn run(env: &Env, s: &Settings) -> anyhow::Result<Vec<Row>> {
    for (lang, path) in &s.plugins {
        anyhow::ensure!(
            path.is_file(),
            "{} ({lang}) not found: `make plugins` builds it (Python and JS need the toolchains scripts/setup.sh installs)",
            path.display()
        );
    }
    let mut rows = Vec::new();
    let mut published = false;
    for (language, path) in &s.plugins {
        let spec = PluginSpec::new("bench", path);
        let (compile, cached, plugin) = dispatch::cold_start(spec.clone()).await?;
        let fleet = fleet_start(env, spec, &plugin)
            .await
            .with_context(|| format!("fleet-cached start of the {language} plugin"))?;
        let batch: std::sync::Arc<[jetplug::Message]> = (0..s.batch)
            .map(|i| dispatch::message(i as usize, EVENT))
            .collect();
        let instance_memory = super::memory::per_instance(&plugin, &batch, EXTRA_INSTANCES).await?;
        drop(plugin);
        for mode in MODES {
            let slug = language
                .to_lowercase()
                .replace(['(', ')'], "")
                .replace(' ', "-");
            let name = format!("lang-{slug}-{mode}");
            let (cfg_path, config) = env.config(
                &name,
                "lang-cache",
                &body(path, mode, s.batch, s.concurrency),
            )?;
            if !published {
                env.fresh_streams(&config).await?;
                let bar = env::bar(s.count, "publishing JSON events");
                env.publish(
                    "bench_lang.x",
                    s.count,
                    |i| {
                        format!(
                            r#"{{"student":"s-{}","seq":{i},"score":{},"tags":["a","b"],"note":"a short JSON event"}}"#,
                            i % 97,
                            i % 100
                        )
                        .into_bytes()
                    },
                    &bar,
                )
                .await?;
                bar.finish_and_clear();
                published = true;
            }
            let stream = env.js.get_stream("BENCH_LANG").await?;
            let _ = stream.delete_consumer("jetplug-lang-BENCH_LANG").await;
            let bar = env::bar(s.count, &format!("{language} {mode}"));
            let host = env.spawn_host(&cfg_path, &format!("{name}.log"))?;
            let run = env::wait_acked(
                &env.js,
                "BENCH_LANG",
                "jetplug-lang-BENCH_LANG",
                s.count,
                TIMEOUT,
                &bar,
            )
            .await?;
            host.stop()?;
            bar.finish_and_clear();
            let _ = stream.delete_consumer("jetplug-lang-BENCH_LANG").await;
            rows.push(Row {
                language,
                handler: if mode == "json" {
                    "parse JSON"
                } else {
                    "no-op"
                },
                per_sec: run.rate(s.count),
                compile,
                fleet,
                cached,
                instance_memory,
            });
        }
    }
    Ok(rows)
}

/// Joining hosts timed per language (the median is reported).
const FLEET_JOINS: usize = 3;

/// One host shares `plugin`'s compiled code through a deploy bucket; hosts
/// with an empty cache then start it from there, each timed like
/// [`dispatch::cold_start`] (engine, load, `init`): the median of
/// [`FLEET_JOINS`].
async fn fleet_start(env: &Env, spec: PluginSpec, plugin: &Plugin) -> anyhow::Result<Duration> {
    let fleet = Fleet::open(&env.js, "bench-fleet").await?;
    let key = FleetKey::new(&[7; 32]).context("a 32-byte key")?;
    let settings = |dir: &tempfile::TempDir| EngineSettings {
        cache_dir: Some(dir.path().to_path_buf()),
        ..EngineSettings::default()
    };
    let sharer = tempfile::tempdir()?;
    let runtime = Arc::new(Runtime::new(settings(&sharer))?);
    fleet.artifacts(key.clone(), runtime).share(plugin).await?;

    let mut times = Vec::new();
    for _ in 0..FLEET_JOINS {
        let joiner = tempfile::tempdir()?;
        let t = Instant::now();
        let runtime = Arc::new(Runtime::new(settings(&joiner))?);
        let pulled = fleet
            .artifacts(key.clone(), runtime.clone())
            .pull(plugin.hash())
            .await;
        anyhow::ensure!(
            pulled == Pulled::Imported,
            "pulling the shared code: {pulled:?}"
        );
        let loaded = Arc::new(plugin::load(&runtime, spec.clone())?);
        anyhow::ensure!(
            loaded.cache_outcome() == CacheOutcome::Hit,
            "the shared code was compiled again ({:?})",
            loaded.cache_outcome()
        );
        PluginInstance::new(loaded).ready().await?;
        times.push(t.elapsed().as_secs_f64());
    }
    Ok(Duration::from_secs_f64(super::median(times)))
}
