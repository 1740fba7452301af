//! Reads for the hot path: resolving a client id, the one-query cache fill (one JSON document),
//! and bulk loads for warm-up.

use super::*;

/// The cache fill of one client id: the same document PostgreSQL's `mqgate_fill_clients` builds
/// (`json(…)` keeps nested documents JSON through the scalar subqueries).
const FILL_SQL: &str = "SELECT json_object(
    'tenant_name', t.name,
    'device', json_object(
        'id', d.id, 'tenant_id', d.tenant_id, 'client_id', d.client_id, 'username', d.username,
        'enabled', json(CASE WHEN d.enabled THEN 'true' ELSE 'false' END), 'created_at', d.created_at),
    'credentials', json((
        SELECT json_group_array(json_object(
            'id', c.id, 'kind', c.kind, 'digest', c.digest, 'expires_at', c.expires_at))
        FROM credentials c WHERE c.tenant_id = d.tenant_id AND c.device_id = d.id)),
    'rules', json((
        SELECT json_group_array(json_object(
            'id', r.id, 'device_id', r.device_id, 'permission', r.permission, 'action', r.action,
            'topic', r.topic))
        FROM acl_rules r WHERE r.tenant_id = d.tenant_id AND (r.device_id = d.id OR r.device_id IS NULL))),
    'limits', json((
        SELECT json_group_array(json_object(
            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
        FROM rate_limits l WHERE l.tenant_id = d.tenant_id AND (l.device_id = d.id OR l.device_id IS NULL)))
)
FROM client_directory cd
JOIN devices d ON d.tenant_id = cd.tenant_id AND d.client_id = cd.client_id
JOIN tenants t ON t.id = d.tenant_id
WHERE cd.client_id = ?";

impl SqliteStore {
    pub(crate) async fn resolve_client(&self, client_id: &str) -> StoreResult<Option<TenantId>> {
        let t: Option<i64> =
            sqlx::query_scalar("SELECT tenant_id FROM client_directory WHERE client_id = ?")
                .bind(client_id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(t.map(TenantId))
    }

    /// The hot path's cache fill: the device behind a client id with everything it needs, as one
    /// JSON document built by one query ([`FILL_SQL`]), decoded by the shared [`rows::FillDoc`].
    pub(crate) async fn load_client(&self, client_id: &str) -> StoreResult<Option<DeviceRecord>> {
        let doc: Option<String> = sqlx::query_scalar(FILL_SQL)
            .bind(client_id)
            .fetch_optional(&self.pool)
            .await?;
        doc.map(|d| rows::FillDoc::parse(&d)?.into_record())
            .transpose()
    }

    /// Cache fills for many client ids. SQLite has no network round trip to save, so this is one
    /// fill per id (keeping the pool's connections free for concurrent fills).
    pub(crate) async fn load_clients(
        &self,
        ids: &[String],
    ) -> StoreResult<std::collections::HashMap<String, DeviceRecord>> {
        let mut out = std::collections::HashMap::with_capacity(ids.len());
        for id in ids {
            if let Some(rec) = self.load_client(id).await? {
                out.insert(id.clone(), rec);
            }
        }
        Ok(out)
    }

    pub(crate) async fn load_device(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        let mut all = self.load(t, Some(client_id)).await?;
        Ok(all.pop())
    }

    pub(crate) async fn load_tenant_devices(&self, t: TenantId) -> StoreResult<Vec<DeviceRecord>> {
        self.load(t, None).await
    }

    /// One device (`Some`) or all of a tenant's, in five indexed queries whatever the count.
    async fn load(&self, t: TenantId, one: Option<&str>) -> StoreResult<Vec<DeviceRecord>> {
        let name: Option<String> = sqlx::query_scalar("SELECT name FROM tenants WHERE id = ?")
            .bind(t.0)
            .fetch_optional(&self.pool)
            .await?;
        let Some(name) = name else { return Ok(vec![]) };
        let q = match one {
            Some(c) => sqlx::query(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE tenant_id = ? AND client_id = ?"
            ))
            .bind(t.0)
            .bind(c),
            None => sqlx::query(concat!(
                "SELECT ",
                device_cols!(),
                " FROM devices WHERE tenant_id = ? ORDER BY client_id"
            ))
            .bind(t.0),
        };
        let devices: Vec<Device> = q
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(device)
            .collect::<Result<_, _>>()?;
        let one_id = match (one, devices.first()) {
            (_, None) => return Ok(vec![]),
            (Some(_), Some(d)) => Some(d.id),
            (None, Some(_)) => None,
        };
        let creds = self
            .scoped_rows(
                t,
                one_id,
                "SELECT id, device_id, kind, digest, created_at, expires_at FROM credentials WHERE tenant_id = ?1 AND device_id = ?2 ORDER BY id",
                "SELECT id, device_id, kind, digest, created_at, expires_at FROM credentials WHERE tenant_id = ?1 ORDER BY id",
            )
            .await?
            .iter()
            .map(credential)
            .collect::<StoreResult<Vec<_>>>()?;
        let rules = self
            .scoped_rows(
                t,
                one_id,
                "SELECT r.id, r.device_id, NULL AS client_id, r.permission, r.action, r.topic FROM acl_rules r WHERE r.tenant_id = ?1 AND r.device_id IS NULL \
                 UNION ALL SELECT r.id, r.device_id, d.client_id, r.permission, r.action, r.topic FROM acl_rules r JOIN devices d ON d.id = r.device_id \
                 WHERE r.tenant_id = ?1 AND r.device_id = ?2 ORDER BY 1",
                "SELECT r.id, r.device_id, d.client_id, r.permission, r.action, r.topic FROM acl_rules r LEFT JOIN devices d ON d.id = r.device_id \
                 WHERE r.tenant_id = ?1 ORDER BY r.id",
            )
            .await?
            .iter()
            .map(rule)
            .collect::<StoreResult<Vec<_>>>()?;
        let limits = self
            .scoped_rows(
                t,
                one_id,
                "SELECT device_id, per_sec, burst FROM rate_limits WHERE tenant_id = ?1 AND (device_id IS NULL) \
                 UNION ALL SELECT device_id, per_sec, burst FROM rate_limits WHERE tenant_id = ?1 AND device_id = ?2",
                "SELECT device_id, per_sec, burst FROM rate_limits WHERE tenant_id = ?1",
            )
            .await?
            .iter()
            .map(limit)
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(rows::assemble(&name, devices, creds, rules, limits))
    }

    /// Runs `for_one` (binding the device id as `?2`) or `for_all`, both scoped to tenant `?1`.
    async fn scoped_rows(
        &self,
        t: TenantId,
        one: Option<i64>,
        for_one: &'static str,
        for_all: &'static str,
    ) -> StoreResult<Vec<SqliteRow>> {
        let q = match one {
            Some(id) => sqlx::query(for_one).bind(t.0).bind(id),
            None => sqlx::query(for_all).bind(t.0),
        };
        Ok(q.fetch_all(&self.pool).await?)
    }
}
