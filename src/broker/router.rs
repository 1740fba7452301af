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

impl RouterHandle {
    /// Starts a router for up to `max_connections` links.
    pub fn start(max_connections: usize) -> Self {
        let config = RouterConfig {
            max_connections,
            max_outgoing_packet_count: 200,
            max_segment_size: 100 * 1024 * 1024,
            max_segment_count: 10,
            ..RouterConfig::default()
        };
        let router_tx = Router::new(0, config).spawn();
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
}
