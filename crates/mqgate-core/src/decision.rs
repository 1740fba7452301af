//! `Decision`: allow / deny / ignore, with the cause that decided it.

use serde::Serialize;

use crate::acl::{AclVerdict, RuleSource};
use crate::cert::CertRejection;
use crate::vocab::{CredentialKind, LimitScope, Locked};

/// The broker-facing answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Let it through.
    Allow,
    /// Refuse it.
    Deny,
    /// No opinion: the broker asks its next source.
    Ignore,
}

impl Verdict {
    /// Its name on the wire (`allow`, `deny`, `ignore`).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
            Verdict::Ignore => "ignore",
        }
    }
}

/// Why a decision came out as it did; rich enough for `explain`, audit and metrics labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// The registry has no such client id.
    UnknownClient,
    /// The device is disabled.
    DeviceDisabled,
    /// The device is bound to another username.
    UsernameMismatch,
    /// No password/token was presented.
    NoSecret,
    /// The secret matched no credential.
    BadSecret,
    /// The secret matched a credential that has expired (rotation grace over, or revoked).
    CredentialExpired {
        /// Which credential.
        credential_id: i64,
    },
    /// The secret matched this active credential.
    Credential {
        /// Which credential.
        credential_id: i64,
        /// How it is stored.
        kind: CredentialKind,
        /// When it stops working (Unix seconds).
        expires_at: Option<i64>,
    },
    /// The ACL decided (or nothing matched: deny by default).
    Acl(AclVerdict),
    /// The registry could not be reached and the device was not cached.
    StoreUnavailable,
    /// Verification could not finish (shutdown); nothing was decided on the merits.
    Interrupted,
    /// Too many failed authentications: refused whatever the secret.
    LockedOut(Locked),
    /// The ACL allowed the publish but an ingestion bucket was empty.
    RateLimited(LimitScope),
    /// A client certificate identified the device (no secret needed).
    Certificate {
        /// SHA-256 fingerprint, hex.
        fingerprint: String,
        /// When it expires (Unix seconds).
        not_after: i64,
        /// Only its names were presented (the broker verified it; `emqx_trust_cert_names`).
        names_only: bool,
    },
    /// The client certificate was refused.
    CertRejected(CertRejection),
    /// A live session admitted by its TLS identity (no stored credential) stays: the device still
    /// exists and is enabled (its certificate is re-checked on every trust change).
    DeviceStands,
}

impl Cause {
    /// Whether a deny for this cause counts as a failed authentication (brute-force guard).
    pub fn is_auth_failure(&self) -> bool {
        matches!(
            self,
            Cause::UnknownClient
                | Cause::UsernameMismatch
                | Cause::NoSecret
                | Cause::BadSecret
                | Cause::CredentialExpired { .. }
        ) || matches!(self, Cause::CertRejected(r) if !matches!(r, CertRejection::CrlUnavailable | CertRejection::NamesOnly))
    }

    /// A short stable label for metrics and audit.
    pub fn label(&self) -> &'static str {
        match self {
            Cause::UnknownClient => "unknown_client",
            Cause::DeviceDisabled => "device_disabled",
            Cause::DeviceStands => "device_stands",
            Cause::UsernameMismatch => "username_mismatch",
            Cause::NoSecret => "no_secret",
            Cause::BadSecret => "bad_secret",
            Cause::CredentialExpired { .. } => "credential_expired",
            Cause::Credential { .. } => "credential",
            Cause::Acl(AclVerdict::Matched { .. }) => "acl_rule",
            Cause::Acl(AclVerdict::NoRule) => "acl_no_rule",
            Cause::Acl(AclVerdict::InvalidTopic) => "invalid_topic",
            Cause::StoreUnavailable => "store_unavailable",
            Cause::Interrupted => "interrupted",
            Cause::LockedOut(_) => "locked_out",
            Cause::RateLimited(_) => "rate_limited",
            Cause::Certificate {
                names_only: true, ..
            } => "certificate_names_only",
            Cause::Certificate { .. } => "certificate",
            Cause::CertRejected(r) => r.label(),
        }
    }

    /// A sentence for operators (`acl check`, logs, audit). Never contains secret material.
    pub fn explain(&self) -> String {
        match self {
            Cause::UnknownClient => "unknown client id".into(),
            Cause::DeviceDisabled => "device is disabled".into(),
            Cause::DeviceStands => "device still exists and is enabled".into(),
            Cause::UsernameMismatch => "username does not match the device".into(),
            Cause::NoSecret => "no password or token presented".into(),
            Cause::BadSecret => "secret matches no credential of the device".into(),
            Cause::CredentialExpired { credential_id } => {
                format!("credential {credential_id} has expired")
            }
            Cause::Credential {
                credential_id,
                kind,
                ..
            } => format!("{} credential {credential_id}", kind.as_str()),
            Cause::Acl(AclVerdict::Matched {
                permission,
                index,
                source,
            }) => format!(
                "rule #{index} ({}) {}",
                describe_source(source),
                match permission {
                    crate::acl::Permission::Allow => "allows",
                    crate::acl::Permission::Deny => "denies",
                }
            ),
            Cause::Acl(AclVerdict::NoRule) => "no rule: deny by default".into(),
            Cause::Acl(AclVerdict::InvalidTopic) => "invalid topic or filter".into(),
            Cause::StoreUnavailable => "registry unavailable and device not cached".into(),
            Cause::Interrupted => "verification interrupted".into(),
            Cause::RateLimited(LimitScope::Device) => {
                "rate limited: the device's bucket is empty".into()
            }
            Cause::RateLimited(LimitScope::Tenant) => {
                "rate limited: the tenant's bucket is empty".into()
            }
            Cause::LockedOut(Locked::ClientId { until_ms }) => {
                format!("client id locked out for unfamiliar addresses until {until_ms} (Unix ms)")
            }
            Cause::Certificate {
                fingerprint,
                names_only,
                ..
            } => {
                let short: String = fingerprint.chars().take(16).collect();
                let how = if *names_only {
                    " (names only, trusted from the broker)"
                } else {
                    ""
                };
                format!("client certificate {short}{how}")
            }
            Cause::CertRejected(r) => r.explain(),
            Cause::LockedOut(Locked::Address { until_ms }) => {
                format!("source address locked out until {until_ms} (Unix ms)")
            }
            Cause::LockedOut(Locked::Busy { of }) => {
                format!(
                    "password attempts for this {of} already fill its failure window or verify slots"
                )
            }
        }
    }
}

fn describe_source(source: &RuleSource) -> String {
    match source {
        RuleSource::Device { id } => format!("device rule {id}"),
        RuleSource::Tenant { id } => format!("tenant rule {id}"),
        RuleSource::File { file, line } => format!("{file}:{line}"),
    }
}

/// A verdict and its cause. A deny is a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Allow / deny / ignore.
    pub verdict: Verdict,
    /// Why.
    pub cause: Cause,
}

impl Decision {
    /// An allow for `cause`.
    pub fn allow(cause: Cause) -> Self {
        Decision {
            verdict: Verdict::Allow,
            cause,
        }
    }

    /// A deny for `cause`.
    pub fn deny(cause: Cause) -> Self {
        Decision {
            verdict: Verdict::Deny,
            cause,
        }
    }

    /// Whether the verdict is allow.
    pub fn is_allow(&self) -> bool {
        self.verdict == Verdict::Allow
    }
}
