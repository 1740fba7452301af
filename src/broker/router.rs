//! rumqttd's router, reached only through its public local-link API.
//!
//! `Router::spawn` runs the router on its own thread and hands back its event sender; rumqttd does
//! not export that sender's type, so it is kept inside the one closure that builds links. A link is
//! built with `LinkBuilder` (client id and clean-session flag; no will, which mqgate keeps and
//! publishes itself after checking it) and the router's CONNACK tells whether a session was resumed.

use std::sync::Arc;
use std::time::Duration;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::protocol::Packet;
use rumqttd::{Notification, Router, RouterConfig};

use super::limits::BrokerLimits;

type Attach = dyn Fn(&str, bool) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync;

/// Handle to the routing engine.
#[derive(Clone)]
pub struct RouterHandle {
    attach: Arc<Attach>,
}

/// A client's attachment to the router.
pub struct Link {
    /// Packets to the router.
    pub tx: LinkTx,
    /// Notifications from the router.
    pub rx: LinkRx,
    /// Whether the router resumed a stored session (clean session off).
    pub session_present: bool,
}

/// Why a link could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The router refused or did not answer in time.
    #[error("router did not accept the connection: {0}")]
    Refused(String),
}

/// How long the router may take to acknowledge a new link.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the watch looks at the router thread (its death is noticed within this).
const WATCH_EVERY: Duration = Duration::from_millis(20);

impl RouterHandle {
    /// Starts a router for up to `max_connections` links, its logs bounded by `limits`, and a
    /// watch that calls `on_death` once if the router thread ever ends (it only ends by a panic:
    /// it holds a sender of its own channel, so it never sees the channel close).
    pub fn start(
        max_connections: usize,
        limits: &BrokerLimits,
        on_death: impl FnOnce() + Send + 'static,
    ) -> Self {
        let config = RouterConfig {
            max_connections,
            max_outgoing_packet_count: limits.max_inflight,
            max_segment_size: limits.segment_size,
            max_segment_count: limits.segment_count,
            ..RouterConfig::default()
        };
        let router_tx = Router::new(0, config).spawn();
        // The router thread owns the channel's only receiver: when the thread ends (its
        // unwinding drops it), the channel reports itself disconnected to every sender.
        let watched = router_tx.clone();
        let spawned = std::thread::Builder::new()
            .name("mqgate-router-watch".into())
            .spawn(move || {
                while !watched.is_disconnected() {
                    std::thread::sleep(WATCH_EVERY);
                }
                on_death();
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the router watch");
        }
        let attach = move |client_id: &str, clean: bool| {
            LinkBuilder::new(client_id, router_tx.clone())
                .clean_session(clean)
                .build()
                .map_err(|e: LinkError| e.to_string())
        };
        RouterHandle {
            attach: Arc::new(attach),
        }
    }

    /// Attaches `client_id` (the caller made sure no other link of it is live). The router answers
    /// over a blocking channel, so this waits on the blocking pool, bounded in time: the broker's
    /// runtime keeps serving the other connections meanwhile (with one thread, an inline wait
    /// would stall them all).
    pub async fn attach(&self, client_id: &str, clean: bool) -> Result<Link, AttachError> {
        let attach = Arc::clone(&self.attach);
        let id = client_id.to_string();
        let built = tokio::time::timeout(
            ATTACH_TIMEOUT,
            tokio::task::spawn_blocking(move || attach(&id, clean)),
        )
        .await;
        let (tx, rx, ack) = match built {
            Ok(Ok(Ok(link))) => link,
            Ok(Ok(Err(e))) => return Err(AttachError::Refused(e)),
            Ok(Err(e)) => return Err(AttachError::Refused(e.to_string())),
            Err(_) => return Err(AttachError::Refused("timed out".into())),
        };
        let session_present = match Option::<Packet>::from(ack) {
            Some(Packet::ConnAck(ack, _)) => ack.session_present,
            _ => false,
        };
        Ok(Link {
            tx,
            rx,
            session_present,
        })
    }

    /// Test hook (debug builds only): makes the router thread panic, through a request rumqttd
    /// 0.20 mishandles (a shadow read for a link that has left indexes a vacant slot), so that
    /// the death path can be tested end to end.
    #[cfg(debug_assertions)]
    pub async fn crash(&self) {
        if let Ok(mut link) = self.attach("\u{1}crash", true).await {
            let _ = link
                .tx
                .send(Packet::Disconnect(
                    rumqttd::protocol::Disconnect {
                        reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
                    },
                    None,
                ))
                .await;
            let _ = link.tx.shadow("crash");
        }
    }
}
