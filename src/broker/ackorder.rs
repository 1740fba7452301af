//! PUBACK / PUBREC order toward a client (MQTT 3.1.1 §4.6, 5.0 §4.6: acknowledgements in the order
//! the PUBLISHes were received).
//!
//! A session acknowledges a publish from one of two places: the router acks what it took, the
//! session itself acks what it refused (ACL, rate limit, retained bound). The router's acks arrive
//! later, through its link, so an edge ack for a refused publish could overtake the router's ack
//! for an earlier publish of the same read. Edge acks are therefore held until the router has
//! acknowledged every publish that came before them.
//!
//! The router acks a client's QoS 1/2 publishes in the order it received them. The queue is
//! bounded: should the router ever fall more than [`MAX_HELD`] acks behind, the held acks are
//! released as they are (order given up rather than memory).

use std::collections::VecDeque;

use rumqttd::protocol::Packet;

/// Edge acks held at most; a client cannot legitimately have more QoS 1/2 publishes in flight.
pub(super) const MAX_HELD: usize = 1024;

/// The acknowledgement order of one connection (see the module docs).
#[derive(Debug, Default)]
pub(super) struct AckOrder {
    /// QoS 1/2 publishes handed to the router, whose acks are owed.
    routed: u64,
    /// Router acks passed on to the client.
    acked: u64,
    /// Edge acks waiting: released once `acked` reaches the count beside them.
    held: VecDeque<(u64, Packet)>,
}

impl AckOrder {
    /// A QoS 1/2 publish went to the router: its ack comes from there.
    pub(super) fn routed(&mut self) {
        self.routed += 1;
    }

    /// An ack made at the edge: into `out` now when nothing before it is owed, else held.
    pub(super) fn edge(&mut self, ack: Packet, out: &mut Vec<Packet>) {
        if self.acked >= self.routed && self.held.is_empty() {
            out.push(ack);
            return;
        }
        if self.held.len() >= MAX_HELD {
            out.extend(self.held.drain(..).map(|(_, p)| p));
            out.push(ack);
            return;
        }
        self.held.push_back((self.routed, ack));
    }

    /// The router's ack for the oldest routed publish was passed on: the edge acks now due, in
    /// order, go into `out`.
    pub(super) fn router_acked(&mut self, out: &mut Vec<Packet>) {
        self.acked = (self.acked + 1).min(self.routed);
        while let Some((after, _)) = self.held.front() {
            if *after > self.acked {
                break;
            }
            if let Some((_, p)) = self.held.pop_front() {
                out.push(p);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::{PubAck, PubAckReason};

    fn ack(pkid: u16) -> Packet {
        Packet::PubAck(
            PubAck {
                pkid,
                reason: PubAckReason::NotAuthorized,
            },
            None,
        )
    }

    fn ids(out: &[Packet]) -> Vec<u16> {
        out.iter()
            .filter_map(|p| match p {
                Packet::PubAck(a, _) => Some(a.pkid),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_edge_ack_with_nothing_owed_goes_at_once() {
        let mut o = AckOrder::default();
        let mut out = Vec::new();
        o.edge(ack(1), &mut out);
        assert_eq!(ids(&out), [1]);
    }

    #[test]
    fn an_edge_ack_waits_for_the_router_acks_before_it() {
        let mut o = AckOrder::default();
        let mut out = Vec::new();
        o.routed(); // 1 to the router
        o.edge(ack(2), &mut out); // 2 refused
        o.routed(); // 3 to the router
        o.edge(ack(4), &mut out); // 4 refused
        assert!(out.is_empty(), "held behind the router's ack for 1");
        o.router_acked(&mut out); // router acks 1
        assert_eq!(ids(&out), [2]);
        o.router_acked(&mut out); // router acks 3
        assert_eq!(ids(&out), [2, 4]);
        o.edge(ack(5), &mut out);
        assert_eq!(ids(&out), [2, 4, 5], "nothing owed any more");
    }

    #[test]
    fn the_held_queue_is_bounded() {
        let mut o = AckOrder::default();
        let mut out = Vec::new();
        o.routed();
        for i in 0..MAX_HELD {
            o.edge(ack(i as u16 + 2), &mut out);
        }
        assert!(out.is_empty());
        o.edge(ack(9999), &mut out);
        assert_eq!(
            out.len(),
            MAX_HELD + 1,
            "released in order rather than grown"
        );
        assert_eq!(ids(&out).last(), Some(&9999));
    }

    #[test]
    fn stray_router_acks_do_not_run_ahead() {
        let mut o = AckOrder::default();
        let mut out = Vec::new();
        o.router_acked(&mut out); // an ack for nothing counted (e.g. a resumed session's)
        o.routed();
        o.edge(ack(2), &mut out);
        assert!(out.is_empty(), "still owed the ack of the routed publish");
        o.router_acked(&mut out);
        assert_eq!(ids(&out), [2]);
    }
}
