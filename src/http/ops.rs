//! Operational endpoints: `/healthz` (public), `/readyz` (store reachability, public), and the
//! guarded `/v1/ops/*` calls of `mqgate acl reload` and `mqgate lockout list|clear`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, HttpState, Internal};

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
    Router::new()
        .route("/v1/ops/acl-reload", post(acl_reload))
        .route("/v1/ops/lockouts", get(lockouts))
        .route("/v1/ops/lockouts/clear", post(clear_lockout))
        .route("/metrics", get(metrics))
}

/// Ready while the registry answers: known down (the breaker is open), or no answer to one
/// bounded ping, is 503 at once rather than a hang.
async fn readyz(State(s): State<HttpState>) -> (StatusCode, Json<Value>) {
    if let Some(reason) = s.gate.fault().reason() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "fault": reason })),
        );
    }
    if s.gate.registry().health().ready().await {
        (
            StatusCode::OK,
            Json(json!({ "status": "ready", "store": "ok" })),
        )
    } else {
        tracing::warn!("readiness: store unreachable");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "unavailable", "store": "unreachable" })),
        )
    }
}

async fn acl_reload(_: Internal, State(s): State<HttpState>) -> Result<Json<Value>, ApiError> {
    let rules = crate::rule_files::load_dir(&s.acl_rules_dir)
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let n = rules.len();
    s.gate.registry().set_file_rules(rules).await;
    s.gate
        .record_admin("acl.reload", &format!("{n} file rules"));
    Ok(Json(json!({ "reloaded": n })))
}

async fn metrics(_: Internal, State(s): State<HttpState>) -> impl axum::response::IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.gate.metrics().render()
            + &crate::metrics::render_trust(s.gate.trust(), s.gate.clock().now())
            + &s.gate.registry().health().render_metrics()
            + &s.gate.registry().render_metrics()
            + &s.gate.render_audit_metrics(),
    )
}

async fn lockouts(_: Internal, State(s): State<HttpState>) -> Json<Value> {
    Json(json!({ "lockouts": s.gate.lockouts() }))
}

#[derive(serde::Deserialize)]
struct ClearBody {
    #[serde(default)]
    key: String,
}

async fn clear_lockout(
    _: Internal,
    State(s): State<HttpState>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let bytes = super::read_body(body, s.max_body_bytes).await?;
    let ClearBody { key } = super::parse_json(&bytes)?;
    let key = key.as_str();
    if key.is_empty() {
        return Err(ApiError::BadRequest("missing field `key`".into()));
    }
    Ok(Json(json!({ "cleared": s.gate.clear_lockout(key).await })))
}
