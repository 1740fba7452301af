//! mqgate's decision core: no async, no clock, no I/O (it parses rule files' text; mqgate reads
//! them). Given what the registry knows
//! about a device and what the client presents or asks, it returns a [`Decision`] that names its
//! cause. It imports nothing of mqgate's and nothing async (no tokio, sqlx, rustls, hyper): being
//! its own crate, the compiler keeps it so. mqgate re-exports it as `mqgate::core` (and its
//! [`acl`] as `mqgate::acl`); the gate gathers the inputs, runs the verifiers and records.
//!
//! Map:
//! - this root: the device view the cache holds, and the publish / subscribe decision
//!   ([`decide_authz`]; with the ingestion bucket draw, [`decide_authz_metered`]);
//! - [`connect`]: the whole CONNECT rule ([`decide_connect`]): lockout, unknown client, disabled
//!   device, username, certificate and secret and how they combine;
//! - [`session`](decide_session): whether a live session still stands after a change (device,
//!   credential, and its certificate still trusted);
//! - [`acl`]: rules, placeholders, MQTT topic matching, rule files;
//! - [`ids`]: client ids and tenant names, parsed once;
//! - [`secret`]: token digests, password hashes, the one constant-time compare, and the
//!   [`VerifiedSecret`](secret::VerifiedSecret) proof only its verifiers mint;
//! - [`cert`]: certificate rejections and the [`CertIdentity`](cert::CertIdentity) proof;
//! - [`vocab`] and [`bucket`]: the shared words (tenant ids, credential kinds, lockouts, bucket
//!   scopes) and the GCRA rate bucket.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod acl;
pub mod bucket;
pub mod cert;
pub mod connect;
mod decision;
pub mod ids;
pub mod secret;
mod session;
pub mod vocab;

pub use connect::{
    CertOutcome, ConnectFacts, ConnectPolicy, SecretOutcome, decide_connect, password_verify_ahead,
    secret_to_verify,
};
pub use decision::{Cause, Decision, Verdict};
pub use session::decide_session;

use std::sync::Arc;

use crate::acl::{AclVerdict, Action, DeviceAcl, Identity, Permission, Rule, RuleSet};
use crate::bucket::Rate;
use crate::vocab::{CredentialKind, LimitScope, TenantId};
use ids::ClientId;

/// A stored secret as the hot path keeps it: a token's SHA-256 as its 32 bytes (not 64 hex
/// characters), a password hash as its PHC / bcrypt text.
#[derive(Clone, PartialEq, Eq)]
pub enum StoredDigest {
    /// A token digest.
    Sha256([u8; 32]),
    /// An argon2id or bcrypt hash, or a token digest that is not 64 hex digits (it never matches).
    Text(Box<str>),
}

impl StoredDigest {
    /// The stored text of a credential of `kind`.
    pub fn from_stored(kind: CredentialKind, text: &str) -> Self {
        let mut raw = [0u8; 32];
        match kind {
            CredentialKind::Token if hex::decode_to_slice(text, &mut raw).is_ok() => {
                StoredDigest::Sha256(raw)
            }
            _ => StoredDigest::Text(text.into()),
        }
    }

    /// The bytes a presented secret's digest is compared with.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            StoredDigest::Sha256(d) => d,
            StoredDigest::Text(t) => t.as_bytes(),
        }
    }

    /// The hash text, for a password verify.
    pub fn as_text(&self) -> Option<&str> {
        match self {
            StoredDigest::Text(t) => Some(t),
            StoredDigest::Sha256(_) => None,
        }
    }
}

/// A credential as the hot path sees it (digests only).
#[derive(Clone, PartialEq, Eq)]
pub struct CredentialView {
    /// Store id.
    pub id: i64,
    /// Storage kind.
    pub kind: CredentialKind,
    /// Digest or password hash.
    pub digest: StoredDigest,
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
    /// A credential of `kind` as the store holds it (`digest`: a token's hex SHA-256 or a
    /// password hash's text).
    pub fn stored(id: i64, kind: CredentialKind, digest: &str, expires_at: Option<i64>) -> Self {
        CredentialView {
            id,
            kind,
            digest: StoredDigest::from_stored(kind, digest),
            expires_at,
        }
    }

    /// Whether it still works at `now`.
    pub fn is_active(&self, now: i64) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }
}

/// What every device of a tenant shares, compiled once per tenant and rule set (not per device:
/// a million devices share a handful of these).
#[derive(Debug)]
pub struct TenantView {
    /// The tenant.
    pub id: TenantId,
    /// Its name (`${tenant}`).
    pub name: Box<str>,
    /// Its ingestion limit override (the configured default applies when `None`).
    pub rate: Option<Rate>,
    /// Its stored rules, then the file rules, placeholders kept.
    pub rules: RuleSet,
}

/// Everything the hot path needs about one device, built once per cache fill. Small on purpose:
/// the cache holds one per device of the fleet.
#[derive(Debug, Clone)]
pub struct DeviceView {
    /// Owning tenant, shared.
    pub tenant: Arc<TenantView>,
    /// The registry's own id of the device's row (what its familiar addresses are written
    /// under); 0 for a view built outside the registry ([`DeviceView::new`]).
    pub registry_id: i64,
    /// MQTT client id.
    pub client_id: ClientId,
    /// Bound MQTT username, if any.
    pub username: Option<Box<str>>,
    /// Disabled devices are denied.
    pub enabled: bool,
    /// Credentials, expired ones included.
    pub credentials: Box<[CredentialView]>,
    /// What few devices have (their own rules, their own limit): one pointer for the others.
    pub extras: Option<Box<DeviceExtras>>,
}

/// The parts of a device view most devices do without.
#[derive(Debug, Clone, Default)]
pub struct DeviceExtras {
    /// The device's own stored rules (evaluated before its tenant's).
    pub rules: RuleSet,
    /// The device's ingestion limit override (the configured default applies when `None`).
    pub rate: Option<Rate>,
}

impl DeviceView {
    /// A view with a tenant of its own whose rules are `rules` (tests and one-off checks; the
    /// cache shares one [`TenantView`] between a tenant's devices).
    pub fn new(
        tenant: TenantId,
        tenant_name: &str,
        client_id: ClientId,
        username: Option<&str>,
        enabled: bool,
        credentials: Vec<CredentialView>,
        rules: &[Rule],
    ) -> Self {
        let tenant = TenantView {
            id: tenant,
            name: tenant_name.into(),
            rate: None,
            rules: RuleSet::compile(rules),
        };
        DeviceView {
            tenant: Arc::new(tenant),
            registry_id: 0,
            client_id,
            username: username.map(Into::into),
            enabled,
            credentials: credentials.into(),
            extras: None,
        }
    }

    /// The device's ingestion limit override.
    pub fn device_rate(&self) -> Option<Rate> {
        self.extras.as_ref().and_then(|e| e.rate)
    }

    /// The owning tenant's id.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant.id
    }

    /// The owning tenant's name.
    pub fn tenant_name(&self) -> &str {
        &self.tenant.name
    }

    /// The tenant's ingestion limit override.
    pub fn tenant_rate(&self) -> Option<Rate> {
        self.tenant.rate
    }

    /// The device's rules (its own, then its tenant's and the files'), read with its identity.
    pub fn acl(&self) -> DeviceAcl<'_> {
        static NONE: RuleSet = RuleSet::EMPTY;
        DeviceAcl {
            own: self.extras.as_ref().map_or(&NONE, |e| &e.rules),
            shared: &self.tenant.rules,
            who: Identity {
                tenant: &self.tenant.name,
                client_id: &self.client_id,
                username: self.username.as_deref(),
            },
        }
    }

    /// The rules in EMQX's authn `acl` format, if they can be expressed there (rendered now, as
    /// typed rules an authn answer serializes).
    pub fn emqx_rules(&self) -> Option<Vec<crate::acl::EmqxRule>> {
        self.acl().emqx_rules()
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
    let verdict = device.acl().check(action, topic);
    match &verdict {
        AclVerdict::Matched {
            permission: Permission::Allow,
            ..
        } => Decision::allow(Cause::Acl(verdict)),
        _ => Decision::deny(Cause::Acl(verdict)),
    }
}

/// Decides a PUBLISH or SUBSCRIBE as the gate answers it: [`decide_authz`], then for a publish the
/// ACL allows, one token from the ingestion buckets (`draw`, asked only then): none left is a
/// deny (`rate_limited`, naming the bucket that ran dry).
pub fn decide_authz_metered(
    device: Option<&DeviceView>,
    action: Action,
    topic: &str,
    unknown: UnknownClient,
    draw: impl FnOnce(&DeviceView) -> Result<(), LimitScope>,
) -> Decision {
    let d = decide_authz(device, action, topic, unknown);
    match (device, action) {
        (Some(dev), Action::Publish) if d.is_allow() => match draw(dev) {
            Ok(()) => d,
            Err(scope) => Decision::deny(Cause::RateLimited(scope)),
        },
        _ => d,
    }
}

/// The answer for a client id the registry does not know, under `unknown`.
pub(crate) fn unknown_client(unknown: UnknownClient) -> Decision {
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
