//! `[nats]`: how to reach the NATS server and what to do when it is away.

use std::path::PathBuf;

use serde::Deserialize;

use super::quantity::Dur;
use super::secret::Secret;
use std::time::Duration;

/// Connection settings. Defaults suit a local server and never give up.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s): one string (a comma-separated list allowed) or a list
    /// (default `nats://127.0.0.1:4222`).
    pub url: ServerList,
    /// Authentication token (a [`Secret`]: `"${ENV}"` works).
    pub token: Option<Secret>,
    /// A file holding the token, instead of `token`.
    pub token_file: Option<PathBuf>,
    /// User name, with `password`.
    pub user: Option<String>,
    /// Password of `user` (a [`Secret`]).
    pub password: Option<Secret>,
    /// A file holding the password, instead of `password`.
    pub password_file: Option<PathBuf>,
    /// A file holding an NKey user seed (`SU…`).
    pub nkey_seed_file: Option<PathBuf>,
    /// A `.creds` file (JWT + NKey).
    pub credentials: Option<PathBuf>,
    /// A PEM file of CA certificates to trust for TLS (default: the system's).
    pub tls_ca: Option<PathBuf>,
    /// A PEM client certificate for mutual TLS (with `tls_key`).
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Refuse to talk to a server without TLS (default false; `tls://`
    /// URLs and `tls_ca`/`tls_cert` also use TLS).
    pub tls_required: bool,
    /// Time limit of one connection attempt (default 5s).
    pub connect_timeout: Dur,
    /// Startup connection attempts before giving up; 0 = never give up (default 0).
    pub connect_attempts: u32,
    /// Pause between startup attempts (default 2s).
    pub connect_delay: Dur,
    /// Reconnect after the connection is lost (default true; false: one
    /// immediate attempt, then give up).
    pub reconnect: bool,
    /// Reconnect attempts before giving up; 0 = unlimited (default 0).
    pub max_reconnect_attempts: u32,
    /// Pause between reconnect attempts (default 2s).
    pub reconnect_delay: Dur,
    /// Time limit for JetStream API requests (default 10s).
    pub request_timeout: Dur,
    /// `[nats.publish]`: how plugin publishes and dead letters are retried.
    pub publish: PublishPolicy,
}

/// `[nats.publish]`: the retry policy of every JetStream publish the host
/// makes for a plugin (`publish` capability, the outbox relay excepted) and
/// for the built-in dead-letter route. Only transient failures are retried
/// (no acknowledgement in time, connection lost, a stream that exists but
/// did not answer); a refused publish (no stream captures the subject, a
/// permission violation, a full stream with `discard = "new"`) fails at once.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishPolicy {
    /// Attempts in all, the first included (default 4; 1 = no retry).
    pub attempts: u32,
    /// Pause before the second attempt (default 100ms).
    pub initial_delay: Dur,
    /// Each further pause is the last one times this (default 2.0).
    pub multiplier: f64,
    /// Longest pause (default 2s).
    pub max_delay: Dur,
    /// How long one attempt waits for the stream's acknowledgement
    /// (default 1s: four attempts fit in the default plugin deadline).
    pub timeout: Dur,
}

impl Default for PublishPolicy {
    fn default() -> Self {
        PublishPolicy {
            attempts: 4,
            initial_delay: Dur(Duration::from_millis(100)),
            multiplier: 2.0,
            max_delay: Dur(Duration::from_secs(2)),
            timeout: Dur(Duration::from_secs(1)),
        }
    }
}

impl PublishPolicy {
    /// The pause after failed attempt `attempt` (1-based).
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let factor = self
            .multiplier
            .powi(i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX));
        let delay = self.initial_delay.0.as_secs_f64() * factor;
        if !delay.is_finite() || delay >= self.max_delay.0.as_secs_f64() {
            self.max_delay.0
        } else {
            Duration::from_secs_f64(delay)
        }
    }
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: ServerList::from("nats://127.0.0.1:4222"),
            token: None,
            token_file: None,
            user: None,
            password: None,
            password_file: None,
            nkey_seed_file: None,
            credentials: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
            tls_required: false,
            connect_timeout: Dur(Duration::from_secs(5)),
            connect_attempts: 0,
            connect_delay: Dur(Duration::from_secs(2)),
            reconnect: true,
            max_reconnect_attempts: 0,
            reconnect_delay: Dur(Duration::from_secs(2)),
            request_timeout: Dur(Duration::from_secs(10)),
            publish: PublishPolicy::default(),
        }
    }
}

/// The NATS servers to connect to: `url = "nats://a:4222"`,
/// `url = "nats://a:4222,nats://b:4223"` or `url = ["nats://a:4222", "nats://b:4223"]`.
/// The client tries them in turn at startup and reconnects to any live one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerList(pub Vec<String>);

impl From<&str> for ServerList {
    /// Splits a comma-separated list (spaces around entries are ignored).
    fn from(text: &str) -> Self {
        ServerList(text.split(',').map(|u| u.trim().to_owned()).collect())
    }
}

impl<'de> Deserialize<'de> for ServerList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<String>),
        }
        let list = match Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom("expected a URL string or a list of URL strings")
        })? {
            Raw::One(s) => ServerList::from(s.as_str()),
            Raw::Many(v) => ServerList(v.into_iter().map(|u| u.trim().to_owned()).collect()),
        };
        // A password in a server URL is a secret.
        for u in &list.0 {
            crate::redact::register_url(u);
        }
        Ok(list)
    }
}

impl std::fmt::Display for ServerList {
    /// The URLs, with any password in them masked.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<_> = self.0.iter().map(|u| crate::redact::url(u)).collect();
        f.write_str(&urls.join(","))
    }
}

impl ServerList {
    /// Credentials written in a URL (`nats://user:password@host` or
    /// `nats://token@host`), from the first URL that has them:
    /// `(user or token, password)`.
    pub fn credentials(&self) -> Option<(String, Option<Secret>)> {
        self.0.iter().find_map(|u| {
            let url = u.parse::<async_nats::ServerAddr>().ok()?;
            let user = url.username().filter(|s| !s.is_empty())?.to_owned();
            Some((user, url.password().map(Secret::new)))
        })
    }

    /// The servers as addresses for the client; the first that does not
    /// parse is returned as (index, reason).
    pub fn addrs(&self) -> Result<Vec<async_nats::ServerAddr>, (usize, String)> {
        if self.0.is_empty() {
            return Err((0, "give at least one server URL".into()));
        }
        self.0
            .iter()
            .enumerate()
            .map(|(i, u)| {
                if u.is_empty() {
                    return Err((i, "is empty".to_owned()));
                }
                u.parse::<async_nats::ServerAddr>()
                    .map_err(|e| (i, format!("`{u}` is not a NATS server URL: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize)]
    struct T {
        url: ServerList,
    }

    fn parse(toml_text: &str) -> Result<ServerList, toml::de::Error> {
        toml::from_str::<T>(toml_text).map(|t| t.url)
    }

    #[test]
    fn one_string_a_comma_list_or_a_toml_list() -> Result<(), toml::de::Error> {
        assert_eq!(parse(r#"url = "nats://a:4222""#)?.0, ["nats://a:4222"]);
        let two = ["nats://a:4222", "nats://b:4223"];
        assert_eq!(parse(r#"url = "nats://a:4222, nats://b:4223""#)?.0, two);
        assert_eq!(parse(r#"url = ["nats://a:4222", "nats://b:4223"]"#)?.0, two);
        assert_eq!(
            parse(r#"url = ["nats://a:4222", "nats://b:4223"]"#)?.to_string(),
            "nats://a:4222,nats://b:4223"
        );
        assert!(
            parse("url = 4222")
                .err()
                .is_some_and(|e| e.to_string().contains("expected a URL string or a list"))
        );
        Ok(())
    }

    #[test]
    fn publish_delays_grow_and_stop_at_the_cap() {
        let p = PublishPolicy::default();
        let ms = |a| p.delay_after(a).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(60)],
            [100, 200, 400, 800, 1600, 2000]
        );
        let flat = PublishPolicy {
            multiplier: 1.0,
            ..p
        };
        assert_eq!(flat.delay_after(9), Duration::from_millis(100));
    }

    #[test]
    fn every_url_is_checked() {
        let ok = ServerList::from("nats://a:4222,b:4223");
        assert_eq!(ok.addrs().map(|a| a.len()), Ok(2));
        let bad = ServerList::from("nats://a:4222,nats://b:notaport");
        let err = bad.addrs().err();
        assert!(
            matches!(&err, Some((1, r)) if r.contains("`nats://b:notaport` is not a NATS server URL")),
            "{err:?}"
        );
        assert!(
            matches!(ServerList::from("nats://a:4222,").addrs(), Err((1, r)) if r == "is empty")
        );
        assert!(ServerList(vec![]).addrs().is_err());
    }
}
