//! The HTTP layer: one router for every dialect, the shared concerns (internal-secret guard, body
//! limits, timeouts, JSON errors) implemented once, and a hyper-util accept loop with a
//! header-read timeout (which `axum::serve` lacks).

pub mod emqx;
mod error;
mod ops;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use secrecy::SecretString;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use error::ApiError;

use crate::auth::secret::shared_secret_matches;
use crate::gate::Gate;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    /// The gate.
    pub gate: Arc<Gate>,
    /// Bearer secret brokers must present.
    pub internal_secret: Arc<SecretString>,
    /// Largest accepted body.
    pub max_body_bytes: usize,
    /// Put the device ACL into EMQX authn answers.
    pub emqx_acl_in_authn: bool,
    /// Where `acl-rules/` lives (for reloads).
    pub acl_rules_dir: Arc<std::path::PathBuf>,
}

/// Timeouts of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ServerLimits {
    /// Time to receive a request's headers.
    pub header_read_timeout: Duration,
    /// Time a request may take.
    pub request_timeout: Duration,
}

/// Builds the router: `/healthz` public, everything else behind the internal secret.
pub fn router(state: HttpState, limits: ServerLimits) -> Router {
    let internal = Router::new()
        .merge(emqx::routes())
        .merge(ops::internal_routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            require_secret,
        ));
    Router::new()
        .merge(ops::public_routes())
        .merge(internal)
        .fallback(|| async { ApiError::NotFound })
        .layer(middleware::from_fn_with_state(
            limits.request_timeout,
            with_timeout,
        ))
        .with_state(state)
}

async fn require_secret(State(s): State<HttpState>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match presented {
        Some(p) if shared_secret_matches(p, &s.internal_secret) => next.run(req).await,
        _ => ApiError::Unauthorized.into_response(),
    }
}

async fn with_timeout(State(limit): State<Duration>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::Timeout.into_response(),
    }
}

/// Reads a JSON body of at most `max` bytes: 413 when larger, 400 when not a JSON object.
pub async fn read_json(body: axum::body::Body, max: usize) -> Result<serde_json::Value, ApiError> {
    let bytes = http_body_util::Limited::new(body, max)
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
        .to_bytes();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|_| ApiError::BadRequest("body is not valid JSON".into()))?;
    if value.is_object() {
        Ok(value)
    } else {
        Err(ApiError::BadRequest("body must be a JSON object".into()))
    }
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
