//! Ingestion limits over EMQX's authz endpoint: device buckets, the shared tenant bucket, config
//! defaults and registry overrides, and the authn answer that leaves EMQX no rules to skip them.

use crate::both_stores;
use crate::helpers::TestApp;
use mqgate::limit::bucket::Rate;
use mqgate::registry::Store;

async fn publishes(app: &TestApp, client_id: &str, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            app.authz(client_id, "publish", &format!("acme/{client_id}/t"))
                .await,
        );
    }
    out
}

async fn a_device_limit_refuses_publishes_beyond_its_burst_until_it_refills(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "dev-1").await;
    app.admin
        .set_limit("acme", Some("dev-1"), Rate::new(1.0, 3))
        .await
        .unwrap();
    assert_eq!(
        publishes(&app, "dev-1", 4).await,
        ["allow", "allow", "allow", "deny"]
    );
    assert_eq!(
        app.authz("dev-1", "subscribe", "acme/dev-1/#").await,
        "allow",
        "subscriptions draw nothing"
    );
    assert_eq!(app.authz("dev-1", "publish", "elsewhere").await, "deny");
    app.clock.advance(1);
    assert_eq!(
        publishes(&app, "dev-1", 2).await,
        ["allow", "deny"],
        "one second refills one"
    );
    app.admin
        .set_limit("acme", Some("dev-1"), None)
        .await
        .unwrap();
    assert_eq!(
        publishes(&app, "dev-1", 20).await,
        vec!["allow"; 20],
        "cleared: no default, no limit"
    );
}
both_stores!(
    device_limit,
    a_device_limit_refuses_publishes_beyond_its_burst_until_it_refills
);

async fn the_tenant_bucket_is_shared_by_all_its_devices(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "a").await;
    app.device("acme", "b").await;
    app.device("globex", "g").await;
    app.admin
        .set_limit("acme", None, Rate::new(1.0, 2))
        .await
        .unwrap();
    assert_eq!(app.authz("a", "publish", "acme/a/t").await, "allow");
    assert_eq!(app.authz("b", "publish", "acme/b/t").await, "allow");
    assert_eq!(app.authz("a", "publish", "acme/a/t").await, "deny");
    assert_eq!(app.authz("b", "publish", "acme/b/t").await, "deny");
    assert_eq!(
        app.authz("g", "publish", "globex/g/t").await,
        "allow",
        "other tenants are not affected"
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("mqgate_rate_limited_total{tenant=\"acme\"} 2\n"),
        "{metrics}"
    );
    assert!(!metrics.contains("tenant=\"globex\""), "{metrics}");
}
both_stores!(tenant_limit, the_tenant_bucket_is_shared_by_all_its_devices);

async fn configured_defaults_apply_and_authn_then_withholds_the_acl_list(store: Store) {
    let app = TestApp::start_with(store, |l| {
        l.set("device_rate", "2".into(), "test").unwrap();
        l.set("device_burst", "2".into(), "test").unwrap();
    })
    .await;
    let token = app.device("acme", "dev-1").await;
    let v = app.authn("dev-1", "", &token).await;
    assert_eq!(v["result"], "allow");
    assert!(
        v.get("acl").is_none(),
        "EMQX must ask per publish when limits apply"
    );
    assert_eq!(
        publishes(&app, "dev-1", 3).await,
        ["allow", "allow", "deny"]
    );
}
both_stores!(
    default_limits,
    configured_defaults_apply_and_authn_then_withholds_the_acl_list
);

async fn without_limits_authn_carries_the_acl_list(store: Store) {
    let app = TestApp::start(store).await;
    let token = app.device("acme", "dev-1").await;
    assert!(app.authn("dev-1", "", &token).await["acl"].is_array());
    app.admin
        .set_limit("acme", None, Rate::new(100.0, 100))
        .await
        .unwrap();
    assert!(app.authn("dev-1", "", &token).await.get("acl").is_none());
}
both_stores!(acl_withheld, without_limits_authn_carries_the_acl_list);
