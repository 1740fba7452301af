//! One rule for client ids (issue #11, item 7): the EMQX endpoints and the embedded broker parse
//! the client id once, at the edge, with the registry's rule; an id that can never be a device's
//! is denied in the shape each caller reads as a deny, even if an old row holds it.

use crate::both_stores;
use crate::helpers::{T0, TestApp};
use crate::raw::Raw;
use mqgate::registry::{CredentialKind, NewCredential, NewDevice, Store};
use secrecy::ExposeSecret;
use serde_json::json;

/// A device stored under `client_id` behind the admin's back (as a row from before the rule
/// would be), with a working token; returns the token.
async fn legacy_device(app: &TestApp, store: &Store, client_id: &str) -> String {
    app.device("acme", "dev-1").await;
    let tenant = store.tenant_by_name("acme").await.unwrap().unwrap().id;
    let device = NewDevice {
        client_id: client_id.into(),
        username: None,
    };
    store.create_device(tenant, &device, T0).await.unwrap();
    let token = mqgate::auth::secret::generate_token();
    let cred = NewCredential {
        kind: CredentialKind::Token,
        digest: token.digest.clone(),
        expires_at: None,
    };
    store
        .add_credential(tenant, client_id, &cred, T0)
        .await
        .unwrap();
    token.token.expose_secret().to_string()
}

async fn the_emqx_endpoints_deny_a_client_id_that_can_never_work(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = legacy_device(&app, &store, "acme/a").await;
    assert_eq!(
        app.authn("acme/a", "", &token).await,
        json!({"result": "deny", "is_superuser": false}),
        "its token is right, but the id is no client id"
    );
    let long = "x".repeat(257);
    for id in [long.as_str(), "a+b", "$SYS", "a\u{1}b"] {
        assert_eq!(app.authn(id, "", "mqg_x").await["result"], "deny", "{id:?}");
        assert_eq!(app.authz(id, "publish", "acme/x").await, "deny", "{id:?}");
    }
    let metrics = app.get_text("/metrics").await;
    for kind in ["connect", "authorize"] {
        let line = format!(
            "mqgate_decisions_total{{kind=\"{kind}\",verdict=\"deny\",cause=\"bad_client_id\"}}"
        );
        assert!(metrics.contains(&line), "{line} in\n{metrics}");
    }
}
both_stores!(
    emqx_bad_ids,
    the_emqx_endpoints_deny_a_client_id_that_can_never_work
);

async fn the_broker_refuses_a_client_id_that_can_never_work_as_not_valid(store: Store) {
    let app = TestApp::start(store.clone()).await;
    let token = legacy_device(&app, &store, "acme/a").await;
    let addr = app.mqtt.unwrap();
    let long = "x".repeat(257);
    for v5 in [false, true] {
        let not_valid = if v5 { 0x85 } else { 2 };
        for id in ["acme/a", long.as_str(), "a\u{1}b", "$SYS"] {
            let (_raw, code) = Raw::connect(addr, id, &token, v5, true).await;
            assert_eq!(code, Some(not_valid), "{id:?}, 5.0: {v5}");
        }
    }
}
both_stores!(
    broker_bad_ids,
    the_broker_refuses_a_client_id_that_can_never_work_as_not_valid
);
