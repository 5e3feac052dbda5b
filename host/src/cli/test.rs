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
use crate::authoring::fixture;
use crate::authoring::input::{self, InputMessage};
use crate::capability::transcript::Entry;
use crate::capability::{Backends, Grants};
use crate::config::{DatabaseConfig, NatsConfig};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin component (.wasm).
    plugin: PathBuf,
    /// Fixture files: JSONL messages, each line may carry `"expect"`.
    #[arg(required_unless_present = "replay")]
    fixtures: Vec<PathBuf>,
    /// Replay a capture (`jetplug capture pull ID -o case.jplug`) instead:
    /// its batch, with every capability call answered from it and its
    /// clocks and random bytes; reports the decisions then and now and the
    /// first call that differs (exit 2 when one does). No servers needed.
    #[arg(long, value_name = "CASE.jplug", conflicts_with_all = ["fixtures", "nats", "databases"])]
    replay: Option<PathBuf>,
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
    if let Some(case) = &args.replay {
        return replay(&args, case).await;
    }
    // Every fixture is read (and its expectations checked) before the plugin runs.
    let mut files = Vec::new();
    for path in &args.fixtures {
        let (messages, declared) = input::read_fixture(path, &args.runner.tenant)?;
        files.push((path, messages, declared));
    }
    let base = declared_config(&files)?;
    let backends = backends(&args).await?;
    let mut instance = args
        .runner
        .start_as(&args.plugin, grants_of(&args.grants), backends, &base, None)
        .await?;
    // Recorded, so that the capability errors behind an answer can be shown.
    instance.set_capture(true);

    let mut tally = Tally::default();
    for (path, messages, declared) in &files {
        for chunk in messages.chunks(args.runner.batch as usize) {
            let judged = fixture::judge(&mut instance, chunk, declared).await;
            if let Some((e, culprits)) = &judged.isolated
                && !args.json
            {
                let lines: Vec<String> = culprits.iter().map(usize::to_string).collect();
                println!(
                    "note: {}: the batch of lines {}–{} failed ({}); run alone, line(s) {} failed \
                     (the culprit), the others are judged on their own",
                    path.display(),
                    chunk.first().map_or(0, |m| m.line),
                    chunk.last().map_or(0, |m| m.line),
                    e.kind(),
                    if lines.is_empty() {
                        "none".into()
                    } else {
                        lines.join(", ")
                    },
                );
            }
            for (m, (outcome, calls)) in chunk.iter().zip(&judged.lines) {
                let reason = outcome.as_ref().err().map(ToString::to_string);
                let got = match outcome {
                    Ok(d) => Outcome::Decided(d),
                    Err(e) => Outcome::Failed {
                        kind: e.kind(),
                        reason: reason.as_deref().unwrap_or(""),
                    },
                };
                tally.check(&args, path, m, got, calls);
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

/// The `config` the fixture files declare (one plugin instance serves them
/// all, so they must agree).
fn declared_config(
    files: &[(&PathBuf, Vec<InputMessage>, input::Declared)],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut found: Option<(&PathBuf, &Vec<(String, String)>)> = None;
    for (path, _, declared) in files {
        let Some(config) = &declared.config else {
            continue;
        };
        match found {
            Some((first, c)) if c != config => anyhow::bail!(
                "{} and {} declare different `config`: test them in separate runs",
                first.display(),
                path.display()
            ),
            _ => found = Some((path, config)),
        }
    }
    Ok(found.map(|(_, c)| c.clone()).unwrap_or_default())
}

/// `--replay CASE`: the capture's batch in the capture's world.
async fn replay(args: &Args, case: &std::path::Path) -> anyhow::Result<ExitCode> {
    let capture = super::capture::read_file(case)?;
    let grants = if args.grants.is_empty() {
        capture.grants.clone()
    } else {
        grants_of(&args.grants)
    };
    let fixed = Some((capture.seed(), capture.wall()));
    let mut instance = args
        .runner
        .start_as(
            &args.plugin,
            grants,
            Backends::offline(),
            &capture.config,
            fixed,
        )
        .await?;
    let report = crate::capture::replay::replay(&capture, &mut instance)
        .await
        .with_context(|| format!("replaying {}", case.display()))?;
    let digest = instance.plugin().hash().to_owned();
    Ok(super::capture::print_report(
        &capture, &digest, &report, args.json,
    ))
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
    fn check(
        &mut self,
        args: &Args,
        path: &std::path::Path,
        m: &InputMessage,
        got: Outcome<'_>,
        calls: &[Entry],
    ) {
        self.messages += 1;
        let (decided_ok, expected) = match &m.expect {
            Some(e) => (e.matches(got), Some(e.describe())),
            None => (!matches!(got, Outcome::Failed { .. }), None),
        };
        let missing = fixture::missing_effects(m, calls);
        let ok = decided_ok && missing.is_empty();
        let behind = fixture::errors(calls);
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
                    "capability_errors": behind,
                    "missing_effects": missing,
                })
            );
        } else if !ok {
            println!("MISMATCH {where_}  {}", m.message.subject);
            if !decided_ok {
                println!("  expected: {expected}\n       got: {}", got.describe());
                for e in &behind {
                    println!("  behind it: {e}");
                }
            }
            for want in &missing {
                println!(
                    "  expected effect not made: {} `{}` {}",
                    want.call,
                    want.target,
                    crate::capability::transcript::short(&want.args)
                );
            }
            if !missing.is_empty() {
                let made: Vec<String> = calls
                    .iter()
                    .filter(|c| !c.call.starts_with("log."))
                    .map(|c| format!("{} `{}`", c.call, c.target))
                    .collect();
                println!(
                    "  calls made: {}",
                    if made.is_empty() {
                        "none".into()
                    } else {
                        made.join(", ")
                    }
                );
            }
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
