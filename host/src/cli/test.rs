//! `jetplug test PLUGIN.wasm FIXTURES.jsonl...`: what a plugin project's CI
//! runs. Feeds each fixture file to the plugin (same runtime and limits as
//! the host) and compares every answer with the line's `"expect"`; prints
//! each mismatch with file, line, expected and got, and exits non-zero if
//! there is any. Capabilities reach real servers given on the command line
//! (`--nats`, `--database`), within the grants given (`--grant`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::json;

use super::EXIT_BATCH_FAILED;
use super::offline::{RunnerArgs, parse_key_value};
use crate::authoring::expect::Outcome;
use crate::authoring::input::{self, InputMessage};
use crate::capability::{Backends, Grants};
use crate::config::{DatabaseConfig, NatsConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// Fixture files: JSONL messages, each line may carry `"expect"`.
    #[arg(required = true)]
    fixtures: Vec<PathBuf>,
    /// One JSON object per message on stdout (summary on stderr).
    #[arg(long)]
    json: bool,
    /// A grant: `publish:PATTERN`, `sql:DATABASE`, `kv:BUCKET` (repeatable;
    /// `log` is always granted, as in the configuration). Without any, every
    /// interface is granted.
    #[arg(long = "grant", value_name = "GRANT", value_parser = parse_grant)]
    grants: Vec<Grant>,
    /// NATS server for `publish` and `kv` (otherwise they answer `unavailable`).
    #[arg(long, value_name = "URL")]
    nats: Option<String>,
    /// A PostgreSQL database for `sql`: `NAME=postgres://...` (repeatable).
    #[arg(long = "database", value_name = "NAME=URL", value_parser = parse_key_value)]
    databases: Vec<(String, String)>,
    #[command(flatten)]
    runner: RunnerArgs,
}

#[derive(Debug, Clone)]
enum Grant {
    Log,
    Publish(String),
    Sql(String),
    Kv(String),
}

fn parse_grant(text: &str) -> Result<Grant, String> {
    let (cap, scope) = match text.split_once(':') {
        Some((c, s)) => (c, Some(s)),
        None => (text, None),
    };
    let no_scope = scope.is_none();
    let scope = |what: &str| match scope {
        Some(s) if !s.is_empty() => Ok(s.to_owned()),
        _ => Err(format!(
            "`{text}`: give {what}, e.g. `{cap}:{}`",
            example(cap)
        )),
    };
    match cap {
        "log" if no_scope => Ok(Grant::Log),
        "publish" => scope("a subject pattern").map(Grant::Publish),
        "sql" => scope("a database name").map(Grant::Sql),
        "kv" => scope("a bucket name").map(Grant::Kv),
        _ => Err(format!(
            "`{text}` is not a grant (use log, publish:PATTERN, sql:DATABASE or kv:BUCKET)"
        )),
    }
}

fn example(cap: &str) -> &'static str {
    match cap {
        "publish" => "orders.>",
        "sql" => "events",
        _ => "cache",
    }
}

fn grants_of(list: &[Grant]) -> Grants {
    if list.is_empty() {
        return Grants::all();
    }
    // As in the configuration: `log` is granted unless said otherwise.
    let mut g = Grants::default();
    for grant in list {
        match grant {
            Grant::Log => {}
            Grant::Publish(p) => g.publish.push(p.clone()),
            Grant::Sql(d) => g.sql.push(d.clone()),
            Grant::Kv(b) => g.kv.push(b.clone()),
        }
    }
    g
}

async fn backends(args: &Args) -> anyhow::Result<std::sync::Arc<Backends>> {
    let mut databases = BTreeMap::new();
    for (name, url) in &args.databases {
        let db: DatabaseConfig = toml::from_str(&format!("url = {}", toml_string(url)))
            .with_context(|| format!("--database {name}=..."))?;
        databases.insert(name.clone(), db);
    }
    let backends = Backends::with_databases(&databases).context("--database")?;
    if let Some(url) = &args.nats {
        let nats = NatsConfig {
            url: crate::config::ServerList::from(url.as_str()),
            connect_attempts: 1,
            ..NatsConfig::default()
        };
        let js = super::connect_once(&nats)
            .await
            .with_context(|| format!("--nats {url}"))?;
        backends.set_nats(js);
    }
    Ok(backends)
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Every fixture is read (and its expectations checked) before the plugin runs.
    let mut files = Vec::new();
    for path in &args.fixtures {
        files.push((path, input::read_jsonl(path, &args.runner.tenant)?));
    }
    let backends = backends(&args).await?;
    let mut instance = args
        .runner
        .start(&args.plugin, grants_of(&args.grants), backends)
        .await?;

    let mut tally = Tally::default();
    for (path, messages) in &files {
        for chunk in messages.chunks(args.runner.batch as usize) {
            let batch: Vec<_> = chunk.iter().map(|m| m.message.clone()).collect();
            match instance.handle(batch).await {
                Ok(decisions) => {
                    for (m, d) in chunk.iter().zip(&decisions) {
                        tally.check(&args, path, m, Outcome::Decided(d));
                    }
                }
                Err(e) => {
                    let reason = e.to_string();
                    for m in chunk {
                        let outcome = Outcome::Failed {
                            kind: e.kind(),
                            reason: &reason,
                        };
                        tally.check(&args, path, m, outcome);
                    }
                }
            }
        }
    }
    let summary = format!(
        "{}: {} messages in {} files, {} expectations met, {} not met, {} without expectation",
        if tally.failed == 0 { "ok" } else { "FAILED" },
        tally.messages,
        files.len(),
        tally.met,
        tally.failed,
        tally.unchecked
    );
    if args.json {
        eprintln!("{summary}");
    } else {
        println!("{summary}");
    }
    if tally.met + tally.failed == 0 {
        eprintln!("note: no fixture line has an `expect`; only failed batches are caught");
    }
    Ok(if tally.failed > 0 {
        ExitCode::from(EXIT_BATCH_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Default)]
struct Tally {
    messages: usize,
    met: usize,
    failed: usize,
    unchecked: usize,
}

impl Tally {
    /// Compares one outcome with its line's expectation and reports it. A line
    /// without expectation only fails when its batch failed.
    fn check(&mut self, args: &Args, path: &std::path::Path, m: &InputMessage, got: Outcome<'_>) {
        self.messages += 1;
        let (ok, expected) = match &m.expect {
            Some(e) => (e.matches(got), Some(e.describe())),
            None => (!matches!(got, Outcome::Failed { .. }), None),
        };
        match (ok, &expected) {
            (true, Some(_)) => self.met += 1,
            (true, None) => self.unchecked += 1,
            (false, _) => self.failed += 1,
        }
        let expected = expected.unwrap_or_else(|| "a decision".into());
        let where_ = format!("{}:{}", path.display(), m.line);
        if args.json {
            println!(
                "{}",
                json!({
                    "file": path.display().to_string(),
                    "line": m.line,
                    "subject": m.message.subject,
                    "ok": ok,
                    "expected": if m.expect.is_some() { json!(expected) } else { json!(null) },
                    "got": got.describe(),
                })
            );
        } else if !ok {
            println!(
                "MISMATCH {where_}  {}\n  expected: {expected}\n       got: {}",
                m.message.subject,
                got.describe()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_with_clear_errors() {
        assert!(matches!(parse_grant("log"), Ok(Grant::Log)));
        assert!(matches!(parse_grant("sql:events"), Ok(Grant::Sql(d)) if d == "events"));
        assert!(matches!(parse_grant("publish:a.>"), Ok(Grant::Publish(p)) if p == "a.>"));
        let e = parse_grant("sql").err().unwrap_or_default();
        assert!(e.contains("give a database name"), "{e}");
        let e = parse_grant("files:/").err().unwrap_or_default();
        assert!(e.contains("is not a grant"), "{e}");
        let g = grants_of(&[Grant::Sql("events".into())]);
        assert!(g.log && g.sql == ["events"] && g.publish.is_empty());
        assert_eq!(grants_of(&[]), Grants::all());
    }
}
