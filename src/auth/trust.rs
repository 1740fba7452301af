//! What mqgate trusts in certificates, held hot in memory: every tenant's CAs (each with a
//! webpki verifier), their current CRLs, and the certificates bound to devices.
//!
//! One function decides whether a certificate identifies a device, [`TrustSnapshot::identify`];
//! the EMQX endpoint (certificate forwarded by the broker) and the rustls verifier of an mTLS
//! listener ([`DeviceCertVerifier`]) both call it, so a revoked certificate is refused the same
//! way on either path.
//!
//! Revocation sources: certificates revoked in mqgate (by fingerprint, any CA), and for an
//! imported CA the CRL imported or fetched for it. When such a CRL is unavailable (never fetched,
//! past its next-update, or it failed its signature), [`CrlFailure`] decides: `deny` (the
//! default) refuses every certificate of that CA, `allow` lets them through with a warning.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore};

use super::cert::{self, CertInfo};
use super::crl::{self, VerifiedCrl};
use crate::clock::Clock;
use crate::registry::{StoredCa, StoredDeviceCert, TenantId};

/// What to do with certificates of a CA whose CRL is unavailable or stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CrlFailure {
    /// Refuse them (fail closed).
    #[default]
    Deny,
    /// Accept them, logging a warning each time (fail open).
    Allow,
}

/// Why a certificate does not identify a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertRejection {
    /// Not a parsable certificate, or it lacks what identity needs.
    Invalid(String),
    /// Neither signed by one of the tenants' CAs nor registered by fingerprint.
    Untrusted,
    /// Past its validity end.
    Expired,
    /// Before its validity start.
    NotYetValid,
    /// Revoked in mqgate or listed on its CA's CRL.
    Revoked,
    /// Bound to another tenant than the CA or device it came with.
    WrongTenant,
    /// Its CA's CRL is unavailable or stale and `crl_failure = deny`.
    CrlUnavailable,
    /// It identifies another device than the one connecting.
    Mismatch,
    /// Only names were presented, and the device has no active certificate with them.
    Unknown,
    /// Only names were presented, with no secret, and names-only trust is off.
    NamesOnly,
}

impl CertRejection {
    /// A short stable label for metrics and audit.
    pub fn label(&self) -> &'static str {
        match self {
            CertRejection::Invalid(_) => "cert_invalid",
            CertRejection::Untrusted => "cert_untrusted",
            CertRejection::Expired => "cert_expired",
            CertRejection::NotYetValid => "cert_not_yet_valid",
            CertRejection::Revoked => "cert_revoked",
            CertRejection::WrongTenant => "cert_wrong_tenant",
            CertRejection::CrlUnavailable => "crl_unavailable",
            CertRejection::Mismatch => "cert_mismatch",
            CertRejection::Unknown => "cert_unknown",
            CertRejection::NamesOnly => "cert_names_only",
        }
    }

    /// A sentence for operators.
    pub fn explain(&self) -> String {
        match self {
            CertRejection::Invalid(why) => format!("certificate unusable: {why}"),
            CertRejection::Untrusted => {
                "certificate is not from a tenant CA and not registered".into()
            }
            CertRejection::Expired => "certificate has expired".into(),
            CertRejection::NotYetValid => "certificate is not valid yet".into(),
            CertRejection::Revoked => "certificate is revoked".into(),
            CertRejection::WrongTenant => "certificate is bound to another tenant".into(),
            CertRejection::CrlUnavailable => {
                "the CA's revocation list is unavailable or stale (crl_failure = deny)".into()
            }
            CertRejection::Mismatch => "certificate identifies another device".into(),
            CertRejection::Unknown => "device has no active certificate with that subject".into(),
            CertRejection::NamesOnly => {
                "only certificate names were presented (no cert_pem, no secret) and emqx_trust_cert_names is off".into()
            }
        }
    }

    fn to_rustls(&self) -> rustls::Error {
        rustls::Error::InvalidCertificate(match self {
            CertRejection::Invalid(_) => CertificateError::BadEncoding,
            CertRejection::Untrusted => CertificateError::UnknownIssuer,
            CertRejection::Expired => CertificateError::Expired,
            CertRejection::NotYetValid => CertificateError::NotValidYet,
            CertRejection::Revoked => CertificateError::Revoked,
            CertRejection::CrlUnavailable => CertificateError::UnknownRevocationStatus,
            CertRejection::WrongTenant
            | CertRejection::Mismatch
            | CertRejection::Unknown
            | CertRejection::NamesOnly => CertificateError::ApplicationVerificationFailure,
        })
    }
}

/// The device a certificate identifies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    /// Tenant.
    pub tenant: TenantId,
    /// Tenant name.
    pub tenant_name: String,
    /// MQTT client id.
    pub client_id: String,
    /// SHA-256 fingerprint, hex.
    pub fingerprint: String,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// The issuing CA's name, when one of the tenant's CAs issued it.
    pub ca: Option<String>,
}

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

/// A CA's state as operators see it (`ca list`, metrics).
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaStatus {
    /// Tenant name.
    pub tenant: String,
    /// CA name.
    pub name: String,
    /// `internal`, `none`, `current`, `stale` or `unavailable`.
    pub crl: &'static str,
    /// Why, when not usable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Tenant name by id, for the snapshot builder.
pub type TenantNames = HashMap<TenantId, String>;

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

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
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
            let until = until.min(id.not_after).min(now.saturating_add(MEMO_TTL));
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
            let id = CertIdentity {
                tenant: b.tenant_id,
                tenant_name: self.tenant_name(b.tenant_id).unwrap_or_default().into(),
                client_id: b.client_id.clone(),
                fingerprint: info.fingerprint,
                not_after: info.not_after,
                ca: None,
            };
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
        let id = CertIdentity {
            tenant: ca.tenant,
            tenant_name: ca.tenant_name.clone(),
            client_id,
            fingerprint: info.fingerprint,
            not_after: info.not_after,
            ca: Some(ca.name.clone()),
        };
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
            Some(c) => Ok(CertIdentity {
                tenant: c.tenant_id,
                tenant_name: self.tenant_name(c.tenant_id).unwrap_or_default().into(),
                client_id: c.client_id.clone(),
                fingerprint: c.fingerprint.clone(),
                not_after: c.not_after,
                ca: None,
            }),
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

/// The current snapshot, swapped whole when certificates change, with the settings it is built
/// and reported with.
#[derive(Debug)]
pub struct TrustStore {
    current: RwLock<Arc<TrustSnapshot>>,
    policy: CrlFailure,
    expiry_warning: i64,
    reloaded: tokio::sync::broadcast::Sender<crate::registry::Change>,
}

impl TrustStore {
    /// Nothing trusted yet; `policy` for CRL trouble, `expiry_warning` (seconds) for reports.
    pub fn new(policy: CrlFailure, expiry_warning: i64) -> Self {
        TrustStore {
            current: RwLock::new(Arc::new(TrustSnapshot::empty(policy))),
            policy,
            expiry_warning,
            reloaded: tokio::sync::broadcast::channel(256).0,
        }
    }

    /// The changes whose new trust is in force, each sent after its reload (live TLS sessions
    /// re-check their certificate on these, never against the trust before the change).
    pub fn watch_reloads(&self) -> tokio::sync::broadcast::Receiver<crate::registry::Change> {
        self.reloaded.subscribe()
    }

    /// Announces that the trust reflecting `change` is in force.
    pub fn announce(&self, change: crate::registry::Change) {
        let _ = self.reloaded.send(change);
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<TrustSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Builds and puts in force a snapshot of `cas` and `certs`.
    pub fn replace(&self, cas: Vec<StoredCa>, certs: Vec<StoredDeviceCert>, names: TenantNames) {
        let snapshot = TrustSnapshot::build(cas, certs, names, self.policy);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// Loads every tenant's CAs and device certificates from `store` (tenant by tenant, each
    /// query fenced) and puts them in force.
    pub async fn reload(&self, store: &crate::registry::Store) -> crate::registry::StoreResult<()> {
        let mut cas = Vec::new();
        let mut certs = Vec::new();
        let mut names = HashMap::new();
        for t in store.list_tenants().await? {
            cas.extend(store.list_cas(t.id).await?);
            certs.extend(store.list_device_certs(t.id).await?);
            names.insert(t.id, t.name);
        }
        self.replace(cas, certs, names);
        Ok(())
    }

    /// How far ahead expiry is reported, seconds.
    pub fn expiry_warning(&self) -> i64 {
        self.expiry_warning
    }

    /// Prometheus gauges: certificates near expiry per tenant, and each CA's CRL state.
    pub fn render_metrics(&self, now: i64) -> String {
        use std::fmt::Write;
        let snap = self.current();
        let mut out = String::from(
            "# HELP mqgate_certificates_expiring Unrevoked device certificates ending within cert_expiry_warning (expired included), by tenant.\n# TYPE mqgate_certificates_expiring gauge\n",
        );
        let mut per_tenant: std::collections::BTreeMap<&str, u64> = Default::default();
        for t in snap.names.values() {
            per_tenant.insert(t, 0);
        }
        for c in snap.expiring(now + self.expiry_warning) {
            *per_tenant
                .entry(snap.tenant_name(c.tenant_id).unwrap_or_default())
                .or_default() += 1;
        }
        for (tenant, n) in per_tenant {
            let _ = writeln!(
                out,
                "mqgate_certificates_expiring{{tenant=\"{tenant}\"}} {n}"
            );
        }
        out.push_str("# HELP mqgate_crl_usable Whether each CA's revocation information is usable (0: unavailable or stale).\n# TYPE mqgate_crl_usable gauge\n");
        for ca in snap.ca_status(now) {
            let ok = u8::from(!matches!(ca.crl, "stale" | "unavailable"));
            let _ = writeln!(
                out,
                "mqgate_crl_usable{{tenant=\"{}\",ca=\"{}\",state=\"{}\"}} {ok}",
                ca.tenant, ca.name, ca.crl
            );
        }
        out
    }
}

/// The rustls client-certificate verifier for mqgate's mTLS listener: a handshake completes only
/// for a certificate [`TrustSnapshot::identify`] accepts at that moment (the snapshot in force,
/// so a CRL or revocation change applies to the next handshake without a restart).
pub struct DeviceCertVerifier {
    trust: Arc<TrustStore>,
    clock: Clock,
    algorithms: WebPkiSupportedAlgorithms,
    mandatory: bool,
    on_reject: Option<RejectHook>,
}

/// Called with the end-entity certificate and the reason whenever a handshake is refused (the
/// server records it in the audit trail).
pub type RejectHook = Arc<dyn Fn(&[u8], &CertRejection) + Send + Sync>;

impl DeviceCertVerifier {
    /// A verifier over `trust`, reading time from `clock`.
    pub fn new(trust: Arc<TrustStore>, clock: Clock) -> Self {
        DeviceCertVerifier {
            trust,
            clock,
            algorithms: provider().signature_verification_algorithms,
            mandatory: true,
            on_reject: None,
        }
    }

    /// Whether a client must present a certificate (default: yes). Without one, the connection
    /// carries no certificate identity and CONNECT must authenticate with a secret.
    pub fn mandatory(mut self, mandatory: bool) -> Self {
        self.mandatory = mandatory;
        self
    }

    /// Calls `hook` for every refused certificate.
    pub fn on_reject(mut self, hook: RejectHook) -> Self {
        self.on_reject = Some(hook);
        self
    }

    /// The identity of a connection's verified peer chain (`ServerConnection::peer_certificates`).
    pub fn identity(&self, chain: &[CertificateDer<'_>]) -> Result<CertIdentity, CertRejection> {
        let (ee, rest) = chain
            .split_first()
            .ok_or_else(|| CertRejection::Invalid("no client certificate".into()))?;
        self.trust.current().identify(ee, rest, self.clock.now())
    }
}

impl std::fmt::Debug for DeviceCertVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceCertVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl ClientCertVerifier for DeviceCertVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would go stale with the snapshot; clients send their certificate without them.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self
            .trust
            .current()
            .identify(end_entity, intermediates, self.clock.now())
        {
            Ok(_) => Ok(ClientCertVerified::assertion()),
            Err(rejection) => {
                tracing::info!(target: "mqgate::audit", event = "tls_client_refused", cause = rejection.label(), reason = %rejection.explain());
                if let Some(hook) = &self.on_reject {
                    hook(end_entity.as_ref(), &rejection);
                }
                Err(rejection.to_rustls())
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
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
}
