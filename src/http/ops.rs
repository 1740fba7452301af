//! Operational endpoints: `/healthz` (public), `/readyz` (store reachability, public), and the
//! guarded `/v1/ops/acl-reload` that `mqgate acl reload` calls.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, HttpState};

/// Routes anyone may call.
pub fn public_routes() -> Router<HttpState> {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
}

/// Routes behind the internal secret.
pub fn internal_routes() -> Router<HttpState> {
    Router::new().route("/v1/ops/acl-reload", post(acl_reload))
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, Json<Value>) {
    match s.gate.registry().store().ping().await {
        Ok(()) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": "ok" })),
        ),
        Err(e) => {
            tracing::warn!(error = %e, "readiness: store unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "store": "unreachable" })),
            )
        }
    }
}

async fn acl_reload(State(s): State<HttpState>) -> Result<Json<Value>, ApiError> {
    let rules = crate::acl::file::load_dir(&s.acl_rules_dir)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let n = rules.len();
    s.gate.registry().set_file_rules(rules).await;
    tracing::info!(target: "mqgate::audit", event = "acl_reload", rules = n, "file ACL rules reloaded");
    Ok(Json(json!({ "reloaded": n })))
}
