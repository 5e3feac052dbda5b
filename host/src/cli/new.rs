//! `jetplug new NAME --lang rust|python|js [--dir D]`: a self-contained
//! plugin project that builds outside this repository.

use std::path::PathBuf;
use std::process::ExitCode;

use crate::authoring::scaffold::{self, Lang};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The plugin's name: lowercase letters, digits and `-`.
    name: String,
    /// The language of the project.
    #[arg(long, value_enum)]
    lang: Lang,
    /// Where to create it (default: ./NAME); must not exist or be empty.
    #[arg(long)]
    dir: Option<PathBuf>,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(&args.name));
    let written = scaffold::create(&dir, &args.name, args.lang)?;
    println!(
        "created {} ({} files, {:?} plugin `{}`)",
        dir.display(),
        written.len(),
        args.lang,
        args.name
    );
    let krate = args.name.replace('-', "_");
    let (build, wasm) = match args.lang {
        Lang::Rust => (
            "cargo build --release".to_owned(),
            format!("target/wasm32-wasip2/release/{krate}.wasm"),
        ),
        Lang::Python => ("make".to_owned(), format!("{}.wasm", args.name)),
        Lang::Js => (
            "npm install && npm run build".to_owned(),
            format!("{}.wasm", args.name),
        ),
    };
    println!("\nnext:\n  cd {}", dir.display());
    println!("  {build}");
    println!("  jetplug test {wasm} fixtures/*.jsonl");
    println!(
        "  jetplug plugin deploy {} {wasm} --config jetplug.toml",
        args.name
    );
    Ok(ExitCode::SUCCESS)
}
