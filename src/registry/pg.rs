//! PostgreSQL store: compile-checked queries (offline data in `.sqlx/`), row-level security as a
//! second tenant fence, and LISTEN/NOTIFY so every replica hears of every change.
//!
//! Every tenant-scoped statement runs in a transaction that first sets `mqgate.tenant_id`
//! (transaction-local); the tables' policies then hide every other tenant's rows even from a query
//! that forgot its `WHERE tenant_id = …` (it never does: that clause is the first fence). Registry
//! rows announce their changes from triggers calling `pg_notify` (migration 0009, as SQLite's
//! triggers feed its change table), so a change and its notification commit together whoever
//! writes; lockouts, which are no registry rows, are announced here.

mod audit;
mod certs;
mod fill;
mod guard;
mod held;
mod import;
mod kicks;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};
use tokio::sync::mpsc;

use super::rows::{self, DeviceRow, RuleRow, TenantRow};
use super::*;

/// The NOTIFY channel.
const CHANNEL: &str = "mqgate_registry";

/// Longest wait for a pooled connection.
const ACQUIRE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A pooled connection idle for longer than this is pinged before use (see [`PgStore::connect`]).
const PING_IDLE_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Pings `conn` before use if it sat idle for longer than [`PING_IDLE_AFTER`] (the pool's acquire
/// and the cache fill's held connections alike).
async fn ping_if_idle(
    conn: &mut sqlx::PgConnection,
    idle_for: std::time::Duration,
) -> Result<(), sqlx::Error> {
    if idle_for > PING_IDLE_AFTER {
        sqlx::Connection::ping(conn).await?;
    }
    Ok(())
}

/// How often a lost change feed tries to listen again, and how long one attempt may take.
const RESUBSCRIBE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// PostgreSQL-backed store.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
    /// Connections the cache fill keeps between its statements (see `held`).
    held: std::sync::Arc<super::held::Held<Postgres>>,
}

type Tx = Transaction<'static, Postgres>;

/// The payload for a lockout that began or (`until_ms` 0) was cleared.
fn lockout_payload(l: &StoredLockout) -> String {
    format!("l:{}:{}:{}", l.scope.as_str(), l.until_ms, l.key)
}

/// Parses a notification payload back into a change.
/// This process's marks on the change feed: a random token (another process's marks are not
/// ours) and a counter.
static MARK_TOKEN: std::sync::LazyLock<u64> = std::sync::LazyLock::new(rand::random);
static MARKS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

fn parse_payload(p: &str) -> Option<Change> {
    if let Some(rest) = p.strip_prefix("m:") {
        let (token, n) = rest.split_once(':')?;
        let ours = token.parse::<u64>().ok()? == *MARK_TOKEN;
        return ours.then(|| n.parse().ok().map(Change::Mark)).flatten();
    }
    if let Some(rest) = p.strip_prefix("l:") {
        let mut parts = rest.splitn(3, ':');
        return Some(Change::Lockout(StoredLockout {
            scope: LockScope::parse(parts.next()?)?,
            until_ms: parts.next()?.parse().ok()?,
            key: parts.next()?.to_string(),
        }));
    }
    let mut parts = p.splitn(3, ':');
    match (
        parts.next()?,
        parts.next()?.parse().ok().map(TenantId)?,
        parts.next(),
    ) {
        ("d", tenant, Some(client_id)) => Some(Change::Device {
            tenant,
            client_id: client_id.to_string(),
        }),
        ("t", tenant, None) => Some(Change::Tenant(tenant)),
        ("c", tenant, None) => Some(Change::Certs(tenant)),
        _ => None,
    }
}

impl PgStore {
    /// Wraps an existing pool (tests).
    pub fn from_pool(pool: PgPool) -> Self {
        PgStore {
            pool,
            held: Default::default(),
        }
    }

    pub(crate) async fn connect(url: &str) -> StoreResult<Self> {
        // A connection wait is bounded well below the 30 s default, for admin calls and audit
        // writes alike; the hot path has its own, shorter, decision deadline on top.
        // No JIT: the hot path's statements are small, and a row estimate gone wrong (a table
        // filling up during a reconnect storm) put some over `jit_above_cost`, compiling each
        // call afresh for 50-130 ms (measured on the familiar-address trim).
        // Named `mqgate` in `pg_stat_activity` unless the URL names it otherwise.
        let mut options = url.parse::<PgConnectOptions>()?.options([("jit", "off")]);
        if options.get_application_name().is_none() {
            options = options.application_name("mqgate");
        }
        // A connection that has sat idle is pinged before use (a restarted server or an idle
        // timeout may have closed it), one in steady use is not: sqlx's default pings on every
        // acquire, a round trip before each cache fill (a 16 x 1 cold storm of 100k devices took
        // 9.2-10.8 s with it, 7.9-9.8 s without). A connection that breaks while in use fails its
        // statement, as it would have after a ping too, and sqlx drops it. (sqlx also pings each
        // connection as it goes back to the pool, off the caller's path; no option turns that off:
        // the cache fill keeps its connections instead, see `held`.)
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    ping_if_idle(conn, meta.idle_for).await?;
                    Ok(true)
                })
            })
            .connect_with(options)
            .await?;
        Ok(PgStore::from_pool(pool))
    }

    pub(crate) async fn migrate(&self) -> StoreResult<()> {
        sqlx::migrate!("migrations/postgres")
            .run(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.held.release();
        self.pool.close().await;
    }

    pub(crate) async fn ping(&self) -> StoreResult<()> {
        sqlx::query!("SELECT 1 AS one")
            .fetch_one(&self.pool)
            .await?;
        Ok(())
    }

    /// Begins a transaction fenced to tenant `t`.
    async fn scoped(&self, t: TenantId) -> StoreResult<Tx> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "SELECT set_config('mqgate.tenant_id', $1, true)",
            t.0.to_string()
        )
        .fetch_one(&mut *tx)
        .await?;
        Ok(tx)
    }

    /// Announces a lockout on the NOTIFY channel and commits: the notification is delivered with
    /// the commit, never for a change that rolled back.
    async fn commit_announcing(mut tx: Tx, payload: &str) -> StoreResult<()> {
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, payload)
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn device_id(tx: &mut Tx, t: TenantId, client_id: &str) -> StoreResult<i64> {
        sqlx::query_scalar!(
            "SELECT id FROM devices WHERE tenant_id = $1 AND client_id = $2",
            t.0,
            client_id
        )
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| rows::no_device(client_id))
    }

    pub(crate) async fn create_tenant(&self, name: &str, now: i64) -> StoreResult<Tenant> {
        let r = sqlx::query_as!(
            TenantRow,
            "INSERT INTO tenants (name, created_at) VALUES ($1, $2) RETURNING id, name, created_at",
            name,
            now
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| rows::conflict(e, || format!("tenant {name}")))?;
        Ok(r.into())
    }

    pub(crate) async fn tenant_by_name(&self, name: &str) -> StoreResult<Option<Tenant>> {
        let r = sqlx::query_as!(
            TenantRow,
            "SELECT id, name, created_at FROM tenants WHERE name = $1",
            name
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(r.map(Tenant::from))
    }

    pub(crate) async fn list_tenants(&self) -> StoreResult<Vec<Tenant>> {
        let rs = sqlx::query_as!(
            TenantRow,
            "SELECT id, name, created_at FROM tenants ORDER BY name"
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rs.into_iter().map(Tenant::from).collect())
    }

    pub(crate) async fn create_device(
        &self,
        t: TenantId,
        d: &NewDevice,
        now: i64,
    ) -> StoreResult<Device> {
        let conflict = || format!("device {}", d.client_id);
        let mut tx = self.scoped(t).await?;
        sqlx::query!(
            "INSERT INTO client_directory (client_id, tenant_id) VALUES ($1, $2)",
            d.client_id,
            t.0
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| rows::conflict(e, conflict))?;
        let r = sqlx::query_as!(
            DeviceRow,
            "INSERT INTO devices (tenant_id, client_id, username, enabled, created_at) VALUES ($1, $2, $3, TRUE, $4) \
             RETURNING id, tenant_id, client_id, username, enabled, created_at",
            t.0,
            d.client_id,
            d.username,
            now
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| rows::conflict(e, conflict))?;
        tx.commit().await?;
        Ok(r.into())
    }

    pub(crate) async fn set_device_enabled(
        &self,
        t: TenantId,
        client_id: &str,
        enabled: bool,
    ) -> StoreResult<()> {
        let mut tx = self.scoped(t).await?;
        let done = sqlx::query!(
            "UPDATE devices SET enabled = $3 WHERE tenant_id = $1 AND client_id = $2",
            t.0,
            client_id,
            enabled
        )
        .execute(&mut *tx)
        .await?;
        rows::one(done.rows_affected(), client_id)?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn remove_device(&self, t: TenantId, client_id: &str) -> StoreResult<()> {
        let mut tx = self.scoped(t).await?;
        let done = sqlx::query!(
            "DELETE FROM devices WHERE tenant_id = $1 AND client_id = $2",
            t.0,
            client_id
        )
        .execute(&mut *tx)
        .await?;
        rows::one(done.rows_affected(), client_id)?;
        sqlx::query!(
            "DELETE FROM client_directory WHERE tenant_id = $1 AND client_id = $2",
            t.0,
            client_id
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_devices(&self, t: TenantId) -> StoreResult<Vec<Device>> {
        let mut tx = self.scoped(t).await?;
        let rs = sqlx::query_as!(
            DeviceRow,
            "SELECT id, tenant_id, client_id, username, enabled, created_at FROM devices WHERE tenant_id = $1 ORDER BY client_id",
            t.0
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rs.into_iter().map(Device::from).collect())
    }

    pub(crate) async fn add_credential(
        &self,
        t: TenantId,
        client_id: &str,
        c: &NewCredential,
        now: i64,
    ) -> StoreResult<i64> {
        let mut tx = self.scoped(t).await?;
        let device_id = Self::device_id(&mut tx, t, client_id).await?;
        let id = sqlx::query_scalar!(
            "INSERT INTO credentials (tenant_id, device_id, kind, digest, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            t.0,
            device_id,
            c.kind.as_str(),
            c.digest,
            now,
            c.expires_at
        )
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
        let mut tx = self.scoped(t).await?;
        let device_id = Self::device_id(&mut tx, t, client_id).await?;
        let kinds: Vec<String> = kinds.iter().map(|k| k.as_str().to_string()).collect();
        let done = sqlx::query!(
            "UPDATE credentials SET expires_at = $4 WHERE tenant_id = $1 AND device_id = $2 AND kind = ANY($3) \
             AND (expires_at IS NULL OR expires_at > $4)",
            t.0,
            device_id,
            &kinds,
            at
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn replace_credential_digest(
        &self,
        t: TenantId,
        credential_id: i64,
        kind: CredentialKind,
        digest: &str,
    ) -> StoreResult<()> {
        let mut tx = self.scoped(t).await?;
        sqlx::query_scalar!(
            "UPDATE credentials c SET kind = $3, digest = $4 FROM devices d \
             WHERE c.tenant_id = $1 AND c.id = $2 AND d.tenant_id = $1 AND d.id = c.device_id RETURNING d.client_id",
            t.0,
            credential_id,
            kind.as_str(),
            digest
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("credential {credential_id}")))?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn set_rate_limit(
        &self,
        t: TenantId,
        client_id: Option<&str>,
        limit: Option<Rate>,
        now: i64,
    ) -> StoreResult<()> {
        let mut tx = self.scoped(t).await?;
        let device_id = match client_id {
            Some(c) => Some(Self::device_id(&mut tx, t, c).await?),
            None => None,
        };
        // The unique index's own expression: `IS NOT DISTINCT FROM` uses no index, and read every
        // limit of the tenant (95 ms per call among a million, 0.2 ms this way).
        sqlx::query!(
            "DELETE FROM rate_limits WHERE tenant_id = $1 AND COALESCE(device_id, 0) = COALESCE($2::BIGINT, 0)",
            t.0,
            device_id
        )
        .execute(&mut *tx)
        .await?;
        if let Some(l) = limit {
            sqlx::query!(
                "INSERT INTO rate_limits (tenant_id, device_id, per_sec, burst, created_at) VALUES ($1, $2, $3, $4, $5)",
                t.0,
                device_id,
                l.per_sec,
                i32::try_from(l.burst).unwrap_or(i32::MAX),
                now
            )
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_rate_limits(&self, t: TenantId) -> StoreResult<Vec<StoredRateLimit>> {
        let mut tx = self.scoped(t).await?;
        let rs = sqlx::query!(
            r#"SELECT d.client_id AS "client_id?", l.per_sec, l.burst FROM rate_limits l LEFT JOIN devices d ON d.id = l.device_id
               WHERE l.tenant_id = $1 ORDER BY l.device_id IS NOT NULL, d.client_id"#,
            t.0
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rs.into_iter()
            .map(|r| {
                Ok(StoredRateLimit {
                    client_id: r.client_id,
                    rate: rows::rate(r.per_sec, i64::from(r.burst))?,
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
        let mut tx = self.scoped(t).await?;
        let device_id = match client_id {
            Some(c) => Some(Self::device_id(&mut tx, t, c).await?),
            None => None,
        };
        let id = sqlx::query_scalar!(
            "INSERT INTO acl_rules (tenant_id, device_id, permission, action, topic, created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            t.0,
            device_id,
            r.permission.as_str(),
            r.action.as_str(),
            r.topic,
            now
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    pub(crate) async fn list_acl_rules(&self, t: TenantId) -> StoreResult<Vec<StoredAclRule>> {
        let mut tx = self.scoped(t).await?;
        let rs = sqlx::query!(
            r#"SELECT r.id, r.device_id, d.client_id AS "client_id?", r.permission, r.action, r.topic FROM acl_rules r
             LEFT JOIN devices d ON d.id = r.device_id
             WHERE r.tenant_id = $1 ORDER BY r.device_id IS NULL, d.client_id, r.id"#,
            t.0
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        rs.into_iter()
            .map(|r| {
                RuleRow {
                    id: r.id,
                    device_id: r.device_id,
                    client_id: r.client_id,
                    permission: r.permission,
                    action: r.action,
                    topic: r.topic,
                }
                .into_stored()
            })
            .collect()
    }

    pub(crate) async fn remove_acl_rule(
        &self,
        t: TenantId,
        rule_id: i64,
    ) -> StoreResult<Option<String>> {
        let mut tx = self.scoped(t).await?;
        let owner = sqlx::query!(
            r#"DELETE FROM acl_rules r WHERE r.tenant_id = $1 AND r.id = $2
               RETURNING (SELECT d.client_id FROM devices d WHERE d.id = r.device_id AND d.tenant_id = $1) AS "client_id?""#,
            t.0,
            rule_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rule {rule_id}")))?
        .client_id;
        tx.commit().await?;
        Ok(owner)
    }

    /// Puts a mark on the change feed (NOTIFY, delivered in commit order after every change
    /// committed before it); returns its number.
    pub(crate) async fn mark(&self) -> StoreResult<i64> {
        let n = MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let payload = format!("m:{}:{n}", *MARK_TOKEN);
        sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, payload)
            .fetch_one(&self.pool)
            .await?;
        Ok(n)
    }

    pub(crate) async fn subscribe_changes(&self) -> StoreResult<mpsc::Receiver<Change>> {
        let listener = listen(&self.pool).await?;
        let (tx, rx) = mpsc::channel(1024);
        tokio::spawn(forward_changes(self.pool.clone(), listener, tx));
        Ok(rx)
    }
}

/// A listener on [`CHANNEL`] over its own connection.
async fn listen(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // A lost connection is reported, not silently replaced: see `forward_changes`.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    Ok(listener)
}

/// Forwards notifications until the pool closes or nobody reads. When the connection drops,
/// changes may have been missed: listen again, and only once LISTEN is in force again say
/// [`Change::Resync`] (drop the whole cache). That order is what makes it sound: a change committed
/// before the new LISTEN is in the store for the next load to read, one committed after it is
/// notified. Flushing the cache while the database is still down would turn its outage into ours,
/// so nothing is dropped until the database answers again.
async fn forward_changes(pool: PgPool, mut listener: PgListener, tx: mpsc::Sender<Change>) {
    let closed = pool.close_event();
    tokio::pin!(closed);
    loop {
        let next = tokio::select! {
            biased;
            _ = &mut closed => return,
            _ = tx.closed() => return,
            n = listener.try_recv() => n,
        };
        let change = match next {
            Ok(Some(n)) => match parse_payload(n.payload()) {
                Some(c) => c,
                None => continue,
            },
            // The connection dropped (`Ok(None)`) or failed.
            lost => {
                let error = lost.err().map(|e| e.to_string()).unwrap_or_default();
                tracing::warn!(error, "registry change listener lost its connection");
                listener = tokio::select! {
                    biased;
                    _ = &mut closed => return,
                    l = resubscribe(&pool) => l,
                };
                tracing::info!("registry change listener listening again; re-reading the registry");
                Change::Resync
            }
        };
        if tx.send(change).await.is_err() {
            return;
        }
    }
}

/// Listens again, attempt after bounded attempt, until the database answers.
async fn resubscribe(pool: &PgPool) -> PgListener {
    loop {
        if let Ok(Ok(l)) = tokio::time::timeout(RESUBSCRIBE_EVERY, listen(pool)).await {
            return l;
        }
        tokio::time::sleep(RESUBSCRIBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_processs_marks_are_read_as_marks() {
        let ours = format!("m:{}:5", *MARK_TOKEN);
        assert_eq!(parse_payload(&ours), Some(Change::Mark(5)));
        let other = MARK_TOKEN.wrapping_add(1);
        assert_eq!(parse_payload(&format!("m:{other}:5")), None);
        assert_eq!(parse_payload("m:garbage"), None);
    }

    #[test]
    fn notification_payloads_round_trip() {
        // Written by the triggers of `migrations/postgres/0009_change_triggers.sql`.
        let c = parse_payload("d:7:a:b:c").unwrap();
        assert_eq!(
            c,
            Change::Device {
                tenant: TenantId(7),
                client_id: "a:b:c".into()
            }
        );
        assert_eq!(parse_payload("t:3"), Some(Change::Tenant(TenantId(3))));
        assert_eq!(parse_payload("c:4"), Some(Change::Certs(TenantId(4))));
        let l = StoredLockout {
            scope: LockScope::Address,
            key: "2001:db8::1".into(),
            until_ms: 42,
        };
        assert_eq!(
            parse_payload(&lockout_payload(&l)),
            Some(Change::Lockout(l))
        );
        assert_eq!(parse_payload("l:nope:1:k"), None);
        assert_eq!(parse_payload("x:1:y"), None);
        assert_eq!(parse_payload("d:nope:y"), None);
    }
}
