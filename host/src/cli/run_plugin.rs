//! `jetplug run-plugin`: the plugin author's inner loop. Loads a plugin with
//! the same runtime, limits and checks as the host, feeds it messages from a
//! JSONL file in batches, and prints the decision for every message. No NATS
//! or database is needed: `publish`, `sql` and `kv` answer `unavailable`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use super::EXIT_BATCH_FAILED;
use crate::bindings::Decision;
use crate::capability::Grants;
use crate::engine::{EngineSettings, Runtime};
use crate::input::{self, InputMessage};
use crate::plugin::{self, Limits, PluginInstance, PluginSpec};
use crate::units;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin component (.wasm, built for wasm32-wasip2).
    plugin: PathBuf,
    /// Messages to feed it: one JSON object per line (see README, "run-plugin input").
    #[arg(long, short)]
    input: PathBuf,
    /// A `KEY=VALUE` pair for the plugin's `init` (repeatable).
    #[arg(long = "config", short = 'c', value_name = "KEY=VALUE", value_parser = parse_key_value)]
    config: Vec<(String, String)>,
    /// Messages per batch (at least 1).
    #[arg(long, short, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    batch: u32,
    /// Print one JSON object per message instead of a table.
    #[arg(long)]
    json: bool,
    /// Time limit for each batch, e.g. `500ms`, `5s`.
    #[arg(long, default_value = "5s", value_parser = units::parse_duration)]
    deadline: Duration,
    /// Memory limit for the plugin instance, e.g. `64MiB`.
    #[arg(long, default_value = "64MiB", value_parser = units::parse_size)]
    memory: u64,
    /// Tenant name given to the plugin in each message.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Directory of the compiled-component cache (default: ~/.cache/jetplug/components).
    #[arg(long, env = "JETPLUG_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Compile the plugin without reading or writing the cache.
    #[arg(long)]
    no_cache: bool,
}

fn parse_key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.to_owned())),
        _ => Err(format!("`{text}` is not KEY=VALUE")),
    }
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let messages = input::read_jsonl(&args.input, &args.tenant)?;

    let mut settings = EngineSettings {
        max_instances: 8,
        ..EngineSettings::default()
    };
    if args.no_cache {
        settings.cache_dir = None;
    } else if let Some(dir) = &args.cache_dir {
        settings.cache_dir = Some(dir.clone());
    }
    settings.max_memory_bytes = settings.max_memory_bytes.max(args.memory);
    let runtime = Arc::new(Runtime::new(settings)?);

    let name = args
        .plugin
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "plugin".into());
    let spec = PluginSpec {
        tenant: args.tenant.clone(),
        grants: Grants::all(),
        limits: Limits {
            memory_bytes: args.memory,
            deadline: args.deadline,
            ..Limits::default()
        },
        config: args.config.clone(),
        ..PluginSpec::new(name, &args.plugin)
    };
    let plugin = plugin::load(&runtime, spec)?;
    tracing::info!(plugin = plugin.name(), hash = plugin.hash(), cache = ?plugin.cache_outcome(), "loaded");
    let mut instance = PluginInstance::new(Arc::new(plugin));
    instance
        .ready()
        .await
        .with_context(|| format!("plugin {} failed to start", args.plugin.display()))?;

    let mut report = Report::new(args.json);
    for chunk in messages.chunks(args.batch as usize) {
        let batch: Vec<_> = chunk.iter().map(|m| m.message.clone()).collect();
        let started = Instant::now();
        let outcome = instance.handle(batch).await;
        report.batch(chunk, outcome, started.elapsed());
    }
    report.finish();
    if messages.is_empty() {
        eprintln!("note: {} holds no messages", args.input.display());
    }
    Ok(if report.failed_batches > 0 {
        ExitCode::from(EXIT_BATCH_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Default)]
struct Report {
    json: bool,
    total: usize,
    acks: usize,
    retries: usize,
    terms: usize,
    failed: usize,
    failed_batches: usize,
    elapsed: Duration,
}

impl Report {
    fn new(json: bool) -> Self {
        if !json {
            println!(
                "{:>6}  {:<32}  {:<8}  detail",
                "line", "subject", "decision"
            );
        }
        Report {
            json,
            ..Report::default()
        }
    }

    fn batch(
        &mut self,
        chunk: &[InputMessage],
        outcome: Result<Vec<Decision>, plugin::BatchError>,
        elapsed: Duration,
    ) {
        self.elapsed += elapsed;
        match outcome {
            Ok(decisions) => {
                for (m, d) in chunk.iter().zip(decisions) {
                    let (kind, detail, extra) = match d {
                        Decision::Ack => {
                            self.acks += 1;
                            ("ack", String::new(), json!({}))
                        }
                        Decision::Retry(Some(ms)) => {
                            self.retries += 1;
                            ("retry", format!("after {ms} ms"), json!({ "delay_ms": ms }))
                        }
                        Decision::Retry(None) => {
                            self.retries += 1;
                            (
                                "retry",
                                "host backoff".to_owned(),
                                json!({ "delay_ms": null }),
                            )
                        }
                        Decision::Term(reason) => {
                            self.terms += 1;
                            let extra = json!({ "reason": reason });
                            ("term", reason, extra)
                        }
                    };
                    self.line(m, kind, &detail, extra);
                }
            }
            Err(e) => {
                self.failed_batches += 1;
                self.failed += chunk.len();
                let detail = format!("{} ({})", e, e.kind());
                let extra = json!({ "error": e.kind(), "reason": e.to_string() });
                for m in chunk {
                    self.line(m, "failed", &detail, extra.clone());
                }
            }
        }
        self.total += chunk.len();
    }

    fn line(&self, m: &InputMessage, kind: &str, detail: &str, extra: serde_json::Value) {
        if self.json {
            let mut obj = json!({ "line": m.line, "subject": m.message.subject, "decision": kind });
            if let (Some(obj), serde_json::Value::Object(extra)) = (obj.as_object_mut(), extra) {
                obj.extend(extra);
            }
            println!("{obj}");
        } else {
            println!(
                "{:>6}  {:<32}  {:<8}  {}",
                m.line, m.message.subject, kind, detail
            );
        }
    }

    fn finish(&self) {
        let summary = format!(
            "{} messages: {} ack, {} retry, {} term, {} failed ({} failed batches) in {:.1} ms",
            self.total,
            self.acks,
            self.retries,
            self.terms,
            self.failed,
            self.failed_batches,
            self.elapsed.as_secs_f64() * 1000.0
        );
        if self.json {
            eprintln!("{summary}");
        } else {
            println!("{summary}");
        }
    }
}
