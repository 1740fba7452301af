//! EMQX 5 HTTP authentication and authorization (`POST /v1/emqx/authn`, `POST /v1/emqx/authz`).
//!
//! EMQX renders every placeholder as a JSON string (`"qos":"1"`) and undefined ones as `""`, so
//! fields are read leniently: strings, numbers and booleans alike, `""` and null as absent.
//! Answers are always HTTP 200 with `Content-Type: application/json` and
//! `{"result": "allow" | "deny" | "ignore", …}`, the only shape EMQX takes as a decision (anything
//! else counts as "ignore" there).

use std::borrow::Cow;

use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use http_body_util::{Either, Full};
use serde::Deserialize;

use super::{ApiError, HttpState, Internal, Reply, parse_json, read_body};
use crate::acl::Action;
use crate::auth::cert;
use crate::core::ids::ClientId;
use crate::core::{Cause, Verdict};
use crate::gate::{ConnectRequest, PresentedCert};
use crate::metrics::Kind as MetricKind;

/// Where EMQX's HTTP authenticator posts (`authentication[].url`).
pub const AUTHN_PATH: &str = "/v1/emqx/authn";

/// Where EMQX's HTTP authorization source posts (`authorization.sources[].url`).
pub const AUTHZ_PATH: &str = "/v1/emqx/authz";

/// The EMQX routes.
pub fn routes() -> Router<HttpState> {
    Router::new()
        .route(AUTHN_PATH, post(authn))
        .route(AUTHZ_PATH, post(authz))
}

/// A JSON scalar read as text, however EMQX rendered it; `""` and null read as absent.
#[derive(Debug, Default, PartialEq)]
struct Text<'a>(Option<Cow<'a, str>>);

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Option<Cow<'de, str>>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok((!v.is_empty()).then_some(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok((!v.is_empty()).then(|| Cow::Owned(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v.to_string())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v.to_string())))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(Some(Cow::Owned(v.to_string())))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(Some(Cow::Borrowed(if v { "true" } else { "false" })))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
        }
        d.deserialize_any(V).map(Text)
    }
}

impl<'a> Text<'a> {
    fn get(&self) -> Option<&str> {
        self.0.as_deref()
    }

    fn required(&self, name: &str) -> Result<&str, ApiError> {
        self.get().ok_or_else(|| missing(name))
    }

    /// [`Text::required`], the text taken out (borrowed from the body where it holds no escape).
    fn into_required(self, name: &str) -> Result<Cow<'a, str>, ApiError> {
        self.0.ok_or_else(|| missing(name))
    }
}

fn missing(name: &str) -> ApiError {
    ApiError::BadRequest(format!("missing field `{name}`"))
}

/// EMQX authn placeholders mqgate reads (others are accepted and ignored). `cert_pem` is EMQX's
/// base64 of the client certificate's DER (a PEM block is accepted too).
#[derive(Deserialize)]
struct AuthnBody<'a> {
    #[serde(borrow, default)]
    cert_pem: Text<'a>,
    #[serde(borrow, default)]
    cert_common_name: Text<'a>,
    #[serde(borrow, default)]
    cert_subject: Text<'a>,
    #[serde(borrow, default)]
    clientid: Text<'a>,
    #[serde(borrow, default)]
    username: Text<'a>,
    #[serde(borrow, default)]
    password: Text<'a>,
    #[serde(borrow, default)]
    peerhost: Text<'a>,
}

/// EMQX authz placeholders mqgate reads.
#[derive(Debug, Default, PartialEq, Deserialize)]
struct AuthzBody<'a> {
    #[serde(borrow, default)]
    clientid: Text<'a>,
    #[serde(borrow, default)]
    topic: Text<'a>,
    #[serde(borrow, default)]
    action: Text<'a>,
    #[serde(borrow, default)]
    access: Text<'a>,
}

impl<'a> AuthzBody<'a> {
    /// Reads the body, its strings borrowed from it where they hold no escape.
    fn read(bytes: &'a [u8]) -> Result<Self, ApiError> {
        parse_json(bytes)
    }
}

/// An answer whose whole body is known in advance: HTTP 200, `application/json`.
#[derive(Debug, Clone, Copy)]
struct Fixed(&'static str);

impl Fixed {
    const AUTHZ_ALLOW: Fixed = Fixed(r#"{"result":"allow"}"#);
    const AUTHZ_DENY: Fixed = Fixed(r#"{"result":"deny"}"#);
    const AUTHZ_IGNORE: Fixed = Fixed(r#"{"result":"ignore"}"#);
    const AUTHN_DENY: Fixed = Fixed(r#"{"result":"deny","is_superuser":false}"#);

    /// The authz answer of `verdict`.
    fn authz(verdict: Verdict) -> Fixed {
        match verdict {
            Verdict::Allow => Fixed::AUTHZ_ALLOW,
            Verdict::Deny => Fixed::AUTHZ_DENY,
            Verdict::Ignore => Fixed::AUTHZ_IGNORE,
        }
    }

    /// As a [`Reply`] of the direct path: the static bytes, no allocation but the header map.
    fn reply(self) -> Reply {
        let mut r = Reply::new(Either::Left(Full::new(bytes::Bytes::from_static(
            self.0.as_bytes(),
        ))));
        r.headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}

impl IntoResponse for Fixed {
    fn into_response(self) -> Response {
        ([(CONTENT_TYPE, "application/json")], self.0).into_response()
    }
}

/// Answers a body mqgate cannot read (malformed, oversized, cut short, a field missing) with a
/// 200 deny: EMQX reads every non-200 answer as "ignore" and would ask its next authenticator.
/// Counted under the cause `malformed_request` and logged with the problem, never the body.
fn malformed(s: &HttpState, kind: MetricKind, e: &ApiError) -> Fixed {
    deny(s, kind, "malformed_request", e)
}

/// A 200 deny for `kind`, counted under `cause`, logged with `why`.
fn deny(
    s: &HttpState,
    kind: MetricKind,
    cause: &'static str,
    why: &dyn std::fmt::Display,
) -> Fixed {
    let (endpoint, body) = match kind {
        MetricKind::Connect => ("authn", Fixed::AUTHN_DENY),
        MetricKind::Authorize => ("authz", Fixed::AUTHZ_DENY),
    };
    tracing::warn!(endpoint, cause, error = %why, "EMQX request denied before the gate");
    s.gate.metrics().denied(kind, cause);
    body
}

/// The client id, parsed by the one rule (`ClientId::parse`); `Err` is the answer for an id
/// that can never be a device's: a 200 deny, counted under `bad_client_id`.
fn client_id(
    s: &HttpState,
    kind: MetricKind,
    t: &Text,
) -> Result<Result<ClientId, Fixed>, ApiError> {
    let raw = t.required("clientid")?;
    Ok(ClientId::parse(raw).map_err(|e| deny(s, kind, "bad_client_id", &e)))
}

/// The client id of an authn body, read by the same rules as [`authn`] (the HTTP read-ahead);
/// `None` for a body [`authn`] would deny unread.
pub(super) fn authn_client_id(body: &[u8]) -> Option<ClientId> {
    let b: AuthnBody = parse_json(body).ok()?;
    ClientId::parse(b.clientid.get()?).ok()
}

async fn authn(_: Internal, State(s): State<HttpState>, body: axum::body::Body) -> Response {
    authn_answer(&s, body)
        .await
        .unwrap_or_else(|e| malformed(&s, MetricKind::Connect, &e).into_response())
}

async fn authn_answer(s: &HttpState, body: axum::body::Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, s.max_body_bytes).await?;
    let b: AuthnBody = parse_json(&bytes)?;
    let client_id = match client_id(s, MetricKind::Connect, &b.clientid)? {
        Ok(id) => id,
        Err(deny) => return Ok(deny.into_response()),
    };
    let req = ConnectRequest {
        client_id,
        username: b.username.get().map(str::to_string),
        secret: b.password.get().map(|p| p.to_string().into()),
        peer: b.peerhost.get().map(str::to_string),
        cert: presented_cert(&b),
    };
    let outcome = s.gate.connect(req).await;
    let mut answer = AuthnAnswer {
        result: outcome.decision.verdict.as_str(),
        is_superuser: false,
        client_attrs: None,
        expire_at: None,
        acl: None,
    };
    if let (Verdict::Allow, Some(device)) = (outcome.decision.verdict, &outcome.device) {
        answer.client_attrs = Some(ClientAttrs {
            tenant: device.tenant_name(),
        });
        let ends = match outcome.decision.cause {
            Cause::Credential {
                expires_at: Some(at),
                ..
            }
            | Cause::Certificate { not_after: at, .. } => Some(at),
            _ => None,
        };
        answer.expire_at = session_end(ends, s.gate.clock().now(), s.emqx_max_session_age);
        // With ingestion limits EMQX must ask per publish, so it gets no rules to decide alone.
        let push_acl = s.emqx_acl_in_authn && !s.gate.limits_apply(device);
        // Rendered only when it is sent (it is built from the rules for this CONNECT).
        if push_acl {
            answer.acl = device.emqx_rules();
        }
    }
    Ok(Json(answer).into_response())
}

/// An EMQX HTTP authn answer, serialized as it is built (no JSON tree in between).
#[derive(serde::Serialize)]
struct AuthnAnswer<'a> {
    result: &'static str,
    is_superuser: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_attrs: Option<ClientAttrs<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expire_at: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    acl: Option<Vec<crate::acl::EmqxRule>>,
}

#[derive(serde::Serialize)]
struct ClientAttrs<'a> {
    tenant: &'a str,
}

/// The `expire_at` of an EMQX session: when its credential or certificate ends, capped at
/// `max_age` seconds from `now` (0: no cap), so every session re-authenticates at least that often
/// (EMQX disconnects the client at `expire_at`; it must be in the future, in seconds).
fn session_end(ends: Option<i64>, now: i64, max_age: i64) -> Option<i64> {
    let cap = (max_age > 0).then(|| now.saturating_add(max_age));
    match (ends, cap) {
        (Some(e), Some(c)) => Some(e.min(c)),
        (e, c) => e.or(c),
    }
}

/// The certificate EMQX forwarded, if any: the certificate itself when `cert_pem` is set,
/// otherwise its names. EMQX renders an absent placeholder as an empty string.
/// An undecodable certificate is denied as invalid (never skipped: a 4xx would let EMQX ask the
/// next authenticator).
fn presented_cert(b: &AuthnBody) -> Option<PresentedCert> {
    let set = |t: &Text| t.get().filter(|v| !v.is_empty()).map(str::to_string);
    if let Some(pem) = set(&b.cert_pem) {
        return Some(PresentedCert::Der(
            cert::decode_forwarded(&pem).unwrap_or_default(),
        ));
    }
    let (common_name, subject) = (set(&b.cert_common_name), set(&b.cert_subject));
    if common_name.is_none() && subject.is_none() {
        return None;
    }
    Some(PresentedCert::Names {
        common_name,
        subject,
    })
}

/// The routed authz handler (the listener answers authz through [`super::Call`]; both read and
/// decide with [`authz_now`] / [`authz_later`] behind the same guard).
async fn authz(_: Internal, State(s): State<HttpState>, body: axum::body::Body) -> Response {
    let reply = match authz_now(&s, read_body(body, s.max_body_bytes).await) {
        Ok(reply) => reply,
        Err(bytes) => authz_later(&s, bytes).await,
    };
    reply.into_response()
}

/// What an authz body asks (the topic borrowed from the body where it holds no escape).
struct Ask<'b> {
    client_id: ClientId,
    action: Action,
    topic: Cow<'b, str>,
}

/// Reads an authz body: what it asks, or already the answer (a deny, counted: a body mqgate
/// cannot read, a field missing, a client id that can never be a device's).
fn ask<'b>(s: &HttpState, bytes: &'b [u8]) -> Result<Ask<'b>, Fixed> {
    let read = || -> Result<Result<Ask<'b>, Fixed>, ApiError> {
        let AuthzBody {
            clientid,
            topic,
            action: named,
            access,
        } = AuthzBody::read(bytes)?;
        let topic = topic.into_required("topic")?;
        let action = action(&named, &access)?;
        Ok(
            client_id(s, MetricKind::Authorize, &clientid)?.map(|client_id| Ask {
                client_id,
                action,
                topic,
            }),
        )
    };
    read().unwrap_or_else(|e| Err(malformed(s, MetricKind::Authorize, &e)))
}

/// The authz answer to a body (or the error reading it) when it needs no registry round trip:
/// a body that is no valid request, or a device the cache knows (the hot path, answered without
/// a future of its own). `Err` gives the body back for [`authz_later`]: nothing was counted.
pub(super) fn authz_now(s: &HttpState, body: Result<Bytes, ApiError>) -> Result<Reply, Bytes> {
    let bytes = match body {
        Ok(bytes) => bytes,
        Err(e) => return Ok(malformed(s, MetricKind::Authorize, &e).reply()),
    };
    let answer = match ask(s, &bytes) {
        Err(deny) => Some(deny),
        Ok(a) => s
            .gate
            .authorize_cached(&a.client_id, a.action, &a.topic)
            .map(|d| Fixed::authz(d.verdict)),
    };
    answer.map(Fixed::reply).ok_or(bytes)
}

/// The authz answer to a body [`authz_now`] gave back: the device is asked of the registry
/// (read again: its parts borrow the body, which this future owns).
pub(super) async fn authz_later(s: &HttpState, bytes: Bytes) -> Reply {
    let answer = match ask(s, &bytes) {
        Err(deny) => deny,
        Ok(a) => Fixed::authz(
            s.gate
                .authorize(&a.client_id, a.action, &a.topic)
                .await
                .verdict,
        ),
    };
    answer.reply()
}

/// `action` (`publish`/`subscribe`), or EMQX's legacy `access` (`1` subscribe, `2` publish).
fn action(action: &Text, access: &Text) -> Result<Action, ApiError> {
    match (action.get(), access.get()) {
        (Some("publish" | "pub"), _) | (None, Some("2")) => Ok(Action::Publish),
        (Some("subscribe" | "sub"), _) | (None, Some("1")) => Ok(Action::Subscribe),
        (None, None) => Err(ApiError::BadRequest("missing field `action`".into())),
        _ => Err(ApiError::BadRequest(
            "field `action` must be `publish` or `subscribe`".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::{AuthzBody, session_end};

    #[test]
    fn emqx_authz_bodies_are_read_in_place() {
        let b = br#"{"clientid":"dev-1","username":"","peerhost":"10.0.0.7","topic":"acme/dev-1/t","action":"publish","qos":"1","retain":"false"}"#;
        let body = AuthzBody::read(b).unwrap();
        assert_eq!(body.topic.get(), Some("acme/dev-1/t"));
        assert!(AuthzBody::read(br#"{"topic":"a","topic":"b"}"#).is_err());
    }

    #[test]
    fn expire_at_is_capped_by_the_maximum_session_age() {
        assert_eq!(session_end(None, 1000, 0), None);
        assert_eq!(session_end(None, 1000, 60), Some(1060));
        assert_eq!(session_end(Some(1030), 1000, 60), Some(1030));
        assert_eq!(session_end(Some(5000), 1000, 60), Some(1060));
        assert_eq!(session_end(Some(5000), 1000, 0), Some(5000));
    }
}
