//! Device certificates end to end: CAs, certificates and CRLs made with rcgen at test time,
//! real rustls handshakes against mqgate's client-certificate verifier, and EMQX authn with the
//! certificate as EMQX forwards it.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use mqgate::auth::cert::{self, DeviceCertSpec, Issued, KeySealer};
use mqgate::auth::crl;
use mqgate::auth::trust::{CertIdentity, CrlFailure, DeviceCertVerifier, TrustStore};
use mqgate::config::Layers;
use mqgate::registry::Store;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_stores;
use crate::helpers::{SOON, T0, TestApp, until};

const CA_SECRET: &str = "test-ca-key-secret-0123456789abcdefghij";
const DAY: i64 = 86400;

fn with_ca_secret(l: &mut Layers) {
    l.set("ca_key_secret", CA_SECRET.into(), "test").unwrap();
}

fn sealer() -> KeySealer {
    KeySealer::new(CA_SECRET)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS handshake over loopback TCP: a server requiring client certificates through
/// `verifier`, a client presenting `cert`/`key`. Returns what the server concluded: the verified
/// identity, or the handshake error.
async fn handshake(
    verifier: Arc<DeviceCertVerifier>,
    cert_der: &[u8],
    key_pem: &str,
) -> Result<CertIdentity, String> {
    let server = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let server_cert = server.cert.der().clone();
    let server_key =
        PrivateKeyDer::from_pem_slice(server.signing_key.serialize_pem().as_bytes()).unwrap();
    let server_cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier.clone())
        .with_single_cert(vec![server_cert.clone()], server_key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(server_cert).unwrap();
    let client_cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert_der.to_vec())],
            PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap(),
        )
        .unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_cfg));
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.map_err(|e| e.to_string())?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .to_vec();
        tls.write_all(b"ok").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        verifier.identity(&chain).map_err(|r| r.explain())
    });
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    if let Ok(mut tls) = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
    {
        let mut buf = [0u8; 2];
        let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_exact(&mut buf)).await;
    }
    tokio::time::timeout(Duration::from_secs(10), server_side)
        .await
        .expect("server side finished")
        .unwrap()
}

/// An external CA made here (key in hand), as another PKI would be.
struct ExternalCa {
    ca: Issued,
}

impl ExternalCa {
    fn new(tenant: &str, name: &str) -> Self {
        ExternalCa {
            ca: cert::new_ca(tenant, name, T0, 3650 * DAY).unwrap(),
        }
    }

    fn pem(&self) -> String {
        cert::to_pem("CERTIFICATE", &self.ca.cert_der)
    }

    fn issue(&self, tenant: &str, client_id: &str, not_before: i64, not_after: i64) -> Issued {
        let spec = DeviceCertSpec {
            tenant,
            client_id,
            not_before,
            not_after,
        };
        cert::issue_device(&self.ca.cert_der, self.ca.key_pem.expose_secret(), &spec).unwrap()
    }

    fn crl(&self, revoked: &[&Issued], number: u64, next_update: i64) -> Vec<u8> {
        let revoked: Vec<crl::Revoked> = revoked
            .iter()
            .map(|i| crl::Revoked {
                serial: cert::parse(&i.cert_der).unwrap().serial,
                at: T0,
            })
            .collect();
        let der = crl::sign(
            &self.ca.cert_der,
            self.ca.key_pem.expose_secret(),
            &revoked,
            number,
            T0,
            next_update,
        )
        .unwrap();
        cert::to_pem("X509 CRL", &der).into_bytes()
    }
}

/// Asserts the handshake was refused for `why` (rustls' name for the certificate error).
#[track_caller]
fn refused(result: Result<CertIdentity, String>, why: &str) {
    match result {
        Ok(id) => panic!("handshake accepted {id:?}; expected refusal for {why}"),
        Err(e) => assert!(e.contains(why), "refused for {e:?}, expected {why}"),
    }
}

async fn reload(app: &TestApp) {
    app.gate.trust().reload(app.admin.store()).await.unwrap();
}

fn verifier(app: &TestApp) -> Arc<DeviceCertVerifier> {
    Arc::new(DeviceCertVerifier::new(
        Arc::clone(app.gate.trust()),
        app.clock.clone(),
    ))
}

fn b64(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

/// EMQX authn with the certificate forwarded as `${cert_pem}` (base64 DER) and no password.
async fn authn_cert(
    app: &TestApp,
    client_id: &str,
    der: &[u8],
    password: &str,
) -> serde_json::Value {
    let info = cert::parse(der).unwrap();
    let body = json!({
        "clientid": client_id, "username": "", "password": password, "peerhost": "10.0.0.9",
        "cert_pem": b64(der), "cert_common_name": info.common_name, "cert_subject": info.subject,
    });
    let (status, _, v) = app.post("/v1/emqx/authn", &body).await;
    assert_eq!(status, 200, "{v}");
    v
}

async fn last_connect_cause(app: &TestApp) -> String {
    // The outcome is queued before the client hears it; the writer batches, so write it now.
    app.gate.flush_audit().await;
    let entries = app.admin.store().list_audit(0, 10_000).await.unwrap();
    let last = entries
        .iter()
        .rev()
        .find(|e| e.kind == "connect")
        .expect("a connect entry");
    let detail: serde_json::Value = serde_json::from_str(&last.detail).unwrap();
    detail["cause"].as_str().unwrap().to_string()
}

both_stores!(
    internal_ca_certificates_connect_until_revoked,
    internal_ca_certificates_connect_until_revoked_body
);
async fn internal_ca_certificates_connect_until_revoked_body(store: Store) {
    let app = TestApp::start_with(store, with_ca_secret).await;
    let token = app.device("acme", "d1").await;
    app.device("other", "o1").await;
    app.admin
        .ca_init(
            "acme",
            "default",
            Duration::from_secs(3650 * 86400),
            &sealer(),
        )
        .await
        .unwrap();
    let issued = app
        .admin
        .cert_issue(
            "acme",
            "d1",
            None,
            Duration::from_secs(30 * 86400),
            &sealer(),
        )
        .await
        .unwrap();
    reload(&app).await;
    let der = &issued.issued.cert_der;
    let key = issued.issued.key_pem.expose_secret();

    // A real handshake yields the device's identity.
    let id = handshake(verifier(&app), der, key).await.unwrap();
    assert_eq!((id.tenant_name(), id.client_id()), ("acme", "d1"));
    assert_eq!(id.fingerprint(), issued.record.fingerprint);

    // EMQX: certificate alone, certificate plus the right token, plus a wrong one.
    let v = authn_cert(&app, "d1", der, "").await;
    assert_eq!(v["result"], "allow", "{v}");
    // The certificate's end, capped by `emqx_max_session_age` (24h by default).
    assert_eq!(v["expire_at"], json!(issued.record.not_after.min(T0 + DAY)));
    assert_eq!(authn_cert(&app, "d1", der, &token).await["result"], "allow");
    assert_eq!(
        authn_cert(&app, "d1", der, "mqg_wrong").await["result"],
        "deny"
    );
    // The certificate names another device than the connecting client id.
    app.device("acme", "d2").await;
    assert_eq!(authn_cert(&app, "d2", der, "").await["result"], "deny");
    assert_eq!(last_connect_cause(&app).await, "cert_mismatch");
    // Names only (EMQX without ${cert_pem}): a certificate from any CA in the broker's bundle
    // could carry them, so they open nothing alone unless the operator says so.
    let info = cert::parse(der).unwrap();
    let names = json!({ "clientid": "d1", "username": "", "password": "", "peerhost": "10.0.0.9",
        "cert_pem": "", "cert_common_name": "d1", "cert_subject": info.subject });
    assert_eq!(app.post("/v1/emqx/authn", &names).await.2["result"], "deny");
    assert_eq!(last_connect_cause(&app).await, "cert_names_only");
    let mut with_token = names.clone();
    with_token["password"] = json!(token);
    let v = app.post("/v1/emqx/authn", &with_token).await.2;
    assert_eq!(v["result"], "allow", "names plus the device's secret");
    // Garbage where the certificate should be is a deny, not a pass to the next authenticator.
    let junk = json!({ "clientid": "d1", "password": "", "cert_pem": "bm90IGEgY2VydA==" });
    let (status, _, v) = app.post("/v1/emqx/authn", &junk).await;
    assert_eq!((status, v["result"].as_str()), (200, Some("deny")));
    assert_eq!(last_connect_cause(&app).await, "cert_invalid");

    // Revoked: refused in the handshake, by EMQX authn (with the reason audited), by name.
    app.admin
        .cert_revoke("acme", &issued.record.fingerprint)
        .await
        .unwrap();
    reload(&app).await;
    refused(handshake(verifier(&app), der, key).await, "Revoked");
    assert_eq!(authn_cert(&app, "d1", der, "").await["result"], "deny");
    assert_eq!(last_connect_cause(&app).await, "cert_revoked");
    assert_eq!(app.post("/v1/emqx/authn", &names).await.2["result"], "deny");
    // The token still works on its own: revoking a certificate is not disabling the device.
    assert_eq!(app.authn("d1", "", &token).await["result"], "allow");

    // A certificate from the other tenant's CA does not open this tenant's device.
    app.admin
        .ca_init(
            "other",
            "default",
            Duration::from_secs(3650 * 86400),
            &sealer(),
        )
        .await
        .unwrap();
    let foreign = app
        .admin
        .cert_issue("other", "o1", None, Duration::from_secs(86400), &sealer())
        .await
        .unwrap();
    reload(&app).await;
    assert_eq!(
        authn_cert(&app, "d1", &foreign.issued.cert_der, "").await["result"],
        "deny"
    );
    assert_eq!(last_connect_cause(&app).await, "cert_wrong_tenant");

    // Expiry: a day-long certificate, then the clock moves on.
    let short = app
        .admin
        .cert_issue("acme", "d2", None, Duration::from_secs(86400), &sealer())
        .await
        .unwrap();
    reload(&app).await;
    let short_key = short.issued.key_pem.expose_secret();
    assert!(
        handshake(verifier(&app), &short.issued.cert_der, short_key)
            .await
            .is_ok()
    );
    let expiring = app
        .admin
        .cert_expiring(None, Duration::from_secs(7 * 86400))
        .await
        .unwrap();
    assert_eq!(
        expiring
            .iter()
            .map(|(t, c)| (t.as_str(), c.client_id.as_str()))
            .collect::<Vec<_>>(),
        vec![("acme", "d2"), ("other", "o1")]
    );
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("mqgate_certificates_expiring{tenant=\"acme\"} 1"),
        "{metrics}"
    );
    app.clock.advance(2 * DAY);
    refused(
        handshake(verifier(&app), &short.issued.cert_der, short_key).await,
        "Expired",
    );
    assert_eq!(
        authn_cert(&app, "d2", &short.issued.cert_der, "").await["result"],
        "deny"
    );
    assert_eq!(last_connect_cause(&app).await, "cert_expired");
}

both_stores!(
    external_ca_certificates_follow_their_crl,
    external_ca_certificates_follow_their_crl_body
);
async fn external_ca_certificates_follow_their_crl_body(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "e1").await;
    app.device("acme", "e2").await;
    app.device("other", "x1").await;
    let ext = ExternalCa::new("acme", "ext");
    let ca = app
        .admin
        .ca_import(
            "acme",
            "ext",
            ext.pem().as_bytes(),
            Some("http://127.0.0.1:9/crl.pem"),
        )
        .await
        .unwrap();
    assert!(ca.key_sealed.is_none());
    let e1 = ext.issue("acme", "e1", T0 - 60, T0 + 30 * DAY);
    let e2 = ext.issue("acme", "e2", T0 - 60, T0 + 30 * DAY);
    reload(&app).await;

    // A CRL is expected (a URL is configured) but none is held: fail closed.
    refused(
        handshake(verifier(&app), &e1.cert_der, e1.key_pem.expose_secret()).await,
        "UnknownRevocationStatus",
    );

    // A CRL under the CA's name but signed by another key is refused, and nothing in it counts.
    let impostor = ExternalCa::new("acme", "ext");
    let forged = impostor.crl(&[], 1, T0 + 7 * DAY);
    let bad = app
        .admin
        .crl_import("acme", "ext", &forged)
        .await
        .unwrap_err();
    assert!(bad.to_string().contains("signature"), "{bad}");
    let listed = app.admin.ca_list("acme").await.unwrap();
    assert!(
        listed[0]
            .crl_error
            .as_deref()
            .unwrap()
            .contains("signature")
    );
    reload(&app).await;
    assert!(
        handshake(verifier(&app), &e1.cert_der, e1.key_pem.expose_secret())
            .await
            .is_err()
    );

    // The real CRL, revoking e2.
    let current = ext.crl(&[&e2], 2, T0 + 7 * DAY);
    app.admin.crl_import("acme", "ext", &current).await.unwrap();
    reload(&app).await;
    let id = handshake(verifier(&app), &e1.cert_der, e1.key_pem.expose_secret())
        .await
        .unwrap();
    assert_eq!((id.client_id(), id.ca()), ("e1", Some("ext")));
    refused(
        handshake(verifier(&app), &e2.cert_der, e2.key_pem.expose_secret()).await,
        "Revoked",
    );
    assert_eq!(
        authn_cert(&app, "e2", &e2.cert_der, "").await["result"],
        "deny"
    );
    assert_eq!(last_connect_cause(&app).await, "cert_revoked");
    // Replays do not replace the current CRL: an older number, the same number without e2, a
    // CRL without a number issued at the same time. The same bytes again are fine (a re-fetch).
    for replay in [
        ext.crl(&[], 1, T0 + 7 * DAY),
        ext.crl(&[], 2, T0 + 6 * DAY),
        ext.crl(&[], 0, T0 + 6 * DAY),
    ] {
        let e = app.admin.crl_import("acme", "ext", &replay).await;
        assert!(e.unwrap_err().to_string().contains("not newer"));
    }
    app.admin.crl_import("acme", "ext", &current).await.unwrap();
    reload(&app).await;
    refused(
        handshake(verifier(&app), &e2.cert_der, e2.key_pem.expose_secret()).await,
        "Revoked",
    );

    // Not yet valid; another CA altogether; this CA vouching for another tenant.
    let early = ext.issue("acme", "e1", T0 + DAY, T0 + 30 * DAY);
    refused(
        handshake(
            verifier(&app),
            &early.cert_der,
            early.key_pem.expose_secret(),
        )
        .await,
        "NotValidYet",
    );
    let stranger = ExternalCa::new("acme", "stranger").issue("acme", "e1", T0 - 60, T0 + DAY);
    refused(
        handshake(
            verifier(&app),
            &stranger.cert_der,
            stranger.key_pem.expose_secret(),
        )
        .await,
        "UnknownIssuer",
    );
    let cross = ext.issue("other", "x1", T0 - 60, T0 + DAY);
    refused(
        handshake(
            verifier(&app),
            &cross.cert_der,
            cross.key_pem.expose_secret(),
        )
        .await,
        "ApplicationVerificationFailure",
    );
    assert_eq!(
        authn_cert(&app, "x1", &cross.cert_der, "").await["result"],
        "deny"
    );
    assert_eq!(last_connect_cause(&app).await, "cert_wrong_tenant");

    // Past the CRL's next update: refused (fail closed) …
    app.clock.advance(8 * DAY);
    refused(
        handshake(verifier(&app), &e1.cert_der, e1.key_pem.expose_secret()).await,
        "UnknownRevocationStatus",
    );
    assert_eq!(
        authn_cert(&app, "e1", &e1.cert_der, "").await["result"],
        "deny"
    );
    assert_eq!(last_connect_cause(&app).await, "crl_unavailable");
    let metrics = app.get_text("/metrics").await;
    assert!(
        metrics.contains("mqgate_crl_usable{tenant=\"acme\",ca=\"ext\",state=\"stale\"} 0"),
        "{metrics}"
    );
    // … unless the operator chose to fail open; revoked certificates stay out either way.
    let open = Arc::new(TrustStore::new(CrlFailure::Allow, 0));
    open.reload(app.admin.store()).await.unwrap();
    let lenient = Arc::new(DeviceCertVerifier::new(
        Arc::clone(&open),
        app.clock.clone(),
    ));
    assert!(
        handshake(lenient.clone(), &e1.cert_der, e1.key_pem.expose_secret())
            .await
            .is_ok()
    );
    assert!(
        handshake(lenient, &e2.cert_der, e2.key_pem.expose_secret())
            .await
            .is_err()
    );
}

both_stores!(
    registered_certificates_and_live_reload,
    registered_certificates_and_live_reload_body
);
async fn registered_certificates_and_live_reload_body(store: Store) {
    let app = TestApp::start(store).await;
    app.device("acme", "r1").await;
    // A self-made certificate (no CA mqgate knows), registered by fingerprint.
    let own = ExternalCa::new("acme", "unknown-pki");
    let c = own.issue("acme", "r1", T0 - 60, T0 + DAY);
    assert!(
        handshake(verifier(&app), &c.cert_der, c.key_pem.expose_secret())
            .await
            .is_err()
    );
    let pem = cert::to_pem("CERTIFICATE", &c.cert_der);
    let rec = app
        .admin
        .cert_register("acme", "r1", pem.as_bytes())
        .await
        .unwrap();
    // No explicit reload: the change reaches the running server by itself.
    until("the registration in force", SOON, || async {
        handshake(verifier(&app), &c.cert_der, c.key_pem.expose_secret())
            .await
            .is_ok()
    })
    .await;
    assert_eq!(
        authn_cert(&app, "r1", &c.cert_der, "").await["result"],
        "allow"
    );
    // Registering it for another tenant's device, or twice, is refused.
    assert!(
        app.admin
            .cert_register("acme", "r1", pem.as_bytes())
            .await
            .is_err()
    );
    let bound_elsewhere = own.issue("other", "r1", T0 - 60, T0 + DAY);
    let pem2 = cert::to_pem("CERTIFICATE", &bound_elsewhere.cert_der);
    assert!(
        app.admin
            .cert_register("acme", "r1", pem2.as_bytes())
            .await
            .is_err()
    );
    app.admin
        .cert_revoke("acme", &rec.fingerprint)
        .await
        .unwrap();
    until("the revocation in force", SOON, || async {
        handshake(verifier(&app), &c.cert_der, c.key_pem.expose_secret())
            .await
            .is_err()
    })
    .await;
}

/// Serves `files` (path → body) over plain HTTP on loopback, as a CA's CRL distribution point.
async fn crl_server(files: Vec<(&'static str, Vec<u8>)>) -> String {
    let mut router = axum::Router::new();
    for (path, body) in files {
        router = router.route(
            path,
            axum::routing::get(move || async move { body.clone() }),
        );
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    base
}

both_stores!(crls_are_fetched_from_their_url, crls_are_fetched_body);
async fn crls_are_fetched_body(store: Store) {
    let ext = ExternalCa::new("acme", "ext");
    let impostor = ExternalCa::new("acme", "ext2");
    let ext2 = ExternalCa::new("acme", "ext2");
    let e1 = ext.issue("acme", "e1", T0 - 60, T0 + 30 * DAY);
    let e2 = ext.issue("acme", "e2", T0 - 60, T0 + 30 * DAY);
    let f1 = ext2.issue("acme", "f1", T0 - 60, T0 + 30 * DAY);
    let base = crl_server(vec![
        ("/ext.crl", ext.crl(&[&e2], 5, T0 + 7 * DAY)),
        ("/ext2.crl", impostor.crl(&[], 5, T0 + 7 * DAY)),
    ])
    .await;
    // Registered before the server starts: its first round fetches both.
    store.migrate().await.unwrap();
    let setup = mqgate::admin::Admin::new(store.clone(), mqgate::clock::Clock::manual(T0));
    setup.add_tenant("acme").await.unwrap();
    for d in ["e1", "e2", "f1"] {
        setup.add_device("acme", d, None).await.unwrap();
    }
    let url = format!("{base}/ext.crl");
    setup
        .ca_import("acme", "ext", ext.pem().as_bytes(), Some(&url))
        .await
        .unwrap();
    let url2 = format!("{base}/ext2.crl");
    setup
        .ca_import("acme", "ext2", ext2.pem().as_bytes(), Some(&url2))
        .await
        .unwrap();

    let app = TestApp::start(store).await;
    until("the server fetched the CRLs", SOON, || async {
        let cas = app.admin.ca_list("acme").await.unwrap();
        cas.iter()
            .all(|c| c.crl_der.is_some() || c.crl_error.is_some())
    })
    .await;
    let cas = app.admin.ca_list("acme").await.unwrap();
    assert_eq!(cas[0].crl_number, 5);
    assert!(cas[1].crl_der.is_none());
    assert!(
        cas[1].crl_error.as_deref().unwrap().contains("signature"),
        "{:?}",
        cas[1].crl_error
    );
    reload(&app).await;
    let id = handshake(verifier(&app), &e1.cert_der, e1.key_pem.expose_secret()).await;
    assert_eq!(id.unwrap().client_id(), "e1");
    refused(
        handshake(verifier(&app), &e2.cert_der, e2.key_pem.expose_secret()).await,
        "Revoked",
    );
    refused(
        handshake(verifier(&app), &f1.cert_der, f1.key_pem.expose_secret()).await,
        "UnknownRevocationStatus",
    );
}

both_stores!(
    names_only_certificates_allow_only_when_trusted_explicitly,
    names_only_certificates_allow_only_when_trusted_explicitly_body
);
async fn names_only_certificates_allow_only_when_trusted_explicitly_body(store: Store) {
    let app = TestApp::start_with(store, |l| {
        with_ca_secret(l);
        l.set("emqx_trust_cert_names", "true".into(), "test")
            .unwrap();
    })
    .await;
    app.device("acme", "d1").await;
    let days = |d: u64| Duration::from_secs(d * 86400);
    app.admin
        .ca_init("acme", "default", days(3650), &sealer())
        .await
        .unwrap();
    let issued = app
        .admin
        .cert_issue("acme", "d1", None, days(30), &sealer())
        .await
        .unwrap();
    reload(&app).await;
    let info = cert::parse(&issued.issued.cert_der).unwrap();
    let names = json!({ "clientid": "d1", "username": "", "password": "", "peerhost": "10.0.0.9",
        "cert_pem": "", "cert_common_name": "d1", "cert_subject": info.subject });
    assert_eq!(
        app.post("/v1/emqx/authn", &names).await.2["result"],
        "allow"
    );
    assert_eq!(last_connect_cause(&app).await, "certificate_names_only");
    // Names of no certificate of the device still open nothing.
    let mut other = names.clone();
    other["cert_subject"] = json!("CN=d1,O=elsewhere");
    assert_eq!(app.post("/v1/emqx/authn", &other).await.2["result"], "deny");
}

both_stores!(
    a_ca_key_sealed_the_old_way_still_signs_and_is_sealed_again,
    a_ca_key_sealed_the_old_way_still_signs_and_is_sealed_again_body
);
async fn a_ca_key_sealed_the_old_way_still_signs_and_is_sealed_again_body(store: Store) {
    let app = TestApp::start_with(store, with_ca_secret).await;
    app.device("acme", "d1").await;
    let days = |d: u64| Duration::from_secs(d * 86400);
    let ca = app
        .admin
        .ca_init("acme", "default", days(3650), &sealer())
        .await
        .unwrap();
    let sealed = ca.key_sealed.clone().unwrap();
    assert!(!KeySealer::is_legacy(&sealed), "new keys use argon2id");
    // Put the key back as the first format sealed it (one HMAC of the secret, no salt).
    let key = sealer().open(&ca.fingerprint, &sealed).unwrap();
    let old = sealer().seal_legacy(&ca.fingerprint, &key);
    let store = app.admin.store();
    store
        .update_ca_key(ca.tenant_id, ca.id, &old)
        .await
        .unwrap();
    let issued = app
        .admin
        .cert_issue("acme", "d1", None, days(30), &sealer())
        .await
        .unwrap();
    assert_eq!(
        cert::parse(&issued.issued.cert_der)
            .unwrap()
            .common_name
            .as_deref(),
        Some("d1")
    );
    let now = store.list_cas(ca.tenant_id).await.unwrap();
    let resealed = now[0].key_sealed.clone().unwrap();
    assert!(!KeySealer::is_legacy(&resealed), "migrated on first use");
    assert_eq!(sealer().open(&ca.fingerprint, &resealed).unwrap(), key);
    assert!(
        KeySealer::new("a-wrong-secret-that-is-long-enough-0123456")
            .open(&ca.fingerprint, &resealed)
            .is_err()
    );
}

/// Overlapping reloads (the change feed's and explicit ones) around a revocation: whichever
/// finishes last must not put a view read before the revocation in force. Many at once, several
/// rounds: the revoked certificate is refused at the end of every round.
async fn overlapping_reloads_never_bring_a_revoked_certificate_back(store: Store) {
    let app = Arc::new(TestApp::start_with(store, with_ca_secret).await);
    app.device("acme", "d1").await;
    let ten_years = Duration::from_secs(3650 * 86400);
    app.admin
        .ca_init("acme", "default", ten_years, &sealer())
        .await
        .unwrap();
    for round in 0..5 {
        let days = Duration::from_secs(30 * 86400);
        let issued = app
            .admin
            .cert_issue("acme", "d1", None, days, &sealer())
            .await
            .unwrap();
        let der = issued.issued.cert_der.clone();
        let mut reloads = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let app = Arc::clone(&app);
            reloads.spawn(async move { reload(&app).await });
        }
        app.admin
            .cert_revoke("acme", &issued.record.fingerprint)
            .await
            .unwrap();
        for _ in 0..20 {
            let app = Arc::clone(&app);
            reloads.spawn(async move { reload(&app).await });
        }
        while reloads.join_next().await.is_some() {}
        let now = app.gate.clock().now();
        let verdict = app.gate.trust().current().identify(&der, &[], now);
        assert_eq!(
            verdict.map(|id| id.client_id().to_string()),
            Err(mqgate::auth::trust::CertRejection::Revoked),
            "round {round}"
        );
    }
}
both_stores!(
    overlapping_reloads,
    overlapping_reloads_never_bring_a_revoked_certificate_back
);
