//! The embedded MQTT broker, driven by real MQTT clients (rumqttc, and Debian's mosquitto_pub /
//! mosquitto_sub) over TCP on random ports, against both stores.

use std::net::SocketAddr;
use std::time::Duration;

use crate::both_stores;
use crate::helpers::{TestApp, metric_reaches};
use mqgate::acl::{Permission, RuleAction};
use mqgate::registry::{NewAclRule, Store};
use rumqttc::{AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, Packet, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Generous bound for things that should happen at once (never a timed assertion).
const WAIT: Duration = Duration::from_secs(10);

/// A 3.1.1 client and the events its event loop saw (the loop stops at its first error).
struct V4 {
    client: AsyncClient,
    events: UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

fn v4_options(addr: SocketAddr, id: &str, secret: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, secret)
        .set_keep_alive(Duration::from_secs(30));
    o
}

impl V4 {
    fn start(options: MqttOptions) -> V4 {
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, events) = unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    return;
                }
            }
        });
        V4 {
            client,
            events,
            task,
        }
    }

    /// Connects and waits for the CONNACK; returns its code or the refusal.
    async fn connect(addr: SocketAddr, id: &str, secret: &str) -> (V4, ConnectReturnCode) {
        Self::connect_with(v4_options(addr, id, secret)).await
    }

    async fn connect_with(options: MqttOptions) -> (V4, ConnectReturnCode) {
        let mut c = V4::start(options);
        let code = c
            .next_matching(|ev| match ev {
                Ok(Event::Incoming(Packet::ConnAck(a))) => Some(a.code),
                Err(ConnectionError::ConnectionRefused(code)) => Some(*code),
                Err(e) => panic!("connection failed without CONNACK: {e}"),
                _ => None,
            })
            .await;
        (c, code)
    }

    async fn next_matching<R>(
        &mut self,
        mut f: impl FnMut(&Result<Event, ConnectionError>) -> Option<R>,
    ) -> R {
        tokio::time::timeout(WAIT, async {
            loop {
                let ev = self.events.recv().await.expect("event loop ended");
                if let Some(r) = f(&ev) {
                    return r;
                }
            }
        })
        .await
        .expect("expected MQTT event did not come")
    }

    /// The next incoming PUBLISH as (topic, payload, qos, retain).
    async fn next_publish(&mut self) -> (String, Vec<u8>, QoS, bool) {
        self.next_matching(|ev| match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => {
                Some((p.topic.clone(), p.payload.to_vec(), p.qos, p.retain))
            }
            Err(e) => panic!("connection lost: {e}"),
            _ => None,
        })
        .await
    }

    async fn suback(&mut self) -> Vec<rumqttc::SubscribeReasonCode> {
        self.next_matching(|ev| match ev {
            Ok(Event::Incoming(Packet::SubAck(a))) => Some(a.return_codes.clone()),
            Err(e) => panic!("connection lost: {e}"),
            _ => None,
        })
        .await
    }

    /// Waits until the broker closes the connection.
    async fn closed(&mut self) {
        self.next_matching(|ev| ev.is_err().then_some(())).await
    }
}

fn rule(permission: Permission, action: RuleAction, topic: &str) -> NewAclRule {
    NewAclRule {
        permission,
        action,
        topic: topic.into(),
    }
}

/// A device allowed to subscribe to the whole tenant (to watch what gets routed).
async fn observer(app: &TestApp) -> String {
    let token = app.device("acme", "observer").await;
    app.admin
        .add_rule(
            "acme",
            Some("observer"),
            rule(Permission::Allow, RuleAction::Subscribe, "acme/#"),
        )
        .await
        .unwrap();
    token
}

fn addr(app: &TestApp) -> SocketAddr {
    app.mqtt.expect("embedded broker is on in tests")
}

async fn connect_answers_with_the_gates_decision_in_3_1_1(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    app.device("acme", "dev-2").await;
    let (_ok, code) = V4::connect(addr(&app), "dev-1", &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    let (_c, code) = V4::connect(addr(&app), "dev-2", &token).await;
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    let (_c, code) = V4::connect(addr(&app), "ghost", "mqg_nothing").await;
    assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
    app.admin.set_enabled("acme", "dev-2", false).await.unwrap();
    let t2 = app.device("acme", "dev-3").await;
    app.admin.set_enabled("acme", "dev-3", false).await.unwrap();
    let (_c, code) = V4::connect(addr(&app), "dev-3", &t2).await;
    assert_eq!(
        code,
        ConnectReturnCode::BadUserNamePassword,
        "disabled looks like unknown"
    );
}
both_stores!(connect_v4, connect_answers_with_the_gates_decision_in_3_1_1);

async fn connect_answers_with_reason_codes_in_5(store: Store) {
    use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode as Code, Packet as P5};
    use rumqttc::v5::{AsyncClient as C5, ConnectionError as E5, Event as Ev5, MqttOptions as O5};
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let t2 = app.device("acme", "dev-2").await;
    app.admin.set_enabled("acme", "dev-2", false).await.unwrap();
    let a = addr(&app);
    let connack = |id: &str, secret: &str| {
        let mut o = O5::new(id, a.ip().to_string(), a.port());
        o.set_credentials(id, secret);
        let (_c, mut el) = C5::new(o, 8);
        async move {
            tokio::time::timeout(WAIT, async {
                loop {
                    match el.poll().await {
                        Ok(Ev5::Incoming(P5::ConnAck(ack))) => return ack.code,
                        Err(E5::ConnectionRefused(code)) => return code,
                        Err(e) => panic!("no CONNACK: {e}"),
                        Ok(_) => {}
                    }
                }
            })
            .await
            .unwrap()
        }
    };
    assert_eq!(connack("dev-1", &token).await, Code::Success);
    assert_eq!(
        connack("dev-1", "mqg_wrong").await,
        Code::BadUserNamePassword
    );
    assert_eq!(
        connack("ghost", "mqg_wrong").await,
        Code::BadUserNamePassword
    );
    assert_eq!(
        connack("dev-2", &t2).await,
        Code::BadUserNamePassword,
        "disabled looks like unknown"
    );
}
both_stores!(connect_v5, connect_answers_with_reason_codes_in_5);

async fn a_client_id_lockout_answers_like_an_unknown_client_id(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    // Five wrong tokens for a device and for an id that does not exist, from one address.
    for id in ["dev-1", "ghost"] {
        for _ in 0..5 {
            let (_c, code) = V4::connect(addr(&app), id, "mqg_wrong").await;
            assert_eq!(code, ConnectReturnCode::BadUserNamePassword);
        }
    }
    let listed = app.get("/v1/ops/lockouts").await;
    assert_eq!(listed["lockouts"][0]["key"], "dev-1", "{listed}");
    let (_c, locked) = V4::connect(addr(&app), "dev-1", &token).await;
    let (_c, unknown) = V4::connect(addr(&app), "ghost", "mqg_wrong").await;
    assert_eq!(
        (locked, unknown),
        (
            ConnectReturnCode::BadUserNamePassword,
            ConnectReturnCode::BadUserNamePassword
        ),
        "a prober cannot tell the locked device from a client id that does not exist"
    );
}
both_stores!(
    lockout_code,
    a_client_id_lockout_answers_like_an_unknown_client_id
);

async fn a_publish_to_another_devices_topic_is_acked_but_never_delivered(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    app.device("acme", "dev-2").await;
    let watch = observer(&app).await;
    let (mut obs, _) = V4::connect(addr(&app), "observer", &watch).await;
    obs.client
        .subscribe("acme/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    obs.suback().await;
    let (mut dev, _) = V4::connect(addr(&app), "dev-1", &token).await;
    dev.client
        .publish("acme/dev-2/cmd", QoS::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    // 3.1.1 has no refusal in PUBACK: the broker acks and drops, as Mosquitto does.
    dev.next_matching(|ev| matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))).then_some(()))
        .await;
    dev.client
        .publish("acme/dev-1/t", QoS::AtLeastOnce, false, "own")
        .await
        .unwrap();
    let (topic, payload, _, _) = obs.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("acme/dev-1/t", &b"own"[..]),
        "the refused publish must not have been routed before the allowed one"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("mqgate_broker_events_total{event=\"publish_refused\"} 1"),
        "{metrics}"
    );
}
both_stores!(
    cross_device_publish,
    a_publish_to_another_devices_topic_is_acked_but_never_delivered
);

async fn a_refused_publish_gets_not_authorized_in_5(store: Store) {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::{AsyncClient as C5, Event as Ev5, MqttOptions as O5};
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let a = addr(&app);
    let mut o = O5::new("dev-1", a.ip().to_string(), a.port());
    o.set_credentials("dev-1", &token);
    let (client, mut el) = C5::new(o, 8);
    client
        .publish("acme/dev-2/cmd", Q5::AtLeastOnce, false, "forged")
        .await
        .unwrap();
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            if let Ev5::Incoming(P5::PubAck(ack)) = el.poll().await.unwrap() {
                return ack.reason;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(reason, PubAckReason::NotAuthorized);
}
both_stores!(
    publish_refused_v5,
    a_refused_publish_gets_not_authorized_in_5
);

async fn a_mixed_subscribe_grants_the_own_subtree_and_refuses_the_wildcard(store: Store) {
    use rumqttc::{SubscribeFilter, SubscribeReasonCode};
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let (mut dev, _) = V4::connect(addr(&app), "dev-1", &token).await;
    dev.client
        .subscribe_many([
            SubscribeFilter::new("acme/#".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("acme/dev-1/#".into(), QoS::AtLeastOnce),
            SubscribeFilter::new("acme/dev-2/+".into(), QoS::AtMostOnce),
        ])
        .await
        .unwrap();
    assert_eq!(
        dev.suback().await,
        vec![
            SubscribeReasonCode::Failure,
            SubscribeReasonCode::Success(QoS::AtLeastOnce),
            SubscribeReasonCode::Failure,
        ]
    );
    // The granted filter works; nothing arrives through the refused ones.
    dev.client
        .publish("acme/dev-1/x", QoS::AtLeastOnce, false, "ok")
        .await
        .unwrap();
    assert_eq!(dev.next_publish().await.0, "acme/dev-1/x");
    dev.client.subscribe("#", QoS::AtMostOnce).await.unwrap();
    assert_eq!(dev.suback().await, vec![SubscribeReasonCode::Failure]);
}
both_stores!(
    mixed_subscribe,
    a_mixed_subscribe_grants_the_own_subtree_and_refuses_the_wildcard
);

async fn a_wildcard_outside_the_subtree_is_refused_with_not_authorized_in_5(store: Store) {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as P5, SubscribeReasonCode as R5};
    use rumqttc::v5::{AsyncClient as C5, Event as Ev5, MqttOptions as O5};
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let a = addr(&app);
    let mut o = O5::new("dev-1", a.ip().to_string(), a.port());
    o.set_credentials("dev-1", &token);
    let (client, mut el) = C5::new(o, 8);
    client
        .subscribe_many([
            Filter::new("acme/dev-1/#", Q5::AtMostOnce),
            Filter::new("acme/+/status", Q5::AtMostOnce),
        ])
        .await
        .unwrap();
    let codes = tokio::time::timeout(WAIT, async {
        loop {
            if let Ev5::Incoming(P5::SubAck(ack)) = el.poll().await.unwrap() {
                return ack.return_codes;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(codes, vec![R5::Success(Q5::AtMostOnce), R5::NotAuthorized]);
}
both_stores!(
    wildcard_refused_v5,
    a_wildcard_outside_the_subtree_is_refused_with_not_authorized_in_5
);

async fn qos_0_1_and_2_flow_end_to_end(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let (mut dev, _) = V4::connect(addr(&app), "dev-1", &token).await;
    let levels = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    // One subscription per level, each fed at its own level (the QoS rule has its own tests).
    for (n, qos) in levels.into_iter().enumerate() {
        let filter = format!("acme/dev-1/q/{n}");
        dev.client.subscribe(filter, qos).await.unwrap();
        dev.suback().await;
    }
    for (n, qos) in levels.into_iter().enumerate() {
        let topic = format!("acme/dev-1/q/{n}");
        dev.client.publish(&topic, qos, false, "m").await.unwrap();
        // QoS 2 also completes the publisher's handshake (PUBCOMP), in either order.
        let (mut delivered, mut completed) = (None, qos != QoS::ExactlyOnce);
        while delivered.is_none() || !completed {
            match dev
                .next_matching(|ev| match ev {
                    Ok(Event::Incoming(Packet::Publish(p))) => Some(Some((p.topic.clone(), p.qos))),
                    Ok(Event::Incoming(Packet::PubComp(_))) => Some(None),
                    Err(e) => panic!("connection lost: {e}"),
                    _ => None,
                })
                .await
            {
                Some(p) => delivered = Some(p),
                None => completed = true,
            }
        }
        assert_eq!(delivered, Some((topic, qos)));
    }
}
both_stores!(qos_flows, qos_0_1_and_2_flow_end_to_end);

async fn a_retained_message_reaches_a_later_subscriber(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let (dev, _) = V4::connect(addr(&app), "dev-1", &token).await;
    dev.client
        .publish("acme/dev-1/state", QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    dev.client.disconnect().await.unwrap();
    let mut dev = dev;
    dev.closed().await;
    let (mut again, _) = V4::connect(addr(&app), "dev-1", &token).await;
    again
        .client
        .subscribe("acme/dev-1/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    let (topic, payload, _, retain) = again.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("acme/dev-1/state", &b"on"[..])
    );
    assert!(
        retain,
        "a retained message is delivered with the retain flag"
    );
}
both_stores!(retained, a_retained_message_reaches_a_later_subscriber);

async fn a_will_is_published_on_abrupt_close_and_not_on_disconnect(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let watch = observer(&app).await;
    let (mut obs, _) = V4::connect(addr(&app), "observer", &watch).await;
    obs.client
        .subscribe("acme/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    obs.suback().await;
    let mut o = v4_options(addr(&app), "dev-1", &token);
    o.set_last_will(rumqttc::LastWill::new(
        "acme/dev-1/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    // A clean DISCONNECT: no will.
    let (mut polite, _) = V4::connect_with(o.clone()).await;
    polite.client.disconnect().await.unwrap();
    polite.closed().await;
    // An abrupt close (the client's task dies, its socket closes): the will goes out.
    let (abrupt, _) = V4::connect_with(o).await;
    abrupt.task.abort();
    let (topic, payload, _, _) = obs.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("acme/dev-1/status", &b"gone"[..]),
        "exactly one will, from the abrupt close"
    );
}
both_stores!(
    will_messages,
    a_will_is_published_on_abrupt_close_and_not_on_disconnect
);

async fn a_will_the_device_may_not_publish_refuses_the_connect(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let mut o = v4_options(addr(&app), "dev-1", &token);
    o.set_last_will(rumqttc::LastWill::new(
        "acme/dev-2/status",
        "x",
        QoS::AtMostOnce,
        false,
    ));
    let (_c, code) = V4::connect_with(o).await;
    assert_eq!(code, ConnectReturnCode::NotAuthorized);
}
both_stores!(
    will_refused,
    a_will_the_device_may_not_publish_refuses_the_connect
);

async fn disabling_a_device_disconnects_its_live_session_with_not_authorized(store: Store) {
    use rumqttc::v5::mqttbytes::v5::{DisconnectReasonCode, Packet as P5};
    use rumqttc::v5::{
        AsyncClient as C5, ConnectionError as E5, Event as Ev5, MqttOptions as O5, StateError,
    };
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let a = addr(&app);
    let mut o = O5::new("dev-1", a.ip().to_string(), a.port());
    o.set_credentials("dev-1", &token);
    let (_client, mut el) = C5::new(o, 8);
    tokio::time::timeout(WAIT, async {
        while !matches!(el.poll().await, Ok(Ev5::Incoming(P5::ConnAck(_)))) {}
    })
    .await
    .unwrap();
    app.admin.set_enabled("acme", "dev-1", false).await.unwrap();
    let reason = tokio::time::timeout(WAIT, async {
        loop {
            match el.poll().await {
                Ok(Ev5::Incoming(P5::Disconnect(d))) => return Some(d.reason_code),
                Err(E5::MqttState(StateError::ServerDisconnect { reason_code, .. })) => {
                    return Some(reason_code);
                }
                Err(e) => {
                    eprintln!("v5 client error: {e:?}");
                    return None;
                }
                Ok(_) => {}
            }
        }
    })
    .await
    .expect("the revoked session was not disconnected");
    assert_eq!(reason, Some(DisconnectReasonCode::NotAuthorized));
}
both_stores!(
    revocation_kick_v5,
    disabling_a_device_disconnects_its_live_session_with_not_authorized
);

async fn revoking_the_credential_or_removing_the_device_ends_live_sessions(store: Store) {
    let app = TestApp::start(store).await;
    let t1 = app.device("acme", "dev-1").await;
    let t2 = app.device("acme", "dev-2").await;
    let t3 = app.device("acme", "dev-3").await;
    let (mut one, _) = V4::connect(addr(&app), "dev-1", &t1).await;
    let (mut two, _) = V4::connect(addr(&app), "dev-2", &t2).await;
    let (mut three, _) = V4::connect(addr(&app), "dev-3", &t3).await;
    // A rotation with no grace revokes the token the session connected with.
    app.admin
        .rotate("acme", "dev-1", Duration::ZERO)
        .await
        .unwrap();
    one.closed().await;
    app.admin.remove_device("acme", "dev-2").await.unwrap();
    two.closed().await;
    // Untouched devices stay connected.
    three
        .client
        .publish("acme/dev-3/alive", QoS::AtLeastOnce, false, "y")
        .await
        .unwrap();
    three
        .next_matching(|ev| match ev {
            Ok(Event::Incoming(Packet::PubAck(_))) => Some(()),
            Err(e) => panic!("an unrelated session was dropped: {e}"),
            _ => None,
        })
        .await;
}
both_stores!(
    revocation_kick_v4,
    revoking_the_credential_or_removing_the_device_ends_live_sessions
);

async fn a_session_ends_when_its_rotation_grace_runs_out_without_any_change(store: Store) {
    let app = TestApp::start(store).await;
    let t1 = app.device("acme", "dev-1").await;
    let (mut one, _) = V4::connect(addr(&app), "dev-1", &t1).await;
    // The old token keeps working for one more second: the session stays through the rotation.
    app.admin
        .rotate("acme", "dev-1", Duration::from_secs(1))
        .await
        .unwrap();
    one.client
        .publish("acme/dev-1/still", QoS::AtLeastOnce, false, "y")
        .await
        .unwrap();
    one.next_matching(|ev| match ev {
        Ok(Event::Incoming(Packet::PubAck(_))) => Some(()),
        Err(e) => panic!("closed during the grace period: {e}"),
        _ => None,
    })
    .await;
    // Every echo of the rotation (NOTIFY, SQLite's polled change table) applied first, so that
    // nothing but the passing of time can end the session.
    app.gate.registry().settled().await.unwrap();
    // Time passes (the gate's clock); no registry change follows, yet the session ends.
    app.clock.advance(5);
    one.closed().await;
}
both_stores!(
    grace_runs_out,
    a_session_ends_when_its_rotation_grace_runs_out_without_any_change
);

async fn a_second_connection_with_the_same_client_id_takes_the_session_over(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let (mut first, _) = V4::connect(addr(&app), "dev-1", &token).await;
    let (mut second, code) = V4::connect(addr(&app), "dev-1", &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    first.closed().await;
    second
        .client
        .subscribe("acme/dev-1/#", QoS::AtMostOnce)
        .await
        .unwrap();
    second.suback().await;
}
both_stores!(
    takeover,
    a_second_connection_with_the_same_client_id_takes_the_session_over
);

/// Raw bytes of a 3.1.1 CONNECT (keep-alive `ka` seconds).
fn raw_connect(id: &str, secret: &str, ka: u16) -> Vec<u8> {
    let mut body = vec![0, 4, b'M', b'Q', b'T', b'T', 4, 0b1100_0010];
    body.extend_from_slice(&ka.to_be_bytes());
    for field in [id, id, secret] {
        body.extend_from_slice(&(field.len() as u16).to_be_bytes());
        body.extend_from_slice(field.as_bytes());
    }
    crate::raw::frame(0x10, &body)
}

/// Reads until the broker closes; returns everything it sent.
async fn read_to_close(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the broker did not close the connection")
        .ok();
    all
}

async fn silent_and_idle_clients_are_closed_and_never_block_others(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("mqtt_connect_timeout", "300ms".into(), "test")
            .unwrap();
    })
    .await;
    let token = app.device("acme", "dev-1").await;
    // A socket that never sends CONNECT does not hold up anyone else.
    let mut silent = tokio::net::TcpStream::connect(addr(&app)).await.unwrap();
    let (_ok, code) = V4::connect(addr(&app), "dev-1", &token).await;
    assert_eq!(code, ConnectReturnCode::Success);
    assert!(
        read_to_close(&mut silent).await.is_empty(),
        "closed without a word"
    );
    // Keep-alive 1 s, then silence: closed after 1.5 s.
    let t2 = app.device("acme", "dev-2").await;
    let mut idle = tokio::net::TcpStream::connect(addr(&app)).await.unwrap();
    idle.write_all(&raw_connect("dev-2", &t2, 1)).await.unwrap();
    let sent = read_to_close(&mut idle).await;
    assert_eq!(sent, vec![0x20, 2, 0, 0], "a CONNACK, then the close");
}
both_stores!(
    edge_timeouts,
    silent_and_idle_clients_are_closed_and_never_block_others
);

async fn oversized_packets_and_too_many_connections_per_address_are_refused(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("mqtt_max_packet_size", "1024".into(), "test")
            .unwrap();
        l.set("mqtt_max_conns_per_peer", "1".into(), "test")
            .unwrap();
    })
    .await;
    let token = app.device("acme", "dev-1").await;
    let t2 = app.device("acme", "dev-2").await;
    let (mut dev, _) = V4::connect(addr(&app), "dev-1", &token).await;
    // A second connection from the same address: closed at accept, before a byte is read.
    let (_c, code) = crate::raw::Raw::connect(addr(&app), "dev-2", &t2, false, true).await;
    assert_eq!(code, None, "closed without a CONNACK");
    metric_reaches(&app, "event=\"peer_refused_at_accept\"} 1").await;
    dev.client
        .publish("acme/dev-1/big", QoS::AtMostOnce, false, vec![b'x'; 4096])
        .await
        .unwrap();
    dev.closed().await;
}
both_stores!(
    edge_limits,
    oversized_packets_and_too_many_connections_per_address_are_refused
);

async fn mosquitto(bin: &str, args: &[&str]) -> (bool, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(bin)
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto client hung")
    .unwrap_or_else(|e| {
        panic!("{bin} not runnable ({e}); scripts/test.sh installs mosquitto-clients")
    });
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

async fn mosquitto_clients_publish_subscribe_and_are_refused_like_any_client(store: Store) {
    let app = TestApp::start(store).await;
    let t1 = app.device("acme", "dev-1").await;
    let t2 = app.device("acme", "dev-2").await;
    app.admin
        .add_rule(
            "acme",
            Some("dev-2"),
            rule(Permission::Allow, RuleAction::Publish, "acme/dev-1/from-2"),
        )
        .await
        .unwrap();
    let port = addr(&app).port().to_string();
    let client = |id: &'static str, secret: &str| -> Vec<String> {
        [
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-i",
            id,
            "-u",
            id,
            "-P",
            secret,
        ]
        .map(String::from)
        .to_vec()
    };
    let run = |bin: &'static str, mut args: Vec<String>, more: &[&str]| {
        args.extend(more.iter().map(|s| s.to_string()));
        async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            mosquitto(bin, &args).await
        }
    };
    let (ok, text) = run(
        "mosquitto_pub",
        client("ghost", "mqg_x"),
        &["-t", "a", "-m", "x"],
    )
    .await;
    assert!(!ok, "an unknown client id is refused: {text}");
    assert!(text.contains("bad user name or password"), "{text}");
    // 3.1.1 acks a refused publish (and drops it); both are retained if routed.
    let forged = ["-q", "1", "-r", "-t", "acme/dev-1/t", "-m", "forged"];
    let (ok, text) = run("mosquitto_pub", client("dev-2", &t2), &forged).await;
    assert!(ok, "{text}");
    let hello = ["-q", "1", "-r", "-t", "acme/dev-1/from-2", "-m", "hello"];
    let (ok, text) = run("mosquitto_pub", client("dev-2", &t2), &hello).await;
    assert!(ok, "{text}");
    let sub = ["-V", "mqttv5", "-t", "acme/dev-1/#", "-C", "1"];
    let (ok, text) = run("mosquitto_sub", client("dev-1", &t1), &sub).await;
    assert!(ok, "{text}");
    assert_eq!(
        text.trim(),
        "hello",
        "only the allowed publish was retained"
    );
}
both_stores!(
    mosquitto_clients,
    mosquitto_clients_publish_subscribe_and_are_refused_like_any_client
);

async fn the_broker_can_be_turned_off(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("mqtt_addr", "off".into(), "test").unwrap();
    })
    .await;
    assert!(app.mqtt.is_none());
}
both_stores!(broker_off, the_broker_can_be_turned_off);

/// A server where dev-1 may subscribe to `news/#` (the rule id returned) and dev-2 may publish
/// there; returns both tokens.
async fn news_readers(store: Store) -> (TestApp, String, String, i64) {
    let app = TestApp::start(store).await;
    let t1 = app.device("acme", "dev-1").await;
    let t2 = app.device("acme", "dev-2").await;
    let sub_rule = app
        .admin
        .add_rule(
            "acme",
            Some("dev-1"),
            rule(Permission::Allow, RuleAction::Subscribe, "news/#"),
        )
        .await
        .unwrap();
    app.admin
        .add_rule(
            "acme",
            Some("dev-2"),
            rule(Permission::Allow, RuleAction::Publish, "news/#"),
        )
        .await
        .unwrap();
    (app, t1, t2, sub_rule)
}

async fn a_subscription_the_acl_no_longer_allows_stops_delivering(store: Store) {
    let (app, t1, t2, sub_rule) = news_readers(store).await;
    let (mut reader, _) = V4::connect(addr(&app), "dev-1", &t1).await;
    reader
        .client
        .subscribe("news/#", QoS::AtMostOnce)
        .await
        .unwrap();
    reader
        .client
        .subscribe("acme/dev-1/#", QoS::AtMostOnce)
        .await
        .unwrap();
    reader.suback().await;
    reader.suback().await;
    let (mut writer, _) = V4::connect(addr(&app), "dev-2", &t2).await;
    writer
        .client
        .publish("news/1", QoS::AtLeastOnce, false, "n")
        .await
        .unwrap();
    assert_eq!(reader.next_publish().await.0, "news/1");
    app.admin.remove_rule("acme", sub_rule).await.unwrap();
    metric_reaches(
        &app,
        "mqgate_broker_events_total{event=\"subscription_revoked\"} 1",
    )
    .await;
    writer
        .client
        .publish("news/2", QoS::AtLeastOnce, false, "n")
        .await
        .unwrap();
    writer
        .next_matching(|ev| matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))).then_some(()))
        .await;
    reader
        .client
        .publish("acme/dev-1/marker", QoS::AtMostOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(
        reader.next_publish().await.0,
        "acme/dev-1/marker",
        "nothing more through the revoked subscription"
    );
}
both_stores!(
    subscription_revoked,
    a_subscription_the_acl_no_longer_allows_stops_delivering
);

async fn a_rate_limited_publish_gets_quota_exceeded_in_5(store: Store) {
    use rumqttc::v5::mqttbytes::QoS as Q5;
    use rumqttc::v5::mqttbytes::v5::{Packet as P5, PubAckReason};
    use rumqttc::v5::{AsyncClient as C5, Event as Ev5, MqttOptions as O5};
    // One publish of burst, and the manual clock never refills the bucket.
    let app = TestApp::start_with(store, |l| {
        l.set("device_rate", "1".into(), "test").unwrap();
        l.set("device_burst", "1".into(), "test").unwrap();
    })
    .await;
    let token = app.device("acme", "dev-1").await;
    let a = addr(&app);
    let mut o = O5::new("dev-1", a.ip().to_string(), a.port());
    o.set_credentials("dev-1", &token);
    let (client, mut el) = C5::new(o, 8);
    for n in 0..2 {
        client
            .publish(format!("acme/dev-1/{n}"), Q5::AtLeastOnce, false, "x")
            .await
            .unwrap();
    }
    let mut reasons = Vec::new();
    tokio::time::timeout(WAIT, async {
        while reasons.len() < 2 {
            if let Ev5::Incoming(P5::PubAck(ack)) = el.poll().await.unwrap() {
                reasons.push(ack.reason);
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(
        reasons,
        vec![PubAckReason::Success, PubAckReason::QuotaExceeded]
    );
}
both_stores!(
    rate_limited_v5,
    a_rate_limited_publish_gets_quota_exceeded_in_5
);

async fn a_resumed_session_loses_subscriptions_the_acl_dropped_meanwhile(store: Store) {
    let (app, t1, t2, sub_rule) = news_readers(store).await;
    let mut stored = v4_options(addr(&app), "dev-1", &t1);
    stored.set_clean_session(false);
    let (mut first, _) = V4::connect_with(stored.clone()).await;
    first
        .client
        .subscribe("news/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    first.suback().await;
    first.client.disconnect().await.unwrap();
    first.closed().await;
    app.admin.remove_rule("acme", sub_rule).await.unwrap();
    let (mut resumed, _) = V4::connect_with(stored).await;
    metric_reaches(
        &app,
        "mqgate_broker_events_total{event=\"subscription_revoked\"} 1",
    )
    .await;
    let (mut writer, _) = V4::connect(addr(&app), "dev-2", &t2).await;
    writer
        .client
        .publish("news/late", QoS::AtLeastOnce, false, "n")
        .await
        .unwrap();
    writer
        .next_matching(|ev| matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))).then_some(()))
        .await;
    resumed
        .client
        .subscribe("acme/dev-1/#", QoS::AtMostOnce)
        .await
        .unwrap();
    resumed.suback().await;
    resumed
        .client
        .publish("acme/dev-1/marker", QoS::AtMostOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(resumed.next_publish().await.0, "acme/dev-1/marker");
}
both_stores!(
    resumed_session_rechecked,
    a_resumed_session_loses_subscriptions_the_acl_dropped_meanwhile
);

async fn a_revoked_devices_will_is_dropped(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let watch = observer(&app).await;
    let (mut obs, _) = V4::connect(addr(&app), "observer", &watch).await;
    obs.client
        .subscribe("acme/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    obs.suback().await;
    let mut o = v4_options(addr(&app), "dev-1", &token);
    o.set_last_will(rumqttc::LastWill::new(
        "acme/dev-1/status",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (mut dev, _) = V4::connect_with(o).await;
    app.admin.set_enabled("acme", "dev-1", false).await.unwrap();
    dev.closed().await;
    obs.client
        .publish("acme/observer/marker", QoS::AtLeastOnce, false, "m")
        .await
        .unwrap();
    assert_eq!(
        obs.next_publish().await.0,
        "acme/observer/marker",
        "the will of a disabled device must not go out"
    );
}
both_stores!(revoked_will_dropped, a_revoked_devices_will_is_dropped);
