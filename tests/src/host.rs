//! A `jetplug run` child process for tests that need real host processes
//! (fleets, crashes): its admin address, its log, SIGKILL; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use crate::wait_ready;

/// A host process started with `jetplug run --config CONFIG`.
#[derive(Debug)]
pub struct HostProcess {
    child: Child,
    /// The admin address the configuration gives it.
    pub admin: String,
    log: PathBuf,
}

impl HostProcess {
    /// Starts `binary run --config config`, stderr to `log`.
    pub fn start(binary: &str, config: &Path, admin: String, log: PathBuf) -> anyhow::Result<Self> {
        Self::start_with_env(binary, config, admin, log, &[])
    }

    /// [`HostProcess::start`] with extra environment variables.
    pub fn start_with_env(
        binary: &str,
        config: &Path,
        admin: String,
        log: PathBuf,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let child = Command::new(binary)
            .args(["run", "--config"])
            .arg(config)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .with_context(|| format!("start {binary}"))?;
        Ok(HostProcess { child, admin, log })
    }

    /// Everything it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200.
    pub async fn ready(&self) -> anyhow::Result<()> {
        wait_ready(&self.admin, Duration::from_secs(60))
            .await
            .with_context(|| self.log())
    }

    /// SIGKILL, as in a crash.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for HostProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
