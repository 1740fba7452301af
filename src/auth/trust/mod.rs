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
//!
//! Parts: this module holds the vocabulary (policy, rejections, the identity a certificate
//! proves, CA status); [`snapshot`] the decision over one consistent view (pure but for
//! webpki's chain check); [`store`] the live view swapped on change; [`verifier`] the rustls
//! adapter of the mTLS listener. The gauges they feed are rendered in `crate::metrics`.

pub mod snapshot;
pub mod store;
pub mod verifier;

use std::collections::HashMap;

use rustls::CertificateError;

use crate::registry::TenantId;

pub use snapshot::TrustSnapshot;
pub use store::TrustStore;
pub use verifier::{DeviceCertVerifier, RejectHook};

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

/// The device a certificate identifies: a proof, made only by the trust decision
/// ([`TrustSnapshot`]), so that no other code can present an unverified certificate as verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertIdentity {
    tenant: TenantId,
    tenant_name: String,
    client_id: String,
    fingerprint: String,
    not_after: i64,
    ca: Option<String>,
}

impl CertIdentity {
    /// Tenant.
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }

    /// Tenant name.
    pub fn tenant_name(&self) -> &str {
        &self.tenant_name
    }

    /// MQTT client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// SHA-256 fingerprint, hex.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Validity end, Unix seconds.
    pub fn not_after(&self) -> i64 {
        self.not_after
    }

    /// The issuing CA's name, when one of the tenant's CAs issued it.
    pub fn ca(&self) -> Option<&str> {
        self.ca.as_deref()
    }
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
