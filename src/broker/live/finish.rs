//! How a live session ends: goodbye to the client, the will (now, later or never), leaving the
//! router, and what is left for the [afterlife](super::super::afterlife).

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

use super::super::afterlife::{self, Afterlife, Expiry};
use super::super::codec::Version;
use super::super::connect::write_packets;
use super::super::rules::{self, End, WillFate};
use super::Live;

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Live<S> {
    /// Says goodbye (5.0 reason code), publishes the will when due, leaves the router; returns
    /// what is left for later (a will held back by its delay, a stored session's expiry).
    pub(super) async fn finish(mut self, end: End) -> Option<Afterlife> {
        tracing::debug!(client_id = %self.client_id, end = end.label(), "MQTT session ended");
        // The will's delay and the session's expiry count from here (read before the close is
        // counted, so whoever sees the count and then moves a manual clock moves it past this).
        let closed_at = self.broker.gate.clock().now_ms();
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
                    held = Some((will, closed_at.saturating_add(millis(due))));
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
                Some(left) => expires = Some(closed_at.saturating_add(millis(left))),
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

/// `d` in whole milliseconds (saturating: an interval is at most `u32::MAX` seconds).
fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
