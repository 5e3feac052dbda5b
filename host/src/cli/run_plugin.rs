//! `jetplug run-plugin`: the plugin author's inner loop. Loads a plugin with
//! the same runtime, limits and checks as the host, feeds it messages from a
//! JSONL file in batches, and prints the decision for every message. No NATS
//! or database is needed: `publish`, `sql` and `kv` answer `unavailable`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use serde_json::json;

use super::EXIT_BATCH_FAILED;
use super::offline::RunnerArgs;
use crate::authoring::input::{self, InputMessage};
use crate::bindings::Decision;
use crate::capability::{Backends, Grants};
use crate::plugin;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin component (.wasm, built for wasm32-wasip2).
    plugin: PathBuf,
    /// Messages to feed it: one JSON object per line (see README, "run-plugin input").
    #[arg(long, short)]
    input: PathBuf,
    /// Print one JSON object per message instead of a table.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    runner: RunnerArgs,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let messages = input::read_jsonl(&args.input, &args.runner.tenant)?;

    let mut instance = args
        .runner
        .start(&args.plugin, Grants::all(), Backends::offline())
        .await?;

    let mut report = Report::new(args.json);
    for chunk in messages.chunks(args.runner.batch as usize) {
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
