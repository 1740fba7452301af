//! The CONNECT phase of one connection: read CONNECT (bounded in time and size), admit it
//! through the gate and the broker's own limits, or refuse it with its CONNACK code; take over a
//! live session of the same client id, attach to the router, answer CONNACK, and hand the
//! connection to its [live loop](super::live).

use crate::core::ids::ClientId;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::protocol::{Connect, ConnectProperties, ConnectReturnCode, Login, Packet};
use secrecy::SecretString;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};
use tokio::time::timeout;

use super::afterlife::{self, Expiry, Will};
use super::codec::{self, Codec, FrameError, Version};
use super::delivery::Delivery;
use super::directory::Control;
use super::live::{Attached, Live};
use super::refusal::Refusal;
use super::router::Link;
use super::rules::{self, End};
use super::{Arrival, Broker, TlsIdentity};
use crate::acl::Action;
use crate::core::{Cause, DeviceView};
use crate::gate::{ConnectRequest, PresentedCert};

/// How long a write to a client may take before the connection is given up.
pub(super) const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a new session waits for the one it takes over to leave.
const TAKEOVER_WAIT: Duration = Duration::from_secs(2);

/// A CONNECT, taken apart.
pub(super) struct Hello {
    codec: Codec,
    connect: Connect,
    props: Option<ConnectProperties>,
    will: Option<Will>,
    login: Option<Login>,
}

/// What the gate admitted.
pub(super) struct Admission {
    device: Arc<DeviceView>,
    credential_id: Option<i64>,
    /// The registry's change counter before the gate decided.
    epoch: u64,
    _capacity: OwnedSemaphorePermit,
}

/// Serves one connection (see the module docs).
pub(super) async fn serve<S>(
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
    let Some(hello) = greet(&broker, &mut stream, &mut rbuf, peer).await else {
        return;
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
            .directory
            .register(&client_id, admission.device.tenant_id(), ctl_tx.clone());
    if let Some(previous) = previous {
        take_over(&broker, previous, &client_id, !clean_start).await;
    }
    let Some((link, clean)) =
        attach(&broker, &mut stream, codec, &client_id, clean_start, expiry).await
    else {
        return;
    };
    let ack = rules::connack(
        ConnectReturnCode::Success,
        link.session_present,
        (codec.version == Version::V5).then(|| rules::success_properties(max)),
    );
    if write_packets(&mut stream, codec, [ack]).await.is_err() {
        let mut link = link;
        let _ = link.tx.send(rules::normal_disconnect()).await;
        return;
    }
    broker.gate.metrics().broker_event("session_opened");
    // A resumed session brings back its subscriptions inside the router: know them, so that the
    // re-check below drops those the ACL no longer allows.
    let subscriptions = if link.session_present {
        broker.directory.stored_filters(&client_id)
    } else {
        HashSet::new()
    };
    // A change may have landed between the gate's answer and the registration, or the resumed
    // session holds subscriptions: look once more.
    if broker.gate.registry().epoch() != admission.epoch || !subscriptions.is_empty() {
        let _ = ctl_tx.try_send(Control::Recheck);
    }
    let attached = Attached {
        broker: Arc::clone(&broker),
        stream,
        codec,
        client_id,
        peer: peer.ip().to_string(),
        credential_id: admission.credential_id,
        cert_not_after: tls.as_ref().map(|t| t.identity.not_after()),
        cert_chain: tls.map(|t| t.chain),
        device: Arc::clone(&admission.device),
        will,
        link,
        rbuf,
        keep_alive: rules::keep_alive(connect.keep_alive),
        subscriptions,
        clean,
        expiry,
        delivery,
    };
    Live::new(attached)
        .run(ctl_rx, registration, Some(arrival.slot), admission)
        .await;
}

/// Attaches the admitted client to the router, returning its link and whether it is attached
/// clean; refuses the CONNECT (server unavailable) when the router does not take it.
async fn attach<S: AsyncWrite + Unpin>(
    broker: &Broker,
    stream: &mut S,
    codec: Codec,
    client_id: &str,
    clean_start: bool,
    expiry: Expiry,
) -> Option<(Link, bool)> {
    // rumqttd's clean flag both discards a stored session at attach and keeps none at detach. A
    // 5.0 clean start whose session outlives the connection needs the first without the second:
    // discard first, then attach as a stored session.
    let outlives = expiry != Expiry::AtClose;
    if clean_start && outlives {
        afterlife::discard(broker, client_id).await;
    }
    let clean = clean_start && !outlives;
    match broker.router.attach(client_id, clean).await {
        Ok(link) => Some((link, clean)),
        Err(e) => {
            tracing::warn!(%client_id, error = %e, "router refused an admitted client");
            let refusal = Refusal::Unavailable;
            refuse(broker, stream, codec, client_id, &refusal).await;
            None
        }
    }
}

/// Reads the CONNECT within `connect_timeout`; `None` when there is none to decide (closed,
/// malformed, timed out, or an unsupported protocol level, which is answered with its CONNACK).
async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    broker: &Broker,
    stream: &mut S,
    rbuf: &mut BytesMut,
    peer: SocketAddr,
) -> Option<Hello> {
    let max = broker.settings.max_packet_size;
    let limit = broker.settings.connect_timeout;
    match timeout(limit, read_connect(stream, rbuf, max)).await {
        Ok(Ok(hello)) => Some(hello),
        Ok(Err(FrameError::UnsupportedLevel(level))) => {
            tracing::debug!(%peer, level, "MQTT CONNECT with an unsupported protocol level");
            let refuse = Codec::new(Version::V4, max);
            let code = ConnectReturnCode::RefusedProtocolVersion;
            let _ = write_packets(stream, refuse, [rules::connack(code, false, None)]).await;
            None
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MQTT connection closed before CONNECT");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "MQTT CONNECT timed out");
            broker.gate.metrics().broker_event("connect_timeout");
            None
        }
    }
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
    if hello
        .props
        .as_ref()
        .is_some_and(|p| p.receive_maximum == Some(0) || p.max_packet_size == Some(0))
    {
        return Err(Refusal::ProtocolError);
    }
    if tls.is_some_and(|t| t.identity.client_id() != client_id) {
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
    let _ = write_packets(stream, codec, [rules::connack(code, false, None)]).await;
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

pub(super) async fn write_packets<S: AsyncWrite + Unpin>(
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
