//! The HTTP layer: one router for every dialect, the shared concerns (internal-secret guard, body
//! limits, JSON errors) implemented once, and a hyper-util accept loop with a header-read timeout
//! (which `axum::serve` lacks), on one alarm per connection ([`timer`]). The guard is an extractor
//! rather than a middleware layer: the hot path then boxes no future and arms no timer per request
//! (the one slow step, password verification, carries its own timeout).
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
mod timer;

use std::cell::Cell;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use axum::Router;
use axum::extract::FromRequestParts;
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};

pub use error::ApiError;

use crate::auth::secret::{Accepted, SharedSecret};
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

    /// The service of one new connection.
    fn connection(&self) -> Connection {
        Connection {
            routes: Arc::clone(&self.0),
            accepted: Cell::new(None),
        }
    }
}

/// [`Routes`] as one connection calls them, keeping the internal secret once that connection
/// presented it on the authz path ([`Accepted`]: the same bytes on its later requests are not
/// hashed again).
pub struct Connection {
    routes: Arc<RoutesInner>,
    accepted: Cell<Option<Accepted>>,
}

impl Connection {
    /// [`Internal::check`], with the value this connection presented before taken as accepted
    /// again (and anything else checked in full).
    fn check(&self, headers: &HeaderMap) -> Result<Internal, ApiError> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Err(ApiError::Unauthorized);
        };
        // The remembered value is compared as bytes: equal to text `bearer` read before, they
        // need no second pass over the header to be read as text.
        let again = |known: &Accepted| {
            value
                .as_bytes()
                .strip_prefix(b"Bearer ")
                .is_some_and(|p| known.is(p))
        };
        let (ok, keep) = match self.accepted.take() {
            Some(known) if again(&known) => (true, Some(known)),
            known => {
                match bearer(value).and_then(|p| self.routes.state.internal_secret.accept(p)) {
                    Some(now) => (true, Some(now)),
                    None => (false, known),
                }
            }
        };
        self.accepted.set(keep);
        ok.then_some(Internal).ok_or(ApiError::Unauthorized)
    }
}

impl hyper::service::Service<Request<Incoming>> for Connection {
    type Response = Reply;
    type Error = Infallible;
    type Future = Call;

    fn call(&self, req: Request<Incoming>) -> Call {
        let routes = Arc::clone(&self.routes);
        if req.method() == Method::POST && req.uri().path() == emqx::AUTHZ_PATH {
            let (parts, body) = req.into_parts();
            if let Err(e) = self.check(&parts.headers) {
                return Call(Step::Answered(Some(routed_reply(
                    axum::response::IntoResponse::into_response(e),
                ))));
            }
            let body = http_body_util::Limited::new(body, routes.state.max_body_bytes);
            return Call(Step::AuthzBody(routes, body, Gathered::Nothing));
        }
        Call(Step::Boxed(Box::pin(async move {
            let routed = routes.router.call(req).await;
            Ok(routed.map_or_else(|e| match e {}, routed_reply))
        })))
    }
}

/// The answer of [`Routes`] to one request. An EMQX authz request (past the guard) is a future
/// of this type alone while its body arrives and, when the cache knows the device, until it is
/// answered: hyper keeps one such future per connection, so the hot path allocates no future per
/// request. Everything else (a registry round trip, a routed request) is a boxed future inside.
pub struct Call(Step);

enum Step {
    /// Reading an authz body (within the body limit), what arrived of it so far.
    AuthzBody(
        Arc<RoutesInner>,
        http_body_util::Limited<Incoming>,
        Gathered,
    ),
    /// Any other answer to come.
    Boxed(ReplyFuture),
    /// Answered already (taken when polled).
    Answered(Option<Reply>),
}

impl Future for Call {
    type Output = Result<Reply, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let step = &mut self.get_mut().0;
        loop {
            match step {
                Step::AuthzBody(routes, body, got) => {
                    let read = std::task::ready!(got.poll_all(Pin::new(&mut *body), cx));
                    let s = &routes.state;
                    let read = read.map_err(|e| body_error(e, s.max_body_bytes));
                    match emqx::authz_now(s, read) {
                        Ok(reply) => *step = Step::Answered(Some(reply)),
                        Err(bytes) => {
                            let routes = Arc::clone(routes);
                            *step = Step::Boxed(Box::pin(async move {
                                Ok(emqx::authz_later(&routes.state, bytes).await)
                            }));
                        }
                    }
                }
                Step::Boxed(f) => return f.as_mut().poll(cx),
                // Polled again after its answer (hyper never does): an empty 500, no panic.
                Step::Answered(reply) => {
                    return Poll::Ready(Ok(reply.take().unwrap_or_else(|| {
                        let mut r = Reply::new(Either::Left(Full::default()));
                        *r.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
                        r
                    })));
                }
            }
        }
    }
}

/// A body as it arrives, for every body mqgate reads ([`read_body`], the authz fast path): the
/// usual single chunk kept as hyper gave it (no copy, no list of chunks as `collect` builds),
/// several joined.
#[derive(Default)]
enum Gathered {
    #[default]
    Nothing,
    One(Bytes),
    Joined(bytes::BytesMut),
}

impl Gathered {
    fn push(&mut self, data: Bytes) {
        *self = match std::mem::take(self) {
            Gathered::Nothing => Gathered::One(data),
            Gathered::One(first) => {
                let mut joined = bytes::BytesMut::with_capacity(first.len() + data.len());
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                Gathered::Joined(joined)
            }
            Gathered::Joined(mut joined) => {
                joined.extend_from_slice(&data);
                Gathered::Joined(joined)
            }
        }
    }

    /// Polls `body` to its end, gathering its data frames (trailers are dropped): the whole
    /// body, or what reading it failed with.
    fn poll_all<B: hyper::body::Body<Data = Bytes>>(
        &mut self,
        mut body: Pin<&mut B>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Result<Bytes, B::Error>> {
        loop {
            match std::task::ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.push(data);
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(e)),
                None => return Poll::Ready(Ok(std::mem::take(self).bytes())),
            }
        }
    }

    fn bytes(self) -> Bytes {
        match self {
            Gathered::Nothing => Bytes::new(),
            Gathered::One(b) => b,
            Gathered::Joined(b) => b.freeze(),
        }
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
        bearer(authorization).is_some_and(|p| s.internal_secret.matches(p))
    }
}

/// What an `Authorization` value presents as `Bearer `.
fn bearer(authorization: &http::HeaderValue) -> Option<&str> {
    authorization.to_str().ok()?.strip_prefix("Bearer ")
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
    let mut body = std::pin::pin!(http_body_util::Limited::new(body, max));
    let mut got = Gathered::Nothing;
    std::future::poll_fn(|cx| got.poll_all(body.as_mut(), cx))
        .await
        .map_err(|e| body_error(e, max))
}

/// What reading a body of at most `max` bytes failed with: 413 when it was larger.
fn body_error(e: Box<dyn std::error::Error + Send + Sync>, max: usize) -> ApiError {
    if e.downcast_ref::<http_body_util::LengthLimitError>()
        .is_some()
    {
        ApiError::PayloadTooLarge(max)
    } else {
        ApiError::BadRequest("could not read the request body".into())
    }
}

/// Parses a JSON body into `T`. Errors name the problem, never the input (which may be secret).
/// The body's UTF-8 is checked once, whole: read from a `&str`, serde_json then borrows each
/// string without checking it again (a sixth of the parse of an EMQX authz body).
pub fn parse_json<'a, T: serde::Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest("body is not valid JSON".into()))?;
    serde_json::from_str(text).map_err(|e| {
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
        let svc = routes.connection();
        let (stop_tx, mut stop) = oneshot::channel::<()>();
        if stops.len() >= prune_at {
            // Senders of ended connections are dropped here, amortised over the accepts.
            stops.retain(|s| !s.is_closed());
            prune_at = (stops.len() * 2).max(64);
        }
        stops.push(stop_tx);
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(timer::HeadTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .keep_alive(true)
                .pipeline_flush(true)
                .serve_connection(io, svc);
            tokio::pin!(conn);
            // Biased: the connection first, then the stop, without drawing a random order at
            // every wake of the connection (several per request).
            tokio::select! {
                biased;
                r = conn.as_mut() => if let Err(e) = r { tracing::debug!(%peer, error = %e, "connection ended") },
                _ = &mut stop => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}
