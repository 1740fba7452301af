//! The trust decision: one consistent view of every tenant's CAs, their CRLs and the
//! certificates bound to devices, and [`TrustSnapshot::identify`], which says whether a
//! certificate identifies a device.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::ClientCertVerifier;
use rustls::{CertificateError, RootCertStore};

use super::{CaStatus, CertIdentity, CertRejection, CrlFailure, TenantNames};
use crate::auth::cert::{self, CertInfo};
use crate::auth::crl::{self, VerifiedCrl};
use crate::registry::{StoredCa, StoredDeviceCert, TenantId};

/// Revocation state of one CA.
#[derive(Debug, Clone)]
enum CrlState {
    /// An mqgate CA: its revocations are mqgate's own records.
    Internal,
    /// An imported CA without CRL source: mqgate's own revocations only.
    NotConfigured,
    /// The newest CRL whose signature verified.
    Current(VerifiedCrl),
    /// A CRL is expected but none is usable.
    Unavailable(String),
}

struct TrustedCa {
    tenant: TenantId,
    tenant_name: String,
    name: String,
    info: CertInfo,
    verifier: Arc<dyn ClientCertVerifier>,
    crl: CrlState,
}

/// One consistent view of everything trusted; swapped whole on change.
pub struct TrustSnapshot {
    cas: Vec<TrustedCa>,
    by_fingerprint: HashMap<String, StoredDeviceCert>,
    by_client: HashMap<String, Vec<String>>,
    names: TenantNames,
    policy: CrlFailure,
    memo: Mutex<HashMap<[u8; 32], (CertIdentity, i64)>>,
}

/// Longest an accepted chain is reused without a fresh check, seconds.
const MEMO_TTL: i64 = 3600;
/// Remembered chains per snapshot (cleared when full).
const MEMO_CAPACITY: usize = 500_000;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// SHA-256 over the chain as presented (each certificate length-prefixed).
fn chain_key(ee: &[u8], intermediates: &[CertificateDer<'_>]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for c in std::iter::once(ee).chain(intermediates.iter().map(|c| c.as_ref())) {
        h.update((c.len() as u64).to_be_bytes());
        h.update(c);
    }
    h.finalize().into()
}

impl std::fmt::Debug for TrustSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustSnapshot")
            .field("cas", &self.cas.len())
            .field("certs", &self.by_fingerprint.len())
            .finish_non_exhaustive()
    }
}

pub(super) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl TrustSnapshot {
    /// Nothing trusted.
    pub fn empty(policy: CrlFailure) -> Self {
        TrustSnapshot {
            cas: Vec::new(),
            by_fingerprint: HashMap::new(),
            by_client: HashMap::new(),
            names: HashMap::new(),
            policy,
            memo: Mutex::default(),
        }
    }

    /// Builds the snapshot. A CA certificate that no longer parses is left out (and logged):
    /// its devices are then untrusted, never trusted without it.
    pub fn build(
        cas: Vec<StoredCa>,
        certs: Vec<StoredDeviceCert>,
        names: TenantNames,
        policy: CrlFailure,
    ) -> Self {
        let mut trusted = Vec::with_capacity(cas.len());
        for ca in cas {
            let tenant_name = names.get(&ca.tenant_id).cloned().unwrap_or_default();
            match trusted_ca(ca, tenant_name) {
                Ok(t) => trusted.push(t),
                Err((name, why)) => {
                    tracing::error!(ca = %name, error = %why, "CA certificate unusable; its devices are refused")
                }
            }
        }
        let mut by_client: HashMap<String, Vec<String>> = HashMap::new();
        let mut by_fingerprint = HashMap::with_capacity(certs.len());
        for c in certs {
            by_client
                .entry(c.client_id.clone())
                .or_default()
                .push(c.fingerprint.clone());
            by_fingerprint.insert(c.fingerprint.clone(), c);
        }
        TrustSnapshot {
            cas: trusted,
            by_fingerprint,
            by_client,
            names,
            policy,
            memo: Mutex::default(),
        }
    }

    /// The CRL state of every CA at `now`.
    pub fn ca_status(&self, now: i64) -> Vec<CaStatus> {
        self.cas
            .iter()
            .map(|ca| {
                let (crl, detail) = match &ca.crl {
                    CrlState::Internal => ("internal", None),
                    CrlState::NotConfigured => ("none", None),
                    CrlState::Current(c) if c.is_stale(now) => (
                        "stale",
                        Some(format!("next update was due at {}", c.next_update)),
                    ),
                    CrlState::Current(_) => ("current", None),
                    CrlState::Unavailable(why) => ("unavailable", Some(why.clone())),
                };
                CaStatus {
                    tenant: ca.tenant_name.clone(),
                    name: ca.name.clone(),
                    crl,
                    detail,
                }
            })
            .collect()
    }

    /// Certificates bound to devices, not revoked, ending before `until`.
    pub fn expiring(&self, until: i64) -> Vec<&StoredDeviceCert> {
        let mut out: Vec<_> = self
            .by_fingerprint
            .values()
            .filter(|c| c.expires_before(until))
            .collect();
        out.sort_by(|a, b| a.expiry_order(b));
        out
    }

    /// Every tenant's name.
    pub fn tenant_names(&self) -> impl Iterator<Item = &str> {
        self.names.values().map(String::as_str)
    }

    /// The tenant name of `t`.
    pub fn tenant_name(&self, t: TenantId) -> Option<&str> {
        self.names.get(&t).map(String::as_str)
    }

    /// Decides whether the certificate `ee` (with any `intermediates` the client sent) identifies
    /// a device at `now` (Unix seconds).
    ///
    /// Accepted chains are remembered in this snapshot (which any certificate or CRL change
    /// replaces) until the certificate ends, its CA's CRL is due, or an hour passes, whichever is
    /// first: a reconnect storm costs a digest and a lookup per device, not a signature check.
    pub fn identify(
        &self,
        ee: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: i64,
    ) -> Result<CertIdentity, CertRejection> {
        let key = chain_key(ee, intermediates);
        if let Some((id, until)) = lock(&self.memo).get(&key)
            && now < *until
        {
            return Ok(id.clone());
        }
        let (id, cacheable_until) = self.decide(ee, intermediates, now)?;
        if let Some(until) = cacheable_until {
            let until = until.min(id.not_after()).min(now.saturating_add(MEMO_TTL));
            let mut memo = lock(&self.memo);
            if memo.len() >= MEMO_CAPACITY {
                memo.clear();
            }
            memo.insert(key, (id.clone(), until));
        }
        Ok(id)
    }

    /// [`TrustSnapshot::identify`] without the memo; also says until when an accept may be reused
    /// (`None`: not at all, e.g. accepted without a usable CRL).
    fn decide(
        &self,
        ee: &[u8],
        intermediates: &[CertificateDer<'_>],
        now: i64,
    ) -> Result<(CertIdentity, Option<i64>), CertRejection> {
        let info = cert::parse(ee).map_err(|e| CertRejection::Invalid(e.to_string()))?;
        let bound = self.by_fingerprint.get(&info.fingerprint);
        if bound.is_some_and(|b| b.revoked_at.is_some()) {
            return Err(CertRejection::Revoked);
        }
        let Some(ca) = self.issuing_ca(ee, &info, intermediates, now)? else {
            // Not from any CA: a certificate registered by fingerprint stands on its own.
            let Some(b) = bound else {
                return Err(CertRejection::Untrusted);
            };
            check_validity(info.not_before, info.not_after, now)?;
            let id = assert_identity(
                b.tenant_id,
                self.tenant_name(b.tenant_id).unwrap_or_default().into(),
                b.client_id.clone(),
                info.fingerprint,
                info.not_after,
                None,
            );
            return Ok((id, Some(i64::MAX)));
        };
        let cacheable_until = self.check_crl(ca, &info, now)?;
        if info
            .bound_tenant
            .as_ref()
            .is_some_and(|t| *t != ca.tenant_name)
            || bound.is_some_and(|b| b.tenant_id != ca.tenant)
        {
            return Err(CertRejection::WrongTenant);
        }
        let client_id = match (bound, info.common_name) {
            (Some(b), _) => b.client_id.clone(),
            (None, Some(cn)) => cn,
            (None, None) => return Err(CertRejection::Invalid("no common name".into())),
        };
        let id = assert_identity(
            ca.tenant,
            ca.tenant_name.clone(),
            client_id,
            info.fingerprint,
            info.not_after,
            Some(ca.name.clone()),
        );
        Ok((id, cacheable_until))
    }

    /// The CA whose verifier accepts the chain; `Ok(None)` when no CA's name matches the chain;
    /// the verification error (expired, …) of a matching CA otherwise.
    fn issuing_ca(
        &self,
        ee: &[u8],
        info: &CertInfo,
        intermediates: &[CertificateDer<'_>],
        now: i64,
    ) -> Result<Option<&TrustedCa>, CertRejection> {
        let mut issuers = vec![info.issuer_raw.clone()];
        for i in intermediates {
            if let Ok(i) = cert::parse(i) {
                issuers.push(i.issuer_raw);
            }
        }
        let when = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            u64::try_from(now).unwrap_or(0),
        ));
        let ee = CertificateDer::from(ee);
        let mut failure = None;
        for ca in self
            .cas
            .iter()
            .filter(|ca| issuers.contains(&ca.info.subject_raw))
        {
            match ca.verifier.verify_client_cert(&ee, intermediates, when) {
                Ok(_) => return Ok(Some(ca)),
                Err(rustls::Error::InvalidCertificate(e)) => failure = Some(e),
                Err(_) => failure = Some(CertificateError::BadSignature),
            }
        }
        match failure {
            None => Ok(None),
            Some(CertificateError::Expired | CertificateError::ExpiredContext { .. }) => {
                Err(CertRejection::Expired)
            }
            Some(CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. }) => {
                Err(CertRejection::NotYetValid)
            }
            // A name matched but the signature or usage did not: perhaps a registered
            // self-made certificate with a look-alike issuer name.
            Some(_) if self.by_fingerprint.contains_key(&info.fingerprint) => Ok(None),
            Some(_) => Err(CertRejection::Untrusted),
        }
    }

    /// `Ok(Some(t))`: not revoked, and that holds until `t`; `Ok(None)`: let through without a
    /// usable CRL (`crl_failure = allow`).
    fn check_crl(
        &self,
        ca: &TrustedCa,
        info: &CertInfo,
        now: i64,
    ) -> Result<Option<i64>, CertRejection> {
        let unavailable = match &ca.crl {
            CrlState::Internal | CrlState::NotConfigured => return Ok(Some(i64::MAX)),
            CrlState::Current(crl) if crl.revoked.contains(&info.serial) => {
                return Err(CertRejection::Revoked);
            }
            CrlState::Current(crl) if !crl.is_stale(now) => return Ok(Some(crl.next_update)),
            CrlState::Current(crl) => format!("CRL past its next update ({})", crl.next_update),
            CrlState::Unavailable(why) => why.clone(),
        };
        match self.policy {
            CrlFailure::Deny => {
                tracing::error!(tenant = %ca.tenant_name, ca = %ca.name, reason = %unavailable, "certificate refused: no usable CRL for its CA");
                Err(CertRejection::CrlUnavailable)
            }
            CrlFailure::Allow => {
                tracing::warn!(tenant = %ca.tenant_name, ca = %ca.name, reason = %unavailable, "certificate accepted without a usable CRL (crl_failure = allow)");
                Ok(None)
            }
        }
    }

    /// Decides a certificate presented only by name (EMQX `cert_common_name` / `cert_subject`,
    /// without `cert_pem`): the broker verified the chain; mqgate requires the common name to be
    /// the client id and the device to hold an active certificate with that subject.
    pub fn identify_by_names(
        &self,
        client_id: &str,
        common_name: Option<&str>,
        subject: Option<&str>,
        now: i64,
    ) -> Result<CertIdentity, CertRejection> {
        if common_name.is_some_and(|cn| cn != client_id) {
            return Err(CertRejection::Mismatch);
        }
        let subject = subject.map(normalise_dn);
        let candidates: Vec<&StoredDeviceCert> = self
            .by_client
            .get(client_id)
            .into_iter()
            .flatten()
            .filter_map(|fp| self.by_fingerprint.get(fp))
            .filter(|c| {
                subject
                    .as_ref()
                    .is_none_or(|s| *s == normalise_dn(&c.subject))
            })
            .collect();
        let active = candidates
            .iter()
            .find(|c| c.revoked_at.is_none() && c.not_before <= now && now < c.not_after);
        match active {
            Some(c) => Ok(assert_identity(
                c.tenant_id,
                self.tenant_name(c.tenant_id).unwrap_or_default().into(),
                c.client_id.clone(),
                c.fingerprint.clone(),
                c.not_after,
                None,
            )),
            None if candidates.iter().any(|c| c.revoked_at.is_some()) => {
                Err(CertRejection::Revoked)
            }
            None if candidates.iter().any(|c| now >= c.not_after) => Err(CertRejection::Expired),
            None => Err(CertRejection::Unknown),
        }
    }
}

/// DN text compared loosely: spaces around separators, the case of attribute names and the
/// order of attributes ignored (`CN=a, O=b` = `o=b,CN=a`): brokers print subjects in either order.
fn normalise_dn(dn: &str) -> String {
    let mut parts: Vec<String> = dn
        .split(',')
        .map(|part| {
            let part = part.trim();
            match part.split_once('=') {
                Some((k, v)) => format!("{}={}", k.trim().to_ascii_uppercase(), v.trim()),
                None => part.to_string(),
            }
        })
        .collect();
    parts.sort();
    parts.join(",")
}

fn check_validity(not_before: i64, not_after: i64, now: i64) -> Result<(), CertRejection> {
    if now < not_before {
        Err(CertRejection::NotYetValid)
    } else if now >= not_after {
        Err(CertRejection::Expired)
    } else {
        Ok(())
    }
}

fn trusted_ca(ca: StoredCa, tenant_name: String) -> Result<TrustedCa, (String, String)> {
    let fail = |e: String| (ca.name.clone(), e);
    let info = cert::parse(&ca.cert_der).map_err(|e| fail(e.to_string()))?;
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca.cert_der.clone()))
        .map_err(|e| fail(e.to_string()))?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| fail(e.to_string()))?;
    let crl = match (&ca.key_sealed, &ca.crl_der, &ca.crl_url) {
        (Some(_), _, _) => CrlState::Internal,
        (None, Some(der), _) => match crl::verify(der, &ca.cert_der) {
            Ok(v) => CrlState::Current(v),
            Err(e) => CrlState::Unavailable(format!("stored CRL refused: {e}")),
        },
        (None, None, Some(url)) => CrlState::Unavailable(match &ca.crl_error {
            Some(e) => format!("no CRL yet from {url}: {e}"),
            None => format!("no CRL fetched yet from {url}"),
        }),
        (None, None, None) => CrlState::NotConfigured,
    };
    Ok(TrustedCa {
        tenant: ca.tenant_id,
        tenant_name,
        name: ca.name,
        info,
        verifier,
        crl,
    })
}

/// Every certificate this decision accepted becomes a [`CertIdentity`] here, and only here: the
/// one call of its minting constructor ([`CertIdentity::assertion`]).
fn assert_identity(
    tenant: TenantId,
    tenant_name: String,
    client_id: String,
    fingerprint: String,
    not_after: i64,
    ca: Option<String>,
) -> CertIdentity {
    CertIdentity::assertion(tenant, tenant_name, client_id, fingerprint, not_after, ca)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distinguished_names_compare_loosely() {
        assert_eq!(normalise_dn("CN=a, O=b"), normalise_dn("cn=a,O=b"));
        assert_eq!(normalise_dn("CN=a, O=b"), normalise_dn("O=b, CN=a"));
        assert_ne!(normalise_dn("CN=a, O=b"), normalise_dn("CN=a, O=c"));
    }

    // The decision case by case, with certificates made here (rcgen), no server.

    const NOW: i64 = 1_800_000_000;
    const DAY: i64 = 86_400;
    const ACME: TenantId = TenantId(1);

    struct Ca {
        der: Vec<u8>,
        key: String,
    }

    fn ca(tenant: &str, name: &str) -> Ca {
        use secrecy::ExposeSecret;
        let issued = cert::new_ca(tenant, name, NOW - DAY, 365 * DAY).unwrap();
        Ca {
            der: issued.cert_der,
            key: issued.key_pem.expose_secret().to_string(),
        }
    }

    fn device(ca: &Ca, client_id: &str, not_before: i64, not_after: i64) -> Vec<u8> {
        let spec = cert::DeviceCertSpec {
            tenant: "acme",
            client_id,
            not_before,
            not_after,
        };
        cert::issue_device(&ca.der, &ca.key, &spec)
            .unwrap()
            .cert_der
    }

    /// A CA of tenant acme: mqgate's own (`sealed`) or imported with `crl_url` and no CRL yet.
    fn stored_ca(ca: &Ca, id: i64, sealed: bool, crl_url: Option<&str>) -> StoredCa {
        let info = cert::parse(&ca.der).unwrap();
        StoredCa {
            id,
            tenant_id: ACME,
            name: format!("ca-{id}"),
            cert_der: ca.der.clone(),
            fingerprint: info.fingerprint,
            subject: info.subject,
            not_after: info.not_after,
            key_sealed: sealed.then(Vec::new),
            crl_url: crl_url.map(str::to_string),
            crl_der: None,
            crl_number: 0,
            crl_next_update: None,
            crl_error: None,
            created_at: NOW - DAY,
        }
    }

    fn bound(der: &[u8], client_id: &str, ca_id: Option<i64>, revoked: bool) -> StoredDeviceCert {
        let info = cert::parse(der).unwrap();
        StoredDeviceCert {
            id: 1,
            tenant_id: ACME,
            client_id: client_id.into(),
            ca_id,
            fingerprint: info.fingerprint,
            serial: info.serial,
            subject: info.subject,
            not_before: info.not_before,
            not_after: info.not_after,
            revoked_at: revoked.then_some(NOW - 1),
            created_at: NOW - DAY,
        }
    }

    fn snapshot(
        cas: Vec<StoredCa>,
        certs: Vec<StoredDeviceCert>,
        policy: CrlFailure,
    ) -> TrustSnapshot {
        let names = HashMap::from([(ACME, "acme".to_string())]);
        TrustSnapshot::build(cas, certs, names, policy)
    }

    /// Tenant acme trusting `ca` as its own (mqgate) CA 7, with `certs` bound.
    fn trusting(ca: &Ca, certs: Vec<StoredDeviceCert>) -> TrustSnapshot {
        snapshot(vec![stored_ca(ca, 7, true, None)], certs, CrlFailure::Deny)
    }

    #[test]
    fn a_certificate_of_a_tenant_ca_identifies_its_common_name() {
        let acme = ca("acme", "root");
        let ee = device(&acme, "dev-1", NOW - DAY, NOW + DAY);
        let snap = trusting(&acme, vec![]);
        let id = snap.identify(&ee, &[], NOW).unwrap();
        assert_eq!((id.tenant(), id.tenant_name()), (ACME, "acme"));
        assert_eq!(id.client_id(), "dev-1");
        assert_eq!(id.ca(), Some("ca-7"));
        assert_eq!(id.fingerprint(), cert::parse(&ee).unwrap().fingerprint);
        // Remembered, and the same answer the second time.
        assert_eq!(snap.identify(&ee, &[], NOW + 1).unwrap(), id);
    }

    #[test]
    fn certificates_of_other_cas_garbage_and_nothing_trusted_are_refused() {
        let acme = ca("acme", "root");
        let other = ca("acme", "elsewhere");
        let ee = device(&other, "dev-1", NOW - DAY, NOW + DAY);
        let snap = trusting(&acme, vec![]);
        assert_eq!(snap.identify(&ee, &[], NOW), Err(CertRejection::Untrusted));
        assert!(matches!(
            snap.identify(b"not a certificate", &[], NOW),
            Err(CertRejection::Invalid(_))
        ));
        let empty = TrustSnapshot::empty(CrlFailure::Deny);
        let own = device(&acme, "dev-1", NOW - DAY, NOW + DAY);
        assert_eq!(
            empty.identify(&own, &[], NOW),
            Err(CertRejection::Untrusted)
        );
    }

    #[test]
    fn validity_is_checked_at_the_time_asked() {
        let acme = ca("acme", "root");
        let ee = device(&acme, "dev-1", NOW - DAY, NOW + DAY);
        let snap = trusting(&acme, vec![]);
        assert_eq!(
            snap.identify(&ee, &[], NOW + 2 * DAY),
            Err(CertRejection::Expired)
        );
        let later = device(&acme, "dev-2", NOW + DAY, NOW + 2 * DAY);
        assert_eq!(
            snap.identify(&later, &[], NOW),
            Err(CertRejection::NotYetValid)
        );
    }

    #[test]
    fn a_certificate_revoked_in_mqgate_is_refused_even_from_a_trusted_ca() {
        let acme = ca("acme", "root");
        let ee = device(&acme, "dev-1", NOW - DAY, NOW + DAY);
        let snap = trusting(&acme, vec![bound(&ee, "dev-1", Some(7), true)]);
        assert_eq!(snap.identify(&ee, &[], NOW), Err(CertRejection::Revoked));
    }

    #[test]
    fn a_bound_certificate_names_its_device_whatever_its_common_name() {
        let acme = ca("acme", "root");
        let ee = device(&acme, "printed-name", NOW - DAY, NOW + DAY);
        let snap = trusting(&acme, vec![bound(&ee, "dev-1", Some(7), false)]);
        assert_eq!(snap.identify(&ee, &[], NOW).unwrap().client_id(), "dev-1");
    }

    #[test]
    fn a_self_signed_certificate_counts_only_when_registered_by_fingerprint() {
        let own = ca("acme", "self");
        let unregistered = snapshot(vec![], vec![], CrlFailure::Deny);
        assert_eq!(
            unregistered.identify(&own.der, &[], NOW),
            Err(CertRejection::Untrusted)
        );
        let registered = snapshot(
            vec![],
            vec![bound(&own.der, "dev-9", None, false)],
            CrlFailure::Deny,
        );
        let id = registered.identify(&own.der, &[], NOW).unwrap();
        assert_eq!((id.client_id(), id.ca()), ("dev-9", None));
    }

    #[test]
    fn without_a_usable_crl_the_policy_decides() {
        let imported = ca("acme", "imported");
        let ee = device(&imported, "dev-1", NOW - DAY, NOW + DAY);
        let cas = || {
            vec![stored_ca(
                &imported,
                3,
                false,
                Some("http://crl.example/ca.crl"),
            )]
        };
        let deny = snapshot(cas(), vec![], CrlFailure::Deny);
        assert_eq!(
            deny.identify(&ee, &[], NOW),
            Err(CertRejection::CrlUnavailable)
        );
        let allow = snapshot(cas(), vec![], CrlFailure::Allow);
        assert_eq!(allow.identify(&ee, &[], NOW).unwrap().client_id(), "dev-1");
        // Imported without any CRL source: mqgate's own revocations only.
        let none = snapshot(
            vec![stored_ca(&imported, 3, false, None)],
            vec![],
            CrlFailure::Deny,
        );
        assert!(none.identify(&ee, &[], NOW).is_ok());
    }

    #[test]
    fn names_only_need_the_common_name_to_be_the_client_id_and_an_active_bound_certificate() {
        let acme = ca("acme", "root");
        let ee = device(&acme, "dev-1", NOW - DAY, NOW + DAY);
        let b = bound(&ee, "dev-1", Some(7), false);
        let subject = b.subject.clone();
        let snap = trusting(&acme, vec![b]);
        let id = snap
            .identify_by_names("dev-1", Some("dev-1"), Some(&subject), NOW)
            .unwrap();
        assert_eq!(id.client_id(), "dev-1");
        assert_eq!(
            snap.identify_by_names("dev-1", Some("dev-2"), None, NOW),
            Err(CertRejection::Mismatch)
        );
        assert_eq!(
            snap.identify_by_names("dev-1", Some("dev-1"), Some("CN=dev-1, O=elsewhere"), NOW),
            Err(CertRejection::Unknown)
        );
        assert_eq!(
            snap.identify_by_names("dev-1", None, None, NOW + 2 * DAY),
            Err(CertRejection::Expired)
        );
    }
}
