//! The `jetplug` binary as a user runs it, for every test and the bench.
//!
//! cargo hands `CARGO_BIN_EXE_jetplug` only to the host crate's own tests;
//! the binary sits beside every test and bench executable in
//! `target/<profile>/`, so it is found there (or at `JETPLUG_BIN`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::Context;

/// The `jetplug` binary: `JETPLUG_BIN`, else the `jetplug` next to this
/// executable or its parent directory (tests run from `target/<profile>/deps/`).
pub fn jetplug_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("JETPLUG_BIN") {
        return Ok(path.into());
    }
    let me = std::env::current_exe().context("cannot find this executable")?;
    let dir = me.parent().context("this executable has no directory")?;
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join("jetplug"))
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no `jetplug` binary next to {} (build it: cargo build -p jetplug, or set JETPLUG_BIN)",
                me.display()
            )
        })
}

/// A `jetplug` command to add arguments and environment to.
pub fn jetplug_cmd() -> std::io::Result<Command> {
    jetplug_binary()
        .map(Command::new)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{e:#}")))
}

/// Runs `jetplug ARGS` and returns its output.
pub fn jetplug(args: &[&str]) -> std::io::Result<Output> {
    jetplug_cmd()?.args(args).output()
}

/// Runs `jetplug ARGS` with its compile cache in `cache` (`JETPLUG_CACHE_DIR`).
pub fn jetplug_cached(args: &[&str], cache: &Path) -> std::io::Result<Output> {
    jetplug_cmd()?
        .args(args)
        .env("JETPLUG_CACHE_DIR", cache)
        .output()
}
