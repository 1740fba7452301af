//! The embedded MQTT broker: mqgate owns the connection edge, rumqttd routes.
//!
//! mqgate accepts the sockets, reads CONNECT itself and decides it through the [`Gate`] (with the
//! peer address, and later a verified TLS identity), checks every SUBSCRIBE filter and PUBLISH
//! before the router sees it, and attaches admitted clients to rumqttd's router through its public
//! local-link API ([`router`]). Each connection is its own task; the accept loop never waits on a
//! client. Registry changes reach live sessions through [`directory::Directory::notify`].
//!
//! - [`codec`]: version sniffing and guarded framing over rumqttd's protocol codec.
//! - [`guard`]: refusals before the router sees a packet (shared subscriptions, bounds).
//! - [`refusal`]: which CONNACK code a refusal gets.
//! - [`connect`]: the CONNECT phase: read, admit or refuse, take over, attach, CONNACK.
//! - [`live`]: the live loop of an admitted connection (I/O only), and its end.
//! - [`rules`]: the pure MQTT rules: refusal acks, SUBACK splicing, UNSUBACK, keep-alive
//!   arithmetic, what each way of ending means on the wire.
//! - [`delivery`]: the client's 5.0 Maximum Packet Size and Receive Maximum on what it is sent.
//! - [`directory`]: the directory of live connections: sessions by client id, connections per
//!   address.
//! - [`router`]: rumqttd's router and link building.
//! - [`tls`]: the mTLS listener (client certificates through the device-certificate verifier).
//! - [`afterlife`]: 5.0 will delay and session expiry, after a connection has closed.
//! - [`limits`]: resource bounds per session, device and tenant; the retained-message book.
//!
//! Time: what the registry decides by wall-clock time (a credential's expiry, a certificate's
//! end) is read from the gate's [`Clock`](crate::clock::Clock), and a live session re-checks
//! itself when the clock says its footing ends. The 5.0 Will Delay and Session Expiry
//! intervals after a close are wall-clock promises to the client: they wait on the same clock
//! ([`Clock::sleep_until_ms`](crate::clock::Clock::sleep_until_ms)), so tests move a manual
//! clock past them instead of waiting. The transport's own bounds (CONNECT timeout,
//! keep-alive, write and takeover bounds, the TLS handshake, accept back-off) guard sockets, not
//! promises: they are tokio timers on its monotonic clock, which a manual clock that never moves
//! must not freeze.

mod ackorder;
pub mod afterlife;
pub mod codec;
mod connect;
mod delivery;
pub mod directory;
pub mod guard;
pub mod limits;
mod live;
pub mod refusal;
pub mod router;
mod rules;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, watch};

use crate::gate::Gate;
use crate::registry::Change;
use directory::Directory;
use router::RouterHandle;

/// The broker's configuration (`mqtt_*` keys).
#[derive(Debug, Clone, Copy)]
pub struct BrokerSettings {
    /// Plain-TCP listener address; `None` (`mqtt_addr = "off"`) turns the broker off.
    pub addr: Option<SocketAddr>,
    /// Time a new connection has to send its CONNECT.
    pub connect_timeout: Duration,
    /// Largest packet accepted (remaining length, bytes).
    pub max_packet_size: usize,
    /// Connections allowed from one address at once (0: no limit).
    pub max_conns_per_peer: usize,
    /// Live sessions allowed in all.
    pub max_connections: usize,
    /// Threads of the broker's own runtime (1: a single-threaded one, like rumqttd's listener).
    pub threads: usize,
    /// Resource bounds per session, device and tenant.
    pub limits: limits::BrokerLimits,
}

/// A client identity proven by the mTLS listener's handshake: what the certificate verifier
/// concluded, and the chain it concluded it from (re-checked when certificates or CRLs change, so
/// a revoked certificate ends its live session). CONNECT must then name the same client id.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    /// The device the certificate identifies.
    pub identity: crate::auth::trust::CertIdentity,
    /// The chain the client presented, end-entity first.
    pub chain: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// Everything a connection task needs, shared.
pub struct Broker {
    pub(crate) gate: Arc<Gate>,
    pub(crate) router: RouterHandle,
    pub(crate) directory: Arc<Directory>,
    pub(crate) settings: BrokerSettings,
    pub(crate) capacity: Arc<Semaphore>,
    /// Connections before their CONNACK (`mqtt_max_unauthenticated`).
    pub(crate) unanswered: Arc<Semaphore>,
    pub(crate) shutdown: watch::Receiver<bool>,
    /// mqgate's own link for delayed wills (attached at the first one).
    pub(crate) will_link: tokio::sync::Mutex<Option<router::Link>>,
    /// Retained messages per device and tenant (what the router holds).
    pub(crate) retained: limits::RetainedBook,
    /// Test hook (debug builds): a CONNECT admitted for this client id makes the router panic
    /// (`TEST_CRASH_ROUTER_CLIENT`), to test the death path with the real binary.
    #[cfg(debug_assertions)]
    pub(crate) crash_on: Option<String>,
}

impl Broker {
    /// Starts the router and the revocation watch; connections are served by [`Broker::serve`]
    /// and [`Broker::handle`].
    pub fn start(
        gate: Arc<Gate>,
        settings: BrokerSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Arc<Broker> {
        let fault = Arc::clone(gate.fault());
        let router =
            RouterHandle::start(settings.max_connections + 16, &settings.limits, move || {
                fault.raise("router thread died")
            });
        let changes = gate.registry().watch_changes();
        let reloads = gate.trust().watch_reloads();
        let broker = Arc::new(Broker {
            gate,
            router,
            directory: Arc::new(Directory::default()),
            settings,
            capacity: Arc::new(Semaphore::new(settings.max_connections)),
            unanswered: Arc::new(Semaphore::new(settings.limits.max_unauthenticated)),
            shutdown,
            will_link: tokio::sync::Mutex::new(None),
            retained: limits::RetainedBook::default(),
            #[cfg(debug_assertions)]
            crash_on: std::env::var("TEST_CRASH_ROUTER_CLIENT").ok(),
        });
        spawn_revocation_watch(&broker, changes, reloads);
        spawn_shutdown_watch(&broker);
        broker
    }

    /// Number of live sessions.
    pub fn live_sessions(&self) -> usize {
        self.directory.len()
    }

    /// Waits (at most `limit`) until every session has ended, after shutdown told them to: woken
    /// by the last one leaving, not by polling.
    pub async fn drain(&self, limit: Duration) {
        let _ = tokio::time::timeout(limit, self.directory.emptied()).await;
    }

    /// Accepts plain-TCP connections on `listener` until shutdown; each gets its own task.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut shutdown = self.shutdown.clone();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        // Over the per-address or the pre-CONNECT cap: closed at once, so that
                        // silent sockets cannot take every descriptor.
                        let Some(arrival) = self.arrive(peer) else { continue };
                        let _ = stream.set_nodelay(true);
                        tokio::spawn(Arc::clone(&self).handle(stream, peer, None, arrival));
                    }
                    Err(e) => {
                        // Out of descriptors and the like: back off instead of spinning.
                        tracing::warn!(error = %e, "MQTT accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Serves one connection over any byte stream: plain TCP here, TLS from the mTLS listener,
    /// which passes the identity its verifier proved.
    pub async fn handle<S>(
        self: Arc<Self>,
        stream: S,
        peer: SocketAddr,
        tls: Option<TlsIdentity>,
        arrival: Arrival,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        connect::serve(self, stream, peer, tls, arrival).await;
    }

    /// Admits a connection at accept, before any byte is read: `None` (close it) when its
    /// address holds `mqtt_max_conns_per_peer` connections, or `mqtt_max_unauthenticated`
    /// connections are still before their CONNACK (TLS handshakes included).
    pub fn arrive(&self, peer: SocketAddr) -> Option<Arrival> {
        let metrics = self.gate.metrics();
        let Ok(unanswered) = Arc::clone(&self.unanswered).try_acquire_owned() else {
            metrics.broker_event("unauthenticated_refused");
            return None;
        };
        let max = self.settings.max_conns_per_peer;
        let Some(slot) = self.directory.peer_slot(peer.ip(), max) else {
            metrics.broker_event("peer_refused_at_accept");
            return None;
        };
        Some(Arrival {
            slot,
            unanswered: Some(unanswered),
        })
    }
}

/// A connection admitted at accept: its place in its address's count (for its whole life) and
/// among the connections not answered yet (until its CONNACK).
pub struct Arrival {
    pub(crate) slot: directory::PeerSlot,
    pub(crate) unanswered: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// Ends every live session when mqgate shuts down (or the shutdown sender goes away).
fn spawn_shutdown_watch(broker: &Arc<Broker>) {
    let directory = Arc::clone(&broker.directory);
    let mut shutdown = broker.shutdown.clone();
    tokio::spawn(async move {
        while !*shutdown.borrow_and_update() {
            if shutdown.changed().await.is_err() {
                break;
            }
        }
        directory.shutdown_all().await;
    });
}

/// Forwards registry changes to the live sessions they concern, until the registry goes away.
/// Certificate changes come from the trust store once their reload is in force, so a session
/// never re-checks its certificate against the trust from before the change.
fn spawn_revocation_watch(
    broker: &Arc<Broker>,
    mut changes: broadcast::Receiver<Change>,
    mut reloads: broadcast::Receiver<Change>,
) {
    let directory = Arc::clone(&broker.directory);
    tokio::spawn(async move {
        loop {
            let received = tokio::select! {
                c = changes.recv() => match c {
                    Ok(Change::Certs(_) | Change::Lockout(_)) => continue,
                    other => other,
                },
                c = reloads.recv() => c,
            };
            match received {
                Ok(change) => directory.notify(&change),
                // Missed some: every session re-checks.
                Err(broadcast::error::RecvError::Lagged(_)) => directory.notify(&Change::Resync),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// The output of `f` if it is ready at once (polled once, without a waker: the caller's own
/// loop polls again with its waker). Cheaper than a `select!` for draining what the router has
/// already queued. Used on `LinkRx::next`, which is cancel-safe: one poll either takes a router
/// wake-up together with its notifications, or nothing.
pub(crate) fn ready_now<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match f.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(v) => Some(v),
        std::task::Poll::Pending => None,
    }
}
