//! EMQX kicks: disconnects live EMQX sessions whose right to stay connected a registry change
//! ended, through EMQX's management API (`DELETE /api/v5/clients/{clientid}`, HTTP basic auth with
//! an API key and secret). EMQX never re-authenticates a live connection, so without this a
//! revocation only stops the next CONNECT.
//!
//! Which changes kick is decided where the change is written: triggers fill the `emqx_kicks`
//! outbox in the same transaction (disable, remove, a credential given an end — due when it ends —,
//! a certificate revoked, an ACL rule added or removed; a CRL's newly listed certificates through
//! [`crate::registry::Store::kick_revoked_serials`]). Every replica runs this task: it wakes on the
//! registry change feed (PostgreSQL NOTIFY, the SQLite change table, in-process writes) and every
//! [`POLL`], claims due rows under a lease (`FOR UPDATE SKIP LOCKED` in PostgreSQL), so one replica
//! sends each kick once, and records the outcome. A replica that dies holding a lease leaves the
//! row to the others when the lease ends.
//!
//! Outcomes (`mqgate_emqx_kicks_total{outcome}`): `kicked` (204), `not_connected` (404: success,
//! nothing to disconnect), `retried` (5xx, 401/403, connection error or timeout: tried again after
//! a back-off), `failed` (still failing after [`MAX_ATTEMPTS`]), `rejected` (another 4xx: EMQX
//! refused the request itself). Final outcomes are logged and audited.
//!
//! Memory stays bounded: at most [`IN_FLIGHT`] kicks are held at once (the rest wait in the
//! outbox), and the outbox is pruned: finished rows after [`KEEP_DONE`], rows nobody sent (no API
//! configured anywhere) [`KEEP_PENDING`] after they fell due.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::RecvError;

use crate::gate::Gate;
use crate::registry::{KickClaim, KickDone, PendingKick};

/// How often the outbox is looked at without a change notification (kicks falling due at the end
/// of a rotation grace period, leases of a dead replica ending).
pub const POLL: Duration = Duration::from_millis(500);

/// Kicks held in memory at once (claimed, being sent or waiting for a retry).
pub const IN_FLIGHT: usize = 64;

/// Attempts before a kick is given up as `failed` (back-off 250 ms doubling, capped at 30 s:
/// about two and a half minutes in all).
pub const MAX_ATTEMPTS: u32 = 10;

/// One request's deadline.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a claim is this replica's: longer than all attempts take.
const LEASE: Duration = Duration::from_secs(300);

/// Finished rows are kept this long (seconds): a certificate is kicked for once.
pub const KEEP_DONE: i64 = 7 * 24 * 3600;

/// Rows nobody sent are dropped this long (seconds) after falling due.
pub const KEEP_PENDING: i64 = 3600;

/// How often the outbox is pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// EMQX's management API as configured (`emqx_api_url`, `emqx_api_key`, `emqx_api_secret`).
#[derive(Clone)]
pub struct EmqxApi {
    /// `http://host:port` plus any path prefix, without a trailing `/`.
    base: String,
    /// `Basic base64(key:secret)`, marked sensitive (never printed).
    authorization: HeaderValue,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl std::fmt::Debug for EmqxApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmqxApi")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// What one DELETE came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KickOutcome {
    /// 204 (or another 2xx): EMQX disconnected the client.
    Kicked,
    /// 404: the client is not connected (success).
    NotConnected,
    /// Worth trying again: 5xx, 401/403 (key not bootstrapped yet), transport error, timeout.
    Retry,
    /// Another 4xx: trying again would not help.
    Rejected,
}

impl KickOutcome {
    /// Reads an HTTP status as EMQX answers `DELETE /api/v5/clients/{clientid}`.
    pub fn from_status(s: StatusCode) -> Self {
        match s {
            s if s.is_success() => KickOutcome::Kicked,
            StatusCode::NOT_FOUND => KickOutcome::NotConnected,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS => {
                KickOutcome::Retry
            }
            s if s.is_server_error() => KickOutcome::Retry,
            _ => KickOutcome::Rejected,
        }
    }

    /// The metric / audit label.
    pub fn label(self) -> &'static str {
        match self {
            KickOutcome::Kicked => "kicked",
            KickOutcome::NotConnected => "not_connected",
            KickOutcome::Retry => "retried",
            KickOutcome::Rejected => "rejected",
        }
    }
}

impl EmqxApi {
    /// The API at `base` (`http://host:port[/prefix]`) with an API key and its secret.
    pub fn new(base: &str, key: &str, secret: &SecretString) -> Self {
        use base64::Engine;
        let token = base64::engine::general_purpose::STANDARD
            .encode(format!("{key}:{}", secret.expose_secret()));
        let mut authorization = HeaderValue::from_str(&format!("Basic {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        authorization.set_sensitive(true);
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(REQUEST_TIMEOUT));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        EmqxApi {
            base: base.trim_end_matches('/').to_string(),
            authorization,
            client,
        }
    }

    /// `DELETE {base}/api/v5/clients/{clientid}`, once, within [`REQUEST_TIMEOUT`].
    pub async fn kick(&self, client_id: &str) -> Result<StatusCode, String> {
        let uri = format!("{}/api/v5/clients/{}", self.base, encode_segment(client_id));
        let req = Request::builder()
            .method(Method::DELETE)
            .uri(uri)
            .header(http::header::AUTHORIZATION, self.authorization.clone())
            .body(Empty::new())
            .map_err(|e| format!("bad request: {e}"))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => Ok(resp.status()),
            Ok(Err(e)) => Err(format!("request failed: {e}")),
            Err(_) => Err("no answer in time".into()),
        }
    }
}

/// Percent-encodes a path segment: everything but RFC 3986 unreserved characters.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The back-off before attempt `attempt + 1` (250 ms doubling, capped at 30 s).
pub fn backoff(attempt: u32) -> Duration {
    let ms = 250u64.saturating_mul(1u64 << attempt.min(16));
    Duration::from_millis(ms.min(30_000))
}

/// Starts the kicker (with `api`) or only the outbox pruner (without), for as long as the gate
/// lives and its store is open.
pub fn spawn(gate: &Arc<Gate>, api: Option<EmqxApi>) {
    let weak = Arc::downgrade(gate);
    let mut changes = gate.registry().watch_changes();
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut pruned = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                c = changes.recv() => if matches!(c, Err(RecvError::Closed)) { return },
            }
            let Some(gate) = weak.upgrade() else { return };
            if gate.registry().store().is_closed() {
                return;
            }
            if pruned.elapsed() >= PRUNE_EVERY {
                pruned = tokio::time::Instant::now();
                prune(&gate).await;
            }
            if let Some(api) = &api {
                claim_and_send(&gate, api, &slots).await;
            }
        }
    });
}

async fn prune(gate: &Gate) {
    let now = gate.clock().now();
    match gate.registry().store().prune_kicks(now, KEEP_PENDING).await {
        Ok(0) => {}
        Ok(n) => tracing::debug!(rows = n, "EMQX kick outbox pruned"),
        Err(e) => tracing::warn!(error = %e, "pruning the EMQX kick outbox failed"),
    }
}

/// Claims as many due kicks as there are free slots and sends each on a task of its own.
async fn claim_and_send(gate: &Arc<Gate>, api: &EmqxApi, slots: &Arc<Semaphore>) {
    let free = slots.available_permits();
    if free == 0 {
        return;
    }
    let clock = gate.clock();
    let now_ms = clock.now_ms();
    let claim = KickClaim {
        now: clock.now(),
        now_ms,
        lease_until_ms: now_ms.saturating_add(LEASE.as_millis() as i64),
        limit: free as i64,
    };
    let kicks = match gate.registry().store().claim_kicks(claim).await {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "claiming EMQX kicks failed");
            return;
        }
    };
    for kick in kicks {
        let Ok(permit) = Arc::clone(slots).try_acquire_owned() else {
            // Cannot happen (claimed no more than the free slots); the lease hands it on.
            return;
        };
        let (gate, api) = (Arc::downgrade(gate), api.clone());
        tokio::spawn(async move {
            let _permit = permit;
            send_with_retries(gate, &api, kick).await;
        });
    }
}

/// Sends one kick until it succeeds, is rejected or runs out of attempts; records the outcome.
async fn send_with_retries(gate: std::sync::Weak<Gate>, api: &EmqxApi, kick: PendingKick) {
    let mut attempt = 0;
    let (outcome, label) = loop {
        let result = api.kick(&kick.client_id).await;
        let outcome = match &result {
            Ok(status) => KickOutcome::from_status(*status),
            Err(_) => KickOutcome::Retry,
        };
        let Some(g) = gate.upgrade() else { return };
        if outcome != KickOutcome::Retry {
            break (outcome, outcome.label());
        }
        attempt += 1;
        if attempt >= MAX_ATTEMPTS {
            break (outcome, "failed");
        }
        g.metrics().emqx_kick("retried");
        let why = match result {
            Ok(status) => status.to_string(),
            Err(e) => e,
        };
        tracing::warn!(client_id = %kick.client_id, attempt, error = %why, "EMQX kick failed; trying again");
        drop(g);
        tokio::time::sleep(backoff(attempt - 1)).await;
    };
    let Some(g) = gate.upgrade() else { return };
    g.metrics().emqx_kick(label);
    // Requests sent: the retries plus the last one (which, for `failed`, is the last retry).
    let attempts = if label == "failed" {
        attempt
    } else {
        attempt + 1
    };
    match outcome {
        KickOutcome::Kicked | KickOutcome::NotConnected => {
            tracing::info!(client_id = %kick.client_id, reason = %kick.reason, outcome = label, attempts, "EMQX kick")
        }
        _ => {
            tracing::error!(client_id = %kick.client_id, reason = %kick.reason, outcome = label, attempts, "EMQX kick gave up")
        }
    }
    g.record_kick(kick.tenant.0, &kick.client_id, &kick.reason, label);
    let now = g.clock().now();
    let done = KickDone {
        at: now,
        outcome: label,
        keep_until: now.saturating_add(KEEP_DONE),
    };
    if let Err(e) = g.registry().store().finish_kick(kick.id, done).await {
        // The lease ends and another replica (or this one) sends it again: at least once.
        tracing::warn!(client_id = %kick.client_id, error = %e, "recording an EMQX kick failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_ids_are_one_path_segment() {
        assert_eq!(encode_segment("sensor-17_a.b~"), "sensor-17_a.b~");
        assert_eq!(encode_segment("a b/c?d%"), "a%20b%2Fc%3Fd%25");
        assert_eq!(encode_segment("ü"), "%C3%BC");
    }

    #[test]
    fn emqx_answers_read_as_outcomes() {
        let o = |n: u16| KickOutcome::from_status(StatusCode::from_u16(n).unwrap());
        assert_eq!(o(204), KickOutcome::Kicked);
        assert_eq!(o(404), KickOutcome::NotConnected);
        assert_eq!(o(503), KickOutcome::Retry);
        assert_eq!(o(401), KickOutcome::Retry);
        assert_eq!(o(400), KickOutcome::Rejected);
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        assert_eq!(backoff(0), Duration::from_millis(250));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(40), Duration::from_secs(30));
    }

    #[test]
    fn the_api_secret_is_not_printed() {
        let api = EmqxApi::new(
            "http://emqx:18083/",
            "mqgate",
            &SecretString::from("s3cr3t-value"),
        );
        let shown = format!("{api:?} {:?}", api.authorization);
        assert!(!shown.contains("s3cr3t"), "{shown}");
        assert_eq!(api.base, "http://emqx:18083");
    }
}
