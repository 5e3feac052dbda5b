//! The admin HTTP server: `/healthz`, `/readyz`, `/metrics` (Prometheus
//! text), `/v1/pipelines`, `/v1/plugins`, `/v1/tenants` and `/v1/captures`
//! (JSON). Read-only; it reads the same handles the pipelines update, so it
//! never slows them down.

mod captures;
pub mod client;
mod tenants;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::jetstream::Health;
use crate::pipeline::{Pipeline, Stats};
use crate::plugin::PluginSlot;

/// What the admin endpoints read.
#[derive(Debug)]
pub struct AdminState {
    pub health: Arc<Health>,
    pub registry: Registry,
    /// The registry's metrics (readiness is set on each scrape).
    pub metrics: Arc<crate::metrics::Metrics>,
    pub plugins: BTreeMap<String, Arc<PluginSlot>>,
    /// Filled in once the pipelines run.
    pub pipelines: OnceLock<Vec<Arc<Pipeline>>>,
    /// Each declared tenant's limits (empty: the one implicit tenant).
    pub tenants: BTreeMap<String, crate::config::TenantLimits>,
    /// The capture bucket, once opened (no captures kept: unset).
    pub captures: OnceLock<crate::capture::store::Captures>,
}

/// Binds `addr` (so a taken port fails the start) and serves until `shutdown`.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves until `shutdown`. With a `token`, every endpoint but `/healthz`
/// and `/readyz` (probes) answers 401 without `Authorization: Bearer TOKEN`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AdminState>,
    token: Option<crate::config::Secret>,
    shutdown: CancellationToken,
) {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/pipelines", get(pipelines))
        .route("/v1/plugins", get(plugins))
        .route("/v1/tenants", get(tenants::tenants))
        .route("/v1/captures", get(captures::list))
        .route("/v1/captures/{id}", get(captures::one))
        .layer(axum::middleware::from_fn(move |req, next| {
            guard(token.clone(), req, next)
        }));
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(guarded)
        .with_state(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await;
    if let Err(e) = result {
        tracing::error!(error = %e, "admin server failed");
    }
}

/// Lets a request through when no token is set or it carries the token.
async fn guard(
    token: Option<crate::config::Secret>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = token else {
        return next.run(req).await;
    };
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.expose().as_bytes()) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a bearer token is required (Authorization: Bearer <admin.token>)\n",
        )
            .into_response()
    }
}

/// Compares without stopping at the first difference (no timing hint).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// Live unless the NATS client gave up reconnecting (a restart is the
/// only way back, so the orchestrator should make one).
async fn healthz(State(s): State<Arc<AdminState>>) -> Response {
    if s.health.gave_up() {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "NATS connection given up (nats.max_reconnect_attempts); restart the host\n",
        )
            .into_response()
    } else {
        "ok\n".into_response()
    }
}

async fn readyz(State(s): State<Arc<AdminState>>) -> Response {
    let body = json!({
        "ready": s.health.ready(),
        "connected": s.health.connected(),
        "reconnect_given_up": s.health.gave_up(),
        "consumers_bound": s.health.consumers_bound(),
        "consumers_wanted": s.health.consumers_wanted(),
    });
    let code = if s.health.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, axum::Json(body)).into_response()
}

async fn metrics(State(s): State<Arc<AdminState>>) -> Response {
    s.metrics.ready.set(i64::from(s.health.ready()));
    s.metrics
        .nats_connected
        .set(i64::from(s.health.connected()));
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, &s.registry) {
        Ok(()) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn pipelines(State(s): State<Arc<AdminState>>) -> axum::Json<serde_json::Value> {
    let list: Vec<_> = s
        .pipelines
        .get()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    let st = &p.stats;
                    let breaker = p.breaker_shown().name();
                    json!({
                        "name": p.cfg.name,
                        "streams": p.cfg.streams,
                        "plugin": p.plugin.name(),
                        "plugin_hash": p.plugin.current().hash(),
                        "tenant": p.tenant,
                        "breaker": breaker,
                        "batches": Stats::get(&st.batches),
                        "failed_batches": Stats::get(&st.failed_batches),
                        "acked": Stats::get(&st.acked),
                        "retried": Stats::get(&st.retried),
                        "dead_lettered": Stats::get(&st.dead_lettered),
                        "skipped": Stats::get(&st.skipped),
                        "held_batches": Stats::get(&st.held_batches),
                        "messages_held": p.keepalive.held(),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    axum::Json(json!({ "pipelines": list }))
}

async fn plugins(State(s): State<Arc<AdminState>>) -> axum::Json<serde_json::Value> {
    let list: Vec<_> = s
        .plugins
        .iter()
        .map(|(name, slot)| {
            let p = slot.current();
            json!({
                "name": name,
                "tenant": p.spec().tenant,
                "path": p.spec().path,
                "hash": p.hash(),
                "loaded_at": humantime::format_rfc3339_seconds(p.loaded_at()).to_string(),
                "imports": p.imports().iter().map(|c| c.name()).collect::<Vec<_>>(),
                "compiled": format!("{:?}", p.cache_outcome()).to_lowercase(),
                "previous": slot.history(),
                "canary": slot.canary().map(|c| json!({
                    "id": c.id,
                    "hash": c.plugin.hash(),
                    "percent": c.percent,
                    "live": c.live.read(),
                    "candidate": c.candidate.read(),
                })),
                "shadow": slot.shadow().map(|s| s.summary()),
            })
        })
        .collect();
    axum::Json(json!({ "plugins": list }))
}
