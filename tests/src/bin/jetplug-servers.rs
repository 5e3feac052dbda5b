//! `jetplug-servers`: the test suite's server launchers for scripts.
//!
//! `make demo`, `make demo-cluster` and `make bench` start nats-server, a
//! 3-node JetStream cluster and PostgreSQL exactly as the tests do (same
//! configs, readiness checks, JetStream limits and root handling), by
//! running this binary in the background: it starts what is asked, writes
//! the servers' addresses to `--env FILE` as shell assignments once every
//! one is ready, and stops them all on SIGTERM or SIGINT.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use jetplug_tests::{ClusterPlace, NatsCluster, NatsServer, Postgres};

#[derive(Debug, Parser)]
#[command(
    name = "jetplug-servers",
    about = "Start nats-server, a 3-node cluster and PostgreSQL as the tests do"
)]
struct Args {
    /// Where the servers keep their files: DIR/nats, DIR/cluster/n*, DIR/pg.
    #[arg(long)]
    dir: PathBuf,
    /// Written when every server is ready: NATS_URL, NATS_PID, CLUSTER_URLS,
    /// CLUSTER_PIDS, PG_URL, PG_PORT (shell assignments).
    #[arg(long)]
    env: PathBuf,
    /// A single nats-server -js on this port (0: a free port).
    #[arg(long)]
    nats: Option<u16>,
    /// A 3-node cluster; its client ports (0: free ports), comma-separated.
    #[arg(long, value_delimiter = ',')]
    cluster: Option<Vec<u16>>,
    /// The cluster nodes' monitoring ports (default: free ports).
    #[arg(long, value_delimiter = ',', requires = "cluster")]
    cluster_monitor: Option<Vec<u16>>,
    /// The cluster nodes' route ports (default: free ports).
    #[arg(long, value_delimiter = ',', requires = "cluster")]
    cluster_routes: Option<Vec<u16>>,
    /// The cluster's name.
    #[arg(long, default_value = "jetplug", requires = "cluster")]
    cluster_name: String,
    /// The first node's number: nodes are named n<N>, n<N+1>, n<N+2>.
    #[arg(long, default_value_t = 0, requires = "cluster")]
    first_node: usize,
    /// PostgreSQL on this port (0: a free port); its cluster in DIR/pg is
    /// created when missing and kept.
    #[arg(long)]
    postgres: Option<u16>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let mut env = String::new();

    let mut nats = None;
    if let Some(port) = args.nats {
        let s = NatsServer::start_at(&args.dir.join("nats"), port)
            .await
            .context("nats-server")?;
        env += &format!("NATS_URL={}\n", s.url());
        if let Some(pid) = s.pid() {
            env += &format!("NATS_PID={pid}\n");
        }
        nats = Some(s);
    }
    let mut cluster = None;
    if let Some(clients) = &args.cluster {
        let three = |flag: &str, v: &Option<Vec<u16>>| {
            let v = v.clone().unwrap_or_else(|| vec![0; 3]);
            anyhow::ensure!(
                v.len() == 3,
                "{flag}: three ports, one per node (got {})",
                v.len()
            );
            Ok(v)
        };
        let clients = three("--cluster", &Some(clients.clone()))?;
        let monitor = three("--cluster-monitor", &args.cluster_monitor)?;
        let routes = three("--cluster-routes", &args.cluster_routes)?;
        let mut ports = [[0; 3]; 3];
        for (i, p) in ports.iter_mut().enumerate() {
            *p = [clients[i], monitor[i], routes[i]];
        }
        let place = ClusterPlace {
            dir: args.dir.join("cluster"),
            name: args.cluster_name.clone(),
            first: args.first_node,
            ports,
        };
        let c = NatsCluster::start_at(&place)
            .await
            .context("3-node cluster")?;
        let pids: Vec<String> = (0..3)
            .map(|i| c.pid(i).map(|p| p.to_string()).unwrap_or_default())
            .collect();
        env += &format!(
            "CLUSTER_URLS={}\nCLUSTER_PIDS=\"{}\"\n",
            c.urls(),
            pids.join(" ")
        );
        cluster = Some(c);
    }
    let mut pg = None;
    if let Some(port) = args.postgres {
        let p = Postgres::start_at(&args.dir.join("pg"), port)
            .await
            .context("PostgreSQL")?;
        env += &format!("PG_URL={}\nPG_PORT={}\n", p.url(), p.port());
        pg = Some(p);
    }

    // Atomically: a script polling for the file reads it whole.
    let tmp = args.env.with_extension("tmp");
    std::fs::write(&tmp, env).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &args.env)
        .with_context(|| format!("cannot write {}", args.env.display()))?;

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    if let Some(mut c) = cluster {
        c.stop().await?;
    }
    if let Some(mut s) = nats {
        s.stop().await?;
    }
    if let Some(mut p) = pg {
        p.stop().await?;
    }
    Ok(())
}
