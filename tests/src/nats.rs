//! Real `nats-server` processes with JetStream: one server for a test
//! ([`NatsServer`]), or a 3-node cluster ([`NatsCluster`]). Each node has its
//! own ports and store, can be killed (SIGKILL, as in a crash) and restarted
//! on the same ports with the same store.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};

use crate::{Home, find_program, free_port};

/// One nats-server process: its ports, store directory and config.
#[derive(Debug)]
struct Node {
    child: Option<Child>,
    port: u16,
    monitor_port: u16,
    dir: PathBuf,
    /// Extra lines for the server config (cluster block, server name).
    extra: String,
    binary: PathBuf,
}

impl Node {
    fn new(dir: PathBuf, port: u16, monitor_port: u16, extra: String) -> anyhow::Result<Self> {
        std::fs::create_dir_all(&dir)?;
        Ok(Node {
            child: None,
            port,
            monitor_port,
            dir,
            extra,
            binary: find_program("NATS_SERVER_BIN", "nats-server", &[])?,
        })
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    async fn kill(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill().await.context("kill nats-server")?;
        }
        Ok(())
    }

    /// SIGTERM (the server flushes its store), SIGKILL after 10 s.
    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .arg("-TERM")
                    .arg(pid.to_string())
                    .status();
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                child.kill().await.context("kill nats-server")?;
            }
        }
        Ok(())
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Starts the process (without waiting for it to be ready).
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("server.log"))?;
        // Generous JetStream limits: streams reserve their max_bytes against
        // them, and the AIVO topology declares 42 GB. Messages up to 2 MiB
        // (the payload benchmark sends 1 MiB payloads with headers).
        let conf = self.dir.join("server.conf");
        std::fs::write(
            &conf,
            format!(
                "listen: \"127.0.0.1:{}\"\nhttp: \"127.0.0.1:{}\"\nmax_payload: 2MB\n\
                 jetstream {{\n  store_dir: {:?}\n  max_file_store: 1TB\n  max_memory_store: 1GB\n}}\n{}",
                self.port,
                self.monitor_port,
                self.dir.join("jetstream").display().to_string(),
                self.extra
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
        Ok(())
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
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// A `nats-server -js` on a free port with its own store directory. Killed and
/// its store removed on drop; [`NatsServer::restart`] brings it back on the
/// same port with the same store.
#[derive(Debug)]
pub struct NatsServer {
    node: Node,
    _store: Home,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is ready.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with("").await
    }

    /// Starts a server with `extra` lines in its configuration (an
    /// `authorization` or `tls` block, say).
    pub async fn start_with(extra: &str) -> anyhow::Result<Self> {
        let store = Home::temp("jetplug-nats-")?;
        let node = Node::new(
            store.path().to_path_buf(),
            free_port()?,
            free_port()?,
            extra.to_owned(),
        )?;
        Self::run(node, store).await
    }

    /// A server on `port` (0: a free port) whose store stays in `dir`.
    pub async fn start_at(dir: &Path, port: u16) -> anyhow::Result<Self> {
        let port = if port == 0 { free_port()? } else { port };
        let node = Node::new(dir.to_path_buf(), port, free_port()?, String::new())?;
        Self::run(node, Home::Kept(dir.to_path_buf())).await
    }

    async fn run(mut node: Node, store: Home) -> anyhow::Result<Self> {
        node.spawn()?;
        node.wait_ready(Duration::from_secs(20)).await?;
        Ok(NatsServer {
            node,
            _store: store,
        })
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.node.url()
    }

    pub fn port(&self) -> u16 {
        self.node.port
    }

    pub fn is_running(&mut self) -> bool {
        self.node.is_running()
    }

    /// SIGKILL: the server dies at once, as in a crash.
    pub async fn kill(&mut self) -> anyhow::Result<()> {
        self.node.kill().await
    }

    /// SIGTERM: a clean shutdown.
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        self.node.stop().await
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.node.pid()
    }

    /// Starts the server again on the same port with the same store.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.node.kill().await?;
        self.node.spawn()?;
        self.node.wait_ready(Duration::from_secs(20)).await
    }
}

/// A 3-node JetStream cluster on loopback: client, monitoring and route
/// ports are free ports, each node has its own store under one temporary
/// directory (removed on drop). Nodes are named `n0`, `n1`, `n2`.
/// [`NatsCluster::start_at`] sets ports, names and a store that stays.
#[derive(Debug)]
pub struct NatsCluster {
    nodes: Vec<Node>,
    first: usize,
    _dir: Home,
}

/// Where [`NatsCluster::start_at`] puts a cluster.
#[derive(Debug, Clone)]
pub struct ClusterPlace {
    /// Nodes' stores go in `dir/n{i}`, kept after the cluster stops.
    pub dir: PathBuf,
    /// The cluster's name.
    pub name: String,
    /// Nodes are named `n{first}`, `n{first+1}`, `n{first+2}`.
    pub first: usize,
    /// Client, monitoring and route port of each node (0: a free port).
    pub ports: [[u16; 3]; 3],
}

impl NatsCluster {
    /// Starts three nodes and waits until each is healthy and the cluster
    /// has a JetStream meta leader. Ports are picked free but may be taken
    /// by a parallel test before a node binds them: a cluster that does not
    /// come up is started again on fresh ports (three tries).
    pub async fn start() -> anyhow::Result<Self> {
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start().await {
                Ok(c) => return Ok(c),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("the cluster did not start")))
    }

    /// A cluster placed as `place` says; waits as [`NatsCluster::start`].
    pub async fn start_at(place: &ClusterPlace) -> anyhow::Result<Self> {
        Self::launch(
            Home::Kept(place.dir.clone()),
            &place.name,
            place.first,
            place.ports,
        )
        .await
    }

    async fn try_start() -> anyhow::Result<Self> {
        Self::launch(
            Home::temp("jetplug-cluster-")?,
            "jetplug-test",
            0,
            [[0; 3]; 3],
        )
        .await
    }

    async fn launch(
        dir: Home,
        name: &str,
        first: usize,
        ports: [[u16; 3]; 3],
    ) -> anyhow::Result<Self> {
        let pick = |p: u16| if p == 0 { free_port() } else { Ok(p) };
        let mut chosen = [[0u16; 3]; 3];
        for (c, p) in chosen.iter_mut().zip(ports) {
            for (c, p) in c.iter_mut().zip(p) {
                *c = pick(p)?;
            }
        }
        let route_urls = chosen
            .iter()
            .map(|[_, _, route]| format!("\"nats-route://127.0.0.1:{route}\""))
            .collect::<Vec<_>>()
            .join(", ");
        let mut nodes = Vec::with_capacity(chosen.len());
        for (i, [client, monitor, route]) in chosen.iter().enumerate() {
            let n = first + i;
            let extra = format!(
                "server_name: n{n}\ncluster {{\n  name: {name}\n  listen: \"127.0.0.1:{route}\"\n  routes: [{route_urls}]\n}}\n"
            );
            nodes.push(Node::new(
                dir.path().join(format!("n{n}")),
                *client,
                *monitor,
                extra,
            )?);
        }
        for node in &mut nodes {
            node.spawn()?;
        }
        let mut cluster = NatsCluster {
            nodes,
            first,
            _dir: dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.nodes[i].wait_ready(Duration::from_secs(20)).await?;
        }
        cluster.wait_meta_leader().await?;
        Ok(cluster)
    }

    /// Every node's URL, comma-separated (the form `[nats] url` takes).
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(Node::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s URL.
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i`'s server name (`n{i}` for [`NatsCluster::start`]), as
    /// JetStream reports leaders.
    pub fn name(&self, i: usize) -> String {
        format!("n{}", self.first + i)
    }

    /// Node `i`'s process id while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.nodes[i].pid()
    }

    /// SIGTERM every node (clean shutdown).
    pub async fn stop(&mut self) -> anyhow::Result<()> {
        for node in &mut self.nodes {
            node.stop().await?;
        }
        Ok(())
    }

    /// The index of the node named `name` (`n0`..`n2`).
    pub fn index_of(&self, name: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|i| self.name(*i) == name)
    }

    /// SIGKILL node `i`.
    pub async fn kill(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill().await
    }

    /// Restarts node `i` on its ports with its store and waits until healthy.
    pub async fn restart(&mut self, i: usize) -> anyhow::Result<()> {
        self.nodes[i].kill().await?;
        self.nodes[i].spawn()?;
        self.nodes[i].wait_ready(Duration::from_secs(30)).await
    }

    /// How many client connections named `name` node `i` serves (from its
    /// monitoring endpoint `/connz`).
    pub async fn connections_named(&self, i: usize, name: &str) -> anyhow::Result<usize> {
        let addr = format!("127.0.0.1:{}", self.nodes[i].monitor_port);
        let (_, body) = crate::http_get(&addr, "/connz?limit=1024").await?;
        Ok(body.matches(&format!("\"name\": \"{name}\"")).count())
    }

    /// Whether node `i`'s process is alive.
    pub fn is_running(&mut self, i: usize) -> bool {
        self.nodes[i].is_running()
    }

    /// A JetStream context on a connection to all three nodes, with a
    /// request timeout long enough for replicated operations on a busy
    /// machine.
    pub async fn jetstream(&self) -> anyhow::Result<async_nats::jetstream::Context> {
        let mut js = async_nats::jetstream::new(async_nats::connect(self.servers()?).await?);
        js.set_timeout(Duration::from_secs(20));
        Ok(js)
    }

    fn servers(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        Ok(self
            .nodes
            .iter()
            .map(|n| n.url().parse())
            .collect::<Result<Vec<async_nats::ServerAddr>, _>>()?)
    }

    /// Waits until JetStream answers account requests (a meta leader exists).
    pub async fn wait_meta_leader(&self) -> anyhow::Result<()> {
        let start = Instant::now();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(30) {
            match async_nats::connect(self.servers()?).await {
                Ok(client) => match async_nats::jetstream::new(client).query_account().await {
                    Ok(_) => return Ok(()),
                    Err(e) => last = e.to_string(),
                },
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        bail!("the cluster elected no JetStream meta leader in 30 s (last: {last})")
    }
}

/// The name of the node leading `stream`, waiting up to `timeout` for one
/// (while there is no leader, the info request itself may fail).
pub async fn stream_leader(
    js: &async_nats::jetstream::Context,
    stream: &str,
    timeout: Duration,
) -> anyhow::Result<String> {
    let start = Instant::now();
    loop {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
            && let Some(name) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return Ok(name);
        }
        anyhow::ensure!(
            start.elapsed() < timeout,
            "`{stream}` has no leader after {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
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
