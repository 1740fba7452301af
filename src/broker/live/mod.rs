//! The live loop of an admitted, attached connection: I/O only. It reads the client's packets
//! (in batches, yielding the broker's thread between them), checks every PUBLISH and SUBSCRIBE
//! filter through the gate before the router sees it, writes the router's answers back, and
//! ends on DISCONNECT, close, keep-alive expiry, takeover, revocation or shutdown. What to answer
//! is decided by [`rules`](super::rules); this module only moves packets. On the way out mqgate
//! publishes the will itself (checked again: a revoked device's will is dropped) and detaches
//! from the router; a 5.0 will held back by its delay, or a stored session with an expiry, is left
//! to [`afterlife`](super::afterlife), in the same task.
//!
//! - this file: the session's state and its event loop (socket, router, control, timers).
//! - [`inbound`]: what the client sends, checked before the router sees it.
//! - [`outbound`]: batches to the router, and the router's answers written to the client.
//! - [`finish`]: the end of a session: goodbye, will, leaving the router.

mod finish;
mod inbound;
mod outbound;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::Notification;
use rumqttd::protocol::{Packet, SubscribeReasonCode, Unsubscribe};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::Broker;
use super::ackorder::AckOrder;
use super::afterlife::{self, Expiry, Will};
use super::codec::Codec;
use super::connect::{Admission, WRITE_TIMEOUT};
use super::delivery::Delivery;
use super::directory::{Control, PeerSlot, Registration};
use super::router::Link;
use super::rules::{self, End};
use crate::acl::Action;
use crate::core::DeviceView;

/// Router notifications handled per wake-up before the socket gets a turn.
const NOTIFICATION_BATCH: usize = 512;
/// Bytes of packets one session handles before the broker's thread goes to other sessions (a
/// larger packet is handled whole, then the session yields).
const READ_BATCH_BYTES: usize = 64 * 1024;
/// Packets one session handles before the broker's thread goes to other sessions.
const READ_BATCH_PACKETS: usize = 256;

/// What woke the session loop. Lives on the stack for one turn; boxing the notification would
/// cost an allocation per routed message.
#[allow(clippy::large_enum_variant)]
enum Event {
    Control(Option<Control>),
    Read(std::io::Result<usize>),
    /// Complete packets are still buffered from an earlier read (its batch was full).
    Buffered,
    Router(Result<Option<Notification>, ()>),
    KeepAliveTimer,
    /// The credential or certificate the session stands on reached its end.
    Expiry,
}

/// What the CONNECT phase hands to the live loop: an admitted client, attached to the router.
pub(super) struct Attached<S> {
    pub(super) broker: Arc<Broker>,
    pub(super) stream: S,
    pub(super) codec: Codec,
    pub(super) client_id: String,
    pub(super) peer: String,
    pub(super) credential_id: Option<i64>,
    pub(super) cert_chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    pub(super) cert_not_after: Option<i64>,
    pub(super) device: Arc<DeviceView>,
    pub(super) will: Option<Will>,
    pub(super) link: Link,
    /// What was read after CONNECT.
    pub(super) rbuf: BytesMut,
    pub(super) keep_alive: Option<Duration>,
    /// The filters of a resumed session.
    pub(super) subscriptions: HashSet<String>,
    pub(super) clean: bool,
    pub(super) expiry: Expiry,
    pub(super) delivery: Delivery,
}

/// An admitted, attached session.
pub(super) struct Live<S> {
    broker: Arc<Broker>,
    stream: S,
    codec: Codec,
    client_id: String,
    peer: String,
    credential_id: Option<i64>,
    /// The verified client certificate chain of an mTLS session.
    cert_chain: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    /// When that certificate ends (Unix seconds).
    cert_not_after: Option<i64>,
    /// The device as last decided (refreshed on every re-check), so that publishes and
    /// subscriptions are decided without a cache lookup.
    device: Arc<DeviceView>,
    will: Option<Will>,
    link: Link,
    rbuf: BytesMut,
    wbuf: BytesMut,
    keep_alive: Option<Duration>,
    last_seen: Instant,
    /// SUBSCRIBEs forwarded without their refused filters: packet id → per filter, `None` for the
    /// router's code or the refusal code.
    pending_subacks: HashMap<u16, Vec<Option<SubscribeReasonCode>>>,
    /// QoS 2 publishes refused under 3.1.1 (PUBREC sent, PUBREL expected, answered here).
    refused_qos2: HashSet<u16>,
    /// Filters granted in this connection, re-checked when the registry changes.
    subscriptions: HashSet<String>,
    /// Attached clean: the router forgets the session at the end (else it stores it).
    clean: bool,
    /// How long a stored session outlives the connection.
    expiry: Expiry,
    /// Packets read from the client for the router (emptied on every read, capacity kept).
    outbox: Vec<Packet>,
    /// The client's 5.0 Maximum Packet Size and Receive Maximum, applied to what it is sent.
    delivery: Delivery,
    /// Acknowledgements owed to the router for messages too large for the client.
    acks: Vec<Packet>,
    /// Keeps the session's own PUBACK/PUBRECs behind the router's for earlier publishes.
    ack_order: AckOrder,
    /// `rbuf` may hold complete packets a full batch left for the next turn.
    buffered: bool,
    /// The last batch was full: let other sessions run before the next.
    yield_next: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Live<S> {
    /// The live session of `a`, its loop not started yet.
    pub(super) fn new(a: Attached<S>) -> Self {
        Live {
            broker: a.broker,
            stream: a.stream,
            codec: a.codec,
            client_id: a.client_id,
            peer: a.peer,
            credential_id: a.credential_id,
            cert_chain: a.cert_chain,
            cert_not_after: a.cert_not_after,
            device: a.device,
            will: a.will,
            link: a.link,
            rbuf: a.rbuf,
            wbuf: BytesMut::with_capacity(4096),
            keep_alive: a.keep_alive,
            last_seen: Instant::now(),
            pending_subacks: HashMap::new(),
            refused_qos2: HashSet::new(),
            subscriptions: a.subscriptions,
            clean: a.clean,
            expiry: a.expiry,
            outbox: Vec::new(),
            delivery: a.delivery,
            acks: Vec::new(),
            ack_order: AckOrder::default(),
            buffered: false,
            yield_next: false,
        }
    }

    /// Runs the session until it ends, then settles what it leaves (see the module docs).
    pub(super) async fn run(
        mut self,
        mut control: mpsc::Receiver<Control>,
        registration: Registration,
        slot: Option<PeerSlot>,
        admission: Admission,
    ) {
        let far = Duration::from_secs(365 * 24 * 3600);
        let timer = tokio::time::sleep(self.keep_alive.unwrap_or(far));
        tokio::pin!(timer);
        // A rotation grace period or a certificate can end without any registry change: the
        // session re-checks itself then.
        let mut armed_for = self.current_end();
        let expiry = tokio::time::sleep(self.until(armed_for, far));
        tokio::pin!(expiry);
        let end = loop {
            // Read in large chunks (a BytesMut left without spare room reads 64 bytes at a time),
            // and room for the whole frame in progress at once: growing a shared buffer 16 KiB
            // at a time copies a 1 MiB packet ~64 times as it arrives.
            let frame = self.codec.missing(&self.rbuf);
            let spare = self.rbuf.capacity() - self.rbuf.len();
            if spare < 4096 || spare < frame {
                self.rbuf.reserve(frame.max(16 * 1024));
            }
            let event = tokio::select! {
                biased;
                c = control.recv() => Event::Control(c),
                _ = std::future::ready(()), if self.buffered => Event::Buffered,
                n = self.stream.read_buf(&mut self.rbuf) => Event::Read(n),
                r = self.link.rx.next() => Event::Router(r.map_err(drop)),
                _ = &mut timer => Event::KeepAliveTimer,
                // Not polled at all for sessions whose footing has no end (most token sessions).
                _ = &mut expiry, if armed_for.is_some() => Event::Expiry,
            };
            let mut rearm = false;
            let outcome = match event {
                Event::Control(c) => self.on_control(c).await,
                Event::Read(n) => self.on_read(n).await,
                Event::Buffered => self.on_buffered().await,
                Event::Router(r) => self.on_router(r).await,
                Event::KeepAliveTimer => {
                    let ka = self.keep_alive.unwrap_or(far);
                    match rules::keep_alive_rearm(self.last_seen, ka, Instant::now()) {
                        Some(deadline) => {
                            timer.as_mut().reset(deadline);
                            Ok(())
                        }
                        None => Err(End::KeepAlive),
                    }
                }
                Event::Expiry => {
                    rearm = true;
                    self.on_control(Some(Control::Recheck)).await
                }
            };
            if let Err(end) = outcome {
                break end;
            }
            // A client that always has more to send would otherwise keep the broker's thread
            // (tokio's budget counts socket polls, and one poll may bring a 1 MiB packet).
            if std::mem::take(&mut self.yield_next) {
                tokio::task::yield_now().await;
            }
            let end = self.current_end();
            if rearm || end != armed_for {
                armed_for = end;
                expiry.as_mut().reset(Instant::now() + self.until(end, far));
            }
        };
        let (broker, client_id) = (Arc::clone(&self.broker), self.client_id.clone());
        let after = self.finish(end).await;
        drop((slot, admission));
        // The client id stays held (and the session reachable by a new connection) until a
        // delayed will and a stored session's expiry are settled.
        if let Some(after) = after {
            afterlife::run(broker, client_id, control, registration, after).await;
        }
    }

    /// Writes `packets` to the client through the session's buffer.
    async fn write(&mut self, packets: Vec<Packet>) -> Result<(), End> {
        for p in packets {
            self.encode(p);
        }
        self.flush().await
    }

    /// Encodes `packet` into the session's write buffer (sent by [`Live::flush`]), within what
    /// the client allows (see [`Delivery`]).
    fn encode(&mut self, packet: Packet) {
        let (codec, wbuf) = (self.codec, &mut self.wbuf);
        self.delivery.deliver(codec, packet, wbuf, &mut self.acks);
    }

    /// Sends what the write buffer holds.
    async fn flush(&mut self) -> Result<(), End> {
        if self.wbuf.is_empty() {
            return Ok(());
        }
        let written = timeout(WRITE_TIMEOUT, self.stream.write_all(&self.wbuf)).await;
        self.wbuf.clear();
        match written {
            Ok(Ok(())) => Ok(()),
            _ => Err(End::Io),
        }
    }

    async fn on_control(&mut self, control: Option<Control>) -> Result<(), End> {
        match control {
            Some(Control::TakeOver { done, resumes }) => Err(End::TakenOver(done, resumes)),
            Some(Control::Shutdown) => Err(End::Shutdown),
            Some(Control::Recheck) => {
                let (d, device) = self
                    .broker
                    .gate
                    .recheck_session(
                        &self.client_id,
                        &self.peer,
                        self.credential_id,
                        self.cert_chain.as_deref(),
                    )
                    .await;
                if !d.is_allow() {
                    return Err(End::Revoked);
                }
                if let Some(device) = device {
                    self.device = device;
                }
                self.recheck_subscriptions().await
            }
            // The registration holds a sender until the session ends, so this does not happen.
            None => Ok(()),
        }
    }

    /// When the session's footing ends: the connect credential's expiry (as the device view now
    /// says) or the certificate's end, whichever is first.
    fn current_end(&self) -> Option<i64> {
        let credential = self
            .credential_id
            .and_then(|id| self.device.credentials.iter().find(|c| c.id == id))
            .and_then(|c| c.expires_at);
        rules::footing_end(credential, self.cert_not_after)
    }

    /// Time until `end` by the gate's clock; at least a second, so a session whose re-check
    /// still allows it is not re-checked in a tight loop.
    fn until(&self, end: Option<i64>, far: Duration) -> Duration {
        rules::until(end, self.broker.gate.clock().now(), far)
    }

    /// Drops (from the router) the subscriptions a changed ACL no longer allows: nothing more is
    /// delivered through them. MQTT has no way to tell the client; the refusal is audited.
    async fn recheck_subscriptions(&mut self) -> Result<(), End> {
        let mut revoked = Vec::new();
        for filter in &self.subscriptions {
            let d = self
                .broker
                .gate
                .authorize_device(&self.device, Action::Subscribe, filter);
            if !d.is_allow() {
                revoked.push(filter.clone());
            }
        }
        if revoked.is_empty() {
            return Ok(());
        }
        for f in &revoked {
            self.subscriptions.remove(f);
            self.broker
                .gate
                .metrics()
                .broker_event("subscription_revoked");
        }
        // Packet id 0: the router's UNSUBACK for it is swallowed like every other.
        let unsubscribe = Unsubscribe {
            pkid: 0,
            filters: revoked,
        };
        self.send_to_router(vec![Packet::Unsubscribe(unsubscribe, None)])
            .await
    }
}
