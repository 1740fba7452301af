//! The device registry: the `Store` (PostgreSQL or SQLite, the only place SQL lives), the
//! hot-path cache in front of it, and change notification between replicas.
//!
//! Every device-level call takes a [`TenantId`]; the one lookup that is not tenant-scoped is
//! [`Store::resolve_client`], which maps a globally unique MQTT client id to its tenant through the
//! `client_directory` table (brokers send a client id, not a tenant).

pub mod cache;
pub mod health;
mod held;
pub mod model;
pub mod pg;
mod rows;
pub mod sqlite;
mod sqlite_changes;
pub mod table;

pub use model::*;

/// Errors from the store. Messages never contain secrets (digests are never formatted).
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The named thing does not exist (in this tenant).
    #[error("{0} not found")]
    NotFound(String),
    /// A unique name or client id is already taken.
    #[error("{0} already exists")]
    Conflict(String),
    /// Input the store refuses (e.g. a bad URL).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database failed or could not be reached.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration error: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The store did not answer in time, or is known unreachable (see [`health`]).
    #[error("registry unavailable: {0}")]
    Unavailable(&'static str),
}

/// Result alias for store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// The registry store: PostgreSQL in production, SQLite for a single box. Both pass the same
/// contract tests (`tests/it/store_contract.rs`).
#[derive(Clone, Debug)]
pub enum Store {
    /// PostgreSQL, with row-level security and LISTEN/NOTIFY.
    Postgres(pg::PgStore),
    /// SQLite file (or memory), in-process invalidation only.
    Sqlite(sqlite::SqliteStore),
}

macro_rules! dispatch {
    ($self:ident, $s:ident => $e:expr) => {
        match $self {
            Store::Postgres($s) => $e,
            Store::Sqlite($s) => $e,
        }
    };
}

// After `dispatch!`, which it uses.
pub mod import;

impl Store {
    /// Connects to `url` (`postgres://…`, `sqlite://path?mode=rwc`, `sqlite::memory:`).
    pub async fn connect(url: &str) -> StoreResult<Store> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(pg::PgStore::connect(url).await?))
        } else if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(sqlite::SqliteStore::connect(url).await?))
        } else {
            Err(StoreError::Invalid(
                "database URL must start with postgres:// or sqlite:".into(),
            ))
        }
    }

    /// Applies pending migrations (`migrations/postgres` or `migrations/sqlite`).
    pub async fn migrate(&self) -> StoreResult<()> {
        dispatch!(self, s => s.migrate().await)
    }

    /// Closes the connections (and with them the change feed), waiting for those in use.
    pub async fn close(&self) {
        dispatch!(self, s => s.close().await)
    }

    /// Whether lockouts and their clears are announced on the change feed (PostgreSQL's
    /// NOTIFY, to every replica; SQLite has one node).
    pub fn announces_lockouts(&self) -> bool {
        matches!(self, Store::Postgres(_))
    }

    /// Whether [`Store::close`] was called.
    pub fn is_closed(&self) -> bool {
        match self {
            Store::Postgres(s) => s.is_closed(),
            Store::Sqlite(s) => s.pool().is_closed(),
        }
    }

    /// Appends audit records to the hash chain, in order, in one transaction.
    pub async fn append_audit(&self, records: &[crate::audit::AuditRecord]) -> StoreResult<()> {
        dispatch!(self, s => s.append_audit(records).await)
    }

    /// Audit entries with id above `after`, oldest first, at most `limit`.
    pub async fn list_audit(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<crate::audit::chain::StoredAudit>> {
        dispatch!(self, s => s.list_audit(after, limit).await)
    }

    /// Cheap reachability check for `/readyz`.
    pub async fn ping(&self) -> StoreResult<()> {
        dispatch!(self, s => s.ping().await)
    }

    /// Creates a tenant; `Conflict` if the name is taken.
    pub async fn create_tenant(&self, name: &str, now: i64) -> StoreResult<Tenant> {
        dispatch!(self, s => s.create_tenant(name, now).await)
    }

    /// Finds a tenant by name.
    pub async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<Tenant>> {
        dispatch!(self, s => s.tenant_by_name(name).await)
    }

    /// All tenants, by name.
    pub async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        dispatch!(self, s => s.list_tenants().await)
    }

    /// Creates a device; `Conflict` if the client id exists in any tenant.
    pub async fn create_device(&self, t: TenantId, d: &NewDevice, now: i64) -> StoreResult<Device> {
        dispatch!(self, s => s.create_device(t, d, now).await)
    }

    /// Enables or disables a device; `NotFound` if it is not in this tenant.
    pub async fn set_device_enabled(
        &self,
        t: TenantId,
        client_id: &str,
        enabled: bool,
    ) -> StoreResult<()> {
        dispatch!(self, s => s.set_device_enabled(t, client_id, enabled).await)
    }

    /// Removes a device with its credentials and rules; `NotFound` if it is not in this tenant.
    pub async fn remove_device(&self, t: TenantId, client_id: &str) -> StoreResult<()> {
        dispatch!(self, s => s.remove_device(t, client_id).await)
    }

    /// Lists a tenant's devices, by client id.
    pub async fn list_devices(&self, t: TenantId) -> StoreResult<Vec<Device>> {
        dispatch!(self, s => s.list_devices(t).await)
    }

    /// Adds a credential to a device; returns its id.
    pub async fn add_credential(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewCredential,
        now: i64,
    ) -> StoreResult<i64> {
        dispatch!(self, s => s.add_credential(t, client_id, c, now).await)
    }

    /// Sets `expires_at = min(expires_at, at)` on the device's unexpired credentials of `kinds`
    /// (rotation grace, password replacement). Returns how many changed.
    pub async fn expire_credentials(
        &self,
        t: TenantId,
        client_id: &str,
        kinds: &[CredentialKind],
        at: i64,
    ) -> StoreResult<u64> {
        dispatch!(self, s => s.expire_credentials(t, client_id, kinds, at).await)
    }

    /// Replaces a credential's kind and digest in place (legacy bcrypt → argon2id upgrade).
    pub async fn replace_credential_digest(
        &self,
        t: TenantId,
        credential_id: i64,
        kind: CredentialKind,
        digest: &str,
    ) -> StoreResult<()> {
        dispatch!(self, s => s.replace_credential_digest(t, credential_id, kind, digest).await)
    }

    /// Maps a client id to its tenant (the one lookup not scoped by tenant).
    pub async fn resolve_client(&self, client_id: &str) -> StoreResult<Option<TenantId>> {
        dispatch!(self, s => s.resolve_client(client_id).await)
    }

    /// The device behind a client id, whatever its tenant, with everything the hot path needs:
    /// the cache fill (the same as `resolve_client` then `load_device`, in one or two round trips).
    pub async fn load_client(&self, client_id: &str) -> StoreResult<Option<DeviceRecord>> {
        dispatch!(self, s => s.load_client(client_id).await)
    }

    /// [`Store::load_client`] for many client ids at once (unknown ones are absent).
    pub async fn load_clients(
        &self,
        ids: &[String],
    ) -> StoreResult<std::collections::HashMap<String, DeviceRecord>> {
        dispatch!(self, s => s.load_clients(ids).await)
    }

    /// Everything the hot path needs about one device, or `None`.
    pub async fn load_device(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        dispatch!(self, s => s.load_device(t, client_id).await)
    }

    /// Every device record of a tenant.
    pub async fn load_tenant_devices(&self, t: TenantId) -> StoreResult<Vec<DeviceRecord>> {
        dispatch!(self, s => s.load_tenant_devices(t).await)
    }

    /// Up to `limit` device records of a tenant whose client id sorts after `after`, by client id
    /// (cache warm-up, a page at a time).
    pub async fn load_tenant_page(
        &self,
        t: TenantId,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<DeviceRecord>> {
        dispatch!(self, s => s.load_tenant_page(t, after, limit).await)
    }

    /// Where warm-up pages of `every` devices of a tenant start, so they can be read side by side
    /// ([`Store::load_tenant_page`] after each): the client id before each page's first, `None`
    /// for the first page. `None` altogether where pages are read one at a time (SQLite: one
    /// writer thread, readers gain little).
    pub async fn page_starts(
        &self,
        t: TenantId,
        every: i64,
    ) -> StoreResult<Option<Vec<Option<String>>>> {
        match self {
            Store::Postgres(s) => s.page_starts(t, every).await.map(Some),
            Store::Sqlite(_) => Ok(None),
        }
    }

    /// Appends an ACL rule for a device (`Some(client_id)`) or the whole tenant (`None`).
    pub async fn add_acl_rule(
        &self,
        t: TenantId,
        client_id: Option<&str>,
        r: &NewAclRule,
        now: i64,
    ) -> StoreResult<i64> {
        dispatch!(self, s => s.add_acl_rule(t, client_id, r, now).await)
    }

    /// Lists a tenant's stored rules (device rules and tenant rules), in evaluation order.
    pub async fn list_acl_rules(&self, t: TenantId) -> StoreResult<Vec<StoredAclRule>> {
        dispatch!(self, s => s.list_acl_rules(t).await)
    }

    /// Sets (or with `None` clears) the ingestion limit of a device or, without a client id, the
    /// tenant.
    pub async fn set_rate_limit(
        &self,
        t: TenantId,
        client_id: Option<&str>,
        limit: Option<Rate>,
        now: i64,
    ) -> StoreResult<()> {
        dispatch!(self, s => s.set_rate_limit(t, client_id, limit, now).await)
    }

    /// A tenant's ingestion limit overrides (tenant first, then devices by client id).
    pub async fn list_rate_limits(&self, t: TenantId) -> StoreResult<Vec<StoredRateLimit>> {
        dispatch!(self, s => s.list_rate_limits(t).await)
    }

    /// Removes a stored rule; returns the client id it belonged to (if a device rule).
    pub async fn remove_acl_rule(&self, t: TenantId, rule_id: i64) -> StoreResult<Option<String>> {
        dispatch!(self, s => s.remove_acl_rule(t, rule_id).await)
    }
}

impl Store {
    /// Stores a certificate authority for the tenant; `Conflict` if the name or certificate is
    /// taken.
    pub async fn create_ca(&self, t: TenantId, ca: &NewCa, now: i64) -> StoreResult<StoredCa> {
        dispatch!(self, s => s.create_ca(t, ca, now).await)
    }

    /// The tenant's certificate authorities, by name.
    pub async fn list_cas(&self, t: TenantId) -> StoreResult<Vec<StoredCa>> {
        dispatch!(self, s => s.list_cas(t).await)
    }

    /// Records a CRL accepted for a CA, or why one was refused.
    pub async fn update_ca_crl(
        &self,
        t: TenantId,
        ca_id: i64,
        update: CrlUpdate<'_>,
    ) -> StoreResult<()> {
        dispatch!(self, s => s.update_ca_crl(t, ca_id, update).await)
    }

    /// Replaces a CA's sealed private key (re-sealed in the current format).
    pub async fn update_ca_key(&self, t: TenantId, ca_id: i64, sealed: &[u8]) -> StoreResult<()> {
        dispatch!(self, s => s.update_ca_key(t, ca_id, sealed).await)
    }

    /// Binds a certificate to a device; `Conflict` if the fingerprint is bound already.
    pub async fn add_device_cert(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewDeviceCert,
        now: i64,
    ) -> StoreResult<StoredDeviceCert> {
        dispatch!(self, s => s.add_device_cert(t, client_id, c, now).await)
    }

    /// The tenant's device certificates, by client id then validity end.
    pub async fn list_device_certs(&self, t: TenantId) -> StoreResult<Vec<StoredDeviceCert>> {
        dispatch!(self, s => s.list_device_certs(t).await)
    }

    /// Marks a certificate revoked at `at` (kept if already revoked); `NotFound` if the tenant
    /// has no certificate with that fingerprint.
    pub async fn revoke_device_cert(
        &self,
        t: TenantId,
        fingerprint: &str,
        at: i64,
    ) -> StoreResult<StoredDeviceCert> {
        dispatch!(self, s => s.revoke_device_cert(t, fingerprint, at).await)
    }
}

/// The EMQX kick outbox (written by triggers with every change that ends a device's right to
/// stay connected; see `src/kicker.rs`).
impl Store {
    /// Leases up to `c.limit` due kicks to the caller; no other caller gets them until the lease
    /// ends or they are finished.
    pub async fn claim_kicks(&self, c: KickClaim) -> StoreResult<Vec<PendingKick>> {
        dispatch!(self, s => s.claim_kicks(c).await)
    }

    /// Records how a claimed kick ended.
    pub async fn finish_kick(&self, id: i64, done: KickDone<'_>) -> StoreResult<()> {
        dispatch!(self, s => s.finish_kick(id, done).await)
    }

    /// Deletes finished kicks past their `keep_until` and pending ones unsent for `keep_pending`
    /// seconds after they fell due (no EMQX API configured); returns how many went.
    pub async fn prune_kicks(&self, now: i64, keep_pending: i64) -> StoreResult<u64> {
        dispatch!(self, s => s.prune_kicks(now, keep_pending).await)
    }

    /// Every outbox row, oldest first.
    pub async fn list_kicks(&self) -> StoreResult<Vec<KickRow>> {
        dispatch!(self, s => s.list_kicks().await)
    }

    /// Queues one kick per unrevoked device certificate of CA `ca_id` whose serial is listed (a
    /// CRL just accepted); a certificate already kicked for is not kicked for again.
    pub async fn kick_revoked_serials(
        &self,
        t: TenantId,
        ca_id: i64,
        serials: &[String],
    ) -> StoreResult<u64> {
        dispatch!(self, s => s.kick_revoked_serials(t, ca_id, serials).await)
    }
}

/// How much later than the stored time a login from a familiar address must be to be written:
/// a fleet reconnecting from the addresses it always uses then costs an index probe per device,
/// not a rewrite of every row. Familiar addresses count for `lockout_familiar_for` (30 days by
/// default): an hour of granularity does not change which ones count.
pub const FAMILIAR_REFRESH_MS: i64 = 3_600_000;

/// A device's familiar addresses the registry keeps, the newest first (the in-memory guard's
/// bound; SQLite's trigger of migration 0008 spells it out, the contract test checks both stores).
pub const FAMILIAR_KEEP: i64 = crate::limit::lockout::FAMILIAR_MAX as i64;

/// Brute-force state shared by replicas and kept across restarts (see `limit::lockout` for the
/// in-memory guard in front of it, and `gate::brute` for how the two meet).
impl Store {
    /// Records that device `device` ([`Device::id`]) of tenant `t` logged in from `address` at
    /// `at_ms`, keeping only the [`FAMILIAR_KEEP`] most recent addresses of the device. A stored
    /// address's time moves only forward, and only by more than [`FAMILIAR_REFRESH_MS`]. An id
    /// that is no device of `t` (one deleted meanwhile) reaches no device's addresses: SQLite
    /// skips it, PostgreSQL may keep a row under it that nothing reads.
    pub async fn remember_address(
        &self,
        t: TenantId,
        device: i64,
        address: &str,
        at_ms: i64,
    ) -> StoreResult<()> {
        let seen = AddressSeen {
            tenant: t,
            device,
            address: address.into(),
            at_ms,
        };
        self.remember_addresses(std::slice::from_ref(&seen)).await
    }

    /// [`Store::remember_address`] for many logins in one transaction (a reconnect storm's
    /// familiar addresses cost one commit per batch, not one per device).
    pub async fn remember_addresses(&self, seen: &[AddressSeen]) -> StoreResult<()> {
        dispatch!(self, s => s.remember_addresses(seen).await)
    }

    /// A device's familiar addresses with their last login (Unix ms), newest first.
    pub async fn familiar_addresses(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        dispatch!(self, s => s.familiar_addresses(t, client_id).await)
    }

    /// Counts one failure of `key` (within `rule`'s window, from its first failure); returns the
    /// lockout it caused, if this failure reached `rule.max` (announced to every replica).
    pub async fn count_failure(
        &self,
        scope: LockScope,
        key: &str,
        now_ms: i64,
        rule: FailureRule,
    ) -> StoreResult<Option<i64>> {
        dispatch!(self, s => s.count_failure(scope, key, now_ms, rule).await)
    }

    /// Stores (and announces) a lockout a replica decided on its own (e.g. from failures it
    /// counted while the store was unreachable); an existing later end is kept.
    pub async fn put_lockout(&self, l: &StoredLockout) -> StoreResult<()> {
        dispatch!(self, s => s.put_lockout(l).await)
    }

    /// Lockouts in force at `now_ms` (start-up, and after the change feed missed some).
    pub async fn active_lockouts(&self, now_ms: i64) -> StoreResult<Vec<StoredLockout>> {
        dispatch!(self, s => s.active_lockouts(now_ms).await)
    }

    /// Forgets the failures and lockouts of a client id or address (announced); returns whether
    /// there were any.
    pub async fn clear_failures(&self, key: &str) -> StoreResult<bool> {
        dispatch!(self, s => s.clear_failures(key).await)
    }

    /// Deletes failure rows whose window and lockout are over.
    pub async fn purge_failures(&self, now_ms: i64, window_ms: i64) -> StoreResult<u64> {
        dispatch!(self, s => s.purge_failures(now_ms, window_ms).await)
    }
}

impl Store {
    /// A mark on the change feed: once [`Change::Mark`] with this number (or a later one) has
    /// come through [`Store::subscribe_changes`], every change committed before this call has.
    pub async fn mark(&self) -> StoreResult<i64> {
        match self {
            Store::Postgres(s) => s.mark().await,
            Store::Sqlite(s) => sqlite_changes::mark(s.pool()).await,
        }
    }

    /// Changes made by any process: PostgreSQL LISTEN/NOTIFY across replicas, a polled trigger-fed
    /// table for SQLite (the CLI writes the same file from another process). When changes may
    /// have been missed (lost connection, outage) the stream yields [`Change::Resync`].
    pub async fn subscribe_changes(
        &self,
    ) -> StoreResult<Option<tokio::sync::mpsc::Receiver<Change>>> {
        match self {
            Store::Postgres(s) => s.subscribe_changes().await.map(Some),
            Store::Sqlite(s) => sqlite_changes::subscribe(s.pool().clone()).await.map(Some),
        }
    }
}
