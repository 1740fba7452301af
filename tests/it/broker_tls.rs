//! The embedded broker's mTLS listener with real clients: Debian's `mosquitto_pub` presenting
//! device certificates issued by the tenant's CA, and a raw rustls MQTT client held open to watch a
//! revocation end its session.

use std::path::PathBuf;
use std::time::Duration;

use mqgate::auth::cert::{self, KeySealer};
use mqgate::config::Layers;
use mqgate::registry::Store;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use secrecy::ExposeSecret;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::both_stores;
use crate::helpers::{TestApp, eventually};

const CA_SECRET: &str = "tls-test-ca-key-secret-0123456789abcdef";
const WAIT: Duration = Duration::from_secs(20);

/// Server certificate files for `localhost` / 127.0.0.1, and device files as `mqgate cert issue`
/// writes them.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap();
        std::fs::write(dir.path().join("server.pem"), server.cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("server.key"),
            server.signing_key.serialize_pem(),
        )
        .unwrap();
        Files { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn layers(&self, l: &mut Layers) {
        l.set("ca_key_secret", CA_SECRET.into(), "test").unwrap();
        l.set("mqtts_addr", "127.0.0.1:0".into(), "test").unwrap();
        let p = |n: &str| self.path(n).display().to_string();
        l.set("mqtts_cert_file", p("server.pem"), "test").unwrap();
        l.set("mqtts_key_file", p("server.key"), "test").unwrap();
        l.set("mqtts_handshake_timeout", "1s".into(), "test")
            .unwrap();
    }
}

/// Issues a certificate for `client_id` and writes `<id>.crt` / `<id>.key`; returns the
/// fingerprint.
async fn issue(app: &TestApp, files: &Files, tenant: &str, client_id: &str) -> String {
    let issued = app
        .admin
        .cert_issue(
            tenant,
            client_id,
            None,
            Duration::from_secs(86400),
            &KeySealer::new(CA_SECRET),
        )
        .await
        .unwrap();
    let pem = cert::to_pem("CERTIFICATE", &issued.issued.cert_der);
    std::fs::write(files.path(&format!("{client_id}.crt")), pem).unwrap();
    std::fs::write(
        files.path(&format!("{client_id}.key")),
        issued.issued.key_pem.expose_secret(),
    )
    .unwrap();
    issued.record.fingerprint
}

/// `mosquitto_pub` over TLS with the device's certificate (no password); returns success and
/// what it printed.
async fn publish(app: &TestApp, files: &Files, client_id: &str, topic: &str) -> (bool, String) {
    let port = app.mqtts.unwrap().port().to_string();
    let p = |n: String| files.path(&n).display().to_string();
    let args = [
        "-h".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        port,
        "--cafile".into(),
        p("server.pem".into()),
        "--cert".into(),
        p(format!("{client_id}.crt")),
        "--key".into(),
        p(format!("{client_id}.key")),
        "-i".into(),
        client_id.into(),
        "-t".into(),
        topic.into(),
        "-m".into(),
        "hello".into(),
        "-q".into(),
        "1".into(),
    ];
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("mosquitto_pub")
            .args(&args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub hung")
    .expect("mosquitto_pub not runnable; scripts/test.sh installs mosquitto-clients");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A TLS connection with the device's certificate, then an MQTT 3.1.1 CONNECT without password;
/// returns the stream and the CONNACK return code.
async fn raw_connect(
    app: &TestApp,
    files: &Files,
    client_id: &str,
) -> (tokio_rustls::client::TlsStream<tokio::net::TcpStream>, u8) {
    let config = client_config(files, client_id);
    let mut tls = tls_connect(app, &config).await;
    let code = mqtt_connect(&mut tls, client_id).await.expect("no CONNACK");
    (tls, code)
}

/// A client configuration with the device's certificate (it keeps TLS sessions for resumption).
fn client_config(files: &Files, client_id: &str) -> std::sync::Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(files.path("server.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = CertificateDer::pem_file_iter(files.path(&format!("{client_id}.crt")))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let key = PrivateKeyDer::from_pem_file(files.path(&format!("{client_id}.key"))).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    std::sync::Arc::new(config)
}

async fn tls_connect(
    app: &TestApp,
    config: &std::sync::Arc<rustls::ClientConfig>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = tokio::net::TcpStream::connect(app.mqtts.unwrap())
        .await
        .unwrap();
    tokio_rustls::TlsConnector::from(std::sync::Arc::clone(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap()
}

/// An MQTT 3.1.1 CONNECT without password; the CONNACK's return code, `None` if the server
/// closed instead.
async fn mqtt_connect(
    tls: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    client_id: &str,
) -> Option<u8> {
    let id = client_id.as_bytes();
    let mut packet = vec![0x10, (10 + 2 + id.len()) as u8];
    packet.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0x02, 0, 60]);
    packet.extend_from_slice(&(id.len() as u16).to_be_bytes());
    packet.extend_from_slice(id);
    tls.write_all(&packet).await.ok()?;
    let mut connack = [0u8; 4];
    tokio::time::timeout(WAIT, tls.read_exact(&mut connack))
        .await
        .expect("neither CONNACK nor close")
        .ok()?;
    assert_eq!(connack[..2], [0x20, 0x02]);
    Some(connack[3])
}

both_stores!(mtls_devices_connect_by_certificate, mtls_body);
async fn mtls_body(store: Store) {
    let files = Files::new();
    let app = TestApp::start_with(store, |l| files.layers(l)).await;
    app.device("acme", "cam-1").await;
    app.device("acme", "cam-2").await;
    app.device("other", "far-1").await;
    let sealer = KeySealer::new(CA_SECRET);
    for t in ["acme", "other"] {
        app.admin
            .ca_init(t, "default", Duration::from_secs(3650 * 86400), &sealer)
            .await
            .unwrap();
    }
    let fp1 = issue(&app, &files, "acme", "cam-1").await;
    issue(&app, &files, "acme", "cam-2").await;
    issue(&app, &files, "other", "far-1").await;
    assert!(files.path("cam-1.key").exists());
    app.gate.trust().reload(app.admin.store()).await.unwrap();

    // The certificate alone authenticates; the ACL still decides what it may publish.
    let (ok, text) = publish(&app, &files, "cam-1", "acme/cam-1/up").await;
    assert!(ok, "{text}");
    // A certificate used under another client id is refused at CONNECT.
    std::fs::copy(files.path("cam-1.crt"), files.path("cam-2x.crt")).unwrap();
    std::fs::copy(files.path("cam-1.key"), files.path("cam-2x.key")).unwrap();
    let (ok, _) = publish(&app, &files, "cam-2x", "acme/cam-2x/up").await;
    assert!(!ok);

    // A silent connection neither blocks others nor stays: the handshake times out (1 s here).
    let mut silent = tokio::net::TcpStream::connect(app.mqtts.unwrap())
        .await
        .unwrap();
    let (ok, text) = publish(&app, &files, "cam-1", "acme/cam-1/up").await;
    assert!(ok, "{text}");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, silent.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "{closed:?}");

    // A live session ends when its certificate is revoked.
    let (mut live, code) = raw_connect(&app, &files, "cam-2").await;
    assert_eq!(code, 0, "CONNACK accepted");
    let fp2 = cert::parse(
        &cert::read_certs(&std::fs::read(files.path("cam-2.crt")).unwrap()).unwrap()[0],
    )
    .unwrap()
    .fingerprint;
    app.admin.cert_revoke("acme", &fp2).await.unwrap();
    let ended = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 64];
        loop {
            match live.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the revoked certificate's session stayed open"
    );

    // A revoked certificate never completes the handshake again; the refusal is audited. Until the
    // new trust is in force a publish may still get in, or be cut off as a live session (audited as
    // such): what is awaited is the handshake's own refusal.
    app.admin.cert_revoke("acme", &fp1).await.unwrap();
    let entry = eventually(
        "the revoked certificate's handshake refused and audited",
        WAIT,
        || async {
            if publish(&app, &files, "cam-1", "acme/cam-1/up").await.0 {
                return None;
            }
            handshake_refusal(&app, "cam-1").await
        },
    )
    .await;
    assert_eq!(entry["cause"], "cert_revoked", "{entry}");
    // Once refused, always refused.
    assert!(!publish(&app, &files, "cam-1", "acme/cam-1/up").await.0);

    // Another tenant's certificate cannot connect as this tenant's device, whatever id it uses.
    std::fs::copy(files.path("far-1.crt"), files.path("cam-9.crt")).unwrap();
    std::fs::copy(files.path("far-1.key"), files.path("cam-9.key")).unwrap();
    assert!(!publish(&app, &files, "cam-9", "acme/cam-9/up").await.0);
    // Its own device connects.
    let (ok, text) = publish(&app, &files, "far-1", "other/far-1/up").await;
    assert!(ok, "{text}");
}

/// The audited refusals of `client_id`'s certificate at the TLS handshake, oldest first.
async fn handshake_refusals(app: &TestApp, client_id: &str) -> Vec<serde_json::Value> {
    // The outcome is queued before the client hears it; the writer batches, so write it now.
    app.gate.flush_audit().await;
    let entries = app.admin.store().list_audit(0, 10_000).await.unwrap();
    entries
        .iter()
        .filter(|e| e.kind == "connect")
        .map(|e| serde_json::from_str::<serde_json::Value>(&e.detail).unwrap())
        .filter(|d| {
            d["client_id"] == client_id
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("TLS handshake refused"))
        })
        .collect()
}

/// The newest audited refusal of `client_id`'s certificate at the TLS handshake.
async fn handshake_refusal(app: &TestApp, client_id: &str) -> Option<serde_json::Value> {
    handshake_refusals(app, client_id).await.pop()
}

/// The refusals of `client_id`'s revoked certificate at the TLS handshake in the audit trail.
async fn tls_refusals(app: &TestApp, client_id: &str) -> usize {
    let all = handshake_refusals(app, client_id).await;
    all.iter().filter(|d| d["cause"] == "cert_revoked").count()
}

/// A resumed TLS session skips the certificate verifier; a certificate revoked since the session
/// began must still not get in, and the refusal is audited.
async fn resumed_body(store: Store) {
    let files = Files::new();
    let app = TestApp::start_with(store, |l| files.layers(l)).await;
    app.device("acme", "cam-1").await;
    app.admin
        .ca_init(
            "acme",
            "default",
            Duration::from_secs(3650 * 86400),
            &KeySealer::new(CA_SECRET),
        )
        .await
        .unwrap();
    let fp = issue(&app, &files, "acme", "cam-1").await;
    let config = client_config(&files, "cam-1");
    // The new CA and certificate reach the TLS listener's trust through the change feed: retry
    // until the first session is admitted (it leaves a ticket for resumption).
    let mut first = eventually("the new certificate admitted", WAIT, || async {
        let mut tls = tls_connect(&app, &config).await;
        (mqtt_connect(&mut tls, "cam-1").await == Some(0)).then_some(tls)
    })
    .await;
    first.write_all(&[0xE0, 0]).await.unwrap();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(WAIT, first.read_to_end(&mut rest)).await;

    app.admin.cert_revoke("acme", &fp).await.unwrap();
    // Wait until the new trust is in force: a fresh handshake is refused (not merely a session
    // cut off while it published).
    eventually("the revocation in force at the handshake", WAIT, || async {
        if publish(&app, &files, "cam-1", "acme/cam-1/up").await.0 {
            return None;
        }
        handshake_refusal(&app, "cam-1").await
    })
    .await;
    let before = tls_refusals(&app, "cam-1").await;

    let mut resumed = tls_connect(&app, &config).await;
    assert_eq!(
        resumed.get_ref().1.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed),
        "the test needs a resumed session"
    );
    assert_eq!(
        mqtt_connect(&mut resumed, "cam-1").await,
        None,
        "a resumed session with a revoked certificate got a CONNACK"
    );
    assert_eq!(tls_refusals(&app, "cam-1").await, before + 1);
}
both_stores!(resumed_tls_session_of_a_revoked_certificate, resumed_body);
