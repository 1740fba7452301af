//! The HTTP layer: one router for every dialect, the shared concerns (internal-secret guard, body
//! limits, JSON errors) implemented once, and a hyper-util accept loop with a header-read timeout
//! (which `axum::serve` lacks). The guard is an extractor rather than a middleware layer: the hot
//! path then boxes no future and arms no timer per request (the one slow step, password
//! verification, carries its own timeout).
//!
//! hyper answers a connection's requests one at a time; pipelined EMQX authn requests behind the
//! one being answered get their cache fills started as their bytes arrive ([`readahead`]).
//!
//! The hottest request, EMQX authz (one per PUBLISH/SUBSCRIBE), is answered by [`Routes`] before
//! the router: the same guard, body limit and handler logic, without path routing, the boxed body
//! and service layers of each routed request, or a dynamic response body. The router still holds
//! the route, so it alone describes (and would serve) the whole API.

pub mod emqx;
mod error;
mod ops;
mod readahead;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

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

/// The service of the HTTP listener: EMQX authz answered directly, everything else by the
/// [`router`] (see the module doc).
#[derive(Clone)]
pub struct Routes(Arc<RoutesInner>);

struct RoutesInner {
    state: HttpState,
    router: TowerToHyperService<Router>,
    prefetcher: Arc<readahead::Prefetcher>,
}

/// An answer of [`Routes`]: a fixed body (the direct path) or whatever the router built.
pub type Reply = Response<Either<Full<Bytes>, axum::body::Body>>;

type ReplyFuture = Pin<Box<dyn Future<Output = Result<Reply, Infallible>> + Send>>;

impl Routes {
    /// The listener's service over `state`.
    pub fn new(state: HttpState) -> Self {
        let router = TowerToHyperService::new(router(state.clone()));
        let prefetcher = Arc::new(readahead::Prefetcher::new(state.clone()));
        Routes(Arc::new(RoutesInner {
            state,
            router,
            prefetcher,
        }))
    }

    /// A connection's socket as hyper should read it: pipelined EMQX authn requests read ahead
    /// (see [`readahead`]).
    fn read_ahead<S>(&self, io: S) -> readahead::ReadAhead<S> {
        readahead::ReadAhead::new(io, &self.0.prefetcher)
    }
}

impl hyper::service::Service<Request<Incoming>> for Routes {
    type Response = Reply;
    type Error = Infallible;
    type Future = ReplyFuture;

    fn call(&self, req: Request<Incoming>) -> ReplyFuture {
        let routes = Arc::clone(&self.0);
        if req.method() == Method::POST && req.uri().path() == emqx::AUTHZ_PATH {
            return Box::pin(async move { Ok(emqx::authz_direct(&routes.state, req).await) });
        }
        Box::pin(async move {
            let routed = routes.router.call(req).await;
            Ok(routed.map_or_else(|e| match e {}, routed_reply))
        })
    }
}

/// A router's response as a [`Reply`].
fn routed_reply(r: axum::response::Response) -> Reply {
    r.map(Either::Right)
}

/// Proof that the request carried the internal secret (`Authorization: Bearer …`): a handler that
/// takes it is unreachable without it, and a missing or wrong secret gets a bare 401.
pub struct Internal;

impl Internal {
    /// Checks the internal secret in `headers`.
    fn check(headers: &HeaderMap, s: &HttpState) -> Result<Self, ApiError> {
        match headers.get(http::header::AUTHORIZATION) {
            Some(v) if Internal::carried_by(v, s) => Ok(Internal),
            _ => Err(ApiError::Unauthorized),
        }
    }

    /// Whether an `Authorization` value is `Bearer ` and the internal secret (also the
    /// read-ahead's check, so it starts fills only for requests this guard lets through).
    fn carried_by(authorization: &http::HeaderValue, s: &HttpState) -> bool {
        authorization
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|p| s.internal_secret.matches(p))
    }
}

impl FromRequestParts<HttpState> for Internal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, s: &HttpState) -> Result<Self, ApiError> {
        Internal::check(&parts.headers, s)
    }
}

/// Reads a body of at most `max` bytes: 413 when larger.
pub async fn read_body<B>(body: B, max: usize) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

/// Serves `routes` on `listener` until `shutdown` turns true, then lets open requests finish.
/// Each connection hears of the stop through a oneshot of its own (dropped when the accept loop
/// ends), not a clone of `shutdown`: a `watch` receiver locks the channel's one mutex at every
/// poll, and a connection is polled several times per request.
pub async fn serve(
    listener: TcpListener,
    routes: Routes,
    limits: ServerLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut stops: Vec<oneshot::Sender<()>> = Vec::new();
    let mut prune_at = 64;
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
        let io = TokioIo::new(routes.read_ahead(stream));
        let svc = routes.clone();
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        if stops.len() >= prune_at {
            // Senders of ended connections are dropped here, amortised over the accepts.
            stops.retain(|s| !s.is_closed());
            prune_at = (stops.len() * 2).max(64);
        }
        stops.push(stop_tx);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .pipeline_flush(true)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended") },
                _ = &mut stop => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
