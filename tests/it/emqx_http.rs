//! EMQX's HTTP authn/authz contract, driven over real HTTP against both stores.

use std::time::Duration;

use crate::both_stores;
use crate::helpers::{SECRET, SOON, T0, TestApp, until};
use mqgate::registry::Store;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn a_device_with_its_token_is_allowed_with_tenant_attrs_and_acl(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let v = app.authn("dev-1", "dev-1", &token).await;
    assert_eq!(v["result"], "allow");
    assert_eq!(v["is_superuser"], false);
    assert_eq!(v["client_attrs"]["tenant"], "acme");
    assert_eq!(
        v["expire_at"],
        json!(T0 + 24 * 3600),
        "a token without expiry: the session still ends after emqx_max_session_age (24h)"
    );
    let acl = v["acl"].as_array().expect("acl list");
    assert_eq!(
        acl[0],
        json!({"permission": "allow", "action": "publish", "topic": "acme/dev-1/#"})
    );
    assert_eq!(
        acl.last().unwrap(),
        &json!({"permission": "deny", "action": "publish", "topic": "#"})
    );
    // Subscriptions are left to mqgate's authz (EMQX's list matcher reads a filter's wildcards
    // literally): the list holds no rule EMQX could apply to a SUBSCRIBE.
    assert!(acl.iter().all(|r| r["action"] == "publish"), "{acl:?}");
}
both_stores!(
    token_allowed,
    a_device_with_its_token_is_allowed_with_tenant_attrs_and_acl
);

async fn wrong_secrets_missing_secrets_and_other_devices_tokens_are_denied(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let other = app.device("acme", "dev-2").await;
    assert_eq!(
        app.authn("dev-1", "", "mqg_not-the-token").await["result"],
        "deny"
    );
    assert_eq!(app.authn("dev-1", "", "").await["result"], "deny");
    assert_eq!(app.authn("dev-1", "", &other).await["result"], "deny");
    let deny = app.authn("dev-1", "", &format!("{token}x")).await;
    assert_eq!(deny, json!({"result": "deny", "is_superuser": false}));
}
both_stores!(
    wrong_secret_denied,
    wrong_secrets_missing_secrets_and_other_devices_tokens_are_denied
);

async fn unknown_clients_are_denied_by_default(store: Store) {
    let app = TestApp::start(store).await;
    assert_eq!(app.authn("ghost", "", "mqg_x").await["result"], "deny");
    assert_eq!(app.authz("ghost", "publish", "a/b").await, "deny");
}
both_stores!(unknown_denied, unknown_clients_are_denied_by_default);

async fn unknown_clients_are_ignored_when_configured(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("unknown_client", "ignore".into(), "test").unwrap()
    })
    .await;
    assert_eq!(app.authn("ghost", "", "mqg_x").await["result"], "ignore");
    assert_eq!(app.authz("ghost", "publish", "a/b").await, "ignore");
}
both_stores!(unknown_ignored, unknown_clients_are_ignored_when_configured);

async fn a_disabled_device_is_denied_at_once_and_allowed_again_when_enabled(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "allow");
    app.admin.set_enabled("acme", "dev-1", false).await.unwrap();
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "deny");
    assert_eq!(app.authz("dev-1", "publish", "acme/dev-1/t").await, "deny");
    app.admin.set_enabled("acme", "dev-1", true).await.unwrap();
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "allow");
}
both_stores!(
    disable_enable,
    a_disabled_device_is_denied_at_once_and_allowed_again_when_enabled
);

async fn a_removed_device_is_denied(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "allow");
    app.admin.remove_device("acme", "dev-1").await.unwrap();
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "deny");
}
both_stores!(remove_denies, a_removed_device_is_denied);

async fn a_rotated_token_keeps_working_through_its_grace_then_never_again(store: Store) {
    let app = TestApp::start(store).await;
    let old = app.device("acme", "dev-1").await;
    let (new, until) = app
        .admin
        .rotate("acme", "dev-1", Duration::from_secs(3600))
        .await
        .unwrap();
    let new = new.token.expose_secret().to_string();
    let v = app.authn("dev-1", "", &old).await;
    assert_eq!(v["result"], "allow");
    assert_eq!(
        v["expire_at"],
        json!(until),
        "EMQX is told when the old token stops"
    );
    assert_eq!(app.authn("dev-1", "", &new).await["result"], "allow");
    app.clock.advance(3600);
    assert_eq!(app.authn("dev-1", "", &old).await["result"], "deny");
    assert_eq!(app.authn("dev-1", "", &new).await["result"], "allow");
    app.clock.advance(365 * 86400);
    assert_eq!(app.authn("dev-1", "", &old).await["result"], "deny");
}
both_stores!(
    rotation_grace,
    a_rotated_token_keeps_working_through_its_grace_then_never_again
);

async fn rotation_without_grace_revokes_the_old_token_at_once(store: Store) {
    let app = TestApp::start(store).await;
    let old = app.device("acme", "dev-1").await;
    let (new, _) = app
        .admin
        .rotate("acme", "dev-1", Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(app.authn("dev-1", "", &old).await["result"], "deny");
    assert_eq!(
        app.authn("dev-1", "", new.token.expose_secret()).await["result"],
        "allow"
    );
}
both_stores!(
    rotation_now,
    rotation_without_grace_revokes_the_old_token_at_once
);

async fn an_operator_password_is_accepted_and_a_new_one_replaces_it(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    app.admin
        .set_password("acme", "dev-1", "first-password".into())
        .await
        .unwrap();
    assert_eq!(
        app.authn("dev-1", "", "first-password").await["result"],
        "allow"
    );
    assert_eq!(
        app.authn("dev-1", "", "first-passwor").await["result"],
        "deny"
    );
    app.admin
        .set_password("acme", "dev-1", "second-password".into())
        .await
        .unwrap();
    assert_eq!(
        app.authn("dev-1", "", "first-password").await["result"],
        "deny"
    );
    assert_eq!(
        app.authn("dev-1", "", "second-password").await["result"],
        "allow"
    );
}
both_stores!(
    password,
    an_operator_password_is_accepted_and_a_new_one_replaces_it
);

async fn a_legacy_bcrypt_hash_is_accepted_and_upgraded_to_argon2id(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.device("acme", "dev-1").await;
    let hash = bcrypt::hash_with_salt("legacy-pass", 4, [9u8; 16])
        .unwrap()
        .format_for_version(bcrypt::Version::TwoA);
    app.admin
        .import_bcrypt("acme", "dev-1", &hash)
        .await
        .unwrap();
    assert_eq!(app.authn("dev-1", "", "wrong-pass").await["result"], "deny");
    assert_eq!(
        app.authn("dev-1", "", "legacy-pass").await["result"],
        "allow"
    );
    let tenant = app.admin.tenant_id("acme").await.unwrap();
    until(
        "the bcrypt credential re-hashed as argon2id",
        SOON,
        || async {
            let rec = store.load_device(tenant, "dev-1").await.unwrap().unwrap();
            let kinds: Vec<_> = rec
                .credentials
                .iter()
                .filter(|c| c.expires_at.is_none())
                .map(|c| c.kind.as_str())
                .collect();
            kinds.contains(&"argon2") && !kinds.contains(&"bcrypt")
        },
    )
    .await;
    assert_eq!(
        app.authn("dev-1", "", "legacy-pass").await["result"],
        "allow"
    );
    assert_eq!(app.authn("dev-1", "", "wrong-pass").await["result"], "deny");
}
both_stores!(
    bcrypt_upgrade,
    a_legacy_bcrypt_hash_is_accepted_and_upgraded_to_argon2id
);

async fn authz_follows_the_default_rule_and_mqtt_matching(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    assert_eq!(
        app.authz("dev-1", "publish", "acme/dev-1/telemetry").await,
        "allow"
    );
    assert_eq!(
        app.authz("dev-1", "subscribe", "acme/dev-1/cmd/#").await,
        "allow"
    );
    assert_eq!(
        app.authz("dev-1", "subscribe", "$share/g/acme/dev-1/cmd/+")
            .await,
        "allow"
    );
    assert_eq!(
        app.authz("dev-1", "publish", "acme/dev-2/telemetry").await,
        "deny"
    );
    assert_eq!(app.authz("dev-1", "subscribe", "acme/#").await, "deny");
    assert_eq!(app.authz("dev-1", "subscribe", "#").await, "deny");
    assert_eq!(
        app.authz("dev-1", "publish", "acme/dev-1/#").await,
        "deny",
        "not a topic name"
    );
}
both_stores!(
    authz_default,
    authz_follows_the_default_rule_and_mqtt_matching
);

async fn stored_rules_come_before_file_rules_and_device_rules_before_tenant_rules(store: Store) {
    use mqgate::acl::{Permission, RuleAction};
    use mqgate::registry::NewAclRule;
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    let rule = |permission, topic: &str| NewAclRule {
        permission,
        action: RuleAction::Publish,
        topic: topic.into(),
    };
    app.admin
        .add_rule("acme", None, rule(Permission::Deny, "acme/+/secret"))
        .await
        .unwrap();
    app.admin
        .add_rule("acme", None, rule(Permission::Allow, "shared/${tenant}/#"))
        .await
        .unwrap();
    app.admin
        .add_rule(
            "acme",
            Some("dev-1"),
            rule(Permission::Allow, "acme/dev-1/secret"),
        )
        .await
        .unwrap();
    assert_eq!(
        app.authz("dev-1", "publish", "acme/dev-1/secret").await,
        "allow",
        "device rule first"
    );
    assert_eq!(
        app.authz("dev-1", "publish", "shared/acme/x").await,
        "allow"
    );
    app.device("acme", "dev-2").await;
    assert_eq!(
        app.authz("dev-2", "publish", "acme/dev-2/secret").await,
        "deny",
        "tenant rule before file rule"
    );
    assert_eq!(
        app.authz("dev-2", "publish", "acme/dev-2/other").await,
        "allow"
    );
}
both_stores!(
    rule_precedence,
    stored_rules_come_before_file_rules_and_device_rules_before_tenant_rules
);

async fn tenants_never_see_each_others_devices(store: Store) {
    let app = TestApp::start(store).await;
    let a = app.device("acme", "dev-a").await;
    app.device("globex", "dev-g").await;
    assert_eq!(app.authz("dev-g", "publish", "acme/dev-a/t").await, "deny");
    assert!(
        app.admin
            .set_enabled("globex", "dev-a", false)
            .await
            .is_err()
    );
    assert!(app.admin.remove_device("globex", "dev-a").await.is_err());
    assert!(
        app.admin
            .rotate("globex", "dev-a", Duration::ZERO)
            .await
            .is_err()
    );
    assert_eq!(app.authn("dev-a", "", &a).await["result"], "allow");
    assert!(
        app.admin.add_device("globex", "dev-a", None).await.is_err(),
        "client ids are global"
    );
}
both_stores!(tenant_isolation, tenants_never_see_each_others_devices);

/// Sends `body` raw to `path` with the internal secret; returns status and JSON.
async fn post_raw(app: &TestApp, path: &str, body: Vec<u8>) -> (u16, Value) {
    let r = app
        .http
        .post(format!("{}{path}", app.base))
        .bearer_auth(SECRET)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Sends a request whose body stops short of its Content-Length, then half-closes: the answer.
async fn post_cut_short(app: &TestApp, path: &str) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SECRET}\r\ncontent-type: application/json\r\ncontent-length: 200\r\n\r\n{{\"clientid\":\"dev-1\","
    );
    s.write_all(head.as_bytes()).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = String::new();
    let read = s.read_to_string(&mut out);
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("an answer, not a hang")
        .unwrap();
    out
}

async fn unreadable_bodies_are_denied_with_200_never_ignored(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let authz_deny = json!({"result": "deny"});
    let authn_deny = json!({"result": "deny", "is_superuser": false});
    let big = "x".repeat(17 * 1024);
    let authz_bodies: Vec<Vec<u8>> = vec![
        b"{not json".to_vec(),
        br#"{"clientid":"dev-1","action":"publish"}"#.to_vec(),
        br#"{"clientid":"dev-1","topic":"acme/dev-1/a","action":"delete"}"#.to_vec(),
        br#"{"clientid":"dev-1","topic":{"x":1},"action":"publish"}"#.to_vec(),
        format!(
            r#"{{"clientid":"dev-1","topic":"acme/dev-1/a","action":"publish","pad":"{big}"}}"#
        )
        .into_bytes(),
    ];
    for body in authz_bodies {
        assert_eq!(
            post_raw(&app, "/v1/emqx/authz", body).await,
            (200, authz_deny.clone())
        );
    }
    // A username or password longer than the body limit, a missing client id, a secret of the
    // wrong type: deny, and the answer never echoes the input.
    let authn_bodies = [
        json!({"clientid": "dev-1", "username": big, "password": token}),
        json!({"clientid": "dev-1", "password": format!("{token}{big}")}),
        json!({"username": "u", "password": "p"}),
        json!({"clientid": "dev-1", "password": {"x": "hunter2"}}),
    ];
    for body in authn_bodies {
        let (status, v) = post_raw(&app, "/v1/emqx/authn", body.to_string().into_bytes()).await;
        assert_eq!((status, &v), (200, &authn_deny));
    }
    let cut = post_cut_short(&app, "/v1/emqx/authn").await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    let body = cut
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    assert_eq!(
        serde_json::from_str::<Value>(body).ok(),
        Some(authn_deny),
        "{cut}"
    );
    let metrics = app.get_text("/metrics").await;
    for line in [
        "mqgate_decisions_total{kind=\"authorize\",verdict=\"deny\",cause=\"malformed_request\"} 5",
        "mqgate_decisions_total{kind=\"connect\",verdict=\"deny\",cause=\"malformed_request\"} 5",
    ] {
        assert!(metrics.contains(line), "{metrics}");
    }
    // The device itself still gets in.
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "allow");
    assert_eq!(app.authz("dev-1", "publish", "acme/dev-1/a").await, "allow");
}
both_stores!(
    unreadable_bodies,
    unreadable_bodies_are_denied_with_200_never_ignored
);

async fn the_internal_endpoints_require_the_shared_secret(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    let body = json!({"clientid": "dev-1", "password": token});
    for auth in [
        None,
        Some("Bearer wrong-secret-wrong-secret-wrong-secret"),
        Some(SECRET),
        Some("Basic abc"),
    ] {
        let mut r = app
            .http
            .post(format!("{}/v1/emqx/authn", app.base))
            .json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": "unauthorized"})
        );
    }
    let health = app
        .http
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    assert_eq!(ready.json::<Value>().await.unwrap()["store"], "ok");
}
both_stores!(
    shared_secret,
    the_internal_endpoints_require_the_shared_secret
);

/// The listener answers authz before its router: the same guard, answer shape and routing must
/// hold there.
async fn authz_is_guarded_and_answered_as_json_like_every_routed_endpoint(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    let body = json!({"clientid": "dev-1", "topic": "acme/dev-1/t", "action": "publish"});
    let url = format!("{}/v1/emqx/authz", app.base);
    for auth in [None, Some("Bearer wrong-secret"), Some(SECRET)] {
        let mut r = app.http.post(&url).json(&body);
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        assert_eq!(
            r.json::<Value>().await.unwrap(),
            json!({"error": "unauthorized"})
        );
    }
    for (topic, want) in [("acme/dev-1/t", "allow"), ("acme/dev-2/t", "deny")] {
        let body = json!({"clientid": "dev-1", "topic": topic, "action": "publish"});
        let (status, ctype, v) = app.post("/v1/emqx/authz?x=1", &body).await;
        assert_eq!((status, ctype.as_str()), (200, "application/json"));
        assert_eq!(v, json!({"result": want}));
    }
    let get = app.http.get(&url).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(get.status(), 405);
    let (status, _, v) = app.post("/v1/emqx/authz/", &body).await;
    assert_eq!((status, v), (404, json!({"error": "not found"})));
}
both_stores!(
    authz_direct,
    authz_is_guarded_and_answered_as_json_like_every_routed_endpoint
);

async fn pipelined_requests_are_answered_in_order(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..60 {
        let (topic, want) = if i % 3 == 0 {
            ("acme/dev-2/x", "deny")
        } else {
            ("acme/dev-1/x", "allow")
        };
        let body = json!({"clientid": "dev-1", "topic": topic, "action": "publish", "qos": "0", "retain": "false"}).to_string();
        wire.extend_from_slice(format!(
            "POST /v1/emqx/authz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ).as_bytes());
        expected.push(want);
    }
    assert_eq!(answered(&app, &wire, expected.len()).await, expected);
}
both_stores!(pipelining, pipelined_requests_are_answered_in_order);

/// A connection that presented the internal secret once has it remembered for its later authz
/// requests (not hashed again), but only those exact bytes: every other value on that same
/// connection is still refused, before and after, and a fresh connection remembers nothing.
async fn a_remembered_secret_lets_only_itself_through_on_its_connection(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    let body =
        json!({"clientid": "dev-1", "topic": "acme/dev-1/x", "action": "publish"}).to_string();
    let request = |authorization: Option<String>| {
        let header = authorization.map_or(String::new(), |a| format!("Authorization: {a}\r\n"));
        format!(
            "POST /v1/emqx/authz HTTP/1.1\r\nHost: x\r\n{header}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    };
    let mut flipped = SECRET.to_string();
    let last = flipped.pop().unwrap();
    flipped.push(if last == 'f' { 'e' } else { 'f' });
    let good = || Some(format!("Bearer {SECRET}"));
    let sequence = [
        (Some(format!("Bearer {flipped}")), 401),
        (good(), 200),
        (Some(format!("Bearer {flipped}")), 401),
        (good(), 200),
        (Some(format!("Bearer {SECRET}x")), 401),
        (Some(format!("Bearer {}", &SECRET[..SECRET.len() - 1])), 401),
        (None, 401),
        (Some(format!("bearer {SECRET}")), 401),
        (Some(format!("Bearer  {SECRET}")), 401),
        (Some(SECRET.to_string()), 401),
        (good(), 200),
    ];
    let wire: String = sequence.iter().map(|(a, _)| request(a.clone())).collect();
    let want: Vec<u16> = sequence.iter().map(|(_, s)| *s).collect();
    let text = exchange(&app, wire.as_bytes(), |t| statuses(t).len() == want.len()).await;
    assert_eq!(statuses(&text), want, "{text}");
    assert_eq!(verdicts(&text), vec!["allow"; 3]);
    // A second connection starts from nothing: a wrong value first is refused.
    let wire = request(Some(format!("Bearer {flipped}"))) + &request(good());
    let text = exchange(&app, wire.as_bytes(), |t| statuses(t).len() == 2).await;
    assert_eq!(statuses(&text), vec![401, 200], "{text}");
}
both_stores!(
    remembered_secret,
    a_remembered_secret_lets_only_itself_through_on_its_connection
);

/// The status codes of the HTTP/1.1 answers in `text`, in order.
fn statuses(text: &str) -> Vec<u16> {
    text.match_indices("HTTP/1.1 ")
        .filter_map(|(i, _)| text.get(i + 9..i + 12)?.parse().ok())
        .collect()
}

/// A chunked authz body arrives as several frames, cut inside its strings: it is read whole, on
/// the registry path (the first request) and on the cached one alike.
async fn chunked_authz_bodies_are_read_whole(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for (topic, want) in [
        ("acme/dev-1/x", "allow"),
        ("acme/dev-1/y", "allow"),
        ("acme/dev-2/x", "deny"),
    ] {
        let body = json!({"clientid": "dev-1", "topic": topic, "action": "publish"}).to_string();
        let (a, rest) = body.split_at(8);
        let (b, c) = rest.split_at(rest.len() / 2);
        wire.extend_from_slice(format!(
            "POST /v1/emqx/authz HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {SECRET}\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x}\r\n{b}\r\n{:x}\r\n{c}\r\n0\r\n\r\n",
            a.len(), b.len(), c.len()
        ).as_bytes());
        expected.push(want);
    }
    assert_eq!(answered(&app, &wire, expected.len()).await, expected);
}
both_stores!(chunked_authz, chunked_authz_bodies_are_read_whole);

/// Writes `wire` on a fresh connection and reads until `done` holds for what arrived.
async fn exchange(app: &TestApp, wire: &[u8], done: impl Fn(&str) -> bool) -> String {
    let mut s = tokio::net::TcpStream::connect(app.base.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(wire).await.unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 1 << 16];
    while !done(&text) {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("answers in time")
            .unwrap();
        assert!(n > 0, "connection closed after: {text}");
        text.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    text
}

/// Writes `wire` (`n` requests) on a fresh connection: the verdicts of the `n` answers, in order.
async fn answered(app: &TestApp, wire: &[u8], n: usize) -> Vec<&'static str> {
    verdicts(&exchange(app, wire, |t| verdicts(t).len() == n).await)
}

/// The verdicts of the answers in `text`, in order (`allow`, or `deny` for any other).
fn verdicts(text: &str) -> Vec<&'static str> {
    text.match_indices("\"result\":\"")
        .map(|(i, _)| {
            if text[i + 10..].starts_with("allow") {
                "allow"
            } else {
                "deny"
            }
        })
        .collect()
}

fn authn_request(secret: &str, client_id: &str, password: &str) -> Vec<u8> {
    let body = json!({"clientid": client_id, "username": "", "password": password, "peerhost": "10.0.0.7"}).to_string();
    format!(
        "POST /v1/emqx/authn HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

async fn read_ahead_fills(app: &TestApp) -> u64 {
    app.metric("mqgate_http_read_ahead_fills_total")
        .await
        .expect("the read-ahead counter")
}

/// EMQX pipelines up to 100 authn requests per connection: those behind the one being answered
/// have their cache fills started as their bytes arrive, the answers are still each request's own
/// and in order, and requests without the internal secret start nothing.
async fn pipelined_authn_requests_are_read_ahead_and_answered_in_order(store: Store) {
    let app = TestApp::start(store).await;
    let mut wire = Vec::new();
    let mut expected = Vec::new();
    for i in 0..40 {
        let id = format!("dev-{i}");
        let token = app.device("acme", &id).await;
        let (password, want) = match i % 10 {
            3 => ("not-the-token".to_string(), "deny"),
            _ => (token, "allow"),
        };
        wire.extend(authn_request(SECRET, &id, &password));
        expected.push(want);
        if i % 8 == 0 {
            wire.extend(authn_request(SECRET, &format!("ghost-{i}"), "x"));
            expected.push("deny");
        }
    }
    app.gate.registry().settled().await.unwrap();
    assert_eq!(read_ahead_fills(&app).await, 0);
    let n = expected.len();
    assert_eq!(answered(&app, &wire, n).await, expected);
    // Each request hyper answers next when it reads is left to fill on its own; the others were
    // read ahead, once per client id.
    let fills = read_ahead_fills(&app).await;
    assert!(
        fills as usize > n / 2 && fills as usize <= n,
        "{fills} fills read ahead for {n} requests"
    );

    // Without the internal secret: 401 each, in order, and no fill.
    let mut wire = Vec::new();
    for i in 0..20 {
        wire.extend(authn_request("wrong-secret", &format!("intruder-{i}"), "x"));
    }
    let text = exchange(&app, &wire, |t| t.matches("HTTP/1.1 401").count() == 20).await;
    assert_eq!(text.matches("HTTP/1.1 ").count(), 20, "{text}");
    assert_eq!(read_ahead_fills(&app).await, fills);
    assert!(app.gate.registry().cached("intruder-1").is_none());
}
both_stores!(
    pipelined_authn,
    pipelined_authn_requests_are_read_ahead_and_answered_in_order
);

/// The fill counters: store calls and client ids asked.
async fn fills(app: &TestApp) -> (u64, u64) {
    (
        app.metric("mqgate_registry_fills_total").await.unwrap(),
        app.metric("mqgate_registry_fill_client_ids_total")
            .await
            .unwrap(),
    )
}

/// `/metrics` shows the cache's fills: concurrent misses share store calls (fewer calls than
/// client ids), an answer from the cache asks the store nothing, an unknown client id is asked
/// once and then known unknown; the cache's entries and the fills' time are there too.
async fn cache_fills_are_counted_per_store_call_and_per_client_id(store: Store) {
    let app = TestApp::start(store).await;
    let mut tokens = Vec::new();
    for i in 0..50 {
        tokens.push(app.device("acme", &format!("dev-{i}")).await);
    }
    app.gate.registry().settled().await.unwrap();
    let (calls0, ids0) = fills(&app).await;
    let mut storm = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let (http, url) = (app.http.clone(), format!("{}/v1/emqx/authn", app.base));
        let body = json!({"clientid": format!("dev-{i}"), "username": "", "password": token, "peerhost": "10.0.0.7"});
        storm.spawn(async move {
            let r = http.post(url).bearer_auth(SECRET).json(&body).send().await;
            r.unwrap().json::<Value>().await.unwrap()
        });
    }
    let answers = storm.join_all().await;
    assert!(
        answers.iter().all(|a| a["result"] == "allow"),
        "{answers:?}"
    );
    let (calls1, ids1) = fills(&app).await;
    assert_eq!(ids1 - ids0, 50, "each client id asked once");
    assert!(
        calls1 - calls0 >= 1 && calls1 - calls0 < 50,
        "{} store calls for 50 concurrent misses",
        calls1 - calls0
    );

    // Cached: no store call. Unknown: asked once, then known unknown.
    assert_eq!(app.authn("dev-7", "", &tokens[7]).await["result"], "allow");
    assert_eq!(fills(&app).await, (calls1, ids1));
    for _ in 0..3 {
        assert_eq!(app.authn("ghost", "", "x").await["result"], "deny");
    }
    assert_eq!(fills(&app).await, (calls1 + 1, ids1 + 1));

    let text = app.get_text("/metrics").await;
    let value = |series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} in {text}"))
            .parse()
            .unwrap()
    };
    assert!(value("mqgate_registry_fill_seconds_total") > 0.0);
    assert!(value("mqgate_registry_cached_entries") >= 1.0);
}
both_stores!(
    fill_metrics,
    cache_fills_are_counted_per_store_call_and_per_client_id
);

async fn cached_devices_keep_their_answer_while_the_store_is_down_and_unknown_ones_are_denied(
    store: Store,
) {
    let app = TestApp::start(store.clone()).await;
    let token = app.device("acme", "dev-1").await;
    // Our own writes come back over the change feed and drop the entry once more: applied, then cache.
    app.gate.registry().settled().await.unwrap();
    assert_eq!(app.authn("dev-1", "", &token).await["result"], "allow");
    store.close().await;
    assert_eq!(
        app.authn("dev-1", "", &token).await["result"],
        "allow",
        "served from the cache"
    );
    assert_eq!(app.authz("dev-1", "publish", "acme/dev-1/t").await, "allow");
    assert_eq!(
        app.authn("dev-2", "", &token).await["result"],
        "deny",
        "not cached: denied"
    );
    let ready = app
        .http
        .get(format!("{}/readyz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
}
both_stores!(
    store_down,
    cached_devices_keep_their_answer_while_the_store_is_down_and_unknown_ones_are_denied
);

async fn rule_files_reload_on_request_and_a_bad_file_changes_nothing(store: Store) {
    let dir = tempfile::tempdir().unwrap();
    let default = concat!(env!("CARGO_MANIFEST_DIR"), "/acl-rules/default.toml");
    std::fs::copy(default, dir.path().join("00-default.toml")).unwrap();
    let rules_dir = dir.path().display().to_string();
    let app = TestApp::start_with(store, |l| {
        l.set("acl_rules_dir", rules_dir, "test").unwrap()
    })
    .await;
    app.device("acme", "dev-1").await;
    assert_eq!(
        app.authz("dev-1", "subscribe", "broadcast/news").await,
        "deny"
    );
    let extra =
        "[[rule]]\npermission = \"allow\"\naction = \"subscribe\"\ntopic = \"broadcast/#\"\n";
    std::fs::write(dir.path().join("10-broadcast.toml"), extra).unwrap();
    assert_eq!(
        app.authz("dev-1", "subscribe", "broadcast/news").await,
        "deny",
        "files are read on reload only"
    );
    let (status, _, v) = app.post("/v1/ops/acl-reload", &json!({})).await;
    assert_eq!((status, v), (200, json!({"reloaded": 2})));
    assert_eq!(
        app.authz("dev-1", "subscribe", "broadcast/news").await,
        "allow"
    );
    std::fs::write(
        dir.path().join("20-bad.toml"),
        "[[rule]]\npermission = \"perhaps\"\n",
    )
    .unwrap();
    let (status, _, v) = app.post("/v1/ops/acl-reload", &json!({})).await;
    assert_eq!(status, 400);
    assert!(v["error"].as_str().unwrap().contains("20-bad.toml"), "{v}");
    assert_eq!(
        app.authz("dev-1", "subscribe", "broadcast/news").await,
        "allow",
        "the last good rules stay"
    );
}
both_stores!(
    acl_reload,
    rule_files_reload_on_request_and_a_bad_file_changes_nothing
);

async fn unknown_disabled_and_wrong_secret_look_alike_from_outside(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "pw-dev").await;
    app.admin
        .set_password("acme", "pw-dev", "right-password".into())
        .await
        .unwrap();
    app.device("acme", "token-dev").await;
    app.device("acme", "off-dev").await;
    app.admin
        .set_password("acme", "off-dev", "right-password".into())
        .await
        .unwrap();
    app.admin
        .set_enabled("acme", "off-dev", false)
        .await
        .unwrap();
    let deny = json!({"result": "deny", "is_superuser": false});
    // Each refusal of a password-style secret costs one argon2 verify, whether the client id is
    // unknown, disabled, token-only or a password device: the time gives nothing away.
    for id in ["ghost", "off-dev", "token-dev", "pw-dev"] {
        let before = app.gate.password_verifies();
        assert_eq!(app.authn(id, "", "a-guess-1234").await, deny, "{id}");
        assert_eq!(app.gate.password_verifies() - before, 1, "{id}");
    }
    // Token-style secrets are checked in microseconds for everyone alike: no verify at all.
    for id in ["ghost", "off-dev", "token-dev"] {
        let before = app.gate.password_verifies();
        assert_eq!(app.authn(id, "", "mqg_guess").await, deny, "{id}");
        assert_eq!(app.gate.password_verifies(), before, "{id}");
    }
    assert_eq!(
        app.authn("pw-dev", "", "right-password").await["result"],
        "allow"
    );
}
both_stores!(
    no_enumeration,
    unknown_disabled_and_wrong_secret_look_alike_from_outside
);

async fn expire_at_is_capped_by_the_maximum_session_age(store: Store) {
    let app = TestApp::start_with(store.clone(), |l| {
        l.set("emqx_max_session_age", "1h".into(), "test").unwrap();
    })
    .await;
    let token = app.device("acme", "dev-1").await;
    // No end of its own: the cap.
    let v = app.authn("dev-1", "", &token).await;
    assert_eq!(v["result"], "allow");
    assert_eq!(v["expire_at"], json!(T0 + 3600));
    // A credential ending before the cap keeps its own end; one ending after it is capped.
    let (new, until) = app
        .admin
        .rotate("acme", "dev-1", Duration::from_secs(600))
        .await
        .unwrap();
    assert_eq!(
        app.authn("dev-1", "", &token).await["expire_at"],
        json!(until)
    );
    let new = new.token.expose_secret().to_string();
    app.clock.advance(100);
    assert_eq!(
        app.authn("dev-1", "", &new).await["expire_at"],
        json!(T0 + 100 + 3600)
    );
    app.admin
        .rotate("acme", "dev-1", Duration::from_secs(7200))
        .await
        .unwrap();
    assert_eq!(
        app.authn("dev-1", "", &new).await["expire_at"],
        json!(T0 + 100 + 3600),
        "a grace longer than the cap is capped"
    );

    // 0 turns the cap off: a credential without an end gets no expire_at.
    let off = TestApp::start_with(store, |l| {
        l.set("emqx_max_session_age", "0".into(), "test").unwrap();
    })
    .await;
    let token = off.device("acme", "dev-2").await;
    let v = off.authn("dev-2", "", &token).await;
    assert_eq!(v["result"], "allow");
    assert!(v.get("expire_at").is_none(), "{v}");
}
both_stores!(
    max_session_age,
    expire_at_is_capped_by_the_maximum_session_age
);

/// `CachedRegistry::settled`: once it returns, a change another replica committed has been applied
/// here (heard through the change feed, PostgreSQL NOTIFY or SQLite's polled table), so the very
/// next answer reflects it, with no polling.
async fn settled_means_another_replicas_change_is_applied(store: Store) {
    let writer = TestApp::start(store.clone()).await;
    let reader = TestApp::start(store).await;
    let token = writer.device("acme", "dev-1").await;
    reader.gate.registry().settled().await.unwrap();
    assert_eq!(reader.authn("dev-1", "", &token).await["result"], "allow");
    for round in 0..3 {
        let enabled = round % 2 == 1;
        writer
            .admin
            .set_enabled("acme", "dev-1", enabled)
            .await
            .unwrap();
        reader.gate.registry().settled().await.unwrap();
        let want = if enabled { "allow" } else { "deny" };
        assert_eq!(
            reader.authn("dev-1", "", &token).await["result"],
            want,
            "round {round}"
        );
    }
}
both_stores!(settled, settled_means_another_replicas_change_is_applied);

/// On shutdown the listener lets an open keep-alive connection go (each connection hears of the
/// stop on its own signal) and the server's run ends.
async fn shutdown_closes_idle_keep_alive_connections_and_ends_the_run(store: Store) {
    let mut layers = crate::helpers::test_layers();
    // Longer than this test's waits: only the stop may close the connection.
    layers
        .set("header_read_timeout", "120s".into(), "test")
        .unwrap();
    let config = layers.build().unwrap();
    let app = mqgate::app::App::build_with(&config, store, mqgate::clock::Clock::manual(T0))
        .await
        .unwrap();
    let addr = app.http_addr();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let run = tokio::spawn(app.run_until_stopped(stopped));
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body =
        json!({"clientid": "dev-1", "topic": "acme/dev-1/t", "action": "publish"}).to_string();
    let request = format!(
        "POST /v1/emqx/authz HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SECRET}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap();
    let text = String::from_utf8_lossy(answer.get(..n).unwrap_or_default()).to_string();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.ends_with(r#"{"result":"deny"}"#), "{text}");
    stop.send(true).unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read(&mut answer))
        .await
        .expect("the idle connection is closed, not left open");
    assert_eq!(closed.unwrap(), 0);
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("the run ends")
        .unwrap()
        .unwrap();
}
both_stores!(
    shutdown_keep_alive,
    shutdown_closes_idle_keep_alive_connections_and_ends_the_run
);

/// The header-read timeout (one alarm per connection, `http::timer`): a head trickled in byte by
/// byte is cut off once the timeout has passed since it began, a connection whose requests keep
/// coming, each head whole, stays open over many timeout periods, and it too is cut off once it
/// goes silent. No store is involved: SQLite only.
#[tokio::test]
async fn the_header_read_timeout_cuts_off_slow_heads_not_busy_connections() {
    const TIMEOUT: Duration = Duration::from_millis(600);
    let (store, _dir) = crate::helpers::sqlite_store().await;
    let app = TestApp::start_with(store, |l| {
        l.set("header_read_timeout", "600ms".into(), "test")
            .unwrap();
    })
    .await;
    let addr = app.base.trim_start_matches("http://").to_string();
    let body =
        json!({"clientid": "dev-1", "topic": "acme/dev-1/t", "action": "publish"}).to_string();
    let request = format!(
        "POST /v1/emqx/authz HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {SECRET}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );

    // Reads until the peer closes; false if an answer came instead.
    async fn closed(s: &mut tokio::net::TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(SOON, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => true,
            Ok(Ok(_)) => false,
            Err(_) => panic!("the connection was neither closed nor answered"),
        }
    }

    let slow = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            let started = tokio::time::Instant::now();
            s.write_all(b"POST /v1/emqx/authz HTTP/1.1\r\nhost: x\r\n")
                .await
                .unwrap();
            // Waits for the close itself, a byte more of the head whenever 50 ms pass without it.
            let mut buf = [0u8; 1024];
            loop {
                assert!(started.elapsed() < SOON, "a trickled head is cut off");
                match tokio::time::timeout(Duration::from_millis(50), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => panic!("a trickled head was answered"),
                    Err(_) if s.write_all(b"x").await.is_err() => break,
                    Err(_) => {}
                }
            }
            assert!(started.elapsed() >= TIMEOUT, "not before the timeout");
        })
    };

    let mut busy = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let started = tokio::time::Instant::now();
    let mut answers = 0;
    // Four timeout periods of requests back to back on one connection: the alarm the first head
    // set goes off while later heads are still within their time.
    while started.elapsed() < TIMEOUT * 4 {
        busy.write_all(request.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(SOON, busy.read(&mut buf))
            .await
            .expect("an answer")
            .unwrap();
        let text = String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).to_string();
        assert!(
            text.starts_with("HTTP/1.1 200"),
            "request {answers}: {text}"
        );
        answers += 1;
    }
    assert!(answers >= 10, "{answers} answers");
    let silent = tokio::time::Instant::now();
    assert!(closed(&mut busy).await, "a silent connection is cut off");
    assert!(silent.elapsed() >= TIMEOUT, "not before the timeout");
    slow.await.unwrap();
}
