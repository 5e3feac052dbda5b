//! A plain HTTP/1.0 GET for the admin API (local and tiny), used by
//! `jetplug plugin list` and the benchmarks.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A plain HTTP/1.0 GET (the admin API is local and tiny), with the
/// bearer `token` when the host requires one.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    token: Option<&crate::config::Secret>,
) -> anyhow::Result<String> {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("cannot reach the admin API at {addr} (is the host running?)"))?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.0\r\nHost: {addr}\r\n{}\r\n",
                token
                    .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
                    .unwrap_or_default()
            )
            .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .context("malformed HTTP response")?;
    if head.contains(" 401 ") {
        bail!(
            "{addr}{path}: 401 Unauthorized: the host requires [admin] token (give --config with the host's configuration)"
        );
    }
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        bail!("{addr}{path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_owned())
}
