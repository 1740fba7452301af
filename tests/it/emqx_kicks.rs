//! EMQX kicks: every change that ends a device's right to stay connected reaches EMQX's management
//! API as one `DELETE /api/v5/clients/{clientid}` within a second, from two replicas on one store,
//! with retries on 5xx; changes that end no session send nothing. EMQX itself cannot run here, so
//! a stand-in answers like its API (`emqx_mgmt_api_clients.erl`: 204 kicked, 404
//! `CLIENTID_NOT_FOUND`), checks HTTP basic auth with the API key, and records every request.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use mqgate::acl::{Permission, RuleAction};
use mqgate::auth::cert::KeySealer;
use mqgate::config::Layers;
use mqgate::registry::{NewAclRule, Store};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::both_stores;
use crate::helpers::{TestApp, until};

const API_KEY: &str = "mqgate-kicker";
const API_SECRET: &str = "emqx-api-secret-for-tests-0123456789";
const CA_SECRET: &str = "test-ca-key-secret-0123456789abcdefghij";

/// One request the stand-in received.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    client_id: String,
    authorized: bool,
    at: Instant,
}

/// A stand-in for EMQX's management API.
#[derive(Default)]
struct FakeEmqx {
    seen: Mutex<Vec<Seen>>,
    /// Answers to give a client id, in order (then 204).
    script: Mutex<HashMap<String, VecDeque<u16>>>,
    arrived: Notify,
}

impl FakeEmqx {
    async fn start() -> (Arc<FakeEmqx>, String) {
        let me = Arc::new(FakeEmqx::default());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let server = Arc::clone(&me);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let server = Arc::clone(&server);
                let svc = hyper::service::service_fn(move |req| {
                    let server = Arc::clone(&server);
                    async move { Ok::<_, Infallible>(server.answer(req)) }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc),
                );
            }
        });
        (me, url)
    }

    fn answer(&self, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{API_KEY}:{API_SECRET}"))
        );
        let authorized = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        let path = req.uri().path().to_string();
        let client_id = path
            .strip_prefix("/api/v5/clients/")
            .map(percent_decode)
            .unwrap_or_default();
        let status = if !authorized {
            401
        } else if req.method() != hyper::Method::DELETE || client_id.is_empty() {
            400
        } else {
            self.script
                .lock()
                .unwrap()
                .get_mut(&client_id)
                .and_then(VecDeque::pop_front)
                .unwrap_or(204)
        };
        self.seen.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            client_id,
            authorized,
            at: Instant::now(),
        });
        self.arrived.notify_waiters();
        let body = match status {
            404 => r#"{"code":"CLIENTID_NOT_FOUND","message":"Client ID not found"}"#,
            503 => r#"{"code":"SERVICE_UNAVAILABLE","message":"busy"}"#,
            _ => "",
        };
        Response::builder()
            .status(StatusCode::from_u16(status).unwrap())
            .body(Full::new(Bytes::from(body)))
            .unwrap()
    }

    fn script(&self, client_id: &str, answers: &[u16]) {
        self.script
            .lock()
            .unwrap()
            .insert(client_id.into(), answers.iter().copied().collect());
    }

    fn requests_for(&self, client_id: &str) -> Vec<Seen> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|s| s.client_id == client_id)
            .cloned()
            .collect()
    }

    fn all(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (up to `within`) until `client_id` has had `n` requests; returns them.
    async fn wait_for(&self, client_id: &str, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.arrived.notified();
            let got = self.requests_for(client_id);
            if got.len() >= n {
                return got;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "{client_id}: {} of {n} kicks within {within:?}; all: {:?}",
                    got.len(),
                    self.all()
                );
            }
        }
    }
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b, hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            _ => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn kicks_to(url: &str) -> impl FnOnce(&mut Layers) + '_ {
    move |l: &mut Layers| {
        l.set("emqx_api_url", url.into(), "test").unwrap();
        l.set("emqx_api_key", API_KEY.into(), "test").unwrap();
        l.set("emqx_api_secret", API_SECRET.into(), "test").unwrap();
        l.set("ca_key_secret", CA_SECRET.into(), "test").unwrap();
    }
}

fn rule(topic: &str) -> NewAclRule {
    NewAclRule {
        permission: Permission::Deny,
        action: RuleAction::Publish,
        topic: topic.into(),
    }
}

/// Sums `mqgate_emqx_kicks_total{outcome="…"}` over the replicas.
async fn kicks_counted(apps: &[&TestApp], outcome: &str) -> u64 {
    let series = format!("mqgate_emqx_kicks_total{{outcome=\"{outcome}\"}}");
    let mut n = 0;
    for app in apps {
        n += app.metric(&series).await.unwrap_or(0);
    }
    n
}

/// Runs `change`, then waits for `client_id`'s first kick; it must arrive within a second.
async fn kicked_within_a_second<F: std::future::Future<Output = ()>>(
    emqx: &FakeEmqx,
    client_id: &str,
    change: F,
) {
    let before = emqx.requests_for(client_id).len();
    let start = Instant::now();
    change.await;
    let got = emqx
        .wait_for(client_id, before + 1, Duration::from_secs(3))
        .await;
    let first = got.get(before).unwrap();
    let took = first.at.duration_since(start);
    assert!(
        took < Duration::from_secs(1),
        "{client_id}: kicked after {took:?}"
    );
    assert_eq!(first.method, "DELETE");
    assert!(first.authorized, "basic auth with the API key");
}

/// Waits (at most `within`) until every outbox row but those of the `pending` client ids has its
/// outcome written.
async fn kicks_recorded(store: &Store, pending: &[&str], within: Duration) {
    until("every due kick recorded", within, || async {
        let rows = store.list_kicks().await.unwrap();
        rows.iter()
            .all(|r| r.done_at.is_some() || pending.contains(&r.client_id.as_str()))
    })
    .await;
}

async fn every_revoking_change_kicks_once_across_two_replicas(store: Store) {
    let (emqx, url) = FakeEmqx::start().await;
    let a = TestApp::start_with(store.clone(), kicks_to(&url)).await;
    let b = TestApp::start_with(store.clone(), kicks_to(&url)).await;
    // The CLI: another process writing the same store, no server cache to tell.
    let cli = mqgate::admin::Admin::new(store.clone(), a.clock.clone());

    for d in [
        "d-disable",
        "d-remove",
        "d-revoke",
        "d-acl",
        "d-cert",
        "d-crl",
        "d-flaky",
        "d-bad",
        "d gone%1",
        "d-quiet",
    ] {
        a.device("acme", d).await;
    }
    a.device("beta", "b-1").await;
    a.device("beta", "b-2").await;
    emqx.script("d-flaky", &[503, 502]);
    emqx.script("d gone%1", &[404]);
    emqx.script("d-bad", &[400]);

    // Changes that end no session: none of them may kick.
    a.admin.set_enabled("acme", "d-quiet", true).await.unwrap();
    a.admin
        .set_limit(
            "acme",
            Some("d-quiet"),
            mqgate::limit::bucket::Rate::new(5.0, 5),
        )
        .await
        .unwrap();
    a.admin
        .set_password("acme", "d-quiet", "a long password".to_string().into())
        .await
        .unwrap();
    let (_, grace_end) = a
        .admin
        .rotate("acme", "d-quiet", Duration::from_secs(3600))
        .await
        .unwrap();
    a.admin
        .ca_init(
            "acme",
            "default",
            Duration::from_secs(3650 * 86400),
            &KeySealer::new(CA_SECRET),
        )
        .await
        .unwrap();
    let cert = a
        .admin
        .cert_issue(
            "acme",
            "d-cert",
            None,
            Duration::from_secs(30 * 86400),
            &KeySealer::new(CA_SECRET),
        )
        .await
        .unwrap();
    let crl_cert = a
        .admin
        .cert_issue(
            "acme",
            "d-crl",
            None,
            Duration::from_secs(30 * 86400),
            &KeySealer::new(CA_SECRET),
        )
        .await
        .unwrap();

    // Each change that ends a session: one kick within a second, whichever replica sends it.
    kicked_within_a_second(&emqx, "d-disable", async {
        a.admin
            .set_enabled("acme", "d-disable", false)
            .await
            .unwrap();
    })
    .await;
    // A device with a rule of its own: adding the rule kicks; removing the device kicks once
    // more (its rule goes with it, and that is no further ACL change).
    kicked_within_a_second(&emqx, "d-remove", async {
        cli.add_rule("acme", Some("d-remove"), rule("acme/d-remove/x"))
            .await
            .unwrap();
    })
    .await;
    kicked_within_a_second(&emqx, "d-remove", async {
        cli.remove_device("acme", "d-remove").await.unwrap();
    })
    .await;
    kicked_within_a_second(&emqx, "d-revoke", async {
        b.admin
            .rotate("acme", "d-revoke", Duration::ZERO)
            .await
            .unwrap();
    })
    .await;
    let mut rule_id = 0;
    kicked_within_a_second(&emqx, "d-acl", async {
        rule_id = cli
            .add_rule("acme", Some("d-acl"), rule("acme/d-acl/secret/#"))
            .await
            .unwrap();
    })
    .await;
    kicked_within_a_second(&emqx, "d-acl", async {
        a.admin.remove_rule("acme", rule_id).await.unwrap();
    })
    .await;
    kicked_within_a_second(&emqx, "d-cert", async {
        a.admin
            .cert_revoke("acme", &cert.record.fingerprint)
            .await
            .unwrap();
    })
    .await;
    let acme = a.admin.tenant_id("acme").await.unwrap();
    let ca_id = crl_cert.record.ca_id.unwrap();
    let serials = vec![crl_cert.record.serial.clone()];
    kicked_within_a_second(&emqx, "d-crl", async {
        // What accepting a CRL that lists the certificate does (`Admin::accept_crl`).
        assert_eq!(
            store
                .kick_revoked_serials(acme, ca_id, &serials)
                .await
                .unwrap(),
            1
        );
    })
    .await;
    // The same CRL again (another replica, the next refresh): that certificate was kicked for.
    assert_eq!(
        store
            .kick_revoked_serials(acme, ca_id, &serials)
            .await
            .unwrap(),
        0
    );
    // A tenant-wide rule: every device of the tenant.
    let both = async {
        cli.add_rule("beta", None, rule("beta/+/secret/#"))
            .await
            .unwrap();
    };
    kicked_within_a_second(&emqx, "b-1", both).await;
    emqx.wait_for("b-2", 1, Duration::from_secs(1)).await;
    // 404: the client is not connected; success, no retry.
    kicked_within_a_second(&emqx, "d gone%1", async {
        a.admin
            .set_enabled("acme", "d gone%1", false)
            .await
            .unwrap();
    })
    .await;
    // 503 and 502: tried again (after a back-off) until EMQX answers 204.
    kicked_within_a_second(&emqx, "d-flaky", async {
        a.admin.set_enabled("acme", "d-flaky", false).await.unwrap();
    })
    .await;
    emqx.wait_for("d-flaky", 3, Duration::from_secs(5)).await;
    // Another 4xx: EMQX refused the request itself; trying again would not help.
    kicked_within_a_second(&emqx, "d-bad", async {
        a.admin.set_enabled("acme", "d-bad", false).await.unwrap();
    })
    .await;

    // Every kick sent so far recorded before the clocks jump past the grace period: a lease still
    // held then (its kick answered, its outcome not yet written) would end at once, and the other
    // replica would rightly send that kick again (at least once).
    kicks_recorded(&store, &["d-quiet"], Duration::from_secs(5)).await;

    // Rotation with a grace period: the kick waits for the old token's end.
    assert!(emqx.requests_for("d-quiet").is_empty());
    let now = a.clock.now();
    a.clock.advance(grace_end - now + 1);
    b.clock.advance(grace_end - now + 1);
    let start = Instant::now();
    let got = emqx.wait_for("d-quiet", 1, Duration::from_secs(3)).await;
    let took = got[0].at.duration_since(start);
    assert!(
        took < Duration::from_secs(1),
        "grace-end kick after {took:?}"
    );

    // Every outbox row finished, then count: once per change, not once per replica.
    kicks_recorded(&store, &[], Duration::from_secs(5)).await;
    let rows = store.list_kicks().await.unwrap();
    let reasons: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r.client_id.as_str(), r.reason.as_str()))
        .collect();
    assert_eq!(
        reasons,
        [
            ("d-quiet", "credential_expired"),
            ("d-disable", "disabled"),
            ("d-remove", "acl_changed"),
            ("d-remove", "removed"),
            ("d-revoke", "credential_expired"),
            ("d-acl", "acl_changed"),
            ("d-acl", "acl_changed"),
            ("d-cert", "certificate_revoked"),
            ("d-crl", "certificate_revoked"),
            ("b-1", "acl_changed"),
            ("b-2", "acl_changed"),
            ("d gone%1", "disabled"),
            ("d-flaky", "disabled"),
            ("d-bad", "disabled"),
        ]
    );
    let mut per_client: HashMap<String, usize> = HashMap::new();
    for s in emqx.all() {
        assert!(s.authorized);
        *per_client.entry(s.client_id).or_default() += 1;
    }
    for (client, n) in &per_client {
        let expected = match client.as_str() {
            "d-flaky" => 3,
            "d-remove" | "d-acl" => 2,
            _ => 1,
        };
        assert_eq!(*n, expected, "{client}: {per_client:?}");
    }
    assert_eq!(per_client.len(), 12, "{per_client:?}");
    assert_eq!(kicks_counted(&[&a, &b], "kicked").await, 12);
    assert_eq!(kicks_counted(&[&a, &b], "not_connected").await, 1);
    assert_eq!(kicks_counted(&[&a, &b], "retried").await, 2);
    assert_eq!(kicks_counted(&[&a, &b], "failed").await, 0);
    assert_eq!(kicks_counted(&[&a, &b], "rejected").await, 1);

    // Audited, once per kick.
    a.gate.flush_audit().await;
    b.gate.flush_audit().await;
    let audit = store.list_audit(0, 10_000).await.unwrap();
    let kicks: Vec<_> = audit.iter().filter(|e| e.kind == "kick").collect();
    assert_eq!(kicks.len(), 14, "{kicks:?}");
    assert!(
        kicks
            .iter()
            .any(|e| e.detail.contains("\"outcome\":\"not_connected\"")
                && e.detail.contains("d gone%1")),
        "{kicks:?}"
    );
    assert!(audit.iter().all(|e| !e.detail.contains(API_SECRET)));
}
both_stores!(
    revoking_changes_kick,
    every_revoking_change_kicks_once_across_two_replicas
);

/// Without the API no replica sends kicks; the outbox still stays small: a kick nobody sent is
/// dropped an hour after it fell due, a sent one after a week.
async fn the_kick_outbox_is_pruned(store: Store) {
    let app = TestApp::start(store.clone()).await;
    app.device("acme", "d-1").await;
    app.admin.set_enabled("acme", "d-1", false).await.unwrap();
    let rows = store.list_kicks().await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].done_at.is_none());
    let now = app.clock.now();
    assert_eq!(store.prune_kicks(now, 3600).await.unwrap(), 0);
    assert_eq!(store.prune_kicks(now + 3600, 3600).await.unwrap(), 0);
    assert_eq!(store.prune_kicks(now + 3601, 3600).await.unwrap(), 1);
    assert!(store.list_kicks().await.unwrap().is_empty());

    // Claimed and finished: kept for `keep_until`, then deleted.
    app.admin.set_enabled("acme", "d-1", true).await.unwrap();
    app.admin.set_enabled("acme", "d-1", false).await.unwrap();
    let claim = mqgate::registry::KickClaim {
        now,
        now_ms: now * 1000,
        lease_until_ms: now * 1000 + 60_000,
        limit: 10,
    };
    let claimed = store.claim_kicks(claim).await.unwrap();
    assert_eq!(claimed.len(), 1);
    assert!(store.claim_kicks(claim).await.unwrap().is_empty(), "leased");
    let done = mqgate::registry::KickDone {
        at: now,
        outcome: "kicked",
        keep_until: now + 100,
    };
    store.finish_kick(claimed[0].id, done).await.unwrap();
    assert_eq!(store.prune_kicks(now + 100, 3600).await.unwrap(), 0);
    assert_eq!(store.prune_kicks(now + 101, 3600).await.unwrap(), 1);
}
both_stores!(outbox_pruned, the_kick_outbox_is_pruned);

/// A replica that claimed a kick and died leaves it to the others when its lease ends.
async fn a_dead_replicas_kicks_are_sent_when_its_lease_ends(store: Store) {
    let (emqx, url) = FakeEmqx::start().await;
    let cli = TestApp::start(store.clone()).await;
    cli.device("acme", "d-1").await;
    // The "dead replica": claims the kick, then never sends it.
    cli.admin.set_enabled("acme", "d-1", false).await.unwrap();
    let now_ms = cli.clock.now_ms();
    let claim = mqgate::registry::KickClaim {
        now: cli.clock.now(),
        now_ms,
        lease_until_ms: now_ms + 10_000,
        limit: 10,
    };
    assert_eq!(store.claim_kicks(claim).await.unwrap().len(), 1);
    // A live replica leaves the leased row alone…
    let live = TestApp::start_with(store.clone(), kicks_to(&url)).await;
    live.admin.set_enabled("acme", "d-1", true).await.unwrap();
    live.admin.set_enabled("acme", "d-1", false).await.unwrap();
    let sent = emqx.wait_for("d-1", 1, Duration::from_secs(3)).await;
    assert_eq!(sent.len(), 1, "only the second, unleased kick");
    // …and sends it once the lease has ended.
    live.clock.advance(11);
    emqx.wait_for("d-1", 2, Duration::from_secs(3)).await;
    kicks_recorded(&store, &[], Duration::from_secs(3)).await;
    assert_eq!(emqx.requests_for("d-1").len(), 2);
}
both_stores!(
    lease_takeover,
    a_dead_replicas_kicks_are_sent_when_its_lease_ends
);
