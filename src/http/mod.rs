//! The HTTP layer: one router for every dialect, the shared concerns (internal-secret guard, body
//! limits, JSON errors) implemented once, and a hyper-util accept loop with a header-read timeout
//! (which `axum::serve` lacks). The guard is an extractor rather than a middleware layer: the hot
//! path then boxes no future and arms no timer per request (the one slow step, password
//! verification, carries its own timeout).

pub mod emqx;
mod error;
mod ops;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use http::request::Parts;
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

use crate::auth::secret::SharedSecret;
use crate::gate::Gate;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The gate.
    pub gate: Arc<Gate>,
    /// Bearer secret brokers must present.
    pub internal_secret: SharedSecret,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Put the device ACL into EMQX authn answers.
    pub emqx_acl_in_authn: bool,
    /// Cap on `expire_at` in EMQX authn allows, seconds after now (0: none).
    pub emqx_max_session_age: i64,
    /// Where `acl-rules/` lives (for reloads).
    pub acl_rules_dir: Arc<std::path::PathBuf>,
}

/// Timeouts of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time to receive a request's headers.
    pub header_read_timeout: Duration,
}

/// Builds the router: `/healthz` and `/readyz` public; every handler that takes [`Internal`] is
/// behind the internal secret.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .merge(ops::public_routes())
        .merge(emqx::routes())
        .merge(ops::internal_routes())
        .fallback(|| async { ApiError::NotFound })
        .with_state(state)
}

/// Proof that the request carried the internal secret (`Authorization: Bearer …`): a handler that
/// takes it is unreachable without it, and a missing or wrong secret gets a bare 401.
pub struct Internal;

impl FromRequestParts<HttpState> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &HttpState) -> Result<Self, ApiError> {
        let presented = parts
            .headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if s.internal_secret.matches(p) => Ok(Internal),
            _ => Err(ApiError::Unauthorized),
        }
    }
}

/// Reads a body of at most `max` bytes: 413 when larger.
pub async fn read_body(body: axum::body::Body, max: usize) -> Result<bytes::Bytes, ApiError> {
    Ok(http_body_util::Limited::new(body, max)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                ApiError::PayloadTooLarge(max)
            } else {
                ApiError::BadRequest("could not read the request body".into())
            }
        })?
        .to_bytes())
}

/// Parses a JSON body into `T`. Errors name the problem, never the input (which may be secret).
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        ApiError::BadRequest(match e.classify() {
            serde_json::error::Category::Data => {
                "a field has the wrong type (expected a JSON object of strings, numbers or booleans)".into()
            }
            _ => "body is not valid JSON".into(),
        })
    })
}

/// Serves `router` on `listener` until `shutdown` turns true, then lets open requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(router.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .pipeline_flush(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended") },
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
