//! The live loop of an admitted, attached connection: I/O only. It reads the client's packets
//! (in batches, yielding the broker's thread between them), checks every PUBLISH and SUBSCRIBE
//! filter through the gate before the router sees it, writes the router's answers back, and
//! ends on DISCONNECT, close, keep-alive expiry, takeover, revocation or shutdown. What to answer
//! is decided by [`rules`](super::rules); this file only moves packets. On the way out mqgate
//! publishes the will itself (checked again: a revoked device's will is dropped) and detaches
//! from the router; a 5.0 will held back by its delay, or a stored session with an expiry, is left
//! to [`afterlife`](super::afterlife), in the same task.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use rumqttd::Notification;
use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PingResp, Publish, PublishProperties, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode, Unsubscribe, UnsubscribeProperties,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout};

use super::ackorder::AckOrder;
use super::afterlife::{self, Afterlife, Expiry, Will};
use super::codec::{self, Codec, Version};
use super::connect::{Admission, WRITE_TIMEOUT, write_packets};
use super::delivery::Delivery;
use super::directory::{Control, PeerSlot, Registration};
use super::guard;
use super::router::Link;
use super::rules::{self, End, WillFate};
use super::{Broker, ready_now};
use crate::acl::Action;
use crate::core::{Cause, DeviceView};

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
                    ended = Some(rules::bad_frame(&e));
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
                    to_client.push(rules::pubcomp(r.pkid));
                } else {
                    to_router.push(Packet::PubRel(r, props));
                }
            }
            Packet::PingReq(_) => to_client.push(Packet::PingResp(PingResp)),
            Packet::Disconnect(d, props) => return Err(rules::client_disconnect(&d, props)),
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
        if !v5 && qos == 2 {
            // Its PUBREL is answered here: the router never saw the publish.
            self.refused_qos2.insert(pkid);
        }
        if let Some(ack) = rules::refused_publish_ack(v5, qos, pkid, limited) {
            self.ack_order.edge(ack, to_client);
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
        let ack = rules::over_quota_ack(self.codec.version, qos, pkid)?;
        self.ack_order.edge(ack, to_client);
        Ok(())
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
        let version = self.codec.version;
        let code = |c: SubscribeReasonCode| rules::subscribe_refusal(version, c);
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
                self.encode(rules::goodbye(d.reason_code, "closed by the router"));
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
        match self.pending_subacks.remove(&ack.pkid) {
            Some(slots) => rules::splice(slots, ack),
            None => ack,
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
            match end.will_fate(will.due_after(self.expiry)) {
                WillFate::Now => now = Some(will),
                WillFate::Held(due) => {
                    self.broker.gate.metrics().broker_event("will_delayed");
                    held = Some((will, Instant::now() + due));
                }
                WillFate::Cancelled => {}
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
            packets.push(rules::normal_disconnect());
            let _ = self.send_to_router(packets).await;
        }
        if let (Version::V5, Some(reason_code)) = (self.codec.version, end.reason()) {
            let bye = self
                .delivery
                .fit_disconnect(self.codec, rules::goodbye(reason_code, end.label()));
            let _ = timeout(
                Duration::from_secs(1),
                write_packets(&mut self.stream, self.codec, [bye]),
            )
            .await;
        }
        let _ = timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        let stored = !self.clean;
        let filters = stored.then(|| std::mem::take(&mut self.subscriptions));
        self.broker
            .directory
            .store_filters(&self.client_id, filters);
        // A stored session lasts as long as its expiry says, unless a new connection owns it now.
        let mut expires = None;
        if stored && end.starts_expiry() {
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
    to_client.push(rules::unsuback(codec.version, u.pkid, u.filters.len()));
    to_router.push(Packet::Unsubscribe(u, props));
}
