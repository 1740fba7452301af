//! Certificate vocabulary the decision reads: why a certificate was refused, and the proof
//! that one identifies a device. Parsing and chain verification (x509, webpki, rustls) stay in
//! mqgate's `auth`; only their outcome comes here.

use crate::vocab::TenantId;

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
}

/// The device a certificate identifies: a proof. Its fields are private and it has one
/// constructor, [`CertIdentity::assertion`], which only the trust decision calls (mqgate's
/// `auth::trust::TrustSnapshot`, after the chain, validity, revocation and tenant checks), so no
/// other code can present an unverified certificate as verified.
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
    /// Asserts that a certificate was verified and identifies this device.
    ///
    /// Only the verifier calls this: mqgate's trust decision (`TrustSnapshot`, one call site),
    /// once the certificate passed every check. Whatever holds a `CertIdentity` may allow a
    /// CONNECT on it ([`crate::decide_connect`]); calling this anywhere else forges a
    /// certificate. (Tests of the decision call it to stand for a verified certificate.)
    pub fn assertion(
        tenant: TenantId,
        tenant_name: String,
        client_id: String,
        fingerprint: String,
        not_after: i64,
        ca: Option<String>,
    ) -> Self {
        CertIdentity {
            tenant,
            tenant_name,
            client_id,
            fingerprint,
            not_after,
            ca,
        }
    }

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
