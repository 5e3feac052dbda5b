//! `jetplug streams diff|apply|purge|delete`: show or apply the stream
//! plan without consuming anything, and the two destructive operations
//! operators run by hand — each confirmed by typing the stream's name on a
//! terminal, or by `--yes` in scripts, because neither can be undone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::jetstream::streams;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show what `apply` would change.
    Diff(Target),
    /// Create missing streams and update drifted ones.
    Apply(Target),
    /// Remove messages from a stream (all, or one subject's; --keep the newest N).
    Purge(Purge),
    /// Delete a stream and every message and consumer in it.
    Delete(Delete),
}

#[derive(Debug, clap::Args)]
struct Purge {
    /// The stream.
    stream: String,
    /// Only messages of this subject (wildcards allowed).
    #[arg(long)]
    subject: Option<String>,
    /// Keep the newest N messages (of `--subject`, if given).
    #[arg(long)]
    keep: Option<u64>,
    #[command(flatten)]
    confirm: Confirm,
}

#[derive(Debug, clap::Args)]
struct Delete {
    /// The stream.
    stream: String,
    #[command(flatten)]
    confirm: Confirm,
}

#[derive(Debug, clap::Args)]
struct Confirm {
    /// The configuration file (for the NATS connection).
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// Do not ask; needed when standard input is not a terminal.
    #[arg(long)]
    yes: bool,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (target, apply) = match &args.action {
        Action::Diff(t) => (t, false),
        Action::Apply(t) => (t, true),
        Action::Purge(p) => return purge(p).await,
        Action::Delete(d) => return delete(d).await,
    };
    let config = crate::host::resolve::load(&target.config)?;
    let js = super::connect_once(&config.nats).await?;
    let plans = streams::plan(&js, &config.provisioned_streams()).await?;
    for plan in &plans {
        println!("{plan}");
        if apply {
            let applied = streams::apply(&js, plan)
                .await
                .with_context(|| format!("applying stream `{}`", plan.name))?;
            match applied {
                streams::Applied::UpdateRefused { reason } => {
                    println!("    ! JetStream refused the update ({reason}); existing stream kept")
                }
                streams::Applied::Updated { refused } if !refused.is_empty() => {
                    println!(
                        "    ! {} field(s) cannot change; existing values kept",
                        refused.len()
                    )
                }
                streams::Applied::Created | streams::Applied::Updated { .. } => {
                    println!("    applied")
                }
                streams::Applied::Unchanged | streams::Applied::Checked { .. } => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn purge(args: &Purge) -> anyhow::Result<ExitCode> {
    let config = crate::host::resolve::load(&args.confirm.config)?;
    let js = super::connect_once(&config.nats).await?;
    let mut stream = js
        .get_stream(&args.stream)
        .await
        .with_context(|| format!("stream `{}`", args.stream))?;
    let state = stream.info().await?.state.clone();
    let what = match (&args.subject, args.keep) {
        (None, None) => "every message".to_owned(),
        (Some(s), None) => format!("every message of `{s}`"),
        (None, Some(n)) => format!("all but the newest {n} messages"),
        (Some(s), Some(n)) => format!("all but the newest {n} messages of `{s}`"),
    };
    println!(
        "stream `{}` holds {} messages ({} bytes); purging {what}",
        args.stream, state.messages, state.bytes
    );
    if !confirmed(&args.stream, &args.confirm)? {
        println!("nothing purged");
        return Ok(ExitCode::FAILURE);
    }
    let request = stream.purge();
    let request = match &args.subject {
        Some(s) => request.filter(s.clone()),
        None => request,
    };
    let done = match args.keep {
        Some(n) => request.keep(n).await,
        None => request.await,
    }
    .with_context(|| format!("purging stream `{}`", args.stream))?;
    println!("purged {} message(s) from `{}`", done.purged, args.stream);
    Ok(ExitCode::SUCCESS)
}

async fn delete(args: &Delete) -> anyhow::Result<ExitCode> {
    let config = crate::host::resolve::load(&args.confirm.config)?;
    let js = super::connect_once(&config.nats).await?;
    let mut stream = js
        .get_stream(&args.stream)
        .await
        .with_context(|| format!("stream `{}`", args.stream))?;
    let info = stream.info().await?.clone();
    println!(
        "stream `{}` holds {} messages ({} bytes) and {} consumers; deleting it",
        args.stream, info.state.messages, info.state.bytes, info.state.consumer_count
    );
    if !confirmed(&args.stream, &args.confirm)? {
        println!("nothing deleted");
        return Ok(ExitCode::FAILURE);
    }
    js.delete_stream(&args.stream)
        .await
        .with_context(|| format!("deleting stream `{}`", args.stream))?;
    println!("deleted stream `{}`", args.stream);
    if config.stream(&args.stream).is_some_and(|s| s.manage) {
        println!(
            "note: `{}` is declared in {} (manage = true): a host re-creates it, empty, when it next reconciles its streams",
            args.stream,
            args.confirm.config.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `--yes`, or the stream's name typed on a terminal.
fn confirmed(stream: &str, confirm: &Confirm) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if confirm.yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "this cannot be undone: pass --yes to confirm (standard input is not a terminal, so there is no one to ask)"
        );
    }
    print!("this cannot be undone; type the stream's name (`{stream}`) to go on: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == stream)
}
