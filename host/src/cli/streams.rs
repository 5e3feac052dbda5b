//! `jetplug streams diff|apply --config FILE`: show or apply the stream plan
//! without consuming anything.

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
                streams::Applied::Unchanged => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
