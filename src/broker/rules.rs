//! The MQTT rules the broker's edge applies, as plain functions: no socket, no router, no gate.
//!
//! What a refused publish or subscription is answered with in each version, how the router's
//! SUBACK gets the refused filters back in their places, the UNSUBACK mqgate sends itself, the
//! keep-alive and credential-end arithmetic, and what each way a session ends ([`End`]) means on
//! the wire: its 5.0 DISCONNECT reason, whether the will goes out, whether a stored session stays.

use std::time::Duration;

use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectProperties,
    DisconnectReasonCode, Packet, PubAck, PubAckReason, PubComp, PubCompReason, PubRec,
    PubRecReason, SubAck, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use tokio::sync::oneshot;

use super::codec::{FrameError, Version};

/// A CONNACK.
pub(super) fn connack(
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
pub(super) fn success_properties(max: usize) -> ConnAckProperties {
    ConnAckProperties {
        max_packet_size: u32::try_from(max).ok(),
        topic_alias_max: Some(0),
        retain_available: Some(1),
        ..ConnAckProperties::default()
    }
}

/// 1.5 × the client's keep-alive (none when it asked for 0).
pub(super) fn keep_alive(secs: u16) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_millis(u64::from(secs) * 1500))
}

/// When the keep-alive timer fires at `now`: the deadline to re-arm it at, or `None` when the
/// client has been silent for its whole keep-alive (the session ends).
pub(super) fn keep_alive_rearm<T>(last_seen: T, keep_alive: Duration, now: T) -> Option<T>
where
    T: std::ops::Add<Duration, Output = T> + Ord + Copy,
{
    let deadline = last_seen + keep_alive;
    (now < deadline).then_some(deadline)
}

/// When the session's footing ends (Unix seconds): the connect credential's expiry or the
/// certificate's end, whichever is first.
pub(super) fn footing_end(credential: Option<i64>, cert_not_after: Option<i64>) -> Option<i64> {
    match (credential, cert_not_after) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Time from `now` until `end` (Unix seconds), `far` when there is no end; at least a second, so
/// a session whose re-check still allows it is not re-checked in a tight loop.
pub(super) fn until(end: Option<i64>, now: i64, far: Duration) -> Duration {
    match end {
        Some(t) => {
            let left = t.saturating_sub(now);
            Duration::from_secs(u64::try_from(left.max(1)).unwrap_or(1))
        }
        None => far,
    }
}

/// A 5.0 DISCONNECT with a reason string. Always with properties: rumqttd 0.20's 5.0 writer
/// frames a reason code without properties one byte short.
pub(super) fn goodbye(reason_code: DisconnectReasonCode, why: &str) -> Packet {
    let props = DisconnectProperties {
        session_expiry_interval: None,
        reason_string: Some(why.replace('_', " ")),
        user_properties: Vec::new(),
        server_reference: None,
    };
    Packet::Disconnect(Disconnect { reason_code }, Some(props))
}

/// The DISCONNECT mqgate sends the router when a client leaves.
pub(super) fn normal_disconnect() -> Packet {
    Packet::Disconnect(
        Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        },
        None,
    )
}

/// The ack for a publish the ACL or a rate limit refused: 5.0 says why; 3.1.1 has no refusal in
/// PUBACK/PUBREC, so the flow completes and the message is dropped. QoS 0 has no ack.
pub(super) fn refused_publish_ack(v5: bool, qos: u8, pkid: u16, limited: bool) -> Option<Packet> {
    match qos {
        1 => {
            let reason = match (v5, limited) {
                (false, _) => PubAckReason::Success,
                (true, true) => PubAckReason::QuotaExceeded,
                (true, false) => PubAckReason::NotAuthorized,
            };
            Some(Packet::PubAck(PubAck { pkid, reason }, None))
        }
        2 => {
            let reason = match (v5, limited) {
                (false, _) => PubRecReason::Success,
                (true, true) => PubRecReason::QuotaExceeded,
                (true, false) => PubRecReason::NotAuthorized,
            };
            Some(Packet::PubRec(PubRec { pkid, reason }, None))
        }
        _ => None,
    }
}

/// The answer to a publish over a quota: 5.0 QoS 1/2 get 0x97 quota exceeded in their ack; a
/// 5.0 QoS 0 publish has no ack, and 3.1.1 no refusal code: the client is disconnected (0x97 in
/// 5.0).
pub(super) fn over_quota_ack(version: Version, qos: u8, pkid: u16) -> Result<Packet, End> {
    match (version, qos) {
        (Version::V5, 1) => {
            let reason = PubAckReason::QuotaExceeded;
            Ok(Packet::PubAck(PubAck { pkid, reason }, None))
        }
        (Version::V5, 2) => {
            let reason = PubRecReason::QuotaExceeded;
            Ok(Packet::PubRec(PubRec { pkid, reason }, None))
        }
        _ => Err(End::Protocol(DisconnectReasonCode::QuotaExceeded)),
    }
}

/// The PUBCOMP mqgate sends itself for a QoS 2 publish it refused under 3.1.1.
pub(super) fn pubcomp(pkid: u16) -> Packet {
    Packet::PubComp(
        PubComp {
            pkid,
            reason: PubCompReason::Success,
        },
        None,
    )
}

/// The SUBACK code for a refused filter: 5.0 says why, 3.1.1 only knows failure.
pub(super) fn subscribe_refusal(
    version: Version,
    code: SubscribeReasonCode,
) -> SubscribeReasonCode {
    match version {
        Version::V5 => code,
        Version::V4 => SubscribeReasonCode::Failure,
    }
}

/// The router's SUBACK with the refused filters put back in their places: `slots` has one entry
/// per filter of the SUBSCRIBE, `None` where the router's code goes, the refusal code elsewhere.
pub(super) fn splice(slots: Vec<Option<SubscribeReasonCode>>, ack: SubAck) -> SubAck {
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

/// The UNSUBACK mqgate answers an UNSUBSCRIBE with at once (one success per filter in 5.0; 3.1.1
/// has no reason codes).
pub(super) fn unsuback(version: Version, pkid: u16, filters: usize) -> Packet {
    let reasons = match version {
        Version::V4 => Vec::new(),
        Version::V5 => vec![UnsubAckReason::Success; filters],
    };
    Packet::UnsubAck(UnsubAck { pkid, reasons }, None)
}

/// How a bad frame from the client ends its session.
pub(super) fn bad_frame(e: &FrameError) -> End {
    End::Protocol(match e {
        FrameError::TooLarge(_) => DisconnectReasonCode::PacketTooLarge,
        _ => DisconnectReasonCode::MalformedPacket,
    })
}

/// How a client's DISCONNECT ends its session.
pub(super) fn client_disconnect(d: &Disconnect, props: Option<DisconnectProperties>) -> End {
    let with_will = d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage;
    let expiry = props.and_then(|p| p.session_expiry_interval);
    End::ClientDisconnect { with_will, expiry }
}

/// Why a live session ended.
pub(super) enum End {
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

/// What becomes of a session's will when it ends.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum WillFate {
    /// Published now.
    Now,
    /// Held back for its delay.
    Held(Duration),
    /// Not published: the new connection resumes the session before the delay has passed.
    Cancelled,
}

impl End {
    /// The label for logs and the `broker_event` metric.
    pub(super) fn label(&self) -> &'static str {
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
    pub(super) fn reason(&self) -> Option<DisconnectReasonCode> {
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
    pub(super) fn fires_will(&self) -> bool {
        match self {
            End::ClientDisconnect { with_will, .. } => *with_will,
            End::RouterGone => false,
            _ => true,
        }
    }

    /// When a will that [fires](End::fires_will) goes out, given its own delay (5.0 Will Delay
    /// Interval, bounded by the session expiry): at once on shutdown or a takeover that starts
    /// afresh; never on a takeover that resumes the session before the delay has passed.
    pub(super) fn will_fate(&self, delay: Duration) -> WillFate {
        let due = match self {
            End::Shutdown | End::TakenOver(_, false) => Duration::ZERO,
            _ => delay,
        };
        if due.is_zero() {
            WillFate::Now
        } else if matches!(self, End::TakenOver(_, true)) {
            WillFate::Cancelled
        } else {
            WillFate::Held(due)
        }
    }

    /// Whether a stored session's expiry starts now (not when a new connection owns it, the
    /// router is gone, or mqgate is shutting down).
    pub(super) fn starts_expiry(&self) -> bool {
        !matches!(self, End::TakenOver(..) | End::RouterGone | End::Shutdown)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttd::protocol::QoS;

    fn taken_over(resumes: bool) -> End {
        End::TakenOver(oneshot::channel().0, resumes)
    }

    fn all_ends() -> Vec<End> {
        vec![
            End::ClientDisconnect {
                with_will: false,
                expiry: None,
            },
            End::ClientDisconnect {
                with_will: true,
                expiry: Some(5),
            },
            End::Io,
            End::KeepAlive,
            taken_over(false),
            taken_over(true),
            End::Revoked,
            End::Shutdown,
            End::Protocol(DisconnectReasonCode::MalformedPacket),
            End::RouterGone,
        ]
    }

    #[test]
    fn keep_alive_is_one_and_a_half_times_the_clients_and_zero_means_none() {
        assert_eq!(keep_alive(0), None);
        assert_eq!(keep_alive(10), Some(Duration::from_secs(15)));
        assert_eq!(keep_alive(1), Some(Duration::from_millis(1500)));
        assert_eq!(
            keep_alive(u16::MAX),
            Some(Duration::from_millis(65_535 * 1500))
        );
    }

    #[test]
    fn the_keep_alive_timer_rearms_from_the_last_packet_and_ends_a_silent_session() {
        let t0 = std::time::Instant::now();
        let ka = Duration::from_secs(15);
        let s = Duration::from_secs;
        assert_eq!(keep_alive_rearm(t0, ka, t0 + s(10)), Some(t0 + ka));
        assert_eq!(
            keep_alive_rearm(t0 + s(10), ka, t0 + s(15)),
            Some(t0 + s(25))
        );
        assert_eq!(keep_alive_rearm(t0, ka, t0 + ka), None);
        assert_eq!(keep_alive_rearm(t0, ka, t0 + s(16)), None);
    }

    #[test]
    fn the_footing_ends_with_the_first_of_credential_and_certificate() {
        assert_eq!(footing_end(None, None), None);
        assert_eq!(footing_end(Some(10), None), Some(10));
        assert_eq!(footing_end(None, Some(7)), Some(7));
        assert_eq!(footing_end(Some(10), Some(7)), Some(7));
        assert_eq!(footing_end(Some(3), Some(7)), Some(3));
    }

    #[test]
    fn time_until_the_end_is_at_least_a_second_and_far_without_an_end() {
        let far = Duration::from_secs(1000);
        assert_eq!(until(None, 100, far), far);
        assert_eq!(until(Some(130), 100, far), Duration::from_secs(30));
        assert_eq!(until(Some(100), 100, far), Duration::from_secs(1));
        assert_eq!(until(Some(50), 100, far), Duration::from_secs(1));
        assert_eq!(until(Some(i64::MIN), i64::MAX, far), Duration::from_secs(1));
    }

    #[test]
    fn the_connack_of_5_allows_no_topic_aliases_and_states_the_packet_limit() {
        let p = success_properties(1024);
        assert_eq!(p.topic_alias_max, Some(0));
        assert_eq!(p.max_packet_size, Some(1024));
        assert_eq!(p.retain_available, Some(1));
        assert_eq!(success_properties(usize::MAX).max_packet_size, None);
        let Packet::ConnAck(ack, None) = connack(ConnectReturnCode::Success, true, None) else {
            panic!("a CONNACK");
        };
        assert!(ack.session_present);
    }

    #[test]
    fn a_refused_publish_is_acked_with_its_reason_in_5_and_as_success_in_3_1_1() {
        use PubAckReason as A;
        use PubRecReason as R;
        let ack = |v5, qos, limited| refused_publish_ack(v5, qos, 7, limited);
        assert!(matches!(
            ack(true, 1, false),
            Some(Packet::PubAck(
                PubAck {
                    pkid: 7,
                    reason: A::NotAuthorized
                },
                None
            ))
        ));
        assert!(matches!(
            ack(true, 1, true),
            Some(Packet::PubAck(
                PubAck {
                    reason: A::QuotaExceeded,
                    ..
                },
                _
            ))
        ));
        assert!(matches!(
            ack(false, 1, true),
            Some(Packet::PubAck(
                PubAck {
                    reason: A::Success,
                    ..
                },
                _
            ))
        ));
        assert!(matches!(
            ack(true, 2, false),
            Some(Packet::PubRec(
                PubRec {
                    pkid: 7,
                    reason: R::NotAuthorized
                },
                None
            ))
        ));
        assert!(matches!(
            ack(true, 2, true),
            Some(Packet::PubRec(
                PubRec {
                    reason: R::QuotaExceeded,
                    ..
                },
                _
            ))
        ));
        assert!(matches!(
            ack(false, 2, false),
            Some(Packet::PubRec(
                PubRec {
                    reason: R::Success,
                    ..
                },
                _
            ))
        ));
        assert!(ack(true, 0, false).is_none() && ack(false, 0, true).is_none());
    }

    #[test]
    fn over_quota_is_an_ack_for_5_qos_1_and_2_and_a_disconnect_otherwise() {
        assert!(matches!(
            over_quota_ack(Version::V5, 1, 3),
            Ok(Packet::PubAck(
                PubAck {
                    pkid: 3,
                    reason: PubAckReason::QuotaExceeded
                },
                None
            ))
        ));
        assert!(matches!(
            over_quota_ack(Version::V5, 2, 3),
            Ok(Packet::PubRec(
                PubRec {
                    pkid: 3,
                    reason: PubRecReason::QuotaExceeded
                },
                None
            ))
        ));
        for (v, qos) in [
            (Version::V5, 0),
            (Version::V4, 0),
            (Version::V4, 1),
            (Version::V4, 2),
        ] {
            assert!(matches!(
                over_quota_ack(v, qos, 3),
                Err(End::Protocol(DisconnectReasonCode::QuotaExceeded))
            ));
        }
    }

    #[test]
    fn subscribe_refusals_say_why_in_5_and_fail_in_3_1_1() {
        let c = SubscribeReasonCode::NotAuthorized;
        assert_eq!(subscribe_refusal(Version::V5, c), c);
        assert_eq!(
            subscribe_refusal(Version::V4, c),
            SubscribeReasonCode::Failure
        );
    }

    #[test]
    fn the_routers_suback_gets_the_refused_filters_back_in_their_places() {
        let refused = SubscribeReasonCode::NotAuthorized;
        let slots = vec![Some(refused), None, Some(refused), None];
        let router = SubAck {
            pkid: 9,
            return_codes: vec![
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
            ],
        };
        let ack = splice(slots, router);
        assert_eq!(ack.pkid, 9);
        assert_eq!(
            ack.return_codes,
            vec![
                refused,
                SubscribeReasonCode::Success(QoS::AtMostOnce),
                refused,
                SubscribeReasonCode::Success(QoS::AtLeastOnce)
            ]
        );
    }

    #[test]
    fn a_short_suback_from_the_router_fills_the_gap_with_unspecified() {
        let slots = vec![None, None];
        let router = SubAck {
            pkid: 1,
            return_codes: vec![SubscribeReasonCode::Success(QoS::AtLeastOnce)],
        };
        assert_eq!(
            splice(slots, router).return_codes,
            vec![
                SubscribeReasonCode::Success(QoS::AtLeastOnce),
                SubscribeReasonCode::Unspecified
            ]
        );
    }

    #[test]
    fn unsuback_has_one_success_per_filter_in_5_and_no_reasons_in_3_1_1() {
        let Packet::UnsubAck(a, None) = unsuback(Version::V5, 4, 3) else {
            panic!("an UNSUBACK");
        };
        assert_eq!((a.pkid, a.reasons), (4, vec![UnsubAckReason::Success; 3]));
        let Packet::UnsubAck(a, None) = unsuback(Version::V4, 4, 3) else {
            panic!("an UNSUBACK");
        };
        assert!(a.reasons.is_empty());
    }

    #[test]
    fn a_too_large_frame_is_packet_too_large_and_others_malformed() {
        assert!(matches!(
            bad_frame(&FrameError::TooLarge(10)),
            End::Protocol(DisconnectReasonCode::PacketTooLarge)
        ));
        assert!(matches!(
            bad_frame(&FrameError::Malformed("x".into())),
            End::Protocol(DisconnectReasonCode::MalformedPacket)
        ));
    }

    #[test]
    fn a_client_disconnect_asks_for_its_will_only_with_0x04_and_may_set_the_expiry() {
        let with = Disconnect {
            reason_code: DisconnectReasonCode::DisconnectWithWillMessage,
        };
        let props = DisconnectProperties {
            session_expiry_interval: Some(60),
            reason_string: None,
            user_properties: Vec::new(),
            server_reference: None,
        };
        let end = client_disconnect(&with, Some(props));
        assert!(end.fires_will());
        assert!(matches!(
            end,
            End::ClientDisconnect {
                expiry: Some(60),
                ..
            }
        ));
        let normal = Disconnect {
            reason_code: DisconnectReasonCode::NormalDisconnection,
        };
        assert!(!client_disconnect(&normal, None).fires_will());
    }

    #[test]
    fn each_end_has_its_wire_reason_and_will_rule() {
        use DisconnectReasonCode as D;
        let table: Vec<(&str, Option<D>, bool, bool)> = all_ends()
            .iter()
            .map(|e| (e.label(), e.reason(), e.fires_will(), e.starts_expiry()))
            .collect();
        assert_eq!(
            table,
            vec![
                ("client_disconnect", None, false, true),
                ("client_disconnect", None, true, true),
                ("closed", None, true, true),
                ("keep_alive_timeout", Some(D::KeepAliveTimeout), true, true),
                ("taken_over", Some(D::SessionTakenOver), true, false),
                ("taken_over", Some(D::SessionTakenOver), true, false),
                ("revoked", Some(D::NotAuthorized), true, true),
                ("shutdown", Some(D::ServerShuttingDown), true, false),
                ("protocol_error", Some(D::MalformedPacket), true, true),
                ("router_closed", None, false, false),
            ]
        );
    }

    #[test]
    fn a_delayed_will_is_held_sent_at_once_on_shutdown_and_cancelled_by_a_resuming_takeover() {
        let delay = Duration::from_secs(30);
        assert_eq!(End::Io.will_fate(delay), WillFate::Held(delay));
        assert_eq!(End::Io.will_fate(Duration::ZERO), WillFate::Now);
        assert_eq!(End::Shutdown.will_fate(delay), WillFate::Now);
        assert_eq!(taken_over(false).will_fate(delay), WillFate::Now);
        assert_eq!(taken_over(true).will_fate(delay), WillFate::Cancelled);
        assert_eq!(taken_over(true).will_fate(Duration::ZERO), WillFate::Now);
    }
}
