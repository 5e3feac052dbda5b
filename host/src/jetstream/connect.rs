//! Connecting to NATS. At startup the host retries as configured (forever by
//! default), logging each attempt and reporting not-ready meanwhile; once
//! connected, async-nats reconnects on its own and [`Health`] follows the
//! connection's events.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::ConnectErrorKind;
use async_nats::{Client, ConnectOptions, Event};

use crate::capability::publish::retry::Refusals;
use crate::config::NatsConfig;

/// Liveness facts shared with the admin API and logs.
#[derive(Debug, Default)]
pub struct Health {
    connected: AtomicBool,
    consumers_bound: AtomicUsize,
    consumers_wanted: AtomicUsize,
    disconnects: AtomicU64,
    disconnected: tokio::sync::Notify,
    gave_up: AtomicBool,
    publish_refusals: Arc<Refusals>,
}

impl Health {
    pub fn new() -> Arc<Self> {
        Arc::new(Health::default())
    }
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }
    pub fn set_connected(&self, yes: bool) {
        self.connected.store(yes, Ordering::Relaxed);
    }
    pub fn want_consumers(&self, n: usize) {
        self.consumers_wanted.store(n, Ordering::Relaxed);
    }
    pub fn consumer_bound(&self) {
        self.consumers_bound.fetch_add(1, Ordering::Relaxed);
    }
    pub fn consumer_lost(&self) {
        let _ = self
            .consumers_bound
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
    pub fn consumers_bound(&self) -> usize {
        self.consumers_bound.load(Ordering::Relaxed)
    }
    pub fn consumers_wanted(&self) -> usize {
        self.consumers_wanted.load(Ordering::Relaxed)
    }
    /// Connection losses since start.
    pub fn disconnects(&self) -> u64 {
        self.disconnects.load(Ordering::Relaxed)
    }
    fn lost_connection(&self) {
        self.set_connected(false);
        self.disconnects.fetch_add(1, Ordering::Relaxed);
        self.disconnected.notify_waiters();
    }
    /// Resolves once the connection has been lost more than `seen` times.
    pub async fn disconnected_after(&self, seen: u64) {
        loop {
            let wake = self.disconnected.notified();
            if self.disconnects() > seen {
                return;
            }
            wake.await;
        }
    }
    /// Where the server's publish permission violations are noted, for
    /// the publish retry policy (a refusal is not retried).
    pub fn publish_refusals(&self) -> Arc<Refusals> {
        self.publish_refusals.clone()
    }
    /// The client stopped reconnecting (`nats.reconnect = false` or
    /// `max_reconnect_attempts` used up): only a restart brings it back.
    pub fn gave_up(&self) -> bool {
        self.gave_up.load(Ordering::Relaxed)
    }
    fn give_up(&self) {
        self.gave_up.store(true, Ordering::Relaxed);
        self.set_connected(false);
    }
    /// Connected and every consumer bound.
    pub fn ready(&self) -> bool {
        self.connected()
            && self.consumers_bound.load(Ordering::Relaxed)
                >= self.consumers_wanted.load(Ordering::Relaxed)
    }
}

/// The host could not connect and was configured to give up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{key}: cannot use the credentials file {path}: {source}")]
    Credentials {
        key: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nats.url: server {index}: {reason}")]
    BadUrl { index: usize, reason: String },
    /// The server refused who we are or how we talk: retrying cannot help.
    #[error("{keys}: NATS at {url} refused the connection: {reason}")]
    Refused {
        keys: String,
        url: String,
        reason: String,
    },
    #[error("cannot connect to NATS at {url} after {attempts} attempts: {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
}

/// Credentials from the environment, as the NATS tools read them:
/// `NATS_TOKEN` (a token) or `NATS_CREDS` (a `.creds` file), used only when
/// the configuration names no way to authenticate (keys or URL).
pub const TOKEN_ENV: &str = "NATS_TOKEN";
/// See [`TOKEN_ENV`].
pub const CREDS_ENV: &str = "NATS_CREDS";

/// `cfg` with `NATS_TOKEN` / `NATS_CREDS` filled in when it names no
/// credentials of its own; the variable used, if any.
pub fn with_environment(cfg: &NatsConfig) -> (NatsConfig, Option<&'static str>) {
    let named = cfg.token.is_some()
        || cfg.user.is_some()
        || cfg.nkey_seed_file.is_some()
        || cfg.credentials.is_some()
        || cfg.url.credentials().is_some();
    let mut out = cfg.clone();
    if named {
        return (out, None);
    }
    let var = |name| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    if let Some(token) = var(TOKEN_ENV) {
        out.token = Some(crate::config::Secret::new(token.trim()));
        return (out, Some(TOKEN_ENV));
    }
    if let Some(file) = var(CREDS_ENV) {
        out.credentials = Some(file.trim().into());
        return (out, Some(CREDS_ENV));
    }
    (out, None)
}

/// Connects, retrying per `cfg` (`connect_attempts = 0`: forever).
pub async fn connect(cfg: &NatsConfig, health: &Arc<Health>) -> Result<Client, ConnectError> {
    let (cfg, from_env) = with_environment(cfg);
    let cfg = &cfg;
    if let Some(var) = from_env {
        tracing::info!(variable = var, "NATS credentials from the environment");
    }
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let options = options(cfg, health, from_env).await?;
        let servers = cfg
            .url
            .addrs()
            .map_err(|(i, reason)| ConnectError::BadUrl { index: i, reason })?;
        match options.connect(servers).await {
            Ok(client) => {
                health.set_connected(true);
                tracing::info!(url = %cfg.url, attempt, "connected to NATS");
                return Ok(client);
            }
            Err(e) => {
                health.set_connected(false);
                let last = e.to_string();
                if let Some(keys) = refusal_keys(cfg, e.kind(), &last) {
                    let keys = match from_env {
                        Some(var) if keys.contains("token") || keys.contains("credentials") => {
                            format!("{var} (environment)")
                        }
                        _ => keys,
                    };
                    return Err(ConnectError::Refused {
                        keys,
                        url: cfg.url.to_string(),
                        reason: last,
                    });
                }
                if cfg.connect_attempts != 0 && attempt >= cfg.connect_attempts {
                    return Err(ConnectError::GaveUp {
                        url: cfg.url.to_string(),
                        attempts: attempt,
                        last,
                    });
                }
                tracing::warn!(url = %cfg.url, attempt, error = %last,
                    retry_in = ?cfg.connect_delay.0, "NATS unreachable; not ready, retrying");
                tokio::time::sleep(cfg.connect_delay.0).await;
            }
        }
    }
}

/// The keys to look at when the server refused the connection for good
/// (authentication or TLS); `None` for errors worth retrying (an outage).
fn refusal_keys(cfg: &NatsConfig, kind: ConnectErrorKind, text: &str) -> Option<String> {
    let set = |pairs: &[(&str, bool)]| {
        let keys: Vec<String> = pairs
            .iter()
            .filter(|(_, on)| *on)
            .map(|(k, _)| format!("nats.{k}"))
            .collect();
        if keys.is_empty() {
            "nats (no credentials configured)".to_owned()
        } else {
            keys.join(" / ")
        }
    };
    let auth = || {
        set(&[
            ("url (credentials in it)", cfg.url.credentials().is_some()),
            ("token", cfg.token.is_some()),
            ("user", cfg.user.is_some()),
            ("nkey_seed_file", cfg.nkey_seed_file.is_some()),
            ("credentials", cfg.credentials.is_some()),
        ])
    };
    let tls = || {
        let keys = set(&[
            ("tls_ca", cfg.tls_ca.is_some()),
            ("tls_cert", cfg.tls_cert.is_some()),
            ("tls_required", cfg.tls_required),
        ]);
        if keys.starts_with("nats (") {
            "nats.tls_ca / nats.tls_cert".to_owned()
        } else {
            keys
        }
    };
    let lower = text.to_ascii_lowercase();
    match kind {
        ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => Some(auth()),
        ConnectErrorKind::Tls => Some(tls()),
        // A server that wants a client certificate ends the handshake with
        // an alert, which can surface as an I/O error.
        ConnectErrorKind::Io
            if [
                "certificate",
                "handshake",
                "tls",
                "corrupt message",
                "alert",
            ]
            .iter()
            .any(|w| lower.contains(w)) =>
        {
            Some(tls())
        }
        _ => None,
    }
}

async fn options(
    cfg: &NatsConfig,
    health: &Arc<Health>,
    from_env: Option<&'static str>,
) -> Result<ConnectOptions, ConnectError> {
    let mut o = match &cfg.credentials {
        Some(path) => ConnectOptions::with_credentials_file(path)
            .await
            .map_err(|source| ConnectError::Credentials {
                key: match from_env {
                    Some(var) => var,
                    None => "nats.credentials",
                },
                path: path.display().to_string(),
                source,
            })?,
        None => ConnectOptions::new(),
    };
    if let Some(token) = &cfg.token {
        o = o.token(token.expose().to_owned());
    }
    if let (Some(user), Some(password)) = (&cfg.user, &cfg.password) {
        o = o.user_and_password(user.clone(), password.expose().to_owned());
    }
    // Credentials in the URL, unless keys give them (the client library
    // does not read them from the URL itself).
    let keyed = cfg.token.is_some()
        || cfg.user.is_some()
        || cfg.nkey_seed_file.is_some()
        || cfg.credentials.is_some();
    if !keyed && let Some((user, password)) = cfg.url.credentials() {
        o = match password {
            Some(p) => o.user_and_password(user, p.expose().to_owned()),
            None => o.token(user),
        };
    }
    if let Some(file) = &cfg.nkey_seed_file {
        let seed =
            crate::config::secret::nkey_seed(file).map_err(|reason| ConnectError::Refused {
                keys: "nats.nkey_seed_file".into(),
                url: cfg.url.to_string(),
                reason: reason.0,
            })?;
        o = o.nkey(seed.expose().to_owned());
    }
    if let Some(ca) = &cfg.tls_ca {
        o = o.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.tls_cert, &cfg.tls_key) {
        o = o.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.tls_required {
        o = o.require_tls(true);
    }
    let delay = cfg.reconnect_delay.0;
    // async-nats reads `Some(0)` as "unlimited", so "no reconnect" is one
    // immediate attempt (a blip heals; a server that is gone is given up).
    let max_reconnects = match (cfg.reconnect, cfg.max_reconnect_attempts) {
        (false, _) => Some(1),
        (true, 0) => None,
        (true, n) => Some(n as usize),
    };
    let h = health.clone();
    Ok(o.name("jetplug")
        .connection_timeout(cfg.connect_timeout.0)
        .request_timeout(Some(cfg.request_timeout.0))
        .max_reconnects(max_reconnects)
        // async-nats counts from 1: the first attempt (at start, and right
        // after a connection loss) goes at once, later ones wait.
        .reconnect_delay_callback(
            move |attempts| if attempts <= 1 { Duration::ZERO } else { delay },
        )
        .event_callback(move |event| {
            let h = h.clone();
            async move {
                match event {
                    Event::Connected => {
                        h.set_connected(true);
                        tracing::info!("NATS connection restored");
                    }
                    Event::Disconnected => {
                        h.lost_connection();
                        tracing::warn!("NATS connection lost; reconnecting");
                    }
                    Event::ServerError(e) => match h.publish_refusals.note(&e.to_string()) {
                        Some(subject) => tracing::warn!(%subject,
                            "the NATS server's permissions forbid publishing here"),
                        None => tracing::warn!(error = %e, "NATS server error"),
                    },
                    Event::ClientError(async_nats::ClientError::MaxReconnects) => {
                        h.give_up();
                        tracing::error!(
                            "gave up reconnecting to NATS (nats.reconnect / nats.max_reconnect_attempts); \
                             not ready and not live until the host is restarted"
                        );
                    }
                    Event::Closed => {
                        h.set_connected(false);
                        tracing::info!("NATS connection closed");
                    }
                    other => tracing::debug!(event = %other, "NATS event"),
                }
            }
        }))
}
