//! EMQX 5 HTTP authentication and authorization (`POST /v1/emqx/authn`, `POST /v1/emqx/authz`).
//!
//! EMQX renders every placeholder as a JSON string (`"qos":"1"`) and undefined ones as `""`, so
//! fields are read leniently: strings, numbers and booleans alike. Answers are always HTTP 200 with
//! `Content-Type: application/json` and `{"result": "allow" | "deny" | "ignore", …}`, the only shape
//! EMQX takes as a decision (anything else counts as "ignore" there).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiError, HttpState, read_json};
use crate::acl::Action;
use crate::core::{Cause, Verdict};
use crate::gate::ConnectRequest;

/// The EMQX routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route("/v1/emqx/authn", post(authn))
        .route("/v1/emqx/authz", post(authz))
}

/// A field as a string, whatever JSON scalar EMQX rendered it as; `""` and null count as absent.
fn field(body: &Value, name: &str) -> Option<String> {
    match body.get(name)? {
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn required(body: &Value, name: &str) -> Result<String, ApiError> {
    field(body, name).ok_or_else(|| ApiError::BadRequest(format!("missing field `{name}`")))
}

fn kind_of(body: &Value, name: &str) -> Result<(), ApiError> {
    match body.get(name) {
        None | Some(Value::String(_) | Value::Number(_) | Value::Bool(_) | Value::Null) => Ok(()),
        Some(_) => Err(ApiError::BadRequest(format!(
            "field `{name}` must be a string"
        ))),
    }
}

async fn authn(
    State(s): State<HttpState>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_json(body, s.max_body_bytes).await?;
    for f in ["clientid", "username", "password", "peerhost"] {
        kind_of(&body, f)?;
    }
    let req = ConnectRequest {
        client_id: required(&body, "clientid")?,
        username: field(&body, "username"),
        secret: field(&body, "password").map(Into::into),
        peer: field(&body, "peerhost"),
    };
    let outcome = s.gate.connect(req).await;
    let mut answer = json!({ "result": verdict(outcome.decision.verdict), "is_superuser": false });
    if let (Verdict::Allow, Some(device)) = (outcome.decision.verdict, &outcome.device) {
        answer["client_attrs"] = json!({ "tenant": device.tenant_name });
        if let Cause::Credential {
            expires_at: Some(at),
            ..
        } = outcome.decision.cause
        {
            answer["expire_at"] = json!(at);
        }
        // With ingestion limits EMQX must ask per publish, so it gets no rules to decide alone.
        let push_acl = s.emqx_acl_in_authn && !s.gate.limits_apply(device);
        if let (true, Some(acl)) = (push_acl, &device.emqx_acl) {
            answer["acl"] = Value::Array(acl.clone());
        }
    }
    Ok(Json(answer))
}

async fn authz(
    State(s): State<HttpState>,
    body: axum::body::Body,
) -> Result<Json<Value>, ApiError> {
    let body = read_json(body, s.max_body_bytes).await?;
    for f in ["clientid", "topic", "action", "access"] {
        kind_of(&body, f)?;
    }
    let client_id = required(&body, "clientid")?;
    let topic = required(&body, "topic")?;
    let action = action(&body)?;
    let decision = s.gate.authorize(&client_id, action, &topic).await;
    Ok(Json(json!({ "result": verdict(decision.verdict) })))
}

/// `action` (`publish`/`subscribe`), or EMQX's legacy `access` (`1` subscribe, `2` publish).
fn action(body: &Value) -> Result<Action, ApiError> {
    match (
        field(body, "action").as_deref(),
        field(body, "access").as_deref(),
    ) {
        (Some("publish" | "pub"), _) | (None, Some("2")) => Ok(Action::Publish),
        (Some("subscribe" | "sub"), _) | (None, Some("1")) => Ok(Action::Subscribe),
        (None, None) => Err(ApiError::BadRequest("missing field `action`".into())),
        _ => Err(ApiError::BadRequest(
            "field `action` must be `publish` or `subscribe`".into(),
        )),
    }
}

fn verdict(v: Verdict) -> &'static str {
    match v {
        Verdict::Allow => "allow",
        Verdict::Deny => "deny",
        Verdict::Ignore => "ignore",
    }
}
