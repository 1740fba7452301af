//! The embedded broker follows MQTT where a client can tell the difference: the delivered QoS is
//! the minimum of the published and the granted one (5.0 and 3.1.1), the 5.0 subscription
//! options No Local, Retain As Published and Retain Handling, and the client's 5.0 Maximum
//! Packet Size and Receive Maximum. Routing behaviour, not registry behaviour: SQLite only.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use crate::helpers::{TestApp, sqlite_store};
use mqgate::acl::{Permission, RuleAction};
use mqgate::registry::NewAclRule;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, RetainForwardRule};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Generous bound for things that should happen soon (never a timed assertion).
const WAIT: Duration = Duration::from_secs(10);

/// A 5.0 client and the events its event loop saw (the loop stops at its first error).
struct Client {
    client: AsyncClient,
    events: UnboundedReceiver<Result<Event, ConnectionError>>,
    /// Publishes that came while waiting for something else.
    publishes: VecDeque<Publish>,
}

impl Client {
    async fn connect(options: MqttOptions) -> Client {
        let (client, mut eventloop) = AsyncClient::new(options, 256);
        let (tx, events) = unbounded_channel();
        tokio::spawn(async move {
            loop {
                let ev = eventloop.poll().await;
                let stop = ev.is_err();
                if tx.send(ev).is_err() || stop {
                    return;
                }
            }
        });
        let mut c = Client {
            client,
            events,
            publishes: VecDeque::new(),
        };
        c.next(|p| matches!(p, Packet::ConnAck(_)).then_some(()))
            .await;
        c
    }

    /// The next incoming packet `f` picks (publishes it passes over are kept for
    /// [`Client::next_publish`]); panics on a lost connection.
    async fn next<R>(&mut self, mut f: impl FnMut(&Packet) -> Option<R>) -> R {
        tokio::time::timeout(WAIT, async {
            loop {
                match self.events.recv().await.expect("event loop ended") {
                    Ok(Event::Incoming(p)) => {
                        if let Some(r) = f(&p) {
                            return r;
                        }
                        if let Packet::Publish(p) = p {
                            self.publishes.push_back(p);
                        }
                    }
                    Ok(Event::Outgoing(_)) => {}
                    Err(e) => panic!("connection lost: {e:?}"),
                }
            }
        })
        .await
        .expect("expected MQTT packet did not come")
    }

    async fn next_publish(&mut self) -> Publish {
        if let Some(p) = self.publishes.pop_front() {
            return p;
        }
        self.next(|p| match p {
            Packet::Publish(p) => Some(p.clone()),
            _ => None,
        })
        .await
    }

    async fn subscribe(&mut self, filters: Vec<Filter>) {
        self.client.subscribe_many(filters).await.unwrap();
        self.next(|p| matches!(p, Packet::SubAck(_)).then_some(()))
            .await;
    }

    /// Publishes and waits until the broker has it (PUBACK, or PUBCOMP for QoS 2).
    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &[u8]) {
        self.client
            .publish(topic, qos, retain, payload.to_vec())
            .await
            .unwrap();
        // QoS 0 has no answer: a later acknowledged publish on this connection shows it arrived.
        match qos {
            QoS::AtMostOnce => {}
            QoS::AtLeastOnce => {
                self.next(|p| matches!(p, Packet::PubAck(_)).then_some(()))
                    .await
            }
            QoS::ExactlyOnce => {
                self.next(|p| matches!(p, Packet::PubComp(_)).then_some(()))
                    .await
            }
        }
    }
}

fn filter(path: &str, qos: QoS) -> Filter {
    Filter::new(path, qos)
}

fn options(addr: SocketAddr, id: &str, token: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, token)
        .set_keep_alive(Duration::from_secs(30));
    o
}

/// A server with dev-1 (subscribes in `acme/dev-1/#`) and "feeder", who may publish anywhere in
/// the tenant.
struct Setup {
    app: TestApp,
    _dir: tempfile::TempDir,
    /// dev-1's options, to adjust.
    dev: MqttOptions,
    dev_token: String,
    /// The connected feeder.
    feeder: Client,
    feeder_token: String,
}

async fn dev_1_and_feeder() -> Setup {
    let (store, dir) = sqlite_store().await;
    let app = TestApp::start(store).await;
    let addr = app.mqtt.expect("embedded broker is on in tests");
    let token = app.device("acme", "dev-1").await;
    let feeder = app.device("acme", "feeder").await;
    let rule = NewAclRule {
        permission: Permission::Allow,
        action: RuleAction::Publish,
        topic: "acme/#".into(),
    };
    app.admin
        .add_rule("acme", Some("feeder"), rule)
        .await
        .unwrap();
    Setup {
        feeder: Client::connect(options(addr, "feeder", &feeder)).await,
        feeder_token: feeder,
        dev: options(addr, "dev-1", &token),
        dev_token: token,
        app,
        _dir: dir,
    }
}

const LEVELS: [QoS; 3] = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];

#[tokio::test]
async fn messages_arrive_at_the_minimum_of_published_and_granted_qos_in_5() {
    let Setup {
        app: _app,
        _dir: _kept,
        dev,
        mut feeder,
        ..
    } = dev_1_and_feeder().await;
    let mut dev = Client::connect(dev).await;
    dev.subscribe(vec![
        filter("acme/dev-1/q2", QoS::ExactlyOnce),
        filter("acme/dev-1/q1", QoS::AtLeastOnce),
        filter("acme/dev-1/q0", QoS::AtMostOnce),
    ])
    .await;
    for granted in ["q2", "q1", "q0"] {
        for (n, qos) in LEVELS.into_iter().enumerate() {
            let topic = format!("acme/dev-1/{granted}");
            feeder.publish(&topic, qos, false, &[b'0' + n as u8]).await;
        }
    }
    let mut got = BTreeMap::new();
    while got.len() < 9 {
        let p = dev.next_publish().await;
        let key = (
            String::from_utf8_lossy(&p.topic).into_owned(),
            p.payload[0] - b'0',
        );
        got.insert(key, p.qos);
    }
    let expected: BTreeMap<_, _> = [
        ("q2", [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]),
        ("q1", [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce]),
        ("q0", [QoS::AtMostOnce, QoS::AtMostOnce, QoS::AtMostOnce]),
    ]
    .into_iter()
    .flat_map(|(f, qs)| {
        qs.into_iter()
            .enumerate()
            .map(move |(n, q)| ((format!("acme/dev-1/{f}"), n as u8), q))
    })
    .collect();
    assert_eq!(got, expected);
}

/// The next line mosquitto_sub prints.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("mosquitto_sub said nothing")
        .unwrap()
        .expect("mosquitto_sub ended")
}

#[tokio::test]
async fn mosquitto_sub_gets_the_minimum_qos_in_3_1_1() {
    let setup = dev_1_and_feeder().await;
    for (granted, expected) in [("2", ["0 0", "1 1", "2 2"]), ("1", ["0 0", "1 1", "2 1"])] {
        let got = mosquitto_levels(&setup, granted).await;
        assert_eq!(got, expected, "payload (= published QoS), delivered QoS");
    }
}

/// mosquitto_sub (3.1.1) subscribes at `granted` while mosquitto_pub publishes at QoS 0, 1 and
/// 2: what it received, as "published delivered" QoS pairs.
async fn mosquitto_levels(setup: &Setup, granted: &str) -> Vec<String> {
    let port = setup.app.mqtt.unwrap().port().to_string();
    let login = |id: &'static str, token: &str| -> Vec<String> {
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
            token,
        ]
        .map(String::from)
        .to_vec()
    };
    // Line-buffered, so that its SUBACK line shows up while it runs.
    let mut sub = tokio::process::Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(login("dev-1", &setup.dev_token))
        .args(["-V", "mqttv311", "-d", "-C", "3", "-F", "got %p %q"])
        .args(["-t", "acme/dev-1/q", "-q", granted])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub not runnable; scripts/test.sh installs mosquitto-clients");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    while !next_line(&mut lines).await.contains("received SUBACK") {}
    for qos in ["0", "1", "2"] {
        let out = tokio::process::Command::new("mosquitto_pub")
            .args(login("feeder", &setup.feeder_token))
            .args(["-V", "mqttv311", "-t", "acme/dev-1/q", "-q", qos, "-m", qos])
            .output();
        let out = tokio::time::timeout(WAIT, out).await.unwrap().unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let l = next_line(&mut lines).await;
        if let Some(rest) = l.strip_prefix("got ") {
            got.push(rest.to_string());
        }
    }
    got.sort();
    got
}

#[tokio::test]
async fn no_local_keeps_a_clients_own_messages_from_it() {
    let Setup {
        app: _app,
        _dir: _kept,
        dev,
        mut feeder,
        ..
    } = dev_1_and_feeder().await;
    let mut dev = Client::connect(dev).await;
    let mut own = filter("acme/dev-1/nl", QoS::AtLeastOnce);
    own.nolocal = true;
    dev.subscribe(vec![own, filter("acme/dev-1/l", QoS::AtLeastOnce)])
        .await;
    dev.publish("acme/dev-1/nl", QoS::AtLeastOnce, false, b"mine")
        .await;
    dev.publish("acme/dev-1/l", QoS::AtLeastOnce, false, b"mine")
        .await;
    feeder
        .publish("acme/dev-1/nl", QoS::AtLeastOnce, false, b"theirs")
        .await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let p = dev.next_publish().await;
        got.push((String::from_utf8_lossy(&p.topic).into_owned(), p.payload));
    }
    got.sort();
    assert_eq!(
        got,
        [
            ("acme/dev-1/l".to_string(), "mine".into()),
            ("acme/dev-1/nl".to_string(), "theirs".into()),
        ],
        "with No Local, the client's own message must not come back"
    );
}

#[tokio::test]
async fn retain_as_published_keeps_the_flag_both_ways_and_is_cleared_without_it() {
    let Setup {
        app: _app,
        _dir: _kept,
        dev,
        mut feeder,
        ..
    } = dev_1_and_feeder().await;
    let mut dev = Client::connect(dev).await;
    let mut keep = filter("acme/dev-1/rap/keep", QoS::AtLeastOnce);
    keep.preserve_retain = true;
    dev.subscribe(vec![keep, filter("acme/dev-1/rap/clear", QoS::AtLeastOnce)])
        .await;
    for (topic, retain) in [
        ("acme/dev-1/rap/keep", true),
        ("acme/dev-1/rap/keep", false),
        ("acme/dev-1/rap/clear", true),
    ] {
        feeder.publish(topic, QoS::AtLeastOnce, retain, b"x").await;
        let p = dev.next_publish().await;
        assert_eq!(p.topic, topic.as_bytes());
        let published_as = topic.ends_with("keep") && retain;
        assert_eq!(p.retain, published_as, "retain flag on {topic} ({retain})");
    }
}

#[tokio::test]
async fn retain_handling_0_1_and_2_on_first_and_repeated_subscriptions() {
    let Setup {
        app: _app,
        _dir: _kept,
        dev,
        mut feeder,
        ..
    } = dev_1_and_feeder().await;
    let mut dev = Client::connect(dev).await;
    for h in 0..3 {
        let topic = format!("acme/dev-1/rh/{h}");
        feeder
            .publish(&topic, QoS::AtLeastOnce, true, b"retained")
            .await;
    }
    let filters = || {
        [
            RetainForwardRule::OnEverySubscribe,
            RetainForwardRule::OnNewSubscribe,
            RetainForwardRule::Never,
        ]
        .into_iter()
        .enumerate()
        .map(|(h, rule)| {
            let mut f = filter(&format!("acme/dev-1/rh/{h}"), QoS::AtLeastOnce);
            f.retain_forward_rule = rule;
            f
        })
        .collect::<Vec<_>>()
    };
    // First subscription: handling 0 and 1 send the retained message, 2 does not; the repeated
    // one: only 0. The router sends retained messages with the SUBACK, so a live marker
    // published after it is the first thing on a topic that gets no retained message.
    for (round, sends) in [
        ("first", [true, true, false]),
        ("repeated", [true, false, false]),
    ] {
        dev.subscribe(filters()).await;
        for h in 0..3 {
            let topic = format!("acme/dev-1/rh/{h}");
            feeder
                .publish(&topic, QoS::AtLeastOnce, false, b"marker")
                .await;
        }
        let mut got = BTreeMap::<String, Vec<String>>::new();
        while got.values().flatten().filter(|p| *p == "marker").count() < 3 {
            let p = dev.next_publish().await;
            let topic = String::from_utf8_lossy(&p.topic).into_owned();
            let payload = String::from_utf8_lossy(&p.payload).into_owned();
            got.entry(topic).or_default().push(payload);
        }
        for (h, sends) in sends.into_iter().enumerate() {
            let expected: &[&str] = if sends {
                &["retained", "marker"]
            } else {
                &["marker"]
            };
            assert_eq!(
                got[&format!("acme/dev-1/rh/{h}")],
                expected,
                "{round} subscription with retain handling {h}"
            );
        }
    }
}

#[tokio::test]
async fn a_message_over_the_clients_maximum_packet_size_is_not_sent_and_the_session_goes_on() {
    let Setup {
        app: _app,
        _dir: _kept,
        dev: mut o,
        mut feeder,
        ..
    } = dev_1_and_feeder().await;
    o.set_max_packet_size(Some(512));
    let mut dev = Client::connect(o).await;
    dev.subscribe(vec![filter("acme/dev-1/big", QoS::ExactlyOnce)])
        .await;
    let big = vec![b'x'; 2000];
    // Each level too large, between messages that fit: those arrive, in order, and the dropped
    // QoS 1/2 ones count as delivered (the router would otherwise stall or refuse later acks).
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce, QoS::AtMostOnce] {
        feeder.publish("acme/dev-1/big", qos, false, &big).await;
        feeder
            .publish("acme/dev-1/big", QoS::AtLeastOnce, false, b"fits")
            .await;
    }
    for qos in [QoS::ExactlyOnce, QoS::AtLeastOnce] {
        feeder.publish("acme/dev-1/big", qos, false, b"after").await;
    }
    let mut got = Vec::new();
    while got.len() < 5 {
        got.push(dev.next_publish().await.payload.to_vec());
    }
    let fits = b"fits".to_vec();
    let after = b"after".to_vec();
    assert_eq!(
        got,
        [fits.clone(), fits.clone(), fits, after.clone(), after]
    );
}

#[tokio::test]
async fn no_more_qos_1_messages_are_in_flight_than_the_clients_receive_maximum() {
    let Setup {
        app: _app,
        _dir: _kept,
        dev: mut o,
        mut feeder,
        ..
    } = dev_1_and_feeder().await;
    o.set_receive_maximum(Some(2)).set_manual_acks(true);
    let mut dev = Client::connect(o).await;
    dev.subscribe(vec![filter("acme/dev-1/burst", QoS::AtLeastOnce)])
        .await;
    for n in 0..100u8 {
        feeder
            .publish("acme/dev-1/burst", QoS::AtLeastOnce, false, &[n])
            .await;
    }
    // All 100 are with the broker; without acks only two may come.
    let mut unacked = VecDeque::new();
    unacked.push_back(dev.next_publish().await);
    unacked.push_back(dev.next_publish().await);
    let third = tokio::time::timeout(Duration::from_millis(500), dev.next_publish()).await;
    assert!(
        third.is_err(),
        "a third QoS 1 message came before any PUBACK"
    );
    // Then one for each ack, all 100 in order.
    let mut seen = vec![unacked[0].payload[0], unacked[1].payload[0]];
    while seen.len() < 100 {
        let oldest = unacked.pop_front().unwrap();
        dev.client.ack(&oldest).await.unwrap();
        let p = dev.next_publish().await;
        seen.push(p.payload[0]);
        unacked.push_back(p);
        assert!(unacked.len() <= 2);
    }
    assert_eq!(seen, (0..100).collect::<Vec<u8>>());
}

/// Acknowledgements in the order the publishes came (MQTT-4.6.0-2 / 5.0 §4.6): a refused publish
/// is acknowledged by mqgate at once, an accepted one by the router a little later, and the first
/// must not overtake the second. All publishes go in one write, so all are read together.
#[tokio::test]
async fn pubacks_keep_the_order_of_the_publishes_when_some_are_refused() {
    let (store, _dir) = sqlite_store().await;
    let app = TestApp::start(store).await;
    let addr = app.mqtt.expect("embedded broker is on in tests");
    let token = app.device("acme", "dev-1").await;
    for v5 in [false, true] {
        let (mut raw, code) = crate::raw::Raw::connect(addr, "dev-1", &token, v5, true).await;
        assert_eq!(code, Some(0));
        let mut bytes = Vec::new();
        // Odd packet ids to the device's own topics (routed), even ones elsewhere (refused).
        for pkid in 1..=20u16 {
            let topic = if pkid % 2 == 1 {
                "acme/dev-1/t"
            } else {
                "acme/other/t"
            };
            bytes.extend(raw.publish_bytes(topic, b"x", 1, false, pkid));
        }
        raw.send(&bytes).await;
        let mut order = Vec::new();
        while order.len() < 20 {
            let ack = raw.next_of(0x40).await.expect("a PUBACK for every publish");
            let pkid = ack.body.first().zip(ack.body.get(1));
            order.push(pkid.map(|(h, l)| u16::from_be_bytes([*h, *l])).unwrap_or(0));
        }
        assert_eq!(order, (1..=20).collect::<Vec<u16>>(), "v5={v5}");
        raw.send(&[0xE0, 0]).await;
    }
}

/// A 5.0 CONNECT with Receive Maximum 0 or Maximum Packet Size 0 is a protocol error (MQTT 5.0
/// §3.1.2.11.3, §3.1.2.11.4): CONNACK 0x82, then close. Raw bytes (a library will not send them).
#[tokio::test]
async fn a_zero_receive_maximum_or_maximum_packet_size_is_a_protocol_error() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (store, _dir) = sqlite_store().await;
    let app = TestApp::start(store).await;
    let addr = app.mqtt.expect("embedded broker is on in tests");
    let token = app.device("acme", "dev-1").await;
    let connect = |props: &[u8]| {
        let s = |v: &[u8]| [&(v.len() as u16).to_be_bytes()[..], v].concat();
        let mut body = s(b"MQTT");
        body.extend([5, 0b1100_0010, 0, 60, props.len() as u8]);
        body.extend(props);
        body.extend(s(b"dev-1"));
        body.extend(s(b"dev-1"));
        body.extend(s(token.as_bytes()));
        crate::raw::frame(0x10, &body)
    };
    let cases: [(&[u8], u8); 4] = [
        (&[0x21, 0, 0], 0x82),
        (&[0x27, 0, 0, 0, 0], 0x82),
        (&[0x21, 0, 10], 0),
        (&[0x27, 0, 1, 0, 0], 0),
    ];
    for (props, want) in cases {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(&connect(props)).await.unwrap();
        let mut head = [0u8; 4];
        tokio::time::timeout(WAIT, s.read_exact(&mut head))
            .await
            .expect("a CONNACK")
            .unwrap();
        assert_eq!((head[0], head[3]), (0x20, want), "properties {props:?}");
        s.write_all(&[0xE0, 0]).await.unwrap();
    }
}
