//! What the client sends: read batches, each packet checked (PUBLISH through the ACL and limits,
//! every SUBSCRIBE filter through the guard and the ACL) before the router sees it.

use rumqttd::protocol::{
    DisconnectReasonCode, Packet, PingResp, Publish, PublishProperties, SubAck, Subscribe,
    SubscribeProperties, SubscribeReasonCode, Unsubscribe, UnsubscribeProperties,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use super::super::codec::{self, Codec, Version};
use super::super::guard;
use super::super::rules::{self, End};
use super::{Live, READ_BATCH_BYTES, READ_BATCH_PACKETS};
use crate::acl::Action;
use crate::core::Cause;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Live<S> {
    pub(super) async fn on_read(&mut self, n: std::io::Result<usize>) -> Result<(), End> {
        match n {
            Ok(0) | Err(_) => return Err(End::Io),
            Ok(_) => self.last_seen = Instant::now(),
        }
        self.on_buffered().await
    }

    /// Handles the complete packets in the read buffer, a batch at a time (see
    /// [`READ_BATCH_BYTES`]): what a full batch leaves is handled on the session's next turn.
    pub(super) async fn on_buffered(&mut self) -> Result<(), End> {
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

    pub(super) async fn on_packet(
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

    pub(super) async fn on_publish(
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
    pub(super) fn retained_refused(&self, topic: &str, payload_len: usize) -> bool {
        let b = &self.broker;
        let (tenant, id) = (self.device.tenant_id(), &self.client_id);
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
    pub(super) fn refuse_over_quota(
        &mut self,
        publish: &Publish,
        to_client: &mut Vec<Packet>,
    ) -> Result<(), End> {
        let (qos, pkid) = codec::qos_and_pkid(publish);
        let ack = rules::over_quota_ack(self.codec.version, qos, pkid)?;
        self.ack_order.edge(ack, to_client);
        Ok(())
    }

    pub(super) async fn on_subscribe(
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
