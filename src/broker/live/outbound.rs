//! What goes to the router and what comes back from it: batches handed to the link, and the
//! router's notifications written to the client (refused filters spliced into SUBACK).

use rumqttd::Notification;
use rumqttd::protocol::{Packet, SubAck};
use tokio::io::{AsyncRead, AsyncWrite};

use super::super::ready_now;
use super::super::rules::{self, End};
use super::{Live, NOTIFICATION_BATCH};

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Live<S> {
    /// Hands packets to the router: all but the last straight into the link's buffer, the last
    /// through `send`, which wakes the router once for the whole batch.
    pub(super) async fn send_to_router(&mut self, mut packets: Vec<Packet>) -> Result<(), End> {
        self.route(&mut packets).await
    }

    /// [`Live::send_to_router`] that leaves `packets` empty, its capacity kept.
    pub(super) async fn route(&mut self, packets: &mut Vec<Packet>) -> Result<(), End> {
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
    pub(super) async fn on_router(
        &mut self,
        first: Result<Option<Notification>, ()>,
    ) -> Result<(), End> {
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

    pub(super) fn on_routed(
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

    pub(super) fn on_notification(&mut self, n: Notification, wake: &mut bool) -> Result<(), End> {
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
    pub(super) fn splice(&mut self, ack: SubAck) -> SubAck {
        match self.pending_subacks.remove(&ack.pkid) {
            Some(slots) => rules::splice(slots, ack),
            None => ack,
        }
    }
}
