//! Plain data the store reads and writes. No type here can hold a plaintext secret: credentials
//! carry only digests / password hashes, and their `Debug` never prints them.

use serde::Serialize;

pub use crate::acl::{Permission, RuleAction};
pub use crate::limit::bucket::Rate;

pub use mqgate_core::vocab::{CredentialKind, TenantId};

/// A tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tenant {
    /// Store id.
    pub id: TenantId,
    /// Unique name (used as `${tenant}` in ACL rules).
    pub name: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// A device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    /// MQTT client id, unique across all tenants.
    pub client_id: String,
    /// Optional MQTT username the device must present.
    pub username: Option<String>,
}

/// A device row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Device {
    /// Store id.
    pub id: i64,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// MQTT client id.
    pub client_id: String,
    /// MQTT username, if bound.
    pub username: Option<String>,
    /// Disabled devices are denied.
    pub enabled: bool,
    /// Unix seconds.
    pub created_at: i64,
}

/// A credential to add.
#[derive(Clone, PartialEq, Eq)]
pub struct NewCredential {
    /// Storage kind.
    pub kind: CredentialKind,
    /// Digest or password hash (never plaintext).
    pub digest: String,
    /// Unix seconds after which it no longer works.
    pub expires_at: Option<i64>,
}

impl std::fmt::Debug for NewCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewCredential")
            .field("kind", &self.kind)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A stored credential is the core's [`CredentialView`] (digests only; its `Debug` hides them):
/// one type from the row to the decision.
pub use crate::core::CredentialView;

/// A rule to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAclRule {
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    pub action: RuleAction,
    /// Topic filter, placeholders allowed.
    pub topic: String,
}

/// A stored rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAclRule {
    /// Store id (also its evaluation order within its scope: ascending).
    pub id: i64,
    /// The device it belongs to, or `None` for a tenant-wide rule.
    pub client_id: Option<String>,
    /// Allow or deny.
    pub permission: Permission,
    /// Publish, subscribe or all.
    pub action: RuleAction,
    /// Topic filter, placeholders allowed.
    pub topic: String,
}

/// Everything the hot path needs about one device.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceRecord {
    /// The tenant's name (for `${tenant}` and `client_attrs`).
    pub tenant_name: String,
    /// The device row.
    pub device: Device,
    /// All its credentials, expired ones included (so a deny can say "expired").
    pub credentials: Vec<CredentialView>,
    /// Device rules then tenant rules, each in ascending id order.
    pub rules: Vec<StoredAclRule>,
    /// The device's ingestion limit override, if any.
    pub device_limit: Option<Rate>,
    /// The tenant's ingestion limit override, if any.
    pub tenant_limit: Option<Rate>,
}

/// A stored ingestion limit override.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredRateLimit {
    /// The device it is for, or `None` for the tenant.
    pub client_id: Option<String>,
    /// The rate.
    pub rate: Rate,
}

/// A registry change announced between replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// One device changed (credentials, state, rules, removal).
    Device {
        /// Its tenant.
        tenant: TenantId,
        /// Its client id.
        client_id: String,
    },
    /// Tenant-wide rules changed: every device of the tenant.
    Tenant(TenantId),
    /// A tenant's certificate authorities, CRLs or device certificates changed.
    Certs(TenantId),
    /// Notifications may have been lost: drop everything.
    Resync,
    /// A brute-force lockout began (or, with `until_ms` 0, was cleared) on some replica.
    Lockout(StoredLockout),
    /// A mark this process put on the change feed ([`crate::registry::Store::mark`]): every change
    /// announced before it has been forwarded. Never broadcast past the cache.
    Mark(i64),
}

/// One login of a device from an address, to remember as familiar.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressSeen {
    /// The device's tenant.
    pub tenant: TenantId,
    /// The device's registry id ([`Device::id`]): the writer takes it from the cached view, so
    /// no lookup by client id stands between a login and its row.
    pub device: i64,
    /// The peer address it logged in from.
    pub address: String,
    /// When (Unix ms).
    pub at_ms: i64,
}

/// What a brute-force lockout is keyed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockScope {
    /// A client id (applies to addresses it has not logged in from).
    ClientId,
    /// A source address (applies to every client id).
    Address,
}

impl LockScope {
    /// The stored and listed name.
    pub fn as_str(self) -> &'static str {
        match self {
            LockScope::ClientId => "client_id",
            LockScope::Address => "address",
        }
    }

    /// Parses [`LockScope::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "client_id" => Some(LockScope::ClientId),
            "address" => Some(LockScope::Address),
            _ => None,
        }
    }
}

/// A lockout as the store keeps and announces it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredLockout {
    /// Client id or address.
    pub scope: LockScope,
    /// The client id or address itself.
    pub key: String,
    /// Unix ms when it ends (0: cleared).
    pub until_ms: i64,
}

/// How the store counts failures of one scope: `max` within `window_ms` lock for `lockout_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailureRule {
    /// Failures that lock.
    pub max: u32,
    /// Window they must fall in (from the first one).
    pub window_ms: i64,
    /// How long the lockout lasts.
    pub lockout_ms: i64,
}

/// A tenant's certificate authority as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredCa {
    /// Store id.
    pub id: i64,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// Name, unique in the tenant.
    pub name: String,
    /// CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Subject DN.
    pub subject: String,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Private key sealed under `ca_key_secret`; `None` for an imported CA.
    pub key_sealed: Option<Vec<u8>>,
    /// Where its CRL is fetched from, if anywhere.
    pub crl_url: Option<String>,
    /// The newest CRL whose signature verified, DER.
    pub crl_der: Option<Vec<u8>>,
    /// That CRL's number.
    pub crl_number: i64,
    /// That CRL's next-update, Unix seconds.
    pub crl_next_update: Option<i64>,
    /// Why the last CRL fetch or import was refused (cleared by the next good one).
    pub crl_error: Option<String>,
    /// Creation time, Unix seconds.
    pub created_at: i64,
}

impl std::fmt::Debug for StoredCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredCa")
            .field("id", &self.id)
            .field("tenant_id", &self.tenant_id)
            .field("name", &self.name)
            .field("fingerprint", &self.fingerprint)
            .field("internal", &self.key_sealed.is_some())
            .finish_non_exhaustive()
    }
}

/// A CA to store.
#[derive(Clone)]
pub struct NewCa {
    /// Name, unique in the tenant.
    pub name: String,
    /// CA certificate, DER.
    pub cert_der: Vec<u8>,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Subject DN.
    pub subject: String,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Sealed private key (internal CAs).
    pub key_sealed: Option<Vec<u8>>,
    /// CRL URL to fetch from.
    pub crl_url: Option<String>,
}

/// A CRL accepted for a CA (signature verified), or the reason one was refused.
#[derive(Debug, Clone)]
pub enum CrlUpdate<'a> {
    /// Store this CRL and clear any error.
    Accepted {
        /// DER.
        der: &'a [u8],
        /// Its number.
        number: i64,
        /// Its next-update.
        next_update: i64,
    },
    /// Keep the CRL held; record why the new one was refused.
    Refused(&'a str),
}

/// A certificate bound to a device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDeviceCert {
    /// Store id.
    pub id: i64,
    /// Owning tenant.
    pub tenant_id: TenantId,
    /// The device's client id.
    pub client_id: String,
    /// The issuing CA, when it is one of the tenant's.
    pub ca_id: Option<i64>,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Serial, normalised hex.
    pub serial: String,
    /// Subject DN.
    pub subject: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// When it was revoked.
    pub revoked_at: Option<i64>,
    /// When it was bound.
    pub created_at: i64,
}

impl StoredDeviceCert {
    /// Unrevoked and ending before `until` (already expired included): what `cert expiring`,
    /// the expiry metric and the warning report.
    pub fn expires_before(&self, until: i64) -> bool {
        self.revoked_at.is_none() && self.not_after < until
    }

    /// Soonest end first, then by client id.
    pub fn expiry_order(&self, other: &Self) -> std::cmp::Ordering {
        (self.not_after, &self.client_id).cmp(&(other.not_after, &other.client_id))
    }
}

/// A certificate to bind to a device.
#[derive(Debug, Clone)]
pub struct NewDeviceCert {
    /// The issuing CA, when it is one of the tenant's.
    pub ca_id: Option<i64>,
    /// SHA-256 of the DER, hex.
    pub fingerprint: String,
    /// Serial, normalised hex.
    pub serial: String,
    /// Subject DN.
    pub subject: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
}

/// What [`crate::registry::Store::claim_kicks`] may take: kicks due at `now` (Unix seconds) not
/// leased past `now_ms`, leased to the caller until `lease_until_ms`, at most `limit`.
#[derive(Debug, Clone, Copy)]
pub struct KickClaim {
    /// Unix seconds.
    pub now: i64,
    /// Unix milliseconds.
    pub now_ms: i64,
    /// The lease's end, Unix milliseconds.
    pub lease_until_ms: i64,
    /// Most rows to take.
    pub limit: i64,
}

/// A kick claimed by this replica, to send to EMQX.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingKick {
    /// Outbox row id.
    pub id: i64,
    /// The device's tenant.
    pub tenant: TenantId,
    /// The MQTT client id to disconnect.
    pub client_id: String,
    /// Why (`disabled`, `removed`, `credential_expired`, `certificate_revoked`, `acl_changed`).
    pub reason: String,
}

/// How a kick ended.
#[derive(Debug, Clone, Copy)]
pub struct KickDone<'a> {
    /// Unix seconds.
    pub at: i64,
    /// Outcome label (as counted in `mqgate_emqx_kicks_total`).
    pub outcome: &'a str,
    /// The row may be deleted after this (Unix seconds).
    pub keep_until: i64,
}

/// An outbox row as stored (tests, diagnostics).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KickRow {
    /// Outbox row id.
    pub id: i64,
    /// The device's tenant.
    pub tenant: TenantId,
    /// The client id.
    pub client_id: String,
    /// Why.
    pub reason: String,
    /// Not before (Unix seconds), `None`: at once.
    pub due_at: Option<i64>,
    /// When it was sent or given up.
    pub done_at: Option<i64>,
    /// Its outcome.
    pub outcome: Option<String>,
}
