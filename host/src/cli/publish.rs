//! `jetplug publish`: a sample event generator for the AIVO topology (or any
//! subject), at a given rate, with a share of malformed (non-JSON) events.
//! Each event carries a message id and is retried until acknowledged, so a
//! node failing over during the run neither loses nor duplicates events.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;

/// How long one event may take to be acknowledged, retries included.
const RETRY_FOR: Duration = Duration::from_secs(30);

type AckResult = Result<(), async_nats::jetstream::context::PublishError>;

/// One event in flight: subject, body, message id and its acknowledgement,
/// awaited in its own task so that its timeout runs from the publish (a
/// failover's lost acknowledgements all expire together, not one after
/// another).
type Pending = (String, String, String, tokio::task::JoinHandle<AckResult>);

/// Publishes one event (in order, on the caller's task) and starts waiting
/// for its acknowledgement in a task of its own.
async fn publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    body: &str,
    id: &str,
) -> tokio::task::JoinHandle<AckResult> {
    let sent = js
        .send_publish(
            subject.to_owned(),
            PublishMessage::build()
                .payload(body.to_owned().into_bytes().into())
                .message_id(id),
        )
        .await;
    tokio::spawn(async move {
        let ack: PublishAckFuture = sent?;
        ack.await.map(|_| ())
    })
}

/// Waits for one publish's acknowledgement; on a failure (a node failing
/// over, a lost connection) publishes it again with the same message id
/// until it is acknowledged or `RETRY_FOR` has passed.
async fn settle(js: &async_nats::jetstream::Context, p: Pending) -> anyhow::Result<()> {
    let (subject, body, id, mut ack) = p;
    let started = Instant::now();
    let mut retries = 0u32;
    loop {
        let error = match ack.await {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => e,
            Err(e) => anyhow::bail!("publishing to {subject}: {e}"),
        };
        // "No responders" is either a mistake (no stream captures the
        // subject: say so at once) or a stream between two leaders (retry).
        if error.kind() == PublishErrorKind::StreamNotFound
            && no_stream_captures(js, subject.as_str()).await
        {
            anyhow::bail!("no stream captures `{subject}`: declare one in [[stream]]");
        }
        if started.elapsed() > RETRY_FOR {
            anyhow::bail!("publishing to {subject} not acknowledged within {RETRY_FOR:?}: {error}");
        }
        tracing::debug!(%subject, %error, "publish not acknowledged; retrying");
        // The first retry goes at once (after a failover the window's
        // publishes fail together and the new leader takes them at once);
        // later ones wait.
        if retries > 0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        retries += 1;
        ack = publish(js, &subject, &body, &id).await;
    }
}

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
    let config = crate::host::resolve::load(&args.config)?;
    if let Some(s) = &args.subject {
        crate::subject::validate_publish_subject(s)
            .map_err(|e| anyhow::anyhow!("--subject: {e}"))?;
    }
    let js = super::connect_once(&config.nats).await?;
    let bar = indicatif::ProgressBar::new(args.count);
    let started = Instant::now();
    let mut malformed = 0;
    let mut pending = std::collections::VecDeque::new();
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
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
        // A message id per event: a publish retried after a lost
        // acknowledgement (a node failing over) is stored once.
        let id = format!("jetplug-publish-{run}-{i}");
        let ack = publish(&js, &subject, &body, &id).await;
        pending.push_back((subject, body, id, ack));
        // Keep a bounded window of unacknowledged publishes.
        if pending.len() >= 256
            && let Some(p) = pending.pop_front()
        {
            settle(&js, p).await?;
        }
        bar.inc(1);
    }
    for p in pending {
        settle(&js, p).await?;
    }
    bar.finish_and_clear();
    println!(
        "published {} events ({malformed} malformed) in {:.1}s",
        args.count,
        started.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// Whether the server says, for sure, that no stream captures `subject`
/// (not merely that it could not answer, as while a leader is elected).
async fn no_stream_captures(js: &async_nats::jetstream::Context, subject: &str) -> bool {
    use async_nats::jetstream::context::GetStreamByNameErrorKind;
    matches!(
        js.stream_by_subject(subject).await.map_err(|e| e.kind()),
        Err(GetStreamByNameErrorKind::NotFound)
    )
}
