//! `jetplug check --config FILE`: validate the configuration and load every
//! plugin it names (compile, grants, `init`) without connecting anywhere.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use crate::engine::Runtime;
use crate::host;

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
    println!(
        "{}: ok ({} streams, {} plugins loaded, {} pipelines)",
        args.config.display(),
        config.streams.len(),
        plugins.len(),
        config.pipelines.len()
    );
    Ok(ExitCode::SUCCESS)
}
