//! `jetplug plugin list`: the plugin versions a running host has loaded,
//! read from its admin API (`[admin] address` of the config, or `--admin`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// Show the loaded plugins: name, tenant, version hash, loaded-at, imports.
    List(Target),
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The configuration file (its `[admin] address` is used).
    #[arg(long, short = 'c', default_value = "jetplug.toml")]
    config: PathBuf,
    /// The admin address to ask instead, e.g. `127.0.0.1:9090`.
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Print the JSON as the host returns it.
    #[arg(long)]
    json: bool,
}

pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let Action::List(t) = args.action;
    let addr = match t.admin {
        Some(a) => a,
        None => Config::load(&t.config)?.admin.address.with_context(|| {
            format!(
                "{} has no [admin] address; give --admin",
                t.config.display()
            )
        })?,
    };
    let body = get(addr, "/v1/plugins").await?;
    if t.json {
        println!("{body}");
        return Ok(ExitCode::SUCCESS);
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).context("the admin API answered something that is not JSON")?;
    println!(
        "{:<20} {:<12} {:<14} {:<22} imports",
        "plugin", "tenant", "hash", "loaded at"
    );
    for p in v["plugins"].as_array().into_iter().flatten() {
        let s = |k: &str| p[k].as_str().unwrap_or("").to_owned();
        let imports: Vec<&str> = p["imports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|i| i.as_str())
            .collect();
        let hash = s("hash");
        println!(
            "{:<20} {:<12} {:<14} {:<22} {}",
            s("name"),
            s("tenant"),
            &hash[..hash.len().min(12)],
            s("loaded_at"),
            imports.join(",")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// A plain HTTP/1.0 GET (the admin API is local and tiny).
async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the admin API at {addr} (is the host running?)"))?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
