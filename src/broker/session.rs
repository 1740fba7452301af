//! One MQTT connection, from CONNECT to close, in its own task.
//!
//! CONNECT is read here (bounded in time and size), decided by the gate and answered with a
//! CONNACK either way. An admitted client is attached to the router; from then on every PUBLISH
//! and every SUBSCRIBE filter is checked before it is handed to the router, and the router's
//! answers are written back, with refused filters spliced into SUBACK. The session ends on
//! DISCONNECT, close, keep-alive expiry, takeover, revocation or shutdown; mqgate then publishes
//! the will itself (checked again: a revoked device's will is dropped) and detaches from the router.
//! A 5.0 will held back by its delay, or a stored session with an expiry, is left to
//! [`afterlife`](super::afterlife), in the same task.

use crate::core::ids::ClientId;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::Notification;
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, Connect, ConnectProperties, ConnectReturnCode, Disconnect,
    DisconnectProperties, DisconnectReasonCode, Login, Packet, PingResp, PubAck, PubAckReason,
    PubComp, PubCompReason, PubRec, PubRecReason, Publish, PublishProperties, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode, UnsubAck, UnsubAckReason, Unsubscribe,
    UnsubscribeProperties,
};
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::{Instant, timeout};

use super::ackorder::AckOrder;
use super::afterlife::{self, Afterlife, Expiry, Will};
use super::codec::{self, Codec, FrameError, Version};
use super::delivery::Delivery;
use super::guard;
use super::refusal::Refusal;
use super::router::Link;
use super::sessions::{Control, PeerSlot, Registration};
use super::{Arrival, Broker, TlsIdentity, ready_now};
use crate::acl::Action;
use crate::core::{Cause, DeviceView};
use crate::gate::{ConnectRequest, PresentedCert};

/// How long a write to a client may take before the connection is given up.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new session waits for the one it takes over to leave.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);
/// Router notifications handled per wake-up before the socket gets a turn.
const NOTIFICATION_BATCH: usize = 512;
/// Bytes of packets one session handles before the broker's thread goes to other sessions (a
/// larger packet is handled whole, then the session yields).
const READ_BATCH_BYTES: usize = 64 * 1024;
/// Packets one session handles before the broker's thread goes to other sessions.
const READ_BATCH_PACKETS: usize = 256;

/// A CONNECT, taken apart.
struct Hello {
    codec: Codec,
    connect: Connect,
    props: Option<ConnectProperties>,
    will: Option<Will>,
    login: Option<Login>,
}

/// What the gate admitted.
struct Admission {
    device: Arc<DeviceView>,
    credential_id: Option<i64>,
    /// The registry's change counter before the gate decided.
    epoch: u64,
    _capacity: OwnedSemaphorePermit,
}

/// Serves one connection (see the module docs).
pub(super) async fn run<S>(
    broker: Arc<Broker>,
    mut stream: S,
    peer: SocketAddr,
    tls: Option<TlsIdentity>,
    mut arrival: Arrival,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut rbuf = BytesMut::with_capacity(4096);
    let max = broker.settings.max_packet_size;
    let hello = match timeout(
        broker.settings.connect_timeout,
        read_connect(&mut stream, &mut rbuf, max),
    )
    .await
    {
        Ok(Ok(hello)) => hello,
        Ok(Err(FrameError::UnsupportedLevel(level))) => {
            tracing::debug!(%peer, level, "MQTT CONNECT with an unsupported protocol level");
            let refuse = Codec::new(Version::V4, max);
            let _ = write_packets(
                &mut stream,
                refuse,
                [connack(
                    ConnectReturnCode::RefusedProtocolVersion,
                    false,
                    None,
                )],
            )
            .await;
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT connection closed before CONNECT");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "MQTT CONNECT timed out");
            broker.gate.metrics().broker_event("connect_timeout");
            return;
        }
    };
    let admitted = admit(&broker, &hello, peer, tls.as_ref()).await;
    // Decided: no longer among the connections before their CONNACK.
    arrival.unanswered = None;
    #[cfg(debug_assertions)]
    if admitted.is_ok() && broker.crash_on.as_deref() == Some(hello.connect.client_id.as_str()) {
        broker.router.crash().await;
    }
    let admission = match admitted {
        Ok(a) => a,
        Err(refusal) => {
            let id = &hello.connect.client_id;
            return refuse(&broker, &mut stream, hello.codec, id, &refusal).await;
        }
    };
    // The password is not kept for the session's life.
    let Hello {
        codec,
        connect,
        props,
        will,
        ..
    } = hello;
    let client_id = connect.client_id.clone();
    let clean_start = connect.clean_session;
    let delivery = Delivery::new(
        props.as_ref().and_then(|p| p.receive_maximum),
        props.as_ref().and_then(|p| p.max_packet_size),
    );
    let interval = props.and_then(|p| p.session_expiry_interval);
    let expiry = Expiry::at_connect(codec.version, clean_start, interval);
    let (ctl_tx, ctl_rx) = mpsc::channel(4);
    let (registration, previous) =
        broker
            .sessions
            .register(&client_id, admission.device.tenant, ctl_tx.clone());
    if let Some(previous) = previous {
        take_over(&broker, previous, &client_id, !clean_start).await;
    }
    // rumqttd's clean flag both discards a stored session at attach and keeps none at detach. A
    // 5.0 clean start whose session outlives the connection needs the first without the second:
    // discard first, then attach as a stored session.
    let outlives = expiry != Expiry::AtClose;
    if clean_start && outlives {
        afterlife::discard(&broker, &client_id).await;
    }
    let clean = clean_start && !outlives;
    let link = match broker.router.attach(&client_id, clean).await {
        Ok(link) => link,
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "router refused an admitted client");
            let refusal = Refusal::Unavailable;
            return refuse(&broker, &mut stream, codec, &client_id, &refusal).await;
        }
    };
    let ack = connack(
        ConnectReturnCode::Success,
        link.session_present,
        (codec.version == Version::V5).then(|| success_properties(max)),
    );
    if write_packets(&mut stream, codec, [ack]).await.is_err() {
        let mut link = link;
        let _ = link.tx.send(normal_disconnect()).await;
        return;
    }
    broker.gate.metrics().broker_event("session_opened");
    // A resumed session brings back its subscriptions inside the router: know them, so that the
    // re-check below drops those the ACL no longer allows.
    let subscriptions = if link.session_present {
        broker.sessions.stored_filters(&client_id)
    } else {
        HashSet::new()
    };
    // A change may have landed between the gate's answer and the registration, or the resumed
    // session holds subscriptions: look once more.
    if broker.gate.registry().epoch() != admission.epoch || !subscriptions.is_empty() {
        let _ = ctl_tx.try_send(Control::Recheck);
    }
    let live = Live {
        broker: Arc::clone(&broker),
        stream,
        codec,
        client_id,
        peer: peer.ip().to_string(),
        credential_id: admission.credential_id,
        cert_not_after: tls.as_ref().map(|t| t.identity.not_after),
        cert_chain: tls.map(|t| t.chain),
        device: Arc::clone(&admission.device),
        will,
        link,
        rbuf,
        wbuf: BytesMut::with_capacity(4096),
        keep_alive: keep_alive(connect.keep_alive),
        last_seen: Instant::now(),
        pending_subacks: HashMap::new(),
        refused_qos2: HashSet::new(),
        subscriptions,
        clean,
        expiry,
        outbox: Vec::new(),
        delivery,
        acks: Vec::new(),
        ack_order: AckOrder::default(),
        buffered: false,
        yield_next: false,
    };
    live.run(ctl_rx, registration, Some(arrival.slot), admission)
        .await;
}

/// Reads bytes until a complete CONNECT is buffered; picks the codec from its protocol level.
async fn read_connect<S: AsyncRead + Unpin>(
    stream: &mut S,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Hello, FrameError> {
    let mut codec = None;
    loop {
        if codec.is_none() {
            codec = codec::sniff_version(buf, max)?.map(|v| Codec::new(v, max));
        }
        if let Some(c) = codec
            && let Some(packet) = c.decode_connect(buf)?
        {
            return match packet {
                Packet::Connect(connect, props, will, will_props, login) => Ok(Hello {
                    codec: c,
                    connect,
                    props,
                    will: will.map(|will| Will {
                        will,
                        props: will_props,
                    }),
                    login,
                }),
                _ => Err(FrameError::UnexpectedType(0)),
            };
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| FrameError::Malformed(e.to_string()))?;
        if n == 0 {
            return Err(FrameError::Malformed("closed".into()));
        }
    }
}

/// Runs the CONNECT through the gate and the broker's own limits.
async fn admit(
    broker: &Broker,
    hello: &Hello,
    peer: SocketAddr,
    tls: Option<&TlsIdentity>,
) -> Result<Admission, Refusal> {
    // The one client-id rule (the registry's): rumqttd's router silently drops links whose id
    // has `+ $ # /`, and control characters mark mqgate's own links.
    let parsed = ClientId::parse(&hello.connect.client_id).map_err(|_| Refusal::BadClientId)?;
    let client_id = parsed.as_str();
    if hello
        .props
        .as_ref()
        .is_some_and(|p| p.authentication_method.is_some())
    {
        return Err(Refusal::AuthMethod);
    }
    if tls.is_some_and(|t| t.identity.client_id != client_id) {
        return Err(Refusal::IdentityMismatch);
    }
    let epoch = broker.gate.registry().epoch();
    let login = hello.login.as_ref();
    let request = ConnectRequest {
        client_id: parsed.clone(),
        username: login.map(|l| l.username.clone()).filter(|u| !u.is_empty()),
        secret: login.map(|l| SecretString::from(l.password.clone())),
        peer: Some(peer.ip().to_string()),
        cert: tls.map(|t| PresentedCert::Verified(t.identity.clone())),
    };
    let outcome = broker.gate.connect(request).await;
    let (true, Some(device)) = (outcome.decision.is_allow(), outcome.device) else {
        return Err(Refusal::from_decision(&outcome.decision));
    };
    if let Some(will) = &hello.will {
        let topic = std::str::from_utf8(&will.will.topic).map_err(|_| Refusal::WillNotAllowed)?;
        let d = broker.gate.authorize(&parsed, Action::Publish, topic).await;
        if !d.is_allow() {
            return Err(Refusal::WillNotAllowed);
        }
    }
    let capacity = Arc::clone(&broker.capacity)
        .try_acquire_owned()
        .map_err(|_| Refusal::TooManyConnections)?;
    let credential_id = match outcome.decision.cause {
        Cause::Credential { credential_id, .. } => Some(credential_id),
        _ => None,
    };
    Ok(Admission {
        device,
        credential_id,
        epoch,
        _capacity: capacity,
    })
}

/// Answers a refused CONNECT with its CONNACK code and closes.
async fn refuse<S: AsyncWrite + Unpin>(
    broker: &Broker,
    stream: &mut S,
    codec: Codec,
    client_id: &str,
    refusal: &Refusal,
) {
    let code = refusal.code(codec.version);
    tracing::info!(
        %client_id,
        refusal = refusal.label(),
        ?code,
        "MQTT CONNECT refused"
    );
    broker.gate.metrics().broker_event("connect_refused");
    let _ = write_packets(stream, codec, [connack(code, false, None)]).await;
    let _ = timeout(Duration::from_secs(1), stream.shutdown()).await;
}

/// Tells the live session of the same client id to leave and waits (bounded) until it has.
async fn take_over(
    broker: &Broker,
    previous: mpsc::Sender<Control>,
    client_id: &str,
    resumes: bool,
) {
    let (done, done_rx) = oneshot::channel();
    if previous
        .send(Control::TakeOver { done, resumes })
        .await
        .is_ok()
    {
        let _ = timeout(TAKEOVER_WAIT, done_rx).await;
    }
    tracing::info!(%client_id, "MQTT session taken over by a new connection");
    broker.gate.metrics().broker_event("session_taken_over");
}

fn connack(
    code: ConnectReturnCode,
    session_present: bool,
    props: Option<ConnAckProperties>,
) -> Packet {
    Packet::ConnAck(
        ConnAck {
            session_present,
            code,
        },
        props,
    )
}

/// 5.0 CONNACK properties: the packet limit, and no topic aliases from the client (mqgate must
/// see every publish's real topic to authorize it).
fn success_properties(max: usize) -> ConnAckProperties {
    ConnAckProperties {
        max_packet_size: u32::try_from(max).ok(),
        topic_alias_max: Some(0),
        retain_available: Some(1),
        ..ConnAckProperties::default()
    }
}

/// 1.5 × the client's keep-alive (none when it asked for 0).
fn keep_alive(secs: u16) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500))
}

async fn write_packets<S: AsyncWrite + Unpin>(
    stream: &mut S,
    codec: Codec,
    packets: impl IntoIterator<Item = Packet>,
) -> Result<(), End> {
    let mut out = BytesMut::new();
    for p in packets {
        codec.encode(p, &mut out).map_err(|e| {
            tracing::warn!(error = %e, "could not encode a packet for a client");
            End::Io
        })?;
    }
    match timeout(WRITE_TIMEOUT, stream.write_all(&out)).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(End::Io),
    }
}

/// A 5.0 DISCONNECT with a reason string. Always with properties: rumqttd 0.20's 5.0 writer
/// frames a reason code without properties one byte short.
fn goodbye(reason_code: DisconnectReasonCode, why: &str) -> Packet {
    let props = DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(why.replace('_', " ")),
        user_properties: Vec::new(),
        server_reference: None,
    };
    Packet::Disconnect(Disconnect { reason_code }, Some(props))
}

fn normal_disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// Why a live session ended.
enum End {
    /// The client sent DISCONNECT (5.0 may ask for its will, and set a new session expiry).
    ClientDisconnect {
        with_will: bool,
        expiry: Option<u32>,
    },
    /// The client closed the connection, or a read or write failed.
    Io,
    /// Nothing received for 1.5 × keep-alive.
    KeepAlive,
    /// A new connection with the same client id (resuming the session or not).
    TakenOver(oneshot::Sender<()>, bool),
    /// The device lost its admission (disabled, removed, credential revoked).
    Revoked,
    /// mqgate is shutting down.
    Shutdown,
    /// The client broke the protocol.
    Protocol(DisconnectReasonCode),
    /// The router dropped the link.
    RouterGone,
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::ClientDisconnect { .. } => "client_disconnect",
            End::Io => "closed",
            End::KeepAlive => "keep_alive_timeout",
            End::TakenOver(..) => "taken_over",
            End::Revoked => "revoked",
            End::Shutdown => "shutdown",
            End::Protocol(_) => "protocol_error",
            End::RouterGone => "router_closed",
        }
    }

    /// The 5.0 DISCONNECT reason sent before closing, if any.
    fn reason(&self) -> Option<DisconnectReasonCode> {
        match self {
            End::KeepAlive => Some(DisconnectReasonCode::KeepAliveTimeout),
            End::TakenOver(..) => Some(DisconnectReasonCode::SessionTakenOver),
            End::Revoked => Some(DisconnectReasonCode::NotAuthorized),
            End::Shutdown => Some(DisconnectReasonCode::ServerShuttingDown),
            End::Protocol(code) => Some(*code),
            _ => None,
        }
    }

    /// Whether the will is published (everything but a normal DISCONNECT; not when the router
    /// is gone, as there is nothing left to publish through).
    fn fires_will(&self) -> bool {
        match self {
            End::ClientDisconnect { with_will, .. } => *with_will,
            End::RouterGone => false,
            _ => true,
        }
    }
}

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

/// An admitted, attached session.
struct Live<S> {
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
    async fn run(
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
                    let deadline = self.last_seen + self.keep_alive.unwrap_or(far);
                    if Instant::now() >= deadline {
                        Err(End::KeepAlive)
                    } else {
                        timer.as_mut().reset(deadline);
                        Ok(())
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
        match (credential, self.cert_not_after) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Time until `end` by the gate's clock; at least a second, so a session whose re-check
    /// still allows it is not re-checked in a tight loop.
    fn until(&self, end: Option<i64>, far: Duration) -> Duration {
        match end {
            Some(t) => {
                let left = t - self.broker.gate.clock().now();
                Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1))
            }
            None => far,
        }
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

    async fn on_read(&mut self, n: std::io::Result<usize>) -> Result<(), End> {
        match n {
            Ok(0) | Err(_) => return Err(End::Io),
            Ok(_) => self.last_seen = Instant::now(),
        }
        self.on_buffered().await
    }

    /// Handles the complete packets in the read buffer, a batch at a time (see
    /// [`READ_BATCH_BYTES`]): what a full batch leaves is handled on the session's next turn.
    async fn on_buffered(&mut self) -> Result<(), End> {
        self.buffered = false;
        let (mut handled, mut consumed) = (0, 0);
        // Kept between reads: a burst of publishes does not regrow (and re-copy) a fresh list.
        let mut to_router = std::mem::take(&mut self.outbox);
        let mut to_client = Vec::new();
        let mut ended = None;
        loop {
            if handled >= READ_BATCH_PACKETS || consumed >= READ_BATCH_BYTES {
                self.buffered = !self.rbuf.is_empty();
                self.yield_next = true;
                break;
            }
            let before = self.rbuf.len();
            let packet = match self.codec.decode(&mut self.rbuf) {
                Ok(Some(p)) => p,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(client_id = %self.client_id, error = %e, "bad MQTT frame");
                    ended = Some(End::Protocol(match e {
                        FrameError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    }));
                    break;
                }
            };
            handled += 1;
            consumed += before.saturating_sub(self.rbuf.len());
            if let Err(end) = self.on_packet(packet, &mut to_router, &mut to_client).await {
                ended = Some(end);
                break;
            }
        }
        let routed = self.route(&mut to_router).await;
        self.outbox = to_router;
        routed?;
        self.write(to_client).await?;
        ended.map_or(Ok(()), Err)
    }

    async fn on_packet(
        &mut self,
        packet: Packet,
        to_router: &mut Vec<Packet>,
        to_client: &mut Vec<Packet>,
    ) -> Result<(), End> {
        match packet {
            Packet::Publish(p, props) => self.on_publish(p, props, to_router, to_client).await?,
            Packet::Subscribe(s, props) => {
                self.on_subscribe(s, props, to_router, to_client).await?
            }
            Packet::Unsubscribe(u, props) => {
                for f in &u.filters {
                    self.subscriptions.remove(f);
                }
                on_unsubscribe(self.codec, u, props, to_router, to_client)
            }
            Packet::PubRel(r, props) => {
                if self.refused_qos2.remove(&r.pkid) {
                    to_client.push(Packet::PubComp(
                        PubComp {
                            pkid: r.pkid,
                            reason: PubCompReason::Success,
                        },
                        None,
                    ));
                } else {
                    to_router.push(Packet::PubRel(r, props));
                }
            }
            Packet::PingReq(_) => to_client.push(Packet::PingResp(PingResp)),
            Packet::Disconnect(d, props) => {
                let with_will = d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
                let expiry = props.and_then(|p| p.session_expiry_interval);
                return Err(End::ClientDisconnect { with_will, expiry });
            }
            p @ (Packet::PubAck(..) | Packet::PubRec(..) | Packet::PubComp(..)) => {
                self.delivery.on_client_ack(p, &mut self.wbuf, to_router)
            }
            _ => return Err(End::Protocol(DisconnectReasonCode::ProtocolError)),
        }
        Ok(())
    }

    async fn on_publish(
        &mut self,
        publish: Publish,
        props: Option<PublishProperties>,
        to_router: &mut Vec<Packet>,
        to_client: &mut Vec<Packet>,
    ) -> Result<(), End> {
        // CONNACK allowed no topic aliases: the real topic must be in every publish.
        if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
            return Err(End::Protocol(DisconnectReasonCode::TopicAliasInvalid));
        }
        let Ok(topic) = std::str::from_utf8(&publish.topic) else {
            return Err(End::Protocol(DisconnectReasonCode::TopicNameInvalid));
        };
        let decision = self
            .broker
            .gate
            .authorize_device(&self.device, Action::Publish, topic);
        if decision.is_allow() {
            if publish.retain && self.retained_refused(topic, publish.payload.len()) {
                return self.refuse_over_quota(&publish, to_client);
            }
            if codec::qos_and_pkid(&publish).0 > 0 {
                self.ack_order.routed();
            }
            to_router.push(Packet::Publish(publish, props));
            return Ok(());
        }
        self.broker.gate.metrics().broker_event("publish_refused");
        let (qos, pkid) = codec::qos_and_pkid(&publish);
        let v5 = self.codec.version == Version::V5;
        // 5.0 says why; 3.1.1 has no refusal in PUBACK/PUBREC: the flow completes, the message
        // is dropped.
        let limited = matches!(decision.cause, Cause::RateLimited(_));
        match qos {
            1 => {
                let reason = match (v5, limited) {
                    (false, _) => PubAckReason::Success,
                    (true, true) => PubAckReason::QuotaExceeded,
                    (true, false) => PubAckReason::NotAuthorized,
                };
                self.ack_order
                    .edge(Packet::PubAck(PubAck { pkid, reason }, None), to_client);
            }
            2 => {
                let reason = match (v5, limited) {
                    (false, _) => {
                        self.refused_qos2.insert(pkid);
                        PubRecReason::Success
                    }
                    (true, true) => PubRecReason::QuotaExceeded,
                    (true, false) => PubRecReason::NotAuthorized,
                };
                self.ack_order
                    .edge(Packet::PubRec(PubRec { pkid, reason }, None), to_client);
            }
            _ => {}
        }
        Ok(())
    }

    /// Whether a retained publish would pass the device's or tenant's retained bound.
    fn retained_refused(&self, topic: &str, payload_len: usize) -> bool {
        let b = &self.broker;
        let (tenant, id) = (self.device.tenant, &self.client_id);
        let admitted = b
            .retained
            .admit(&b.settings.limits, tenant, id, topic, payload_len);
        if let Err(which) = admitted {
            tracing::info!(client_id = %id, ?which, "retained message over its bound refused");
            b.gate.metrics().broker_event("retained_exceeded");
        }
        admitted.is_err()
    }

    /// A publish over a quota: 5.0 QoS 1/2 get 0x97 quota exceeded in their ack; a 5.0 QoS 0
    /// publish has no ack, and 3.1.1 no refusal code: the client is disconnected (0x97 in 5.0).
    fn refuse_over_quota(
        &mut self,
        publish: &Publish,
        to_client: &mut Vec<Packet>,
    ) -> Result<(), End> {
        let (qos, pkid) = codec::qos_and_pkid(publish);
        match (self.codec.version, qos) {
            (Version::V5, 1) => {
                let reason = PubAckReason::QuotaExceeded;
                self.ack_order
                    .edge(Packet::PubAck(PubAck { pkid, reason }, None), to_client);
                Ok(())
            }
            (Version::V5, 2) => {
                let reason = PubRecReason::QuotaExceeded;
                self.ack_order
                    .edge(Packet::PubRec(PubRec { pkid, reason }, None), to_client);
                Ok(())
            }
            _ => Err(End::Protocol(DisconnectReasonCode::QuotaExceeded)),
        }
    }

    async fn on_subscribe(
        &mut self,
        subscribe: Subscribe,
        props: Option<SubscribeProperties>,
        to_router: &mut Vec<Packet>,
        to_client: &mut Vec<Packet>,
    ) -> Result<(), End> {
        let limits = &self.broker.settings.limits;
        // Checked before any filter is: one SUBSCRIBE costs a bounded amount of work.
        if subscribe.filters.len() > limits.max_filters_per_subscribe {
            let metrics = self.broker.gate.metrics();
            metrics.broker_event("subscribe_too_many_filters");
            return Err(End::Protocol(DisconnectReasonCode::QuotaExceeded));
        }
        let v5 = self.codec.version == Version::V5;
        let code = |c: SubscribeReasonCode| if v5 { c } else { SubscribeReasonCode::Failure };
        let mut slots = Vec::with_capacity(subscribe.filters.len());
        let mut allowed = Vec::with_capacity(subscribe.filters.len());
        for filter in subscribe.filters {
            let refused = match guard::filter_refusal(&filter.path, &self.subscriptions, limits) {
                Some(event) => {
                    self.broker.gate.metrics().broker_event(event.label());
                    Some(code(event.reason_code()))
                }
                None => {
                    let d = self.broker.gate.authorize_device(
                        &self.device,
                        Action::Subscribe,
                        &filter.path,
                    );
                    (!d.is_allow()).then(|| {
                        let m = self.broker.gate.metrics();
                        m.broker_event("subscription_refused");
                        code(SubscribeReasonCode::NotAuthorized)
                    })
                }
            };
            if refused.is_none() {
                self.subscriptions.insert(filter.path.clone());
                allowed.push(filter);
            }
            slots.push(refused);
        }
        let pkid = subscribe.pkid;
        if allowed.is_empty() {
            let return_codes = slots.into_iter().flatten().collect();
            to_client.push(Packet::SubAck(SubAck { pkid, return_codes }, None));
            return Ok(());
        }
        if allowed.len() < slots.len() {
            self.pending_subacks.insert(pkid, slots);
        }
        let filters = allowed;
        to_router.push(Packet::Subscribe(Subscribe { pkid, filters }, props));
        Ok(())
    }

    /// Hands packets to the router: all but the last straight into the link's buffer, the last
    /// through `send`, which wakes the router once for the whole batch.
    async fn send_to_router(&mut self, mut packets: Vec<Packet>) -> Result<(), End> {
        self.route(&mut packets).await
    }

    /// [`Live::send_to_router`] that leaves `packets` empty, its capacity kept.
    async fn route(&mut self, packets: &mut Vec<Packet>) -> Result<(), End> {
        let Some(last) = packets.pop() else {
            return Ok(());
        };
        if !packets.is_empty() {
            self.link.tx.buffer().extend(packets.drain(..));
        }
        self.link
            .tx
            .send(last)
            .await
            .map(|_| ())
            .map_err(|_| End::RouterGone)
    }

    /// Writes the router's notifications to the client, encoding each straight into the write
    /// buffer (a routed publish is moved as little as possible), one write for the whole batch.
    async fn on_router(&mut self, first: Result<Option<Notification>, ()>) -> Result<(), End> {
        let mut wake = false;
        let mut ended = self.on_routed(first, &mut wake).err();
        let mut handled = 1;
        // Then whatever else the router has ready, without waiting.
        while ended.is_none() && handled < NOTIFICATION_BATCH {
            let Some(next) = ready_now(self.link.rx.next()) else {
                break;
            };
            ended = self.on_routed(next.map_err(drop), &mut wake).err();
            handled += 1;
        }
        self.flush().await?;
        if !self.acks.is_empty() {
            let mut acks = std::mem::take(&mut self.acks);
            let routed = self.route(&mut acks).await;
            self.acks = acks;
            routed?;
        }
        if wake {
            self.link.rx.wake().await.map_err(|_| End::RouterGone)?;
        }
        ended.map_or(Ok(()), Err)
    }

    fn on_routed(
        &mut self,
        n: Result<Option<Notification>, ()>,
        wake: &mut bool,
    ) -> Result<(), End> {
        match n {
            Ok(Some(n)) => self.on_notification(n, wake),
            Ok(None) => Ok(()),
            Err(()) => Err(End::RouterGone),
        }
    }

    fn on_notification(&mut self, n: Notification, wake: &mut bool) -> Result<(), End> {
        if matches!(n, Notification::Unschedule) {
            *wake = true;
            return Ok(());
        }
        match Option::<Packet>::from(n) {
            Some(Packet::SubAck(ack, props)) => {
                let ack = self.splice(ack);
                self.encode(Packet::SubAck(ack, props));
            }
            // Answered by mqgate when the UNSUBSCRIBE came in (rumqttd acks per filter, and
            // not at all for a filter that was not subscribed).
            Some(Packet::UnsubAck(..)) | Some(Packet::ConnAck(..)) | None => {}
            Some(Packet::Disconnect(d, _)) => {
                self.encode(goodbye(d.reason_code, "closed by the router"));
                return Err(End::RouterGone);
            }
            Some(p @ (Packet::PubAck(..) | Packet::PubRec(..))) => {
                self.encode(p);
                let mut due = Vec::new();
                self.ack_order.router_acked(&mut due);
                for p in due {
                    self.encode(p);
                }
            }
            Some(p) => self.encode(p),
        }
        Ok(())
    }

    /// The router's SUBACK with the refused filters put back in their places.
    fn splice(&mut self, ack: SubAck) -> SubAck {
        let Some(slots) = self.pending_subacks.remove(&ack.pkid) else {
            return ack;
        };
        let mut granted = ack.return_codes.into_iter();
        let return_codes = slots
            .into_iter()
            .map(|slot| {
                slot.or_else(|| granted.next())
                    .unwrap_or(SubscribeReasonCode::Unspecified)
            })
            .collect();
        SubAck {
            pkid: ack.pkid,
            return_codes,
        }
    }

    /// Says goodbye (5.0 reason code), publishes the will when due, leaves the router; returns
    /// what is left for later (a will held back by its delay, a stored session's expiry).
    async fn finish(mut self, end: End) -> Option<Afterlife> {
        tracing::debug!(client_id = %self.client_id, end = end.label(), "MQTT session ended");
        self.broker.gate.metrics().broker_event(end.label());
        // 5.0 DISCONNECT may change the expiry (not from 0, which is a protocol error: ignored).
        if let End::ClientDisconnect {
            expiry: Some(secs), ..
        } = end
            && self.expiry != Expiry::AtClose
        {
            self.expiry = Expiry::from_interval(secs);
        }
        // The will goes out now, later (5.0 Will Delay Interval), or never: a new connection
        // resuming the session before the delay has passed cancels it.
        let (mut now, mut held) = (None, None);
        if end.fires_will()
            && let Some(will) = self.will.take()
        {
            let due = match end {
                End::Shutdown | End::TakenOver(_, false) => Duration::ZERO,
                _ => will.due_after(self.expiry),
            };
            if due.is_zero() {
                now = Some(will);
            } else if !matches!(end, End::TakenOver(_, true)) {
                self.broker.gate.metrics().broker_event("will_delayed");
                held = Some((will, Instant::now() + due));
            }
        }
        // The router first (will, then leaving), so that a client seeing the close knows its
        // will is already routed.
        if !matches!(end, End::RouterGone) {
            let mut packets = Vec::new();
            if let Some(will) = now
                && let Some(p) =
                    afterlife::checked_will(&self.broker, &self.client_id, will, 1).await
            {
                packets.push(p);
            }
            packets.push(normal_disconnect());
            let _ = self.send_to_router(packets).await;
        }
        if let (Version::V5, Some(reason_code)) = (self.codec.version, end.reason()) {
            let bye = self
                .delivery
                .fit_disconnect(self.codec, goodbye(reason_code, end.label()));
            let _ = timeout(
                Duration::from_secs(1),
                write_packets(&mut self.stream, self.codec, [bye]),
            )
            .await;
        }
        let _ = timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        let stored = !self.clean;
        let filters = stored.then(|| std::mem::take(&mut self.subscriptions));
        self.broker.sessions.store_filters(&self.client_id, filters);
        // A stored session lasts as long as its expiry says, unless a new connection owns it now.
        let mut expires = None;
        if stored && !matches!(end, End::TakenOver(..) | End::RouterGone | End::Shutdown) {
            match self.expiry.left() {
                Some(left) if left.is_zero() => {
                    afterlife::expire(&self.broker, &self.client_id).await
                }
                Some(left) => expires = Some(Instant::now() + left),
                None => {}
            }
        }
        if let End::TakenOver(done, _) = end {
            let _ = done.send(());
        }
        (held.is_some() || expires.is_some()).then_some(Afterlife {
            will: held,
            expires,
        })
    }
}

/// UNSUBSCRIBE goes to the router; mqgate answers it at once (one success per filter).
fn on_unsubscribe(
    codec: Codec,
    u: Unsubscribe,
    props: Option<UnsubscribeProperties>,
    to_router: &mut Vec<Packet>,
    to_client: &mut Vec<Packet>,
) {
    let reasons = match codec.version {
        Version::V4 => Vec::new(),
        Version::V5 => vec![UnsubAckReason::Success; u.filters.len()],
    };
    to_client.push(Packet::UnsubAck(
        UnsubAck {
            pkid: u.pkid,
            reasons,
        },
        None,
    ));
    to_router.push(Packet::Unsubscribe(u, props));
}
