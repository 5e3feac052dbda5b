//! `[nats]`: how to reach the NATS server and what to do when it is away.

use std::path::PathBuf;

use serde::Deserialize;

use super::units::Dur;
use std::time::Duration;

/// Connection settings. Defaults suit a local server and never give up.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated (default `nats://127.0.0.1:4222`).
    pub url: String,
    /// Authentication token.
    pub token: Option<String>,
    /// A `.creds` file (JWT + NKey).
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for TLS.
    pub tls_ca: Option<PathBuf>,
    /// Time limit of one connection attempt (default 5s).
    pub connect_timeout: Dur,
    /// Startup connection attempts before giving up; 0 = never give up (default 0).
    pub connect_attempts: u32,
    /// Pause between startup attempts (default 2s).
    pub connect_delay: Dur,
    /// Reconnect after the connection is lost (default true).
    pub reconnect: bool,
    /// Reconnect attempts before giving up; 0 = unlimited (default 0).
    pub max_reconnect_attempts: u32,
    /// Pause between reconnect attempts (default 2s).
    pub reconnect_delay: Dur,
    /// Time limit for JetStream API requests (default 10s).
    pub request_timeout: Dur,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            token: None,
            credentials: None,
            tls_ca: None,
            connect_timeout: Dur(Duration::from_secs(5)),
            connect_attempts: 0,
            connect_delay: Dur(Duration::from_secs(2)),
            reconnect: true,
            max_reconnect_attempts: 0,
            reconnect_delay: Dur(Duration::from_secs(2)),
            request_timeout: Dur(Duration::from_secs(10)),
        }
    }
}
