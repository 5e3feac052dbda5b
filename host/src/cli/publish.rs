//! `jetplug publish`: a sample event generator for the AIVO topology (or any
//! subject), at a given rate, with a share of malformed (non-JSON) events.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::config::Config;

/// Subjects cycled through when `--subject` is not given.
const AIVO_SUBJECTS: &[&str] = &[
    "learning.quiz.answered",
    "learning.lesson.completed",
    "focus.session.started",
    "focus.session.ended",
    "homework.assignment.submitted",
    "recommendation.item.shown",
];

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file (for the NATS connection).
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// Publish to this subject only (default: cycle through the AIVO subjects).
    #[arg(long)]
    subject: Option<String>,
    /// Number of events.
    #[arg(long, default_value_t = 1000)]
    count: u64,
    /// Events per second; 0 = as fast as acknowledgements allow.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Every Nth event is malformed (not JSON); 0 = none.
    #[arg(long, default_value_t = 50)]
    malformed_every: u64,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = Config::load(&args.config)?;
    if let Some(s) = &args.subject {
        crate::subject::validate_publish_subject(s)
            .map_err(|e| anyhow::anyhow!("--subject: {e}"))?;
    }
    let js = super::connect_once(&config.nats).await?;
    let bar = indicatif::ProgressBar::new(args.count);
    let started = Instant::now();
    let mut malformed = 0;
    let mut pending = std::collections::VecDeque::new();
    for i in 0..args.count {
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(i as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
        let is_malformed = args.malformed_every > 0 && (i + 1) % args.malformed_every == 0;
        let subject = match &args.subject {
            Some(s) => s.clone(),
            // Malformed events take the subjects in turn, so every stream gets some.
            None if is_malformed => {
                AIVO_SUBJECTS[(malformed as usize) % AIVO_SUBJECTS.len()].to_owned()
            }
            None => AIVO_SUBJECTS[(i as usize) % AIVO_SUBJECTS.len()].to_owned(),
        };
        let body = if is_malformed {
            malformed += 1;
            format!("{{\"student\": \"s-{i}\", broken")
        } else {
            format!(
                "{{\"student\":\"s-{}\",\"seq\":{i},\"score\":{}}}",
                i % 97,
                (i * 7) % 100
            )
        };
        pending.push_back(
            js.publish(subject.clone(), body.into_bytes().into())
                .await
                .with_context(|| format!("publishing to {subject}"))?,
        );
        // Keep a bounded window of unacknowledged publishes.
        if pending.len() >= 256
            && let Some(ack) = pending.pop_front()
        {
            ack.await
                .context("publish not acknowledged (is a stream capturing the subject?)")?;
        }
        bar.inc(1);
    }
    for ack in pending {
        ack.await
            .context("publish not acknowledged (is a stream capturing the subject?)")?;
    }
    bar.finish_and_clear();
    println!(
        "published {} events ({malformed} malformed) in {:.1}s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
