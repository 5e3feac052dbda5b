//! Test support for jetplug: real servers and test plugins, never mocks.
//!
//! - [`NatsServer`]: a `nats-server -js` on a free port with a temporary store,
//!   killable and restartable on the same port (fault tests);
//! - [`NatsCluster`]: three JetStream nodes with routes on free ports, each
//!   killable and restartable on its ports;
//! - [`Postgres`]: a PostgreSQL cluster `initdb`-ed into a temporary directory
//!   on a free port, stoppable and restartable;
//! - [`plugins`]: paths of the components built from `plugins/`;
//! - [`rig`]: a host run in process against its own nats-server, and
//!   [`caps`]: the test-capabilities plugin, for the library's tests.

pub mod caps;
mod certs;
mod cli;
mod configs;
mod host;
mod http;
mod nats;
mod ports;
mod postgres;
pub mod rig;

pub use certs::{Issued, TestCa};
pub use cli::{jetplug, jetplug_binary, jetplug_cached, jetplug_cmd};
pub use configs::{TestConfig, noop_config};
pub use host::HostProcess;
pub use http::{http_get, http_get_with, wait_ready};
pub use nats::{ClusterPlace, NatsCluster, NatsServer, stream_leader};
pub use ports::free_port;
pub use postgres::{Postgres, scalar};

/// Paths of the test and shipped plugins, built by this crate's build script.
pub mod plugins {
    include!(concat!(env!("OUT_DIR"), "/plugins.rs"));
}

/// Where a server keeps its files: a temporary directory removed on drop
/// (tests), or a directory that stays (the demo's data across runs).
#[derive(Debug)]
pub(crate) enum Home {
    Temp(tempfile::TempDir),
    Kept(std::path::PathBuf),
}

impl Home {
    pub(crate) fn temp(prefix: &str) -> anyhow::Result<Home> {
        Ok(Home::Temp(
            tempfile::Builder::new().prefix(prefix).tempdir()?,
        ))
    }

    pub(crate) fn path(&self) -> &std::path::Path {
        match self {
            Home::Temp(t) => t.path(),
            Home::Kept(p) => p,
        }
    }
}

/// Polls `check` every 50 ms until it returns true; fails with `what` after `timeout`.
pub async fn eventually<F, Fut>(
    timeout: std::time::Duration,
    what: &str,
    mut check: F,
) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let start = std::time::Instant::now();
    let mut last_err = None;
    loop {
        match check().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_err
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// A command's stdout and stderr, together, for assertions and failure messages.
pub fn output_text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Finds a program: `$ENV_VAR` if set, else the first `name` on `PATH`.
pub(crate) fn find_program(
    env_var: &str,
    name: &str,
    extra_dirs: &[std::path::PathBuf],
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // scripts/setup.sh installs nats-server here when none is on PATH.
    let local = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.local/venv/bin");
    std::env::split_paths(&path)
        .chain(std::iter::once(local))
        .chain(extra_dirs.iter().cloned())
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            anyhow::anyhow!("`{name}` not found on PATH (or in ${env_var}); run scripts/setup.sh")
        })
}
