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
//! Parts: this module holds the policy and CA status (the rejections and the identity a
//! certificate proves are the core's vocabulary, `mqgate_core::cert`, re-exported here);
//! [`snapshot`] the decision over one consistent view (pure but for
//! webpki's chain check); [`store`] the live view swapped on change; [`verifier`] the rustls
//! adapter of the mTLS listener. The gauges they feed are rendered in `crate::metrics`.

pub mod snapshot;
pub mod store;
pub mod verifier;

use std::collections::HashMap;

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

pub use mqgate_core::cert::{CertIdentity, CertRejection};

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
