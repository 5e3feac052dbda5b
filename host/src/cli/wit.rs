//! `jetplug wit [--out DIR] [--version V]`: prints or writes the exact WIT
//! package this host implements (or an earlier one it still loads), so a
//! plugin can be built anywhere from the binary alone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::wit;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Write the WIT files into this directory (created if missing) instead
    /// of printing them.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// The package version to hand out: the current one (default) or an
    /// earlier one this host still loads, e.g. `0.1.0`.
    #[arg(long)]
    version: Option<String>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let version = args.version.as_deref().unwrap_or(wit::VERSION);
    let Some(files) = wit::files(version) else {
        anyhow::bail!(
            "--version {version}: this host has not shipped that WIT version (it has: {})",
            wit::SHIPPED.join(", ")
        );
    };
    let package = format!("jetplug:plugin@{version}");
    match args.out {
        Some(dir) => {
            let written = wit::write_files(
                &dir,
                files.iter().map(|(name, text)| ((*name).to_owned(), *text)),
            )
            .with_context(|| format!("writing the WIT package {package}"))?;
            for f in written {
                println!("wrote {}", f.display());
            }
            eprintln!(
                "{package} (world `{}`): build your component against it",
                wit::WORLD
            );
        }
        None => {
            for (_, text) in files {
                print!("{text}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
