//! `jetplug wit [--out DIR]`: prints or writes the exact WIT package this
//! host implements, so a plugin can be built anywhere from the binary alone.

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
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.out {
        Some(dir) => {
            let files = wit::write_to(&dir)
                .with_context(|| format!("writing the WIT package {}", wit::PACKAGE))?;
            for f in files {
                println!("wrote {}", f.display());
            }
            eprintln!(
                "{} (world `{}`): build your component against it",
                wit::PACKAGE,
                wit::WORLD
            );
        }
        None => {
            for (_, text) in wit::FILES {
                print!("{text}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
