//! `jetplug capture list|show|pull|to-fixture`: the captures hosts keep of
//! failing plugin calls (docs/capture.md), and `jetplug test --replay`'s
//! report. Captures are read from the bucket with the configuration's NATS
//! credentials, or from a `.jplug` file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use serde_json::{Value, json};

use super::EXIT_BATCH_FAILED;
use crate::capability::transcript::short;
use crate::capture::replay::Report;
use crate::capture::store::{Captures, Listed};
use crate::capture::{Capture, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List the stored captures, newest first.
    List(ListArgs),
    /// Show a capture: why it was kept, its batch, the decisions and every capability call.
    Show(ShowArgs),
    /// Write a capture to a file, for `jetplug test PLUGIN.wasm --replay FILE`.
    Pull(PullArgs),
    /// Turn a capture into a fixture file for `jetplug test` (a regression test).
    ToFixture(ToFixtureArgs),
}

#[derive(Debug, clap::Args)]
struct Source {
    /// The configuration file (its `[nats]` and `host.capture_bucket`).
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// The capture bucket (default: the configuration's `host.capture_bucket`).
    #[arg(long)]
    bucket: Option<String>,
    /// Read through a running host's admin API (`HOST:PORT`) instead of
    /// NATS, with the configuration's `admin.token` when it has one.
    #[arg(long, value_name = "ADDR", conflicts_with = "bucket")]
    admin: Option<std::net::SocketAddr>,
}

/// Where captures are read: the bucket, or a host's admin API.
enum Reader {
    Bucket(Box<Captures>),
    Admin {
        addr: std::net::SocketAddr,
        token: Option<crate::config::Secret>,
    },
}

impl Reader {
    fn name(&self) -> String {
        match self {
            Reader::Bucket(b) => format!("bucket `{}`", b.bucket()),
            Reader::Admin { addr, .. } => format!("the host at {addr}"),
        }
    }

    async fn list(&self, pipeline: Option<&str>) -> anyhow::Result<Vec<Listed>> {
        match self {
            Reader::Bucket(b) => Ok(b.list(pipeline).await?),
            Reader::Admin { addr, token } => {
                let path = match pipeline {
                    Some(p) => format!("/v1/captures?pipeline={}", crate::redact::url_encoded(p)),
                    None => "/v1/captures".into(),
                };
                let body = crate::admin::client::get(*addr, &path, token.as_ref()).await?;
                serde_json::from_str(&body)
                    .context("the admin API answered something that is not a capture list")
            }
        }
    }

    async fn get(&self, id: &str) -> anyhow::Result<Vec<u8>> {
        match self {
            Reader::Bucket(b) => Ok(b.get(id).await?),
            Reader::Admin { addr, token } => {
                let path = format!("/v1/captures/{}", crate::redact::url_encoded(id));
                Ok(crate::admin::client::get(*addr, &path, token.as_ref())
                    .await?
                    .into_bytes())
            }
        }
    }
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    source: Source,
    /// Only this pipeline's captures.
    #[arg(long)]
    pipeline: Option<String>,
    /// One JSON object per capture.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct ShowArgs {
    /// A capture id (from `capture list`, or a dead letter's `Jetplug-Capture`) or a `.jplug` file.
    capture: String,
    #[command(flatten)]
    source: Source,
    /// The whole capture document.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct PullArgs {
    /// The capture id.
    id: String,
    /// The file to write (e.g. `case.jplug`).
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    source: Source,
}

#[derive(Debug, clap::Args)]
struct ToFixtureArgs {
    /// A capture id or a `.jplug` file.
    capture: String,
    /// The fixture file to write (JSONL).
    #[arg(long, short)]
    out: PathBuf,
    #[command(flatten)]
    source: Source,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.action {
        Action::List(a) => {
            let store = open(&a.source).await?;
            let list = store.list(a.pipeline.as_deref()).await?;
            if list.is_empty() {
                eprintln!("no captures in {}", store.name());
            }
            for c in &list {
                if a.json {
                    println!("{}", serde_json::to_string(c)?);
                } else {
                    println!(
                        "{}  {}  {} ({} bytes)\n    {}",
                        c.stored_at, c.id, c.plugin, c.size, c.summary
                    );
                }
            }
        }
        Action::Show(a) => {
            let (capture, _) = load(&a.capture, &a.source).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&capture)?);
            } else {
                print!("{}", describe(&capture));
            }
        }
        Action::Pull(a) => {
            let store = open(&a.source).await?;
            let bytes = store.get(&a.id).await?;
            // Checked before it is written: a file that cannot be replayed is no use.
            Capture::parse(&bytes).with_context(|| format!("capture `{}`", a.id))?;
            std::fs::write(&a.out, &bytes)
                .with_context(|| format!("cannot write {}", a.out.display()))?;
            println!(
                "capture {} written to {} ({} bytes); replay it with `jetplug test PLUGIN.wasm --replay {}`",
                a.id,
                a.out.display(),
                bytes.len(),
                a.out.display()
            );
        }
        Action::ToFixture(a) => {
            let (capture, _) = load(&a.capture, &a.source).await?;
            let text = fixture(&capture)?;
            std::fs::write(&a.out, text)
                .with_context(|| format!("cannot write {}", a.out.display()))?;
            println!(
                "fixture written to {}: {} message(s), {} capability answer(s); run it with \
                 `jetplug test PLUGIN.wasm {}`",
                a.out.display(),
                capture.batch.len(),
                capture
                    .calls
                    .iter()
                    .filter(|c| !c.call.starts_with("log."))
                    .count(),
                a.out.display()
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn open(source: &Source) -> anyhow::Result<Reader> {
    if let Some(addr) = source.admin {
        // The token comes from the configuration when it can be read.
        let token = crate::host::resolve::load(&source.config)
            .ok()
            .and_then(|c| c.admin.token);
        return Ok(Reader::Admin { addr, token });
    }
    let config = crate::host::resolve::load(&source.config)?;
    let bucket = source
        .bucket
        .clone()
        .unwrap_or_else(|| config.host.capture_bucket.clone());
    anyhow::ensure!(
        !bucket.is_empty(),
        "host.capture_bucket is \"\" in {}: captures are off; name a bucket with --bucket",
        source.config.display()
    );
    let js = super::connect_once(&config.nats).await?;
    Ok(Reader::Bucket(Box::new(
        Captures::existing(&js, &bucket).await?,
    )))
}

/// A capture from a file (when `what` is one) or from the bucket.
async fn load(what: &str, source: &Source) -> anyhow::Result<(Capture, Vec<u8>)> {
    let bytes = if Path::new(what).is_file() {
        std::fs::read(what).with_context(|| format!("cannot read {what}"))?
    } else {
        open(source).await?.get(what).await?
    };
    let capture = Capture::parse(&bytes).with_context(|| format!("capture {what}"))?;
    Ok((capture, bytes))
}

/// Reads a `.jplug` file.
pub(super) fn read_file(path: &Path) -> anyhow::Result<Capture> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Capture::parse(&bytes).with_context(|| format!("{}", path.display()))
}

/// A capture in words.
fn describe(c: &Capture) -> String {
    let mut out = format!(
        "capture {}\n  pipeline {} (tenant {}) on {}, {}\n  plugin {} sha256:{}\n  why: {}\n",
        c.id, c.pipeline, c.tenant, c.host, c.captured_at, c.plugin.name, c.plugin.digest, c.why
    );
    if !c.payloads {
        out.push_str("  payloads: not kept (capture_payloads = false)\n");
    }
    out.push_str(&format!("  batch: {} message(s)\n", c.batch.len()));
    for (i, m) in c.batch.iter().enumerate() {
        out.push_str(&format!(
            "    {}. {} {} #{} delivery {} → {}\n",
            i + 1,
            m.subject,
            m.stream,
            m.stream_seq,
            m.delivered,
            c.outcome.describe(i)
        ));
    }
    out.push_str(&format!("  calls: {}\n", c.calls.len()));
    for (i, e) in c.calls.iter().enumerate() {
        let answer = match (&e.error, &e.ok) {
            (Some(err), _) => format!("error {}", short(&json!(err))),
            (None, Some(v)) if !v.is_null() => short(v),
            _ => "ok".into(),
        };
        let target = if e.target.is_empty() {
            String::new()
        } else {
            format!(" `{}`", e.target)
        };
        out.push_str(&format!(
            "    {}. {}{} {} → {}\n",
            i + 1,
            e.call,
            target,
            short(&e.args),
            answer
        ));
    }
    if c.calls_dropped > 0 {
        out.push_str(&format!("    … {} more not kept\n", c.calls_dropped));
    }
    let h = &c.handed;
    out.push_str(&format!(
        "  sandbox: {} wall clock read(s), {} monotonic, {} random byte(s)\n",
        h.wall.len(),
        h.monotonic.len(),
        h.random.len()
    ));
    out
}

/// A fixture for `jetplug test`: a first line declaring the capability
/// answers and the time, then one line per message expecting what the
/// plugin answered then.
fn fixture(c: &Capture) -> anyhow::Result<String> {
    let answers: Vec<Value> = c
        .calls
        .iter()
        .filter(|e| !e.call.starts_with("log."))
        .map(serde_json::to_value)
        .collect::<Result<_, _>>()?;
    let config: serde_json::Map<String, Value> = c
        .config
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut lines = vec![json!({
        "capture": c.id,
        "config": config,
        "time_ms": c.wall() / 1_000_000,
        "answers": answers,
    })];
    for (i, m) in c.batch.iter().enumerate() {
        let mut line = json!({
            "subject": m.subject,
            "stream": m.stream,
            "stream_seq": m.stream_seq,
            "delivered": m.delivered,
            "published_at_ms": m.published_at_ms,
        });
        match &m.payload {
            Value::String(s) => line["payload_text"] = json!(s),
            Value::Object(o) if o.contains_key("base64") => {
                line["payload_base64"] = o.get("base64").cloned().unwrap_or_default();
            }
            _ => {}
        }
        if !m.headers.is_empty() {
            line["headers"] = json!(m.headers);
        }
        line["expect"] = expectation(&c.outcome, i);
        lines.push(line);
    }
    let mut text = String::new();
    for l in lines {
        text.push_str(&serde_json::to_string(&l)?);
        text.push('\n');
    }
    Ok(text)
}

/// What the plugin answered then, as a fixture `expect`.
fn expectation(outcome: &Outcome, i: usize) -> Value {
    use crate::bindings::Decision;
    match outcome {
        Outcome::Decisions(d) => match d.get(i) {
            Some(Decision::Ack) => json!("ack"),
            Some(Decision::Retry(ms)) => json!({ "decision": "retry", "delay_ms": ms }),
            Some(Decision::Term(reason)) => {
                json!({ "decision": "term", "reason": format!("^{}$", regex::escape(reason)) })
            }
            None => json!("failed"),
        },
        Outcome::Failed { kind, .. } => json!({ "decision": "failed", "error": kind }),
    }
}

/// Prints a replay's report; the exit code: success when every call was
/// answered from the capture (the replay ran in the captured world).
pub(super) fn print_report(c: &Capture, digest: &str, r: &Report, as_json: bool) -> ExitCode {
    let faithful = r.divergence.is_none();
    if as_json {
        let out = json!({
            "capture": c.id,
            "same": r.same(),
            "same_outcome": r.same_outcome(),
            "same_build": digest == c.plugin.digest,
            "report": r,
        });
        println!("{out}");
    } else {
        print!("{}", report_text(c, digest, r));
    }
    if faithful {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_BATCH_FAILED)
    }
}

fn report_text(c: &Capture, digest: &str, r: &Report) -> String {
    let build = if digest == c.plugin.digest {
        "the captured build".to_owned()
    } else {
        format!(
            "sha256:{} (captured: sha256:{})",
            cut(digest),
            cut(&c.plugin.digest)
        )
    };
    let mut out = format!(
        "replay of capture {} (pipeline {}, {})\n  plugin: {}\n",
        c.id, c.pipeline, c.captured_at, build
    );
    for (i, m) in c.batch.iter().enumerate() {
        let (then, now) = (r.then.describe(i), r.now.describe(i));
        let mark = if then == now { "" } else { "   ← changed" };
        out.push_str(&format!(
            "  {}. {} #{}: then {then}; now {now}{mark}\n",
            i + 1,
            m.subject,
            m.stream_seq
        ));
    }
    let asked = r
        .calls
        .iter()
        .filter(|e| !e.call.starts_with("log."))
        .count();
    out.push_str(&format!("  capability calls: {asked} made\n"));
    for e in r.calls.iter().filter(|e| e.call.starts_with("log.")) {
        let level = e.args.get("level").and_then(Value::as_str).unwrap_or("");
        let msg = e.args.get("message").and_then(Value::as_str).unwrap_or("");
        out.push_str(&format!("  log {level}: {msg}\n"));
    }
    match &r.divergence {
        Some(d) => {
            out.push_str(&format!("  first divergence: {d}\n"));
            if let Some(then) = &d.then {
                out.push_str(&format!(
                    "    recorded: {} `{}` {}\n",
                    then.call,
                    then.target,
                    short(&then.args)
                ));
            }
            out.push_str(&format!(
                "    now:      {} `{}` {}\n",
                d.now.call,
                d.now.target,
                short(&d.now.args)
            ));
        }
        None if !r.unmade.is_empty() => {
            let next = &r.unmade[0];
            out.push_str(&format!(
                "  {} recorded call(s) not made now, from {} on `{}`\n",
                r.unmade.len(),
                next.call,
                next.target
            ));
        }
        None => out.push_str("  every call was answered from the capture\n"),
    }
    if r.reads_beyond > 0 {
        out.push_str(&format!(
            "  note: {} clock or random read(s) past the recording were answered with fixed values\n",
            r.reads_beyond
        ));
    }
    out.push_str(if r.same() {
        "result: the plugin answers as it did then\n"
    } else if r.same_outcome() {
        "result: same answer, but the plugin asked for different things\n"
    } else {
        "result: the plugin answers differently now\n"
    });
    out
}

fn cut(digest: &str) -> &str {
    digest.get(..12).unwrap_or(digest)
}
