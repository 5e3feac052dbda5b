//! A real PostgreSQL cluster for one test.
//!
//! PostgreSQL refuses to run as root, so when the tests run as root (CI) the
//! server runs as the `postgres` system user (created by Debian's package)
//! through `setpriv`, which execs in place: the child we hold *is* the server.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

use crate::{Home, find_program, free_port};

/// A PostgreSQL server on a free port with a fresh cluster in a temporary
/// directory ([`Postgres::start`]; removed on drop), or on a given port
/// with a cluster kept in a given directory ([`Postgres::start_at`], for
/// the demo). Stopped (fast shutdown) on drop.
#[derive(Debug)]
pub struct Postgres {
    child: Option<Child>,
    port: u16,
    dir: Home,
    bin: PathBuf,
    run_as: Option<String>,
    /// TCP connections must use TLS (`hostssl`); the test's own client
    /// goes through the Unix socket.
    tls: bool,
}

impl Postgres {
    /// Runs `initdb`, starts the server and waits until it accepts queries.
    pub async fn start() -> anyhow::Result<Self> {
        let dir = Home::temp("jetplug-pg-")?;
        Self::start_inner(dir, free_port()?, None).await
    }

    /// A server on `port` (0: a free port) whose cluster lives in `dir` (`dir/data`):
    /// `initdb` runs only when there is none yet, and the data stays
    /// after the server stops.
    pub async fn start_at(dir: &Path, port: u16) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let port = if port == 0 { free_port()? } else { port };
        Self::start_inner(Home::Kept(dir.to_path_buf()), port, None).await
    }

    /// A server with `ssl = on` presenting `server` (certificate and key),
    /// accepting TCP connections only over TLS; [`Postgres::connect`] uses
    /// the Unix socket.
    pub async fn start_tls(server: &crate::Issued) -> anyhow::Result<Self> {
        let dir = Home::temp("jetplug-pg-")?;
        Self::start_inner(dir, free_port()?, Some(server)).await
    }

    async fn start_inner(
        dir: Home,
        port: u16,
        tls: Option<&crate::Issued>,
    ) -> anyhow::Result<Self> {
        let bin = find_program("PG_BIN", "postgres", &debian_bin_dirs())?
            .parent()
            .map(Path::to_path_buf)
            .context("postgres binary has no directory")?;
        let run_as = is_root().then(|| "postgres".to_owned());
        let pg = Postgres {
            child: None,
            port,
            dir,
            bin,
            run_as,
            tls: tls.is_some(),
        };
        pg.prepare_dirs()?;
        if !pg.data().join("PG_VERSION").is_file() {
            pg.initdb().await?;
        }
        if let Some(server) = tls {
            pg.enable_tls(server)?;
        }
        let mut pg = pg;
        pg.spawn().await?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/postgres` (trust authentication).
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A connected client; its connection task runs on the current runtime.
    pub async fn connect(&self) -> anyhow::Result<tokio_postgres::Client> {
        let url = if self.tls {
            format!(
                "host={} port={} user=postgres dbname=postgres",
                self.dir.path().join("run").display(),
                self.port
            )
        } else {
            self.url()
        };
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }

    /// Fast shutdown (SIGINT): clients are disconnected, data is kept.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            signal(&child, "INT");
            match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
                Ok(status) => {
                    status?;
                }
                Err(_) => child.kill().await?,
            }
        }
        Ok(())
    }

    /// SIGKILL, as in a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// Starts the server again on the same port and data directory.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop().await?;
        self.spawn().await
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn prepare_dirs(&self) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))?;
        for sub in ["data", "run"] {
            std::fs::create_dir_all(self.dir.path().join(sub))?;
        }
        if let Some(user) = &self.run_as {
            let status = std::process::Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(self.dir.path())
                .status()?;
            if !status.success() {
                bail!(
                    "chown {user} {} failed: is there a `{user}` user? run scripts/setup.sh",
                    self.dir.path().display()
                );
            }
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let exe = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut cmd = Command::new("setpriv");
                cmd.args(["--reuid", user, "--regid", user, "--init-groups", "--"])
                    .arg(exe);
                cmd
            }
            None => Command::new(exe),
        }
    }

    /// Installs the server certificate and allows TCP only over TLS.
    fn enable_tls(&self, server: &crate::Issued) -> anyhow::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let data = self.data();
        std::fs::copy(&server.cert, data.join("server.crt"))?;
        std::fs::copy(&server.key, data.join("server.key"))?;
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )?;
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\nhostssl all all ::1/128 trust\n",
        )?;
        let mut conf = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(
            &mut conf,
            b"\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )?;
        if let Some(user) = &self.run_as {
            let status = std::process::Command::new("chown")
                .arg("-R")
                .arg(format!("{user}:"))
                .arg(&data)
                .status()?;
            if !status.success() {
                bail!("chown {user} {} failed", data.display());
            }
        }
        Ok(())
    }

    async fn initdb(&self) -> anyhow::Result<()> {
        let out = self
            .command("initdb")
            .arg("-D")
            .arg(self.data())
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .output()
            .await
            .context("run initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::create(self.dir.path().join("server.log"))?;
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.data())
            .args(["-p", &self.port.to_string()])
            .arg("-k")
            .arg(self.dir.path().join("run"))
            .args(["-c", "listen_addresses=127.0.0.1"])
            // A throwaway cluster need not survive a power cut; one that
            // stays (the demo's, the bench's) keeps PostgreSQL's defaults.
            .args(match self.dir {
                Home::Temp(_) => &["-c", "fsync=off", "-c", "full_page_writes=off"][..],
                Home::Kept(_) => &[][..],
            })
            .args(["-c", "max_connections=200"])
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start postgres")?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30)).await
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                bail!("postgres exited early ({status}); log: {}", self.log());
            }
            if let Ok(client) = self.connect().await
                && client.simple_query("select 1").await.is_ok()
            {
                return Ok(());
            }
            if start.elapsed() > timeout {
                bail!("postgres not ready after {timeout:?}; log: {}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What the server has logged so far (its stderr: errors, warnings,
    /// the statements that caused them).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, "INT");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.start_kill();
        }
    }
}

fn signal(child: &Child, sig: &str) {
    if let Some(pid) = child.id() {
        let _ = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Debian installs server binaries outside PATH, under a versioned directory.
fn debian_bin_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    dirs
}

/// The single `int8` value `sql` returns (`select count(*) ...`).
pub async fn scalar(db: &tokio_postgres::Client, sql: &str) -> anyhow::Result<i64> {
    let row = db
        .query_one(sql, &[])
        .await
        .map_err(|e| anyhow::anyhow!("`{sql}` failed: {e}"))?;
    Ok(row.try_get(0)?)
}
