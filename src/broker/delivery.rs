//! The delivery side of a session: what the client said it can take (MQTT 5.0).
//!
//! - **Maximum Packet Size**: a packet larger than the client allows is not sent. A QoS 1/2
//!   message is then treated as delivered: the router gets its PUBACK (or PUBREC and PUBCOMP)
//!   from here.
//! - **Receive Maximum**: no more unacknowledged QoS 1/2 PUBLISHes (until PUBACK, or PUBCOMP for
//!   QoS 2) are out at the client than it allows; the rest are held here, already encoded, in the
//!   router's order, and go out as acknowledgements come back. QoS 0 messages are not held (the
//!   specification allows sending them meanwhile).
//!
//! rumqttd's router accepts acknowledgements only in the order it sent the publishes (and
//! PUBCOMPs only in the order of the PUBRECs), so a dropped message is acknowledged only once
//! everything before it is. The router has at most 100 QoS 1/2 publishes out per client, which
//! bounds what is held here.
//!
//! 3.1.1 has neither limit; a 5.0 client that sets neither is not tracked at all.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    Disconnect, DisconnectProperties, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason,
};

use super::codec::Codec;

/// A QoS 1/2 publish the router handed over, until the client completes it.
#[derive(Debug, Clone, Copy)]
struct Out {
    pkid: u16,
    qos2: bool,
    state: State,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for the client's Receive Maximum.
    Held,
    /// Written to the client.
    Sent,
    /// Too large for the client: delivered as far as the router is concerned.
    Dropped,
}

/// What the client allows, and the QoS 1/2 flow toward it (see the module docs).
#[derive(Debug)]
pub(super) struct Delivery {
    /// The client's Maximum Packet Size (whole packet, bytes).
    max_packet: Option<usize>,
    /// The client's Receive Maximum.
    receive_max: usize,
    /// Whether the QoS 1/2 flow is followed at all.
    tracking: bool,
    /// Awaiting PUBACK/PUBREC, in the router's order.
    unacked: VecDeque<Out>,
    /// QoS 2 past PUBREC, awaiting PUBCOMP, in the order of the PUBRECs.
    unreleased: VecDeque<Out>,
    /// Encoded publishes held back by the Receive Maximum, in order.
    held: VecDeque<Bytes>,
    /// Sent to the client and not completed.
    in_flight: usize,
    /// Dropped QoS 2 messages whose PUBREL the router will still send (answered here).
    swallow_pubrel: Vec<u16>,
}

impl Delivery {
    /// The limits from a 5.0 CONNECT (`None` for 3.1.1). A 0 in either is a protocol error,
    /// refused at CONNECT (0x82); should one reach here, it is read as "no limit".
    pub(super) fn new(receive_max: Option<u16>, max_packet: Option<u32>) -> Self {
        let max_packet = max_packet
            .filter(|m| *m > 0)
            .and_then(|m| usize::try_from(m).ok());
        let receive_max = receive_max.filter(|r| *r > 0).unwrap_or(u16::MAX);
        Delivery {
            max_packet,
            receive_max: usize::from(receive_max),
            tracking: max_packet.is_some() || receive_max < u16::MAX,
            unacked: VecDeque::new(),
            unreleased: VecDeque::new(),
            held: VecDeque::new(),
            in_flight: 0,
            swallow_pubrel: Vec::new(),
        }
    }

    /// Whether `len` bytes may go to the client.
    pub(super) fn fits(&self, len: usize) -> bool {
        self.max_packet.is_none_or(|m| len <= m)
    }

    /// Encodes a packet from the router into `wbuf`, or holds it, or drops it (see the module
    /// docs). Acknowledgements the router is owed go to `to_router`.
    pub(super) fn deliver(
        &mut self,
        codec: Codec,
        packet: Packet,
        wbuf: &mut BytesMut,
        to_router: &mut Vec<Packet>,
    ) {
        if self.tracking
            && let Packet::PubRel(rel, _) = &packet
            && !self.on_router_pubrel(rel.pkid)
        {
            return;
        }
        let publish = matches!(packet, Packet::Publish(..));
        let mark = wbuf.len();
        if let Err(e) = codec.encode(packet, wbuf) {
            tracing::warn!(error = %e, "could not encode a packet for a client");
            return;
        }
        let Some(frame) = wbuf.get(mark..) else {
            return;
        };
        let fits = self.fits(frame.len());
        if !publish || !self.tracking {
            if !fits {
                tracing::debug!(
                    len = frame.len(),
                    "packet over the client's maximum dropped"
                );
                wbuf.truncate(mark);
            }
            return;
        }
        let (qos, pkid) = publish_header(frame).unwrap_or((0, 0));
        if qos == 0 {
            if !fits {
                tracing::debug!(
                    len = frame.len(),
                    "message over the client's maximum dropped"
                );
                wbuf.truncate(mark);
            }
            return;
        }
        let qos2 = qos == 2;
        let state = if !fits {
            tracing::debug!(
                len = frame.len(),
                "message over the client's maximum dropped"
            );
            wbuf.truncate(mark);
            State::Dropped
        } else if self.in_flight < self.receive_max && self.held.is_empty() {
            self.in_flight += 1;
            State::Sent
        } else {
            self.held.push_back(wbuf.split_off(mark).freeze());
            State::Held
        };
        self.unacked.push_back(Out { pkid, qos2, state });
        self.settle(to_router);
    }

    /// A PUBREL from the router: `false` when it is for a dropped message (answered already).
    fn on_router_pubrel(&mut self, pkid: u16) -> bool {
        if let Some(i) = self.swallow_pubrel.iter().position(|p| *p == pkid) {
            self.swallow_pubrel.swap_remove(i);
            return false;
        }
        // One this connection has not seen PUBREC for: left over from the stored session; the
        // client owes its PUBCOMP, which counts against its Receive Maximum.
        if !self.unreleased.iter().any(|o| o.pkid == pkid) {
            self.in_flight += 1;
            self.unreleased.push_back(Out {
                pkid,
                qos2: true,
                state: State::Sent,
            });
        }
        true
    }

    /// The client acknowledged (PUBACK, PUBREC or PUBCOMP): passes the packet on to the router
    /// (ahead of what it unblocks there), frees its place, writes what was held.
    pub(super) fn on_client_ack(
        &mut self,
        ack: Packet,
        wbuf: &mut BytesMut,
        to_router: &mut Vec<Packet>,
    ) {
        if !self.tracking {
            to_router.push(ack);
            return;
        }
        let completed = match &ack {
            Packet::PubAck(a, _) => take(&mut self.unacked, a.pkid).is_some(),
            Packet::PubRec(r, _) => {
                if let Some(out) = take(&mut self.unacked, r.pkid) {
                    self.unreleased.push_back(out);
                }
                false
            }
            Packet::PubComp(c, _) => take(&mut self.unreleased, c.pkid).is_some(),
            _ => false,
        };
        if completed {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        to_router.push(ack);
        self.release(wbuf);
        self.settle(to_router);
    }

    /// Writes held publishes while the client's Receive Maximum allows.
    fn release(&mut self, wbuf: &mut BytesMut) {
        while self.in_flight < self.receive_max {
            let Some(frame) = self.held.pop_front() else {
                return;
            };
            let Some(out) = self.unacked.iter_mut().find(|o| o.state == State::Held) else {
                return;
            };
            out.state = State::Sent;
            wbuf.extend_from_slice(&frame);
            self.in_flight += 1;
        }
    }

    /// Acknowledges to the router the dropped messages that are next in its order.
    fn settle(&mut self, to_router: &mut Vec<Packet>) {
        while let Some(out) = self.unacked.front().copied()
            && out.state == State::Dropped
        {
            self.unacked.pop_front();
            let pkid = out.pkid;
            if out.qos2 {
                let reason = PubRecReason::Success;
                to_router.push(Packet::PubRec(PubRec { pkid, reason }, None));
                self.unreleased.push_back(out);
                self.swallow_pubrel.push(pkid);
            } else {
                let reason = PubAckReason::Success;
                to_router.push(Packet::PubAck(PubAck { pkid, reason }, None));
            }
        }
        while let Some(out) = self.unreleased.front().copied()
            && out.state == State::Dropped
        {
            self.unreleased.pop_front();
            let pkid = out.pkid;
            let reason = PubCompReason::Success;
            to_router.push(Packet::PubComp(PubComp { pkid, reason }, None));
        }
    }

    /// A 5.0 DISCONNECT `goodbye`, without its reason string if that would make it too large.
    pub(super) fn fit_disconnect(&self, codec: Codec, goodbye: Packet) -> Packet {
        let mut probe = BytesMut::new();
        let Packet::Disconnect(d, _) = &goodbye else {
            return goodbye;
        };
        if self.max_packet.is_none() {
            return goodbye;
        }
        let bare = Packet::Disconnect(
            Disconnect {
                reason_code: d.reason_code,
            },
            // Always with properties: rumqttd 0.20's 5.0 writer frames a reason code without
            // them one byte short.
            Some(DisconnectProperties {
                session_expiry_interval: None,
                reason_string: None,
                user_properties: Vec::new(),
                server_reference: None,
            }),
        );
        match codec.encode(goodbye.clone(), &mut probe) {
            Ok(()) if self.fits(probe.len()) => goodbye,
            _ => bare,
        }
    }
}

/// Removes the entry for `pkid` (normally the first), if the client has seen it.
fn take(queue: &mut VecDeque<Out>, pkid: u16) -> Option<Out> {
    let i = queue
        .iter()
        .position(|o| o.pkid == pkid && o.state == State::Sent)?;
    queue.remove(i)
}

/// QoS and packet id of an encoded PUBLISH (3.1.1 and 5.0 share this part of the layout):
/// fixed header, remaining length, topic, then the packet id when QoS > 0.
fn publish_header(frame: &[u8]) -> Option<(u8, u16)> {
    let qos = (frame.first()? >> 1) & 0b11;
    if qos == 0 {
        return Some((0, 0));
    }
    let mut i = 1;
    while frame.get(i)? & 0x80 != 0 {
        i += 1;
    }
    let topic_len = usize::from(u16::from_be_bytes([*frame.get(i + 1)?, *frame.get(i + 2)?]));
    let at = i + 3 + topic_len;
    let pkid = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
    Some((qos, pkid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::codec::{Version, publish_with_qos};

    fn publish(qos: u8, pkid: u16, payload: &[u8]) -> Packet {
        let p = publish_with_qos(
            "t/x".into(),
            Bytes::copy_from_slice(payload),
            false,
            qos,
            pkid,
        );
        Packet::Publish(p, None)
    }

    fn codec() -> Codec {
        Codec::new(Version::V5, 1 << 20)
    }

    #[test]
    fn the_header_of_an_encoded_publish_gives_qos_and_packet_id() {
        let mut buf = BytesMut::new();
        codec().encode(publish(1, 513, b"hello"), &mut buf).unwrap();
        assert_eq!(publish_header(&buf), Some((1, 513)));
        assert_eq!(publish_header(&buf[..4]), None);
    }

    #[test]
    fn a_dropped_message_is_acknowledged_only_after_those_before_it() {
        let mut d = Delivery::new(None, Some(40));
        let (mut wbuf, mut to_router) = (BytesMut::new(), Vec::new());
        d.deliver(codec(), publish(1, 1, b"small"), &mut wbuf, &mut to_router);
        d.deliver(
            codec(),
            publish(1, 2, &[b'x'; 64]),
            &mut wbuf,
            &mut to_router,
        );
        assert!(to_router.is_empty(), "acked before the message ahead of it");
        let ack = Packet::PubAck(
            PubAck {
                pkid: 1,
                reason: PubAckReason::Success,
            },
            None,
        );
        d.on_client_ack(ack, &mut wbuf, &mut to_router);
        assert!(matches!(
            to_router.as_slice(),
            [Packet::PubAck(a, None), Packet::PubAck(b, None)] if a.pkid == 1 && b.pkid == 2
        ));
    }

    #[test]
    fn the_receive_maximum_holds_the_rest_until_acks_come() {
        let mut d = Delivery::new(Some(2), None);
        let (mut wbuf, mut to_router) = (BytesMut::new(), Vec::new());
        let mut one = BytesMut::new();
        codec().encode(publish(1, 1, b"m"), &mut one).unwrap();
        for pkid in 1..=5 {
            d.deliver(codec(), publish(1, pkid, b"m"), &mut wbuf, &mut to_router);
        }
        let sent = |w: &BytesMut| w.len() / one.len();
        assert_eq!(sent(&wbuf), 2);
        let ack = Packet::PubAck(
            PubAck {
                pkid: 1,
                reason: PubAckReason::Success,
            },
            None,
        );
        d.on_client_ack(ack, &mut wbuf, &mut to_router);
        assert_eq!(sent(&wbuf), 3);
    }
}
