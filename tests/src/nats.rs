//! A real `nats-server` with JetStream for one test.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{find_program, free_port};

/// A `nats-server -js` on a free port with its own store directory. Killed and
/// its store removed on drop; [`NatsServer::restart`] brings it back on the
/// same port with the same store.
#[derive(Debug)]
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    store: TempDir,
    binary: PathBuf,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is ready.
    pub async fn start() -> anyhow::Result<Self> {
        let binary = find_program("NATS_SERVER_BIN", "nats-server", &[])?;
        let mut server = NatsServer {
            child: None,
            port: free_port()?,
            monitor_port: free_port()?,
            store: tempfile::Builder::new().prefix("jetplug-nats-").tempdir()?,
            binary,
        };
        server.spawn().await?;
        Ok(server)
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGKILL: the server dies at once, as in a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("kill nats-server")?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill().await?;
        self.spawn().await
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.store.path().join("server.log"))?;
        // Generous JetStream limits: streams reserve their max_bytes against
        // them, and the AIVO topology declares 42 GB.
        let conf = self.store.path().join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\n\
                 jetstream {{\n  store_dir: {:?}\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}}\n",
                self.port,
                self.monitor_port,
                self.store.path().join("jetstream").display().to_string()
            ),
        )?;
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("start {}", self.binary.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(20)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("nats-server exited early ({status}); log: {}", self.log());
            }
            if healthz(self.monitor_port).await {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!(
                    "nats-server not ready after {timeout:?}; log: {}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.store.path().join("server.log")).unwrap_or_default()
    }
}

/// GET /healthz on the monitoring port: 200 once JetStream is up.
async fn healthz(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = "GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response).await;
    response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200")
}
