//! `[telemetry]`: OpenTelemetry trace export (OTLP over HTTP). Off unless
//! `endpoint` is set, so a host without a collector pays nothing for it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use super::quantity::Dur;

/// Trace export settings.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP base URL of the collector, e.g. `http://127.0.0.1:4318`
    /// (`/v1/traces` is added unless the URL already ends with it).
    /// Default: none, tracing export off.
    pub endpoint: Option<String>,
    /// `http/protobuf` (default) or `http/json`.
    pub protocol: OtlpProtocol,
    /// `service.name` of the exported spans (default `jetplug`).
    pub service_name: String,
    /// Share of new traces sampled, 0.0–1.0 (default 1.0). A message that
    /// carries a sampled `traceparent` follows its producer's decision.
    pub sampling_ratio: f64,
    /// Extra resource attributes, e.g. `{ "deployment.environment" = "prod" }`.
    pub resource: BTreeMap<String, String>,
    /// Finished spans waiting for export, at most; more are dropped and
    /// counted, never waited for (default 4096).
    pub queue_size: usize,
    /// Time limit of one export request (default 5s).
    pub export_timeout: Dur,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            endpoint: None,
            protocol: OtlpProtocol::HttpProtobuf,
            service_name: "jetplug".to_owned(),
            sampling_ratio: 1.0,
            resource: BTreeMap::new(),
            queue_size: 4096,
            export_timeout: Dur(Duration::from_secs(5)),
        }
    }
}

/// The OTLP encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum OtlpProtocol {
    #[default]
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
    #[serde(rename = "http/json")]
    HttpJson,
}

impl TelemetryConfig {
    /// The traces URL (`…/v1/traces`), when export is on.
    pub fn traces_url(&self) -> Option<String> {
        let e = self.endpoint.as_deref()?.trim_end_matches('/');
        Some(if e.ends_with("/v1/traces") {
            e.to_owned()
        } else {
            format!("{e}/v1/traces")
        })
    }

    /// Checks values serde cannot: `(key, reason)` of the first problem.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let p = |k: &str, r: String| Err((format!("telemetry.{k}"), r));
        if let Some(e) = &self.endpoint {
            let Some(rest) = e.strip_prefix("http://") else {
                return p(
                    "endpoint",
                    if e.starts_with("https://") {
                        format!(
                            "`{e}`: https is not supported yet; use an http:// endpoint (a local collector or agent)"
                        )
                    } else {
                        format!("`{e}` is not an http:// URL (e.g. http://127.0.0.1:4318)")
                    },
                );
            };
            if rest.is_empty() || rest.starts_with('/') {
                return p("endpoint", format!("`{e}` has no host"));
            }
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return p(
                "sampling_ratio",
                format!("{} is out of range 0.0–1.0", self.sampling_ratio),
            );
        }
        if self.service_name.trim().is_empty() {
            return p("service_name", "must not be empty".into());
        }
        if self.queue_size == 0 {
            return p("queue_size", "must be at least 1".into());
        }
        if self.export_timeout.0.is_zero() {
            return p("export_timeout", "must be greater than zero".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(endpoint: &str) -> TelemetryConfig {
        TelemetryConfig {
            endpoint: Some(endpoint.into()),
            ..Default::default()
        }
    }

    #[test]
    fn traces_url_adds_the_path_once() {
        assert_eq!(TelemetryConfig::default().traces_url(), None);
        assert_eq!(
            with("http://c:4318").traces_url().as_deref(),
            Some("http://c:4318/v1/traces")
        );
        assert_eq!(
            with("http://c:4318/v1/traces/").traces_url().as_deref(),
            Some("http://c:4318/v1/traces")
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        assert_eq!(
            with("https://c:4318").check().expect_err("refused").0,
            "telemetry.endpoint"
        );
        assert!(
            with("c:4318")
                .check()
                .expect_err("refused")
                .1
                .contains("http://")
        );
        assert!(
            with("http://")
                .check()
                .expect_err("refused")
                .1
                .contains("no host")
        );
        let ratio = TelemetryConfig {
            sampling_ratio: 1.5,
            ..Default::default()
        };
        assert_eq!(
            ratio.check().expect_err("refused").0,
            "telemetry.sampling_ratio"
        );
        assert!(with("http://127.0.0.1:4318").check().is_ok());
    }
}
