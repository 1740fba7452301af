//! The embedded broker against hostile devices (issue #10's five findings), each with raw bytes on
//! a socket: a bystander keeps publishing and receiving, a fresh CONNECT is accepted, the router
//! stays alive (its death would raise the process's fault), and audit and bounds hold.

use std::net::SocketAddr;
use std::time::Duration;

use crate::both_stores;
use crate::helpers::{TestApp, metric_reaches};
use crate::raw::{Raw, WAIT};
use mqgate::acl::{Permission, RuleAction};
use mqgate::registry::{NewAclRule, Store};

fn addr(app: &TestApp) -> SocketAddr {
    app.mqtt.expect("embedded broker is on in tests")
}

/// A fresh device connects (3.1.1), subscribes to its own topic, publishes there and receives
/// it: the broker and its router still work for everyone else.
async fn bystander_still_works(app: &TestApp, id: &str) {
    let token = app.device("acme", id).await;
    let (mut b, code) = Raw::connect(addr(app), id, &token, false, true).await;
    assert_eq!(code, Some(0), "a fresh CONNECT is accepted");
    let topic = format!("acme/{id}/check");
    assert_eq!(b.subscribe(1, &[&topic], 0).await, vec![0]);
    b.publish(&topic, b"still here").await;
    let p = b
        .next_of(0x30)
        .await
        .expect("the bystander's publish came back");
    assert!(p.body.ends_with(b"still here"));
    b.ping().await;
    assert_eq!(app.gate.fault().reason(), None, "the router is alive");
}

/// Finding 1: a shared subscription held by a stored session with an unacknowledged copy, then a
/// dropped connection, panicked rumqttd's router. `$share` is refused (0x80 / 0x9E).
async fn a_shared_subscription_is_refused_and_cannot_stop_the_router(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let (mut d, code) = Raw::connect(addr(&app), "dev-1", &token, false, false).await;
    assert_eq!(code, Some(0));
    let shared = "$share/g/acme/dev-1/#";
    assert_eq!(
        d.subscribe(1, &[shared, "acme/dev-1/#"], 1).await,
        vec![0x80, 1]
    );
    // The rest of the attack: a QoS 1 copy never acknowledged, then the connection dropped.
    let publish = d.publish_bytes("acme/dev-1/x", b"m", 1, false, 7);
    d.send(&publish).await;
    d.next_of(0x30).await.expect("the copy arrives");
    drop(d);
    let t2 = app.device("acme", "dev-2").await;
    let (mut v5, code) = Raw::connect(addr(&app), "dev-2", &t2, true, true).await;
    assert_eq!(code, Some(0));
    let codes = v5.subscribe(1, &["$share/g/acme/dev-2/#"], 1).await;
    assert_eq!(codes, vec![0x9E], "5.0: shared subscriptions not supported");
    metric_reaches(&app, "event=\"shared_subscription_refused\"} 2").await;
    bystander_still_works(&app, "dev-3").await;
}
both_stores!(
    shared_subscription,
    a_shared_subscription_is_refused_and_cannot_stop_the_router
);

/// Finding 2: a topic whose first character is multi-byte UTF-8 panicked the router's topic
/// matcher (patched in third_party/rumqttd); it is routed like any other now.
async fn a_topic_starting_with_a_multibyte_character_is_routed(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let rule = NewAclRule {
        permission: Permission::Allow,
        action: RuleAction::All,
        topic: "+/status".into(),
    };
    app.admin
        .add_rule("acme", Some("dev-1"), rule)
        .await
        .unwrap();
    let (mut d, _) = Raw::connect(addr(&app), "dev-1", &token, false, true).await;
    assert_eq!(d.subscribe(1, &["+/status"], 0).await, vec![0]);
    d.publish("é/status", b"up").await;
    let p = d
        .next_of(0x30)
        .await
        .expect("routed back to the subscriber");
    assert!(p.body.ends_with(b"up"));
    bystander_still_works(&app, "dev-2").await;
}
both_stores!(
    multibyte_topic,
    a_topic_starting_with_a_multibyte_character_is_routed
);

/// Finding 3: one SUBSCRIBE with thousands of refused filters flooded the audit queue and stalled
/// everyone. A SUBSCRIBE over `mqtt_max_filters_per_subscribe` ends the session (0x97); refusals
/// within bounds are recorded once per device and interval, then counted; a bystander's PINGREQ
/// and other devices' CONNECT outcomes are not held up or lost.
async fn refused_subscriptions_cannot_flood_the_audit_trail_or_stall_others(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = app.device("acme", "dev-1").await;
    let (mut d, _) = Raw::connect(addr(&app), "dev-1", &token, true, true).await;
    let many: Vec<String> = (0..5000).map(|i| format!("acme/dev-9/{i}")).collect();
    let huge = d.subscribe_bytes(1, &many, 0);
    d.send(&huge).await;
    let seen = d.closed().await;
    let bye = seen.iter().find(|p| p.first == 0xE0).expect("a DISCONNECT");
    assert_eq!(bye.body.first(), Some(&0x97), "quota exceeded");
    // Within bounds: 100 SUBSCRIBEs of 32 refused filters each, in one write.
    let (mut d, _) = Raw::connect(addr(&app), "dev-1", &token, false, true).await;
    let t2 = app.device("acme", "dev-2").await;
    let (mut bystander, _) = Raw::connect(addr(&app), "dev-2", &t2, false, true).await;
    let mut burst = Vec::new();
    for pkid in 1..=100u16 {
        let filters: Vec<String> = (0..32).map(|i| format!("acme/dev-9/{pkid}/{i}")).collect();
        burst.extend(d.subscribe_bytes(pkid, &filters, 0));
    }
    d.send(&burst).await;
    bystander.ping().await;
    for _ in 0..100 {
        d.next_of(0x90).await.expect("every SUBACK");
    }
    // A security event of another device after the flood.
    let (_refused, code) = Raw::connect(addr(&app), "dev-2", "mqg_wrong", false, true).await;
    assert_eq!(code, Some(4));
    app.gate.sweep();
    let all = tokio::time::timeout(WAIT, async {
        loop {
            let all = store.list_audit(0, 100_000).await.unwrap();
            let more = all.iter().any(|e| e.kind == "denied_more");
            let connect = all.iter().any(|e| e.detail.contains("bad_secret"));
            if more && connect {
                return all;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the aggregate and the refused CONNECT reach the trail");
    let denied = all.iter().filter(|e| e.kind == "denied").count();
    assert_eq!(denied, 1, "one refusal in full per device and interval");
    let more = all.iter().find(|e| e.kind == "denied_more").unwrap();
    assert!(more.detail.contains(r#""refused":3199"#), "{}", more.detail);
    assert!(
        !app.get_text("/metrics")
            .await
            .contains("mqgate_audit_dropped_total{")
    );
    metric_reaches(&app, "event=\"subscribe_too_many_filters\"} 1").await;
    bystander_still_works(&app, "dev-3").await;
}
both_stores!(
    audit_flood,
    refused_subscriptions_cannot_flood_the_audit_trail_or_stall_others
);

/// Finding 4: retained messages had no bound. Past `mqtt_retained_per_device` a 5.0 QoS 1
/// publish gets PUBACK 0x97 and a 3.1.1 client is disconnected; replacing or clearing one of its
/// own retained messages is always possible.
async fn retained_messages_are_bounded_per_device(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("mqtt_retained_per_device", "3".into(), "test")
            .unwrap();
    })
    .await;
    let token = app.device("acme", "dev-1").await;
    let (mut d, _) = Raw::connect(addr(&app), "dev-1", &token, true, true).await;
    let puback = async |d: &mut Raw, topic: &str, payload: &[u8], pkid: u16| {
        let p = d.publish_bytes(topic, payload, 1, true, pkid);
        d.send(&p).await;
        let ack = d.next_of(0x40).await.expect("a PUBACK");
        ack.body.get(2).copied().unwrap_or(0)
    };
    for i in 1..=3 {
        let topic = format!("acme/dev-1/r{i}");
        assert_eq!(puback(&mut d, &topic, b"v", i).await, 0);
    }
    assert_eq!(puback(&mut d, "acme/dev-1/r4", b"v", 4).await, 0x97);
    assert_eq!(
        puback(&mut d, "acme/dev-1/r1", b"v2", 5).await,
        0,
        "a replacement"
    );
    assert_eq!(puback(&mut d, "acme/dev-1/r2", b"", 6).await, 0, "a clear");
    assert_eq!(puback(&mut d, "acme/dev-1/r4", b"v", 7).await, 0);
    let t2 = app.device("acme", "dev-2").await;
    let (mut v4, _) = Raw::connect(addr(&app), "dev-2", &t2, false, true).await;
    for i in 1..=4 {
        let p = v4.publish_bytes(&format!("acme/dev-2/r{i}"), b"v", 0, true, 0);
        v4.send(&p).await;
    }
    v4.closed().await;
    metric_reaches(&app, "event=\"retained_exceeded\"} 2").await;
    // A retained will counts too: dev-1 is at its bound, so its retained will is dropped.
    let (w, code) = Raw::connect_with_will(
        addr(&app),
        "dev-1",
        &token,
        false,
        true,
        Some(("acme/dev-1/will", b"gone")),
    )
    .await;
    assert_eq!(code, Some(0));
    drop((w, d));
    metric_reaches(&app, "event=\"retained_exceeded\"} 3").await;
    bystander_still_works(&app, "dev-3").await;
}
both_stores!(retained_bound, retained_messages_are_bounded_per_device);

/// Finding 5: silent sockets held descriptors until the HTTP side could accept nothing. Past
/// `mqtt_max_unauthenticated` connections before CONNACK, new ones are closed at accept; HTTP
/// keeps answering; once the silent sockets go, a fresh CONNECT is accepted.
async fn silent_sockets_are_bounded_at_accept_and_http_keeps_answering(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("mqtt_max_unauthenticated", "8".into(), "test")
            .unwrap();
        l.set("mqtt_connect_timeout", "60s".into(), "test").unwrap();
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(tokio::net::TcpStream::connect(addr(&app)).await.unwrap());
    }
    metric_reaches(&app, "event=\"unauthenticated_refused\"} 192").await;
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    drop(silent);
    let token = app.device("acme", "dev-1").await;
    tokio::time::timeout(WAIT, async {
        loop {
            let (_c, code) = Raw::connect(addr(&app), "dev-1", &token, false, true).await;
            if code == Some(0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("a fresh CONNECT is accepted once the silent sockets are gone");
}
both_stores!(
    accept_bounds,
    silent_sockets_are_bounded_at_accept_and_http_keeps_answering
);
