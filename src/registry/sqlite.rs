//! SQLite store: the embedded default for a single box. Runtime-checked queries (sqlx checks
//! macros against one database per crate, and that is PostgreSQL); the shared contract tests prove
//! it behaves exactly like the PostgreSQL store. Every device-level query is scoped by tenant.

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{FromRow, Row, SqlitePool};

use super::rows::{self, RuleRow};
use super::*;

/// SQLite-backed store.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The connection the cache fill keeps between its statements (see `registry::held`).
    held: std::sync::Arc<super::held::Held<sqlx::Sqlite>>,
}

type Tx = sqlx::Transaction<'static, sqlx::Sqlite>;

macro_rules! device_cols {
    () => {
        "id, tenant_id, client_id, username, enabled, created_at"
    };
}

fn device(r: &SqliteRow) -> Result<Device, sqlx::Error> {
    rows::DeviceRow::from_row(r).map(Device::from)
}

fn tenant(r: &SqliteRow) -> Result<Tenant, sqlx::Error> {
    rows::TenantRow::from_row(r).map(Tenant::from)
}

fn rule(r: &SqliteRow) -> StoreResult<StoredAclRule> {
    RuleRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        client_id: r.try_get("client_id")?,
        permission: r.try_get("permission")?,
        action: r.try_get("action")?,
        topic: r.try_get("topic")?,
    }
    .into_stored()
}

impl SqliteStore {
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: SqlitePool) -> Self {
        SqliteStore {
            pool,
            held: Default::default(),
        }
    }

    pub(crate) async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        // No ping before each acquire (sqlx's default): a connection here is a thread of this
        // process that cannot hang up, and the ping was a round trip to it per store call, a
        // hand-off and often a thread wake-up (2 % of the server in a cold reconnect storm).
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(opts)
            .await?;
        Ok(SqliteStore {
            pool,
            held: Default::default(),
        })
    }

    pub(crate) async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/sqlite").run(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.held.release();
        self.pool.close().await;
    }

    /// Runs `statement` on the held connection (or one from the pool), and keeps the connection
    /// for the next call if it succeeded (see `registry::held`; a connection here is a thread of
    /// this process, never pinged).
    async fn on_held<T>(
        &self,
        statement: impl AsyncFnOnce(&mut sqlx::SqliteConnection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let usable = async |_: &mut sqlx::SqliteConnection, _| true;
        self.held.run(&self.pool, usable, statement).await
    }

    pub(crate) async fn ping(&self) -> StoreResult<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn create_tenant(&self, name: &str, now: i64) -> StoreResult<Tenant> {
        let r = sqlx::query(
            "INSERT INTO tenants (name, created_at) VALUES (?, ?) RETURNING id, name, created_at",
        )
        .bind(name)
        .bind(now)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| rows::conflict(e, || format!("tenant {name}")))?;
        Ok(tenant(&r)?)
    }

    pub(crate) async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<Tenant>> {
        let r = sqlx::query("SELECT id, name, created_at FROM tenants WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(r.as_ref().map(tenant).transpose()?)
    }

    pub(crate) async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        let rs = sqlx::query("SELECT id, name, created_at FROM tenants ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        Ok(rs.iter().map(tenant).collect::<Result<_, _>>()?)
    }

    pub(crate) async fn create_device(
        &self,
        t: TenantId,
        d: &NewDevice,
        now: i64,
    ) -> StoreResult<Device> {
        let conflict = || format!("device {}", d.client_id);
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO client_directory (client_id, tenant_id) VALUES (?, ?)")
            .bind(&d.client_id)
            .bind(t.0)
            .execute(&mut *tx)
            .await
            .map_err(|e| rows::conflict(e, conflict))?;
        let sql = concat!(
            "INSERT INTO devices (tenant_id, client_id, username, enabled, created_at) VALUES (?, ?, ?, 1, ?) RETURNING ",
            device_cols!()
        );
        let r = sqlx::query(sql)
            .bind(t.0)
            .bind(&d.client_id)
            .bind(&d.username)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(|e| rows::conflict(e, conflict))?;
        tx.commit().await?;
        Ok(device(&r)?)
    }

    /// Begins a write transaction holding SQLite's write lock from its first statement: one that
    /// reads before it writes would otherwise have to upgrade its lock later, which SQLite refuses
    /// (busy) while another connection writes.
    async fn write(&self) -> StoreResult<Tx> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    async fn device_id(tx: &mut Tx, t: TenantId, client_id: &str) -> StoreResult<i64> {
        sqlx::query_scalar("SELECT id FROM devices WHERE tenant_id = ? AND client_id = ?")
            .bind(t.0)
            .bind(client_id)
            .fetch_optional(&mut **tx)
            .await?
            .ok_or_else(|| rows::no_device(client_id))
    }

    /// The device id of `client_id`, or `None` for the whole tenant.
    async fn scope_id(
        tx: &mut Tx,
        t: TenantId,
        client_id: Option<&str>,
    ) -> StoreResult<Option<i64>> {
        match client_id {
            Some(c) => Ok(Some(Self::device_id(tx, t, c).await?)),
            None => Ok(None),
        }
    }

    pub(crate) async fn set_device_enabled(
        &self,
        t: TenantId,
        client_id: &str,
        enabled: bool,
    ) -> StoreResult<()> {
        let done =
            sqlx::query("UPDATE devices SET enabled = ? WHERE tenant_id = ? AND client_id = ?")
                .bind(enabled)
                .bind(t.0)
                .bind(client_id)
                .execute(&self.pool)
                .await?;
        rows::one(done.rows_affected(), client_id)
    }

    pub(crate) async fn remove_device(&self, t: TenantId, client_id: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query("DELETE FROM devices WHERE tenant_id = ? AND client_id = ?")
            .bind(t.0)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        rows::one(done.rows_affected(), client_id)?;
        sqlx::query("DELETE FROM client_directory WHERE tenant_id = ? AND client_id = ?")
            .bind(t.0)
            .bind(client_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_devices(&self, t: TenantId) -> StoreResult<Vec<Device>> {
        let sql = concat!(
            "SELECT ",
            device_cols!(),
            " FROM devices WHERE tenant_id = ? ORDER BY client_id"
        );
        let rs = sqlx::query(sql).bind(t.0).fetch_all(&self.pool).await?;
        Ok(rs.iter().map(device).collect::<Result<_, _>>()?)
    }

    pub(crate) async fn add_credential(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewCredential,
        now: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.write().await?;
        let device_id = Self::device_id(&mut tx, t, client_id).await?;
        let id = sqlx::query_scalar(
            "INSERT INTO credentials (tenant_id, device_id, kind, digest, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(t.0)
        .bind(device_id)
        .bind(c.kind.as_str())
        .bind(&c.digest)
        .bind(now)
        .bind(c.expires_at)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub(crate) async fn expire_credentials(
        &self,
        t: TenantId,
        client_id: &str,
        kinds: &[CredentialKind],
        at: i64,
    ) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        let device_id = Self::device_id(&mut tx, t, client_id).await?;
        let mut changed = 0;
        for kind in kinds {
            let done = sqlx::query(
                "UPDATE credentials SET expires_at = ? WHERE tenant_id = ? AND device_id = ? AND kind = ? AND (expires_at IS NULL OR expires_at > ?)",
            )
            .bind(at)
            .bind(t.0)
            .bind(device_id)
            .bind(kind.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await?;
            changed += done.rows_affected();
        }
        tx.commit().await?;
        Ok(changed)
    }

    pub(crate) async fn replace_credential_digest(
        &self,
        t: TenantId,
        credential_id: i64,
        kind: CredentialKind,
        digest: &str,
    ) -> StoreResult<()> {
        let done = sqlx::query(
            "UPDATE credentials SET kind = ?, digest = ? WHERE tenant_id = ? AND id = ?",
        )
        .bind(kind.as_str())
        .bind(digest)
        .bind(t.0)
        .bind(credential_id)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("credential {credential_id}")));
        }
        Ok(())
    }

    pub(crate) async fn set_rate_limit(
        &self,
        t: TenantId,
        client_id: Option<&str>,
        limit: Option<Rate>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.write().await?;
        let device_id = Self::scope_id(&mut tx, t, client_id).await?;
        sqlx::query("DELETE FROM rate_limits WHERE tenant_id = ? AND device_id IS ?")
            .bind(t.0)
            .bind(device_id)
            .execute(&mut *tx)
            .await?;
        if let Some(l) = limit {
            sqlx::query("INSERT INTO rate_limits (tenant_id, device_id, per_sec, burst, created_at) VALUES (?, ?, ?, ?, ?)")
                .bind(t.0)
                .bind(device_id)
                .bind(l.per_sec)
                .bind(i64::from(l.burst))
                .bind(now)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_rate_limits(&self, t: TenantId) -> StoreResult<Vec<StoredRateLimit>> {
        let rs = sqlx::query(
            "SELECT d.client_id, l.per_sec, l.burst FROM rate_limits l LEFT JOIN devices d ON d.id = l.device_id \
             WHERE l.tenant_id = ? ORDER BY l.device_id IS NOT NULL, d.client_id",
        )
        .bind(t.0)
        .fetch_all(&self.pool)
        .await?;
        rs.iter()
            .map(|r| {
                Ok(StoredRateLimit {
                    client_id: r.try_get("client_id")?,
                    rate: rows::rate(r.try_get("per_sec")?, r.try_get("burst")?)?,
                })
            })
            .collect()
    }

    pub(crate) async fn add_acl_rule(
        &self,
        t: TenantId,
        client_id: Option<&str>,
        r: &NewAclRule,
        now: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.write().await?;
        let device_id = Self::scope_id(&mut tx, t, client_id).await?;
        let id = sqlx::query_scalar(
            "INSERT INTO acl_rules (tenant_id, device_id, permission, action, topic, created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(t.0)
        .bind(device_id)
        .bind(r.permission.as_str())
        .bind(r.action.as_str())
        .bind(&r.topic)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub(crate) async fn list_acl_rules(&self, t: TenantId) -> StoreResult<Vec<StoredAclRule>> {
        let rs = sqlx::query(
            "SELECT r.id, r.device_id, d.client_id, r.permission, r.action, r.topic FROM acl_rules r LEFT JOIN devices d ON d.id = r.device_id \
             WHERE r.tenant_id = ? ORDER BY r.device_id IS NULL, d.client_id, r.id",
        )
        .bind(t.0)
        .fetch_all(&self.pool)
        .await?;
        rs.iter().map(rule).collect()
    }

    pub(crate) async fn remove_acl_rule(
        &self,
        t: TenantId,
        rule_id: i64,
    ) -> StoreResult<Option<String>> {
        // One statement: the owner is read from the row being deleted, never from a row that
        // another writer could change in between.
        let owner: Option<Option<String>> = sqlx::query_scalar(
            "DELETE FROM acl_rules WHERE tenant_id = ?1 AND id = ?2 \
             RETURNING (SELECT d.client_id FROM devices d WHERE d.id = acl_rules.device_id AND d.tenant_id = ?1)",
        )
        .bind(t.0)
        .bind(rule_id)
        .fetch_optional(&self.pool)
        .await?;
        owner.ok_or_else(|| StoreError::NotFound(format!("rule {rule_id}")))
    }
}

mod audit;
mod certs;
mod fill;
mod guard;
mod import;
mod kicks;
