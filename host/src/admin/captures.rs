//! `/v1/captures` (the list, `?pipeline=NAME` for one pipeline's) and
//! `/v1/captures/ID` (one capture document): captures read through the
//! host, behind the admin token, for operators who have the admin API but
//! no NATS credentials (`jetplug capture ... --admin ADDR`).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AdminState;
use crate::capture::CaptureError;

#[derive(Debug, serde::Deserialize)]
pub(super) struct Filter {
    pipeline: Option<String>,
}

fn no_bucket() -> Response {
    (
        StatusCode::NOT_FOUND,
        "this host keeps no captures (no pipeline captures, or host.capture_bucket is \"\")\n",
    )
        .into_response()
}

fn failed(e: CaptureError) -> Response {
    let code = match e {
        CaptureError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::BAD_GATEWAY,
    };
    (code, format!("{e}\n")).into_response()
}

pub(super) async fn list(State(s): State<Arc<AdminState>>, Query(f): Query<Filter>) -> Response {
    let Some(store) = s.captures.get() else {
        return no_bucket();
    };
    match store.list(f.pipeline.as_deref()).await {
        Ok(list) => axum::Json(list).into_response(),
        Err(e) => failed(e),
    }
}

pub(super) async fn one(State(s): State<Arc<AdminState>>, Path(id): Path<String>) -> Response {
    let Some(store) = s.captures.get() else {
        return no_bucket();
    };
    match store.get(&id).await {
        Ok(doc) => ([(header::CONTENT_TYPE, "application/json")], doc).into_response(),
        Err(e) => failed(e),
    }
}
