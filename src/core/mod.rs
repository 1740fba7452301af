//! The pure decision core: no I/O, no async, no clock. Given what the registry knows about a
//! device and what the client asks, it returns a [`Decision`] that names its cause.

mod decision;
pub mod ids;
mod session;

pub use decision::{Cause, Decision, Verdict};
pub use session::decide_session;

use crate::acl::{AclVerdict, Action, CompiledAcl, Identity, Permission, Rule};
use crate::auth::secret::VerifiedSecret;
use crate::auth::trust::{CertIdentity, CertRejection};
use crate::limit::bucket::Rate;
use crate::registry::{CredentialKind, TenantId};

/// A credential as the hot path sees it (digests only).
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialView {
    /// Store id.
    pub id: i64,
    /// Storage kind.
    pub kind: CredentialKind,
    /// Digest or password hash.
    pub digest: String,
    /// Unix seconds after which it no longer works.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for CredentialView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialView")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

impl CredentialView {
    /// Whether it still works at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// Everything the hot path needs about one device, compiled once per cache fill.
#[derive(Debug, Clone)]
pub struct DeviceView {
    /// Owning tenant.
    pub tenant: TenantId,
    /// Tenant name.
    pub tenant_name: String,
    /// MQTT client id.
    pub client_id: String,
    /// Bound MQTT username, if any.
    pub username: Option<String>,
    /// Disabled devices are denied.
    pub enabled: bool,
    /// Credentials, expired ones included.
    pub credentials: Vec<CredentialView>,
    /// The device's rules (device, tenant, file), placeholders expanded.
    pub acl: CompiledAcl,
    /// The same rules in EMQX's authn `acl` format, if they can be expressed there.
    pub emqx_acl: Option<Vec<serde_json::Value>>,
    /// The device's ingestion limit override (the configured default applies when `None`).
    pub device_rate: Option<Rate>,
    /// The tenant's ingestion limit override (the configured default applies when `None`).
    pub tenant_rate: Option<Rate>,
}

impl DeviceView {
    /// Builds the view, compiling `rules` for this device's identity.
    pub fn new(
        tenant: TenantId,
        tenant_name: String,
        client_id: String,
        username: Option<String>,
        enabled: bool,
        credentials: Vec<CredentialView>,
        rules: &[Rule],
    ) -> Self {
        let acl = match ids::ClientId::parse(&client_id) {
            Ok(id) => CompiledAcl::compile(
                rules,
                &Identity {
                    tenant: &tenant_name,
                    client_id: &id,
                    username: username.as_deref(),
                },
            ),
            // A client id stored before the one rule: no edge admits it, and no rule matches.
            Err(_) => CompiledAcl::default(),
        };
        let emqx_acl = acl.to_emqx();
        DeviceView {
            tenant,
            tenant_name,
            client_id,
            username,
            enabled,
            credentials,
            acl,
            emqx_acl,
            device_rate: None,
            tenant_rate: None,
        }
    }

    /// Token credentials (expired included) for the fast token check.
    pub fn tokens(&self) -> Vec<&CredentialView> {
        self.credentials
            .iter()
            .filter(|c| c.kind == CredentialKind::Token)
            .collect()
    }

    /// Password credentials still active at `now`: only these are worth an argon2/bcrypt verify.
    pub fn password_candidates(&self, now: i64) -> Vec<&CredentialView> {
        self.credentials
            .iter()
            .filter(|c| c.kind != CredentialKind::Token && c.is_active(now))
            .collect()
    }

    fn credential(&self, id: i64) -> Option<&CredentialView> {
        self.credentials.iter().find(|c| c.id == id)
    }
}

/// What to answer for a client id the registry does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownClient {
    /// Refuse it (the default).
    Deny,
    /// Let the broker's next authenticator decide (EMQX `ignore`).
    Ignore,
}

/// The checks a CONNECT passes before any secret is verified (so a disabled or unknown device
/// costs no hashing). `Err` carries the final decision.
pub fn precheck_connect<'d>(
    device: Option<&'d DeviceView>,
    username: Option<&str>,
    has_secret: bool,
    unknown: UnknownClient,
) -> Result<&'d DeviceView, Decision> {
    let Some(device) = device else {
        return Err(unknown_client(unknown));
    };
    if !device.enabled {
        return Err(Decision::deny(Cause::DeviceDisabled));
    }
    if let Some(bound) = &device.username
        && username != Some(bound.as_str())
    {
        return Err(Decision::deny(Cause::UsernameMismatch));
    }
    if !has_secret {
        return Err(Decision::deny(Cause::NoSecret));
    }
    Ok(device)
}

/// Decides a CONNECT once secrets were verified: `proof` is the credential that matched, if any.
pub fn decide_connect(device: &DeviceView, proof: Option<&VerifiedSecret>, now: i64) -> Decision {
    let Some(proof) = proof else {
        return Decision::deny(Cause::BadSecret);
    };
    match device.credential(proof.credential_id()) {
        Some(c) if c.is_active(now) => Decision::allow(Cause::Credential {
            credential_id: c.id,
            kind: c.kind,
            expires_at: c.expires_at,
        }),
        Some(c) => Decision::deny(Cause::CredentialExpired {
            credential_id: c.id,
        }),
        None => Decision::deny(Cause::BadSecret),
    }
}

/// Checks that a certificate identity belongs to the connecting `device`: same tenant, same
/// client id. `Err` carries the deny.
pub fn check_cert_identity(device: &DeviceView, id: &CertIdentity) -> Result<(), Decision> {
    if id.tenant() != device.tenant {
        return Err(Decision::deny(Cause::CertRejected(
            CertRejection::WrongTenant,
        )));
    }
    if id.client_id() != device.client_id {
        return Err(Decision::deny(Cause::CertRejected(CertRejection::Mismatch)));
    }
    Ok(())
}

/// The allow for a device identified by certificate alone.
pub fn allow_by_certificate(id: &CertIdentity, names_only: bool) -> Decision {
    Decision::allow(Cause::Certificate {
        fingerprint: id.fingerprint().to_string(),
        not_after: id.not_after(),
        names_only,
    })
}

/// Decides a PUBLISH or SUBSCRIBE.
pub fn decide_authz(
    device: Option<&DeviceView>,
    action: Action,
    topic: &str,
    unknown: UnknownClient,
) -> Decision {
    let Some(device) = device else {
        return unknown_client(unknown);
    };
    if !device.enabled {
        return Decision::deny(Cause::DeviceDisabled);
    }
    let verdict = device.acl.check(action, topic);
    match &verdict {
        AclVerdict::Matched {
            permission: Permission::Allow,
            ..
        } => Decision::allow(Cause::Acl(verdict)),
        _ => Decision::deny(Cause::Acl(verdict)),
    }
}

fn unknown_client(unknown: UnknownClient) -> Decision {
    match unknown {
        UnknownClient::Deny => Decision::deny(Cause::UnknownClient),
        UnknownClient::Ignore => Decision {
            verdict: Verdict::Ignore,
            cause: Cause::UnknownClient,
        },
    }
}

#[cfg(test)]
mod tests;
