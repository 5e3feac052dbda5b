//! `jetplug replay`: run a plugin over a pipeline's stream history, with a
//! progress bar, without touching the pipeline's durable consumers.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};

use crate::engine::Runtime;
use crate::plugin::{self, PluginInstance, PluginSpec};
use crate::replay::{self, From};

#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("start").required(true).args(["from_seq", "after_seq", "from_time"])))]
pub struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// The pipeline whose stream and plugin to use.
    #[arg(long)]
    pipeline: String,
    /// Which of the pipeline's streams (required when it has several).
    #[arg(long)]
    stream: Option<String>,
    /// First stream sequence to replay (inclusive).
    #[arg(long)]
    from_seq: Option<u64>,
    /// First stream sequence after this one (to resume after the last
    /// sequence a previous run reported).
    #[arg(long)]
    after_seq: Option<u64>,
    /// Replay messages stored at or after this RFC 3339 time.
    #[arg(long)]
    from_time: Option<String>,
    /// Last stream sequence to replay (inclusive; default: the stream's last).
    #[arg(long)]
    to_seq: Option<u64>,
    /// Use this component instead of the pipeline's plugin (same grants, limits and config).
    #[arg(long)]
    plugin: Option<PathBuf>,
    /// Messages per batch (default: the pipeline's).
    #[arg(long)]
    batch: Option<u32>,
    /// How long the server keeps the replay's ephemeral consumer once
    /// nothing reads it (an interrupted replay cleans itself up after it).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    inactive_threshold: std::time::Duration,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = crate::host::resolve::load(&args.config)?;
    let pipeline = config
        .pipeline(&args.pipeline)
        .with_context(|| {
            format!(
                "no pipeline `{}` in {}",
                args.pipeline,
                args.config.display()
            )
        })?
        .clone();
    let stream = match (&args.stream, pipeline.streams.as_slice()) {
        (Some(s), streams) if streams.contains(s) => s.clone(),
        (Some(s), streams) => bail!(
            "pipeline `{}` does not consume stream `{s}` (it consumes {streams:?})",
            pipeline.name
        ),
        (None, [only]) => only.clone(),
        (None, streams) => bail!(
            "pipeline `{}` consumes {streams:?}: choose one with --stream",
            pipeline.name
        ),
    };
    let from_seq = match args.after_seq {
        Some(after) => Some(after.checked_add(1).context("--after-seq is too large")?),
        None => args.from_seq,
    };
    if args.inactive_threshold < std::time::Duration::from_secs(1) {
        bail!("--inactive-threshold must be at least 1s");
    }
    let from = match (from_seq, &args.from_time) {
        (Some(0), _) => bail!("--from-seq: stream sequences start at 1"),
        (Some(seq), _) => From::Sequence(seq),
        (None, Some(t)) => From::Time(
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339)
                .with_context(|| {
                    format!("--from-time `{t}` is not an RFC 3339 time (e.g. 2026-01-31T12:00:00Z)")
                })?,
        ),
        (None, None) => bail!("give --from-seq or --from-time"),
    };
    if let (Some(from), Some(to)) = (from_seq, args.to_seq)
        && to < from
    {
        bail!("--to-seq {to} is before the first sequence to replay ({from})");
    }

    let runtime = Arc::new(Runtime::new(crate::engine::EngineSettings::from(
        &config.engine,
    ))?);
    let mut spec = PluginSpec::from_config(&pipeline.plugin, &config.plugins[&pipeline.plugin]);
    if let Some(path) = &args.plugin {
        spec.path = path.clone();
    }
    let tenant = spec.tenant.clone();
    let backends = crate::capability::Backends::with_databases(&config.databases)?;
    let plugin = plugin::load_with(&runtime, spec, backends.clone())?;
    let mut instance = PluginInstance::new(Arc::new(plugin));
    instance
        .ready()
        .await
        .context("the plugin failed to start")?;

    let js = super::connect_once(&config.nats).await?;
    backends.set_nats(js.clone());

    let req = replay::Request {
        stream: stream.clone(),
        from,
        to: args.to_seq,
        batch: args.batch.unwrap_or(pipeline.batch).max(1) as usize,
        inactive_threshold: args.inactive_threshold,
    };
    let Some(span) = replay::span(&js, &req).await? else {
        eprintln!("nothing to replay in stream `{stream}`");
        return Ok(ExitCode::SUCCESS);
    };
    let bar = super::progress_bar(span.last.saturating_sub(span.first) + 1, "replay");
    let report = replay::run(&js, &req, span, &mut instance, &tenant, |r| {
        bar.set_position(r.last_sequence.saturating_sub(span.first) + 1);
    })
    .await?;
    bar.finish_and_clear();
    println!(
        "replayed {} messages of `{stream}` (up to sequence {}): {} ack, {} retry, {} term, {} failed",
        report.messages,
        report.last_sequence,
        report.acked,
        report.retried,
        report.terminated,
        report.failed
    );
    Ok(if report.failed > 0 {
        ExitCode::from(super::EXIT_BATCH_FAILED)
    } else {
        ExitCode::SUCCESS
    })
}
