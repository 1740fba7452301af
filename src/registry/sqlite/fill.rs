//! Reads for the hot path: resolving a client id, the one-query cache fill (one JSON document),
//! and bulk loads for warm-up.

use super::*;

/// One device's record as a JSON document over `devices d JOIN tenants t`: the same document
/// PostgreSQL's `mqgate_device_doc` builds (`json(…)` keeps nested documents JSON through the
/// scalar subqueries). Followed by the FROM clause.
macro_rules! device_doc {
    ($from:literal) => {
        concat!("SELECT json_object(
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
", $from)
    };
}

/// The cache fill of one client id.
const FILL_SQL: &str = device_doc!(
    " FROM client_directory cd \
     JOIN devices d ON d.tenant_id = cd.tenant_id AND d.client_id = cd.client_id \
     JOIN tenants t ON t.id = d.tenant_id WHERE cd.client_id = ?"
);

/// One device (`?2`) or, with `?2` NULL, every device of tenant `?1`, by client id.
const LOAD_SQL: &str = device_doc!(
    " FROM devices d JOIN tenants t ON t.id = d.tenant_id \
     WHERE d.tenant_id = ?1 AND (?2 IS NULL OR d.client_id = ?2) ORDER BY d.client_id"
);

/// The devices of tenant `?1` whose client id sorts after `?2`, at most `?3`, as one warm-up page
/// document ([`rows::PageDoc`]; PostgreSQL builds the same): the page is a range of the
/// `(tenant_id, client_id)` index, each device joined with its credentials as flat arrays, the
/// page's device rules and limits and the tenant's read once each; one row per page (the driver
/// hands rows over one by one between threads).
const PAGE_SQL: &str = "
WITH page AS (
    SELECT d.*, row_number() OVER (ORDER BY d.client_id) AS pos FROM (
        SELECT * FROM devices WHERE tenant_id = ?1 AND client_id > ?2 ORDER BY client_id LIMIT ?3) d)
SELECT json_object(
    'tenant_id', ?1,
    'tenant_name', (SELECT name FROM tenants WHERE id = ?1),
    'rules', json((
        SELECT json_group_array(json_object(
            'id', r.id, 'device_id', r.device_id, 'permission', r.permission, 'action', r.action,
            'topic', r.topic))
        FROM acl_rules r WHERE r.tenant_id = ?1 AND r.device_id IS NULL)),
    'limits', json((
        SELECT json_group_array(json_object(
            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
        FROM rate_limits l WHERE l.tenant_id = ?1 AND l.device_id IS NULL)),
    'devices', json((
        SELECT json_group_array(json_array(
            p.pos, p.id, p.client_id, p.username, CASE WHEN p.enabled THEN 1 ELSE 0 END, p.created_at,
            c.id, c.kind, c.digest, c.expires_at))
        FROM page p LEFT JOIN credentials c ON c.tenant_id = p.tenant_id AND c.device_id = p.id)),
    'device_rules', json((
        SELECT json_group_array(json_object(
            'id', r.id, 'device_id', r.device_id, 'permission', r.permission, 'action', r.action,
            'topic', r.topic))
        FROM acl_rules r WHERE r.tenant_id = ?1 AND r.device_id IN (SELECT id FROM page))),
    'device_limits', json((
        SELECT json_group_array(json_object(
            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
        FROM rate_limits l WHERE l.tenant_id = ?1 AND l.device_id IN (SELECT id FROM page))))
";

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

    pub(crate) async fn load_tenant_page(
        &self,
        t: TenantId,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let page: String = sqlx::query_scalar(PAGE_SQL)
            .bind(t.0)
            .bind(after.unwrap_or(""))
            .bind(limit.max(0))
            .fetch_one(&self.pool)
            .await?;
        rows::PageDoc::parse(&page)?.into_records()
    }

    /// One device (`Some`) or all of a tenant's: the same documents as the cache fill.
    async fn load(&self, t: TenantId, one: Option<&str>) -> StoreResult<Vec<DeviceRecord>> {
        let docs: Vec<String> = sqlx::query_scalar(LOAD_SQL)
            .bind(t.0)
            .bind(one)
            .fetch_all(&self.pool)
            .await?;
        docs.iter()
            .map(|d| rows::FillDoc::parse(d)?.into_record())
            .collect()
    }
}
