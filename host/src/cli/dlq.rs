//! `jetplug dlq list|redrive`: look at dead letters, and send them back to
//! their original subjects. A dead letter is removed from the DLQ stream only
//! after its republish was acknowledged, so a failed redrive loses nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use async_nats::HeaderMap;
use async_nats::jetstream::consumer;
use futures::StreamExt;

use crate::config::Config;
use crate::deadletter::headers;
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
    /// Republish dead letters to their original subjects and remove them from the DLQ.
    Redrive(Common),
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
    /// At most this many dead letters.
    #[arg(long)]
    limit: Option<u64>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (c, redrive) = match &args.action {
        Action::List(c) => (c, false),
        Action::Redrive(c) => (c, true),
    };
    let config = Config::load(&c.config)?;
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
    let mut s = ctx
        .get_stream(&stream)
        .await
        .with_context(|| format!("stream `{stream}`"))?;
    let total = s.info().await?.state.messages;
    if total == 0 {
        println!("{stream}: no dead letters");
        return Ok(ExitCode::SUCCESS);
    }
    let consumer = s
        .create_consumer(consumer::pull::Config {
            ack_policy: consumer::AckPolicy::None,
            filter_subject: c.filter.clone().unwrap_or_default(),
            inactive_threshold: std::time::Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .context("creating a reader on the DLQ")?;
    let mut messages = consumer.stream().messages().await?;
    let limit = c.limit.unwrap_or(u64::MAX);
    let mut seen = 0u64;
    let mut by_reason: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut redriven = 0u64;
    while seen < limit {
        let next = tokio::time::timeout(std::time::Duration::from_secs(2), messages.next()).await;
        let Ok(Some(msg)) = next else { break };
        let msg = msg.map_err(|e| anyhow::anyhow!("reading the DLQ: {e}"))?;
        let info = msg.info().map_err(|e| anyhow::anyhow!("{e}"))?;
        let (seq, left) = (info.stream_sequence, info.pending);
        seen += 1;
        let h = msg.headers.clone().unwrap_or_default();
        let get = |k: &str| h.get(k).map(|v| v.as_str().to_owned()).unwrap_or_default();
        let reason = get(headers::REASON);
        // Group by the reason's first clause ("payload is not JSON: ..." → "payload is not JSON").
        let kind = reason.split(':').next().unwrap_or_default().to_owned();
        *by_reason
            .entry((msg.subject.to_string(), kind))
            .or_default() += 1;
        if redrive {
            let original = get(headers::SUBJECT);
            if original.is_empty() {
                eprintln!("skipping {stream} #{seq}: no {} header", headers::SUBJECT);
            } else {
                let mut out = HeaderMap::new();
                for (k, vs) in h.iter() {
                    if !k.to_string().starts_with("Jetplug-")
                        && !k.to_string().eq_ignore_ascii_case("Nats-Msg-Id")
                    {
                        for v in vs {
                            out.append(k.to_string().as_str(), v.as_str());
                        }
                    }
                }
                out.insert("Jetplug-Redriven-From", format!("{stream}:{seq}").as_str());
                ctx.publish_with_headers(original.clone(), out, msg.payload.clone())
                    .await?
                    .await
                    .with_context(|| format!("republishing {stream} #{seq} to `{original}`"))?;
                s.delete_message(seq)
                    .await
                    .with_context(|| format!("removing {stream} #{seq} after its redrive"))?;
                redriven += 1;
            }
        } else if seen <= 5 {
            println!(
                "#{seq} {} (from {} #{} via {}, {} deliveries): {reason}",
                msg.subject,
                get(headers::STREAM),
                get(headers::SEQUENCE),
                get(headers::PIPELINE),
                get(headers::DELIVERIES)
            );
        }
        if left == 0 {
            break;
        }
    }
    if redrive {
        println!("redriven {redriven} dead letters from `{stream}` to their original subjects");
    } else {
        println!(
            "{seen} dead letters in `{stream}`{}:",
            c.filter
                .as_ref()
                .map(|f| format!(" matching {f}"))
                .unwrap_or_default()
        );
        for ((subj, reason), n) in &by_reason {
            println!("  {n:>6}  {subj}  {reason}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
