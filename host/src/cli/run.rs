//! `jetplug run --config FILE`: consume every pipeline until SIGINT/SIGTERM,
//! then finish and settle in-flight batches and exit 0.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::host;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The configuration file.
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
}

/// Reads and validates the configuration (before logging starts: its
/// `[telemetry]` section is part of the logging setup).
pub fn load(args: &Args) -> anyhow::Result<Config> {
    Ok(crate::host::resolve::load(&args.config)?)
}

pub async fn run(args: Args, config: Config) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    host::run(config, shutdown, |_| {})
        .await
        .with_context(|| format!("cannot run {}", args.config.display()))?;
    Ok(ExitCode::SUCCESS)
}

async fn stop_on_signal(shutdown: CancellationToken) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
    shutdown.cancel();
}
