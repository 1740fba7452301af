//! What a session leaves behind when its connection closes: a 5.0 will held back by its Will
//! Delay Interval, and a stored session that expires after its Session Expiry Interval.
//!
//! Until both are settled the client id stays registered in [`Directory`](super::directory), held
//! by a small task instead of a connection: a new CONNECT for the client id takes it over like a
//! live session. If the new connection resumes the session (clean start off) before the delay
//! has passed, the will is not sent; if it starts clean, the old session ends there and then, and
//! so the will goes out at once (MQTT 5.0, 3.1.2.5 and 3.1.3.2.2). rumqttd keeps a stored session
//! until a clean connection for its client id discards it, so expiry is exactly that: a clean
//! attach and detach, made while the task still holds the client id, so that no real connection
//! can race it.

use std::sync::Arc;
use std::time::Duration;

use rumqttd::protocol::{
    Disconnect, DisconnectReasonCode, LastWill, LastWillProperties, Packet, PublishProperties,
};
use tokio::sync::mpsc;

use super::codec::{self, Version};
use super::directory::{Control, Registration};
use super::{Broker, ready_now};
use crate::acl::Action;

/// The link mqgate publishes delayed wills through: a client id with a control character, which
/// no device can have (the registry refuses it and so does CONNECT) and the router accepts.
const WILL_LINK_ID: &str = "\u{1}mqgate-wills";

/// How long a stored session outlives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Ends with the connection (3.1.1 clean session; 5.0 without a Session Expiry Interval).
    AtClose,
    /// Ends this long after the connection (5.0 Session Expiry Interval).
    After(Duration),
    /// Never ends (3.1.1 clean session off; 5.0 interval 0xFFFFFFFF).
    Never,
}

impl Expiry {
    /// The expiry a CONNECT asks for.
    pub fn at_connect(version: Version, clean: bool, interval: Option<u32>) -> Expiry {
        match version {
            Version::V4 if clean => Expiry::AtClose,
            Version::V4 => Expiry::Never,
            Version::V5 => Expiry::from_interval(interval.unwrap_or(0)),
        }
    }

    /// A 5.0 Session Expiry Interval.
    pub fn from_interval(secs: u32) -> Expiry {
        match secs {
            0 => Expiry::AtClose,
            u32::MAX => Expiry::Never,
            s => Expiry::After(Duration::from_secs(u64::from(s))),
        }
    }

    /// The time the session has left after its connection closed (`None`: forever).
    pub fn left(self) -> Option<Duration> {
        match self {
            Expiry::AtClose => Some(Duration::ZERO),
            Expiry::After(d) => Some(d),
            Expiry::Never => None,
        }
    }
}

/// A will: the CONNECT's will and its 5.0 properties.
#[derive(Debug, Clone)]
pub struct Will {
    /// Topic, payload, QoS, retain.
    pub will: LastWill,
    /// 5.0 will properties (delay, content type, user properties, …).
    pub props: Option<LastWillProperties>,
}

impl Will {
    /// The Will Delay Interval (0 for 3.1.1).
    pub fn delay(&self) -> Duration {
        let secs = self.props.as_ref().and_then(|p| p.delay_interval);
        Duration::from_secs(u64::from(secs.unwrap_or(0)))
    }

    /// When the will is due after the connection closed: its delay, cut short by the end of the
    /// session (the will goes out when the session ends, if that is first).
    pub fn due_after(&self, expiry: Expiry) -> Duration {
        match expiry.left() {
            Some(left) => self.delay().min(left),
            None => self.delay(),
        }
    }
}

/// The will as a publish, if the device may still publish it (checked now, not when it
/// connected: a revoked device's will is dropped, as Mosquitto drops a will its ACL refuses).
/// QoS 2 would need a PUBREL round nobody is there for: QoS 1 at most.
pub async fn checked_will(
    broker: &Broker,
    client_id: &str,
    will: Will,
    qos_cap: u8,
) -> Option<Packet> {
    let topic = std::str::from_utf8(&will.will.topic).ok()?;
    // The session's id passed `ClientId::parse` at CONNECT: this parse cannot fail.
    let id = crate::core::ids::ClientId::parse(client_id).ok()?;
    // A fresh lookup: a revoked device's view held by its session is stale by definition.
    let d = broker.gate.authorize(&id, Action::Publish, topic).await;
    if !d.is_allow() {
        tracing::info!(%client_id, topic, "will dropped: no longer allowed");
        return None;
    }
    // A retained will counts against the device's and tenant's retained bounds like a publish.
    if will.will.retain {
        let len = will.will.message.len();
        let tenant = match broker.gate.registry().device(client_id).await {
            Ok(Some(dev)) => dev.tenant_id(),
            _ => return None,
        };
        let limits = &broker.settings.limits;
        if let Err(which) = broker.retained.admit(limits, tenant, client_id, topic, len) {
            tracing::info!(%client_id, ?which, "will dropped: over the retained bound");
            broker.gate.metrics().broker_event("retained_exceeded");
            return None;
        }
    }
    let qos = match will.will.qos {
        rumqttd::protocol::QoS::AtMostOnce => 0,
        _ => qos_cap.min(1),
    };
    let pkid = u16::from(qos > 0);
    let w = will.will;
    let publish = codec::publish_with_qos(w.topic, w.message, w.retain, qos, pkid);
    let props = will.props.map(|p| PublishProperties {
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        topic_alias: None,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: p.user_properties,
        subscription_identifiers: Vec::new(),
        content_type: p.content_type,
    });
    Some(Packet::Publish(publish, props))
}

/// What is left to do for a closed session. Times are the gate's clock (Unix milliseconds):
/// Will Delay and Session Expiry are wall-clock intervals, and tests move a manual clock past
/// them instead of waiting.
#[derive(Debug)]
pub struct Afterlife {
    /// A will held back, and when it is due.
    pub will: Option<(Will, i64)>,
    /// When the stored session expires (`None`: never, or nothing stored).
    pub expires: Option<i64>,
}

impl Afterlife {
    fn is_settled(&self) -> bool {
        self.will.is_none() && self.expires.is_none()
    }
}

/// Holds the client id for a closed session until its will and its expiry are settled.
pub async fn run(
    broker: Arc<Broker>,
    client_id: String,
    mut control: mpsc::Receiver<Control>,
    registration: Registration,
    mut after: Afterlife,
) {
    let clock = broker.gate.clock().clone();
    while !after.is_settled() {
        let will_at = after.will.as_ref().map(|(_, at)| *at);
        let next = [will_at, after.expires].into_iter().flatten().min();
        let Some(next) = next else { break };
        tokio::select! {
            _ = clock.sleep_until_ms(next) => {
                let now = clock.now_ms();
                if will_at.is_some_and(|at| at <= now) && let Some((will, _)) = after.will.take() {
                    send_will(&broker, &client_id, will).await;
                }
                if after.expires.is_some_and(|at| at <= now) {
                    expire(&broker, &client_id).await;
                    after.expires = None;
                }
            }
            c = control.recv() => match c {
                Some(Control::TakeOver { done, resumes }) => {
                    // A new connection: the session continues with it (will cancelled) or it
                    // ends now (will sent); either way the new connection owns the client id.
                    if let (false, Some((will, _))) = (resumes, after.will.take()) {
                        send_will(&broker, &client_id, will).await;
                    }
                    let _ = done.send(());
                    break;
                }
                Some(Control::Shutdown) | None => {
                    if let Some((will, _)) = after.will.take() {
                        send_will(&broker, &client_id, will).await;
                    }
                    break;
                }
                // The will is checked when it goes out.
                Some(Control::Recheck) => {}
            },
        }
    }
    drop(registration);
}

/// Publishes a delayed will through mqgate's own link (the client's link is gone).
async fn send_will(broker: &Broker, client_id: &str, will: Will) {
    // QoS 0 into the router: the link has nobody to take acknowledgements. rumqttd delivers at
    // each subscription's QoS, so subscribers see no difference.
    let Some(packet) = checked_will(broker, client_id, will, 0).await else {
        return;
    };
    let mut link = broker.will_link.lock().await;
    if link.is_none() {
        match broker.router.attach(WILL_LINK_ID, true).await {
            Ok(l) => *link = Some(l),
            Err(e) => {
                tracing::warn!(%client_id, error = %e, "delayed will not sent: router unavailable");
                return;
            }
        }
    }
    if let Some(l) = link.as_mut() {
        // Nothing is expected back; drop whatever the router queued all the same.
        while ready_now(l.rx.next()).is_some_and(|n| n.is_ok()) {}
        if l.tx.send(packet).await.is_err() {
            *link = None;
        }
    }
    tracing::debug!(%client_id, "delayed will sent");
}

/// Ends the stored session of `client_id` because its expiry interval has passed.
pub async fn expire(broker: &Broker, client_id: &str) {
    discard(broker, client_id).await;
    broker.gate.metrics().broker_event("session_expired");
    tracing::debug!(%client_id, "stored session expired");
}

/// Discards the stored session of `client_id` inside the router: a clean attach does that.
pub async fn discard(broker: &Broker, client_id: &str) {
    broker.directory.store_filters(client_id, None);
    match broker.router.attach(client_id, true).await {
        Ok(mut link) => {
            let bye = Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
            };
            let _ = link.tx.send(Packet::Disconnect(bye, None)).await;
        }
        Err(e) => tracing::warn!(%client_id, error = %e, "stored session not discarded"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn will(delay: Option<u32>) -> Will {
        Will {
            will: LastWill {
                topic: "t".into(),
                message: "m".into(),
                qos: rumqttd::protocol::QoS::AtLeastOnce,
                retain: false,
            },
            props: Some(LastWillProperties {
                delay_interval: delay,
                payload_format_indicator: None,
                message_expiry_interval: None,
                content_type: None,
                response_topic: None,
                correlation_data: None,
                user_properties: Vec::new(),
            }),
        }
    }

    #[test]
    fn expiry_follows_the_version_and_the_interval() {
        assert_eq!(Expiry::at_connect(Version::V4, true, None), Expiry::AtClose);
        assert_eq!(Expiry::at_connect(Version::V4, false, None), Expiry::Never);
        // 5.0: clean start says nothing about the end; the interval does (absent = 0).
        assert_eq!(
            Expiry::at_connect(Version::V5, false, None),
            Expiry::AtClose
        );
        assert_eq!(
            Expiry::at_connect(Version::V5, true, Some(0)),
            Expiry::AtClose
        );
        assert_eq!(
            Expiry::at_connect(Version::V5, false, Some(30)),
            Expiry::After(Duration::from_secs(30))
        );
        assert_eq!(
            Expiry::at_connect(Version::V5, true, Some(u32::MAX)),
            Expiry::Never
        );
    }

    #[test]
    fn a_will_is_due_after_its_delay_or_when_the_session_ends_if_sooner() {
        let s = Duration::from_secs;
        assert_eq!(will(None).due_after(Expiry::Never), s(0));
        assert_eq!(will(Some(10)).due_after(Expiry::Never), s(10));
        assert_eq!(will(Some(10)).due_after(Expiry::After(s(4))), s(4));
        assert_eq!(will(Some(10)).due_after(Expiry::AtClose), s(0));
        assert_eq!(will(Some(3)).due_after(Expiry::After(s(60))), s(3));
    }
}
