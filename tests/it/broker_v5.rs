//! The embedded broker's MQTT 5.0 session semantics, with rumqttc's 5.0 client against both
//! stores: the Will Delay Interval (a will held back, cancelled when the session is resumed in
//! time) and the Session Expiry Interval (a stored session lasts exactly as long as it says).

use std::net::SocketAddr;
use std::time::Duration;

use crate::both_stores;
use crate::helpers::{TestApp, metric_reaches};
use mqgate::acl::{Permission, RuleAction};
use mqgate::registry::{NewAclRule, Store};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

/// Generous bound for things that should happen soon (never a timed assertion).
const WAIT: Duration = Duration::from_secs(10);

/// A 5.0 client and the events its event loop saw (the loop stops at its first error).
struct V5 {
    client: AsyncClient,
    events: UnboundedReceiver<Result<Event, ConnectionError>>,
    task: tokio::task::JoinHandle<()>,
}

/// A received PUBLISH: topic, payload and user properties.
type Received = (String, Vec<u8>, Vec<(String, String)>);

impl V5 {
    /// Connects and waits for the CONNACK; returns the client and the CONNACK's session-present.
    async fn connect(options: MqttOptions) -> (V5, bool) {
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
        let mut c = V5 {
            client,
            events,
            task,
        };
        let present = c
            .next_matching(|ev| match ev {
                Ok(Event::Incoming(Packet::ConnAck(a))) => Some(a.session_present),
                Err(e) => panic!("connection failed without CONNACK: {e:?}"),
                _ => None,
            })
            .await;
        (c, present)
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

    async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .unwrap();
        self.next_matching(|ev| matches!(ev, Ok(Event::Incoming(Packet::SubAck(_)))).then_some(()))
            .await;
    }

    async fn publish(&mut self, topic: &str, payload: &str) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload.to_string())
            .await
            .unwrap();
        self.next_matching(|ev| matches!(ev, Ok(Event::Incoming(Packet::PubAck(_)))).then_some(()))
            .await;
    }

    async fn next_publish(&mut self) -> Received {
        self.next_matching(|ev| match ev {
            Ok(Event::Incoming(Packet::Publish(p))) => Some((
                String::from_utf8_lossy(&p.topic).into_owned(),
                p.payload.to_vec(),
                p.properties
                    .as_ref()
                    .map(|pp| pp.user_properties.clone())
                    .unwrap_or_default(),
            )),
            Err(e) => panic!("connection lost: {e:?}"),
            _ => None,
        })
        .await
    }

    /// A polite DISCONNECT, then the close.
    async fn leave(mut self) {
        self.client.disconnect().await.unwrap();
        self.next_matching(|ev| ev.is_err().then_some(())).await;
    }
}

fn options(addr: SocketAddr, id: &str, token: &str) -> MqttOptions {
    let mut o = MqttOptions::new(id, addr.ip().to_string(), addr.port());
    o.set_credentials(id, token)
        .set_keep_alive(Duration::from_secs(30));
    o
}

fn addr(app: &TestApp) -> SocketAddr {
    app.mqtt.expect("embedded broker is on in tests")
}

/// A device that may subscribe and publish anywhere in the tenant (to watch and to write).
async fn observer(app: &TestApp) -> String {
    let token = app.device("acme", "observer").await;
    for action in [RuleAction::Subscribe, RuleAction::Publish] {
        let rule = NewAclRule {
            permission: Permission::Allow,
            action,
            topic: "acme/#".into(),
        };
        app.admin
            .add_rule("acme", Some("observer"), rule)
            .await
            .unwrap();
    }
    token
}

/// A server with device dev-1 (its token returned) and the observer connected.
async fn dev_1_and_observer(store: Store) -> (TestApp, String, V5) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let watch = observer(&app).await;
    let (obs, _) = V5::connect(options(addr(&app), "observer", &watch)).await;
    (app, token, obs)
}

/// dev-1's will "gone" on `acme/dev-1/status`, held back `delay` seconds.
fn delayed_will(delay: u32, user_properties: Vec<(String, String)>) -> LastWill {
    let props = LastWillProperties {
        delay_interval: Some(delay),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties,
    };
    LastWill::new(
        "acme/dev-1/status",
        "gone",
        QoS::AtLeastOnce,
        false,
        Some(props),
    )
}

fn closed(n: usize) -> String {
    format!("mqgate_broker_events_total{{event=\"closed\"}} {n}")
}

async fn a_will_waits_for_its_delay_and_a_resumed_session_cancels_it(store: Store) {
    let (app, token, mut obs) = dev_1_and_observer(store).await;
    obs.subscribe("acme/#").await;
    let mut o = options(addr(&app), "dev-1", &token);
    let user = vec![("why".to_string(), "lost".to_string())];
    // A delay longer than the test waits for anything: the will goes out when the gate's clock
    // says so, never by real time passing.
    o.set_last_will(delayed_will(30, user))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(60));

    // Lost, then back before the delay has passed: the session resumes and the will is cancelled.
    let (lost, _) = V5::connect(o.clone()).await;
    lost.task.abort();
    metric_reaches(&app, &closed(1)).await;
    let (back, present) = V5::connect(o.clone()).await;
    assert!(present, "the stored session is resumed");
    // Past the will's delay (the gate's clock): a will still held would go out now.
    app.clock.advance(31);
    obs.publish("acme/observer/marker", "1").await;
    assert_eq!(
        obs.next_publish().await.0,
        "acme/observer/marker",
        "a will cancelled by the resumed session went out"
    );

    // Lost for good: the will is held back (a publish made after the close arrives first), then
    // goes out with its properties.
    back.task.abort();
    metric_reaches(&app, &closed(2)).await;
    obs.publish("acme/observer/marker", "2").await;
    let first = obs.next_publish().await;
    assert_eq!(
        (first.0.as_str(), first.1.as_slice()),
        ("acme/observer/marker", &b"2"[..]),
        "the will must wait for its delay"
    );
    app.clock.advance(30);
    let (topic, payload, user) = obs.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("acme/dev-1/status", &b"gone"[..])
    );
    assert_eq!(user, vec![("why".to_string(), "lost".to_string())]);
}
both_stores!(
    will_delay,
    a_will_waits_for_its_delay_and_a_resumed_session_cancels_it
);

async fn a_new_connection_with_clean_start_ends_the_session_and_sends_the_held_will(store: Store) {
    let (app, token, mut obs) = dev_1_and_observer(store).await;
    obs.subscribe("acme/#").await;
    let mut o = options(addr(&app), "dev-1", &token);
    o.set_last_will(delayed_will(3600, Vec::new()))
        .set_clean_start(false)
        .set_session_expiry_interval(Some(3600));
    let (lost, _) = V5::connect(o).await;
    lost.task.abort();
    metric_reaches(&app, &closed(1)).await;
    let (_fresh, present) = V5::connect(options(addr(&app), "dev-1", &token)).await;
    assert!(!present);
    assert_eq!(obs.next_publish().await.0, "acme/dev-1/status");
}
both_stores!(
    will_on_clean_start,
    a_new_connection_with_clean_start_ends_the_session_and_sends_the_held_will
);

async fn a_stored_session_lasts_as_long_as_its_expiry_interval(store: Store) {
    let (app, token, mut obs) = dev_1_and_observer(store).await;
    let with = |clean: bool, expiry: Option<u32>| {
        let mut o = options(addr(&app), "dev-1", &token);
        o.set_clean_start(clean).set_session_expiry_interval(expiry);
        o
    };

    // No interval: the session ends with the connection, whatever clean start said.
    let (mut c, _) = V5::connect(with(false, None)).await;
    c.subscribe("acme/dev-1/#").await;
    c.leave().await;
    let (c, present) = V5::connect(with(false, None)).await;
    assert!(!present, "a session with expiry 0 was kept");
    c.leave().await;

    // An interval keeps it, also when it started clean; what arrives meanwhile is delivered.
    let (mut c, present) = V5::connect(with(true, Some(3600))).await;
    assert!(!present);
    c.subscribe("acme/dev-1/#").await;
    c.leave().await;
    obs.publish("acme/dev-1/cmd", "while away").await;
    let (mut c, present) = V5::connect(with(false, Some(1))).await;
    assert!(present, "the stored session is resumed");
    let (topic, payload, _) = c.next_publish().await;
    assert_eq!(
        (topic.as_str(), payload.as_slice()),
        ("acme/dev-1/cmd", &b"while away"[..])
    );

    // It ends once its interval (1 s, as the last CONNECT said) has passed on the gate's clock
    // (the two sessions above without an interval were the first two to expire).
    c.leave().await;
    metric_reaches(
        &app,
        "mqgate_broker_events_total{event=\"client_disconnect\"} 4",
    )
    .await;
    app.clock.advance(1);
    metric_reaches(
        &app,
        "mqgate_broker_events_total{event=\"session_expired\"} 3",
    )
    .await;
    let (_c, present) = V5::connect(with(false, Some(60))).await;
    assert!(!present, "an expired session was resumed");
}
both_stores!(
    session_expiry,
    a_stored_session_lasts_as_long_as_its_expiry_interval
);
