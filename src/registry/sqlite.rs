//! SQLite store: the embedded default for a single box.
use super::*;

/// SQLite-backed store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
}

#[allow(unused_variables)]
impl SqliteStore {
    pub(crate) fn pool(&self) -> &sqlx::SqlitePool {
        &self.pool
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: sqlx::SqlitePool) -> Self {
        SqliteStore { pool }
    }
    pub(crate) async fn connect(url: &str) -> StoreResult<Self> {
        todo!()
    }
    pub(crate) async fn migrate(&self) -> StoreResult<()> {
        let _ = &self.pool;
        todo!()
    }
    pub(crate) async fn ping(&self) -> StoreResult<()> {
        todo!()
    }
    pub(crate) async fn create_tenant(&self, name: &str, now: i64) -> StoreResult<Tenant> {
        todo!()
    }
    pub(crate) async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<Tenant>> {
        todo!()
    }
    pub(crate) async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        todo!()
    }
    pub(crate) async fn create_device(
        &self,
        t: TenantId,
        d: &NewDevice,
        now: i64,
    ) -> StoreResult<Device> {
        todo!()
    }
    pub(crate) async fn set_device_enabled(
        &self,
        t: TenantId,
        client_id: &str,
        enabled: bool,
    ) -> StoreResult<()> {
        todo!()
    }
    pub(crate) async fn remove_device(&self, t: TenantId, client_id: &str) -> StoreResult<()> {
        todo!()
    }
    pub(crate) async fn list_devices(&self, t: TenantId) -> StoreResult<Vec<Device>> {
        todo!()
    }
    pub(crate) async fn add_credential(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewCredential,
        now: i64,
    ) -> StoreResult<i64> {
        todo!()
    }
    pub(crate) async fn expire_credentials(
        &self,
        t: TenantId,
        client_id: &str,
        kinds: &[CredentialKind],
        at: i64,
    ) -> StoreResult<u64> {
        todo!()
    }
    pub(crate) async fn replace_credential_digest(
        &self,
        t: TenantId,
        credential_id: i64,
        kind: CredentialKind,
        digest: &str,
    ) -> StoreResult<()> {
        todo!()
    }
    pub(crate) async fn resolve_client(&self, client_id: &str) -> StoreResult<Option<TenantId>> {
        todo!()
    }
    pub(crate) async fn load_device(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        todo!()
    }
    pub(crate) async fn load_tenant_devices(&self, t: TenantId) -> StoreResult<Vec<DeviceRecord>> {
        todo!()
    }
    pub(crate) async fn add_acl_rule(
        &self,
        t: TenantId,
        client_id: Option<&str>,
        r: &NewAclRule,
        now: i64,
    ) -> StoreResult<i64> {
        todo!()
    }
    pub(crate) async fn list_acl_rules(&self, t: TenantId) -> StoreResult<Vec<StoredAclRule>> {
        todo!()
    }
    pub(crate) async fn remove_acl_rule(
        &self,
        t: TenantId,
        rule_id: i64,
    ) -> StoreResult<Option<String>> {
        todo!()
    }
}
