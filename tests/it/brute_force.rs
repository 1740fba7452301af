//! Brute-force protection over EMQX's authn endpoint: lockouts by client id and by address, and
//! why a stranger cannot lock a device out.

use crate::both_stores;
use crate::helpers::TestApp;
use mqgate::registry::Store;
use serde_json::json;

const DEVICE_AT: &str = "10.0.0.7";
const STRANGER: &str = "203.0.113.9";

async fn five_failures_lock_a_client_id_even_against_the_right_secret(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    for _ in 0..5 {
        assert_eq!(
            app.authn_from(STRANGER, "dev-1", "", "mqg_guess").await["result"],
            "deny"
        );
    }
    assert_eq!(
        app.authn_from(STRANGER, "dev-1", "", &token).await["result"],
        "deny",
        "locked: the right secret does not help"
    );
    let listed = app.get("/v1/ops/lockouts").await;
    assert_eq!(listed["lockouts"][0]["key"], "dev-1");
    assert_eq!(listed["lockouts"][0]["kind"], "client_id");
    app.clock.advance(15 * 60);
    assert_eq!(
        app.authn_from(STRANGER, "dev-1", "", &token).await["result"],
        "allow",
        "the lockout ends"
    );
}
both_stores!(
    client_lockout,
    five_failures_lock_a_client_id_even_against_the_right_secret
);

async fn a_stranger_cannot_lock_the_device_out_of_its_usual_address(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    assert_eq!(
        app.authn_from(DEVICE_AT, "dev-1", "", &token).await["result"],
        "allow"
    );
    for _ in 0..10 {
        app.authn_from(STRANGER, "dev-1", "", "mqg_guess").await;
    }
    assert_eq!(
        app.authn_from(STRANGER, "dev-1", "", &token).await["result"],
        "deny"
    );
    assert_eq!(
        app.authn_from("198.51.100.1", "dev-1", "", &token).await["result"],
        "deny"
    );
    assert_eq!(
        app.authn_from(DEVICE_AT, "dev-1", "", &token).await["result"],
        "allow",
        "the device at its usual address is not locked out"
    );
}
both_stores!(
    no_dos_lever,
    a_stranger_cannot_lock_the_device_out_of_its_usual_address
);

async fn one_address_guessing_across_client_ids_is_locked_and_operators_can_clear_it(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    for i in 0..20 {
        app.authn_from(STRANGER, &format!("guess-{i}"), "", "mqg_guess")
            .await;
    }
    assert_eq!(
        app.authn_from(STRANGER, "dev-1", "", &token).await["result"],
        "deny"
    );
    assert_eq!(
        app.authn_from(DEVICE_AT, "dev-1", "", &token).await["result"],
        "allow"
    );
    let (status, _, v) = app
        .post("/v1/ops/lockouts/clear", &json!({"key": STRANGER}))
        .await;
    assert_eq!((status, v), (200, json!({"cleared": true})));
    assert_eq!(
        app.authn_from(STRANGER, "dev-1", "", &token).await["result"],
        "allow"
    );
}
both_stores!(
    address_lockout,
    one_address_guessing_across_client_ids_is_locked_and_operators_can_clear_it
);

async fn successful_logins_are_never_penalised(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    for _ in 0..50 {
        assert_eq!(
            app.authn_from(STRANGER, "dev-1", "", &token).await["result"],
            "allow"
        );
    }
    assert_eq!(app.get("/v1/ops/lockouts").await, json!({"lockouts": []}));
}
both_stores!(successes_free, successful_logins_are_never_penalised);

/// One EMQX authn call without a `TestApp` borrow (for spawned tasks); returns the `result`.
async fn authn_result(
    http: reqwest::Client,
    base: String,
    peer: String,
    id: &str,
    pw: &str,
) -> String {
    let body = json!({ "clientid": id, "username": "", "password": pw, "peerhost": peer });
    let v: serde_json::Value = http
        .post(format!("{base}/v1/emqx/authn"))
        .bearer_auth(crate::helpers::SECRET)
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    v["result"].as_str().unwrap_or_default().to_string()
}

async fn a_concurrent_password_flood_reaches_argon2_at_most_the_limit_and_starves_no_one(
    store: Store,
) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    app.device("acme", "dev-2").await;
    for (id, pw) in [("dev-1", "password-one"), ("dev-2", "password-two")] {
        app.admin.set_password("acme", id, pw.into()).await.unwrap();
    }
    assert_eq!(
        app.authn_from(DEVICE_AT, "dev-1", "", "password-one").await["result"],
        "allow"
    );
    let before = app.gate.password_verifies();
    // 300 wrong passwords for dev-1 at once, each from its own address (so only the client id's
    // limit applies), while dev-2 logs in with its right password.
    let mut flood = tokio::task::JoinSet::new();
    for i in 0..300 {
        let peer = format!("10.9.{}.{}", i / 250, i % 250 + 1);
        flood.spawn(authn_result(
            app.http.clone(),
            app.base.clone(),
            peer,
            "dev-1",
            "guess",
        ));
    }
    let dev2 = authn_result(
        app.http.clone(),
        app.base.clone(),
        "10.0.0.8".into(),
        "dev-2",
        "password-two",
    );
    assert_eq!(
        dev2.await,
        "allow",
        "another device's right password during the flood"
    );
    let results = flood.join_all().await;
    assert!(results.iter().all(|r| r == "deny"));
    let verifies = app.gate.password_verifies() - before;
    // The client id's limit is 5 failures per window; dev-2 costs one more.
    assert!(
        verifies <= 6,
        "{verifies} argon2 verifies for a flood of 300"
    );
    // The device at its usual address still gets in.
    assert_eq!(
        app.authn_from(DEVICE_AT, "dev-1", "", "password-one").await["result"],
        "allow"
    );
}
both_stores!(
    concurrent_password_flood,
    a_concurrent_password_flood_reaches_argon2_at_most_the_limit_and_starves_no_one
);

/// A CONNECT's future is built for every login (and moved into the HTTP handler's box): the
/// shared guard's store calls, which run only on failures and lockouts, must not sit inline in it
/// (inline they made it 20 KB in a release build, 7.7 KB in this test build; boxed, 2.9 KB).
async fn a_connect_future_stays_small(store: Store) {
    let app = TestApp::start(store).await;
    let request = mqgate::gate::ConnectRequest {
        client_id: mqgate::core::ids::ClientId::parse("dev-1").unwrap(),
        username: None,
        secret: None,
        peer: None,
        cert: None,
    };
    let connect = app.gate.connect(request);
    let size = std::mem::size_of_val(&connect);
    assert!(size <= 4096, "{size} bytes");
}
both_stores!(connect_future, a_connect_future_stays_small);
