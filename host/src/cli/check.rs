//! `jetplug check --config FILE`: validate the configuration and load every
//! plugin it names (compile, grants, `init`) without connecting anywhere —
//! except to the effects database of an `effects = "exactly-once"`
//! pipeline, to report a missing privilege before traffic flows.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::engine::Runtime;
use crate::host;

/// How long `check` tries to reach an effects database.
const PRIVILEGES_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let config = crate::host::resolve::load(&args.config)?;
    let runtime = Arc::new(Runtime::new(crate::engine::EngineSettings::from(
        &config.engine,
    ))?);
    let backends = crate::capability::Backends::with_databases(&config.databases)?;
    let plugins = host::load_plugins(&config, &runtime, &backends).await?;
    for w in config.warnings() {
        eprintln!("warning: {w}");
    }
    let mut refused = false;
    for pc in &config.pipelines {
        let Some(plan) = host::effects_plan(&config, pc, &backends)? else {
            continue;
        };
        match plan.missing_privileges(PRIVILEGES_WAIT).await {
            Ok(missing) => {
                for m in &missing {
                    eprintln!("error: pipeline `{}` (exactly-once): {m}", pc.name);
                }
                refused |= !missing.is_empty();
            }
            Err(e) if e.is_transient() => eprintln!(
                "warning: pipeline `{}` (exactly-once): its effects database's privileges are not checked: {e}",
                pc.name
            ),
            Err(e) => {
                eprintln!("error: pipeline `{}` (exactly-once): {e}", pc.name);
                refused = true;
            }
        }
    }
    if refused {
        return Ok(ExitCode::from(1));
    }
    println!(
        "{}: ok ({} streams, {} plugins loaded, {} pipelines)",
        args.config.display(),
        config.streams.len(),
        plugins.len(),
        config.pipelines.len()
    );
    Ok(ExitCode::SUCCESS)
}
