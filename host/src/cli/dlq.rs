//! `jetplug dlq list|redrive`: look at dead letters, and send them back to
//! the pipelines that failed them. A dead letter is removed from the DLQ
//! stream only after its republish was acknowledged, and every republish of
//! one dead letter carries the same message id, so an interrupted redrive
//! run again neither loses nor duplicates anything.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use time::OffsetDateTime;

use crate::config::Config;
use crate::deadletter::redrive::{self, Facts, Selection};
use crate::subject;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Count dead letters by subject and reason, and show the first few.
    List(Common),
    /// Republish dead letters to the pipelines that failed them and remove them from the DLQ.
    Redrive(RedriveArgs),
}

#[derive(Debug, clap::Args)]
struct Common {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// The dead-letter stream (default: the declared stream capturing `dlq.>`).
    #[arg(long)]
    stream: Option<String>,
    /// Only dead letters whose DLQ subject matches this pattern, e.g. `dlq.learning.>`.
    #[arg(long)]
    filter: Option<String>,
    /// Only dead letters of this pipeline.
    #[arg(long)]
    pipeline: Option<String>,
    /// Only dead letters whose reason matches this regular expression.
    #[arg(long)]
    reason: Option<String>,
    /// Only dead letters whose original subject matches this pattern, e.g. `learning.quiz.>`.
    #[arg(long)]
    subject: Option<String>,
    /// Only dead letters stored at or after this time (RFC 3339, or a duration ago: `2h`).
    #[arg(long)]
    since: Option<String>,
    /// Only dead letters stored before this time (RFC 3339, or a duration ago: `30m`).
    #[arg(long)]
    until: Option<String>,
    /// At most this many dead letters (counted among those selected).
    #[arg(long)]
    limit: Option<u64>,
}

#[derive(Debug, clap::Args)]
struct RedriveArgs {
    #[command(flatten)]
    common: Common,
    /// List what would be redriven, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// At most this many republishes per second (default: as fast as acknowledged).
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Address the dead letters to this pipeline instead of the one that
    /// failed them (e.g. a pipeline renamed since; it must be in the config).
    #[arg(long, value_name = "PIPELINE")]
    to: Option<String>,
}

fn positive_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(r) if r > 0.0 && r.is_finite() => Ok(r),
        _ => Err(format!(
            "`{text}` is not a positive rate (messages per second)"
        )),
    }
}

/// Attempts at creating the DLQ reader before giving up.
const READER_ATTEMPTS: u32 = 5;

/// How long to wait for the next dead letter before taking the DLQ as read.
const READ_IDLE: Duration = Duration::from_secs(2);

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (c, redrive) = match &args.action {
        Action::List(c) => (c, None),
        Action::Redrive(r) => (&r.common, Some(r)),
    };
    let selection = selection(c)?;
    let config = crate::host::resolve::load(&c.config)?;
    let stream = match &c.stream {
        Some(s) => s.clone(),
        None => config
            .streams
            .iter()
            .find(|s| s.subjects.iter().any(|p| subject::overlaps(p, "dlq.>")))
            .map(|s| s.name.clone())
            .context("no declared stream captures `dlq.>`: name the DLQ stream with --stream")?,
    };
    let ctx = super::connect_once(&config.nats).await?;
    let mut dlq = Dlq::open(&ctx, &stream, c.filter.as_deref()).await?;
    let Some(total) = dlq.total else {
        println!("{stream}: no dead letters");
        return Ok(ExitCode::SUCCESS);
    };
    match redrive {
        None => list(&mut dlq, c, &selection).await,
        Some(r) => {
            if let Some(to) = &r.to {
                anyhow::ensure!(
                    config.pipeline(to).is_some(),
                    "--to {to}: no pipeline `{to}` in {}",
                    c.config.display()
                );
            }
            redrive_all(&ctx, &config, &mut dlq, r, &selection, total).await
        }
    }
}

fn selection(c: &Common) -> anyhow::Result<Selection> {
    let now = OffsetDateTime::now_utc();
    let time = |flag: &str, v: &Option<String>| -> anyhow::Result<Option<OffsetDateTime>> {
        v.as_deref()
            .map(|t| redrive::parse_time(t, now).map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
            .transpose()
    };
    Ok(Selection {
        pipeline: c.pipeline.clone(),
        reason: c
            .reason
            .as_deref()
            .map(regex::Regex::new)
            .transpose()
            .context("--reason is not a valid regular expression")?,
        subject: c.subject.clone(),
        since: time("since", &c.since)?,
        until: time("until", &c.until)?,
    })
}

/// One dead letter as read from the DLQ stream.
struct Stored {
    seq: u64,
    dlq_subject: String,
    stored_at: OffsetDateTime,
    headers: Vec<(String, String)>,
    payload: bytes::Bytes,
    facts: Facts,
}

/// A reader over the DLQ stream (an ephemeral consumer the server removes
/// when idle).
struct Dlq {
    name: String,
    stream: jetstream::stream::Stream,
    messages: Option<consumer::pull::Stream>,
    /// Dead letters under the filter when the reader was made; None if none.
    total: Option<u64>,
    /// The DLQ's last sequence when the reader was made: dead letters
    /// stored after it (a redriven message that failed again during this
    /// run) are left for the next run.
    last: u64,
    done: bool,
}

impl Dlq {
    async fn open(
        ctx: &jetstream::Context,
        name: &str,
        filter: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut stream = ctx
            .get_stream(name)
            .await
            .with_context(|| format!("stream `{name}`"))?;
        let (stored, last) = {
            let state = &stream.info().await?.state;
            (state.messages, state.last_sequence)
        };
        if stored == 0 {
            return Ok(Dlq {
                name: name.into(),
                stream,
                messages: None,
                total: None,
                last,
                done: true,
            });
        }
        // A light reader (one replica, in memory), retried for a while: on
        // a cluster the stream may be between leaders.
        let reader = consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            filter_subject: filter.unwrap_or_default().to_owned(),
            inactive_threshold: Duration::from_secs(30),
            num_replicas: 1,
            memory_storage: true,
            ..Default::default()
        };
        let mut attempt = 0;
        let mut consumer = loop {
            attempt += 1;
            match stream.create_consumer(reader.clone()).await {
                Ok(c) => break c,
                Err(e) if attempt < READER_ATTEMPTS => {
                    tracing::debug!(error = %e, attempt, "creating a DLQ reader failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(anyhow::Error::from(e).context(format!(
                        "creating a reader on the DLQ ({READER_ATTEMPTS} attempts)"
                    )));
                }
            }
        };
        // A new consumer on a cluster may not know its pending count yet:
        // then the stream's count bounds the progress bar, and reading goes
        // on until the last message says nothing is left (or none comes).
        let pending = consumer.info().await?.num_pending;
        let messages = consumer.stream().messages().await?;
        Ok(Dlq {
            name: name.into(),
            stream,
            messages: Some(messages),
            total: Some(if pending > 0 { pending } else { stored }),
            last,
            done: false,
        })
    }

    async fn next(&mut self) -> anyhow::Result<Option<Stored>> {
        let Some(messages) = self.messages.as_mut().filter(|_| !self.done) else {
            return Ok(None);
        };
        let Ok(Some(msg)) = tokio::time::timeout(READ_IDLE, messages.next()).await else {
            return Ok(None);
        };
        let msg = msg.map_err(|e| anyhow::anyhow!("reading the DLQ: {e}"))?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        if info.stream_sequence > self.last {
            self.done = true;
            return Ok(None);
        }
        self.done = info.pending == 0 || info.stream_sequence == self.last;
        let headers = crate::jetstream::convert::header_pairs(msg.headers.as_ref());
        Ok(Some(Stored {
            seq: info.stream_sequence,
            dlq_subject: msg.subject.to_string(),
            stored_at: info.published,
            facts: Facts::from_headers(&headers),
            headers,
            payload: msg.payload.clone(),
        }))
    }
}

async fn list(dlq: &mut Dlq, c: &Common, selection: &Selection) -> anyhow::Result<ExitCode> {
    let limit = c.limit.unwrap_or(u64::MAX);
    let mut shown = 0u64;
    let mut by_reason: BTreeMap<(String, String), u64> = BTreeMap::new();
    while shown < limit {
        let Some(d) = dlq.next().await? else { break };
        if !selection.matches(&d.facts, d.stored_at) {
            continue;
        }
        shown += 1;
        // Group by the reason's first clause ("payload is not JSON: ..." → "payload is not JSON").
        let kind = d
            .facts
            .reason
            .split(':')
            .next()
            .unwrap_or_default()
            .to_owned();
        *by_reason.entry((d.dlq_subject.clone(), kind)).or_default() += 1;
        if shown <= 5 {
            println!("{}", describe(&d));
        }
    }
    println!(
        "{shown} dead letters in `{}`{}:",
        dlq.name,
        c.filter
            .as_ref()
            .map(|f| format!(" matching {f}"))
            .unwrap_or_default()
    );
    for ((subj, reason), n) in &by_reason {
        println!("  {n:>6}  {subj}  {reason}");
    }
    Ok(ExitCode::SUCCESS)
}

fn describe(d: &Stored) -> String {
    let f = &d.facts;
    let capture = f
        .capture
        .as_ref()
        .map(|id| format!(" [capture {id}]"))
        .unwrap_or_default();
    format!(
        "#{} {} (from {} #{} via {}, {} deliveries): {}{capture}",
        d.seq, d.dlq_subject, f.stream, f.sequence, f.pipeline, f.deliveries, f.reason
    )
}

/// Why no pipeline of `config` would run a redrive addressed to
/// `pipeline` (empty: every pipeline) on `subject`, if none would.
fn unrunnable(
    config: &Config,
    file: &std::path::Path,
    pipeline: &str,
    subject: &str,
) -> Option<String> {
    let file = file.display();
    if pipeline.is_empty() || pipeline == "unknown" {
        return (!config.pipelines.iter().any(|p| config.consumes(p, subject)))
            .then(|| format!("no pipeline in {file} consumes `{subject}`"));
    }
    match config.pipeline(pipeline) {
        None => Some(format!(
            "its pipeline `{pipeline}` is not in {file}, so no pipeline would run it \
             (add the pipeline back, or address it to another with --to PIPELINE)"
        )),
        Some(p) if !config.consumes(p, subject) => Some(format!(
            "pipeline `{pipeline}` does not consume `{subject}` (streams {:?})",
            p.streams
        )),
        Some(_) => None,
    }
}

async fn redrive_all(
    ctx: &jetstream::Context,
    config: &Config,
    dlq: &mut Dlq,
    args: &RedriveArgs,
    selection: &Selection,
    total: u64,
) -> anyhow::Result<ExitCode> {
    let limit = args.common.limit.unwrap_or(u64::MAX);
    let bar = if args.dry_run {
        indicatif::ProgressBar::hidden()
    } else {
        super::progress_bar(total.min(limit), "redriving")
    };
    let mut pace = args.rate.map(|r| {
        (
            Duration::from_secs_f64(1.0 / r),
            tokio::time::Instant::now(),
        )
    });
    let (mut sent, mut repeated, mut failed, mut unselected) = (0u64, 0u64, 0u64, 0u64);
    while sent + failed < limit {
        let Some(d) = dlq.next().await? else { break };
        bar.inc(1);
        if !selection.matches(&d.facts, d.stored_at) {
            unselected += 1;
            continue;
        }
        let mut facts = d.facts.clone();
        if let Some(to) = &args.to {
            facts.pipeline = to.clone();
        }
        // Never removed from the DLQ before some pipeline will run it.
        if let Some(why) = unrunnable(config, &args.common.config, &facts.pipeline, &facts.subject)
        {
            failed += 1;
            bar.suspend(|| {
                eprintln!(
                    "cannot redrive {} #{}: {why}; it stays in the DLQ",
                    dlq.name, d.seq
                )
            });
            continue;
        }
        let r = match redrive::republish(&d.headers, &facts, &dlq.name, d.seq) {
            Ok(r) => r,
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("cannot redrive {} #{}: {e}", dlq.name, d.seq));
                continue;
            }
        };
        if args.dry_run {
            sent += 1;
            println!(
                "would redrive {} to `{}` for pipeline {}",
                describe(&d),
                r.subject,
                if d.facts.pipeline.is_empty() {
                    "(every pipeline: no Jetplug-Pipeline header)"
                } else {
                    &d.facts.pipeline
                }
            );
            continue;
        }
        if let Some((every, next)) = pace.as_mut() {
            tokio::time::sleep_until(*next).await;
            *next = (*next + *every).max(tokio::time::Instant::now() - *every);
        }
        match send(ctx, dlq, &d, r).await {
            Ok(duplicate) => {
                sent += 1;
                repeated += u64::from(duplicate);
            }
            Err(e) => {
                failed += 1;
                bar.suspend(|| eprintln!("{e:#}"));
            }
        }
    }
    bar.finish_and_clear();
    let verb = if args.dry_run {
        "would redrive"
    } else {
        "redriven"
    };
    println!(
        "{verb} {sent} dead letters from `{}`{}{}{}",
        dlq.name,
        if repeated > 0 {
            format!(" ({repeated} already republished by an interrupted run; not stored twice)")
        } else {
            String::new()
        },
        if unselected > 0 {
            format!("; {unselected} not selected")
        } else {
            String::new()
        },
        if failed > 0 {
            format!("; {failed} FAILED (left in the DLQ)")
        } else {
            String::new()
        },
    );
    Ok(if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Republishes one dead letter and, once that is acknowledged, removes it.
/// True if the stream reported the republish as a duplicate.
async fn send(
    ctx: &jetstream::Context,
    dlq: &mut Dlq,
    d: &Stored,
    r: redrive::Republish,
) -> anyhow::Result<bool> {
    let mut headers = HeaderMap::new();
    for (k, v) in &r.headers {
        headers.append(k.as_str(), v.as_str());
    }
    headers.insert("Nats-Msg-Id", r.message_id.as_str());
    let what = || format!("republishing {} #{} to `{}`", dlq.name, d.seq, r.subject);
    let ack = ctx
        .publish_with_headers(r.subject.clone(), headers, d.payload.clone())
        .await
        .with_context(what)?
        .await
        .with_context(what)?;
    dlq.stream
        .delete_message(d.seq)
        .await
        .with_context(|| format!("removing {} #{} after its redrive", dlq.name, d.seq))?;
    Ok(ack.duplicate)
}
