//! A minimal HTTP/1.0 GET for scraping the admin server in tests.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// GETs `path` from `addr` (`host:port`); returns the status code and body.
pub async fn http_get(addr: &str, path: &str) -> anyhow::Result<(u16, String)> {
    http_get_with(addr, path, None).await
}

/// [`http_get`] with `Authorization: Bearer TOKEN` when a token is given.
pub async fn http_get_with(
    addr: &str,
    path: &str,
    bearer: Option<&str>,
) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let auth = bearer
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
        .await?;
    let mut r = String::new();
    s.read_to_string(&mut r).await?;
    let (head, body) = r
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow::anyhow!("bad response from {addr}{path}"))?;
    let code = head.split_whitespace().nth(1).unwrap_or("0").parse()?;
    Ok((code, body.to_owned()))
}

/// Waits until the admin server at `addr` answers `/readyz` with 200.
pub async fn wait_ready(addr: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    crate::eventually(timeout, "host ready", || async {
        Ok(http_get(addr, "/readyz")
            .await
            .map(|r| r.0 == 200)
            .unwrap_or(false))
    })
    .await
}
