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

    /// SIGTERM, as an orchestrator stops it (the host drains), and waits
    /// for it to exit, at most `within`; its exit status.
    pub async fn terminate(
        &mut self,
        within: Duration,
    ) -> anyhow::Result<std::process::ExitStatus> {
        let sent = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        anyhow::ensure!(sent.success(), "kill -TERM failed");
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if std::time::Instant::now() > deadline {
                self.kill()?;
                anyhow::bail!("did not exit within {within:?} of SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
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
