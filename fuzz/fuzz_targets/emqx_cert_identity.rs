//! The whole identity decision on arbitrary certificates, as EMQX forwards them (`cert_pem`),
//! against a trust snapshot holding a real CA and bound certificates.
#![no_main]

use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use mqgate::auth::cert;
use mqgate::auth::trust::{CrlFailure, TrustStore};
use mqgate::registry::{StoredCa, TenantId};

static TRUST: LazyLock<TrustStore> = LazyLock::new(|| {
    let ca = cert::new_ca("fuzz", "ca", 1_800_000_000, 86_400).unwrap();
    let info = cert::parse(&ca.cert_der).unwrap();
    let stored = StoredCa {
        id: 1,
        tenant_id: TenantId(1),
        name: "ca".into(),
        fingerprint: info.fingerprint,
        subject: info.subject,
        not_after: info.not_after,
        cert_der: ca.cert_der,
        key_sealed: None,
        crl_url: None,
        crl_der: None,
        crl_number: 0,
        crl_next_update: None,
        crl_error: None,
        created_at: 0,
    };
    let store = TrustStore::new(CrlFailure::Deny, 0);
    store.replace(
        vec![stored],
        vec![],
        [(TenantId(1), "fuzz".to_string())].into(),
    );
    store
});

fuzz_target!(|data: &[u8]| {
    let snap = TRUST.current();
    let der = std::str::from_utf8(data)
        .ok()
        .and_then(|t| cert::decode_forwarded(t).ok())
        .unwrap_or_else(|| data.to_vec());
    let _ = snap.identify(&der, &[], 1_800_000_100);
});
