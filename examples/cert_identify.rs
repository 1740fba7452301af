//! How long the certificate decision takes on the hot path: `TrustSnapshot::identify` (parse,
//! chain verification against the tenant CA, revocation, tenant binding) for EMQX's `cert_pem`
//! and the mTLS verifier. `cargo run --release --example cert_identify [N]`
use std::time::Instant;

use mqgate::auth::cert::{self, DeviceCertSpec};
use mqgate::auth::trust::{CrlFailure, TrustStore};
use mqgate::registry::{StoredCa, TenantId};
use secrecy::ExposeSecret;

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);
    let now = 1_800_000_000;
    let ca = cert::new_ca("acme", "default", now, 86_400 * 365).unwrap();
    let info = cert::parse(&ca.cert_der).unwrap();
    let devices: Vec<Vec<u8>> = (0..1000)
        .map(|i| {
            let spec = DeviceCertSpec {
                tenant: "acme",
                client_id: &format!("dev-{i}"),
                not_before: now - 60,
                not_after: now + 86_400,
            };
            cert::issue_device(&ca.cert_der, ca.key_pem.expose_secret(), &spec)
                .unwrap()
                .cert_der
        })
        .collect();
    let trust = TrustStore::new(CrlFailure::Deny, 0);
    trust.replace(
        vec![StoredCa {
            id: 1,
            tenant_id: TenantId(1),
            name: "default".into(),
            fingerprint: info.fingerprint,
            subject: info.subject,
            not_after: info.not_after,
            cert_der: ca.cert_der.clone(),
            key_sealed: Some(vec![]),
            crl_url: None,
            crl_der: None,
            crl_number: 0,
            crl_next_update: None,
            crl_error: None,
            created_at: now,
        }],
        vec![],
        [(TenantId(1), "acme".to_string())].into(),
    );
    let snap = trust.current();
    let start = Instant::now();
    for d in &devices {
        assert_eq!(snap.identify(d, &[], now).unwrap().tenant(), TenantId(1));
    }
    report("first sight (parse + chain check)", devices.len(), start);
    let start = Instant::now();
    for i in 0..n {
        let id = snap
            .identify(&devices[i % devices.len()], &[], now)
            .unwrap();
        assert_eq!(id.tenant(), TenantId(1));
    }
    report("seen before (remembered)", n, start);
}

fn report(what: &str, n: usize, start: Instant) {
    let per = start.elapsed() / n as u32;
    println!(
        "identify, {what}: {n} decisions, {per:?} each, {:.0}/s on one core",
        1.0 / per.as_secs_f64()
    );
}
