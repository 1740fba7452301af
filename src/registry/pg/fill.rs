//! Reads for the hot path: resolving a client id, the batched cache fill and warm-up pages (one
//! set-wise page document per tenant, [`page_doc!`]), and single device reads (one document per
//! device, `mqgate_device_doc`).

use std::collections::HashMap;

use super::*;

/// A page document ([`rows::PageDoc`], the shape SQLite's warm-up builds too) over the devices a
/// `page` CTE selects (with `pos`, their order) in tenant `$1`: each device with each credential as
/// a flat array, the page's device rules and limits, the tenant's read once; one row. Set-wise:
/// a document per device costs a correlated subquery per part (most of PostgreSQL's time in a
/// reconnect storm, and of a warm start).
macro_rules! page_doc {
    ($page:literal) => {
        concat!("WITH page AS (", $page, ")
            SELECT json_build_object(
                'tenant_id', $1::BIGINT,
                'tenant_name', (SELECT name FROM tenants WHERE id = $1),
                'rules', COALESCE((
                    SELECT json_agg(json_build_object(
                        'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                        'action', r.action, 'topic', r.topic))
                    FROM acl_rules r WHERE r.tenant_id = $1 AND r.device_id IS NULL), '[]'::JSON),
                'limits', COALESCE((
                    SELECT json_agg(json_build_object(
                        'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
                    FROM rate_limits l WHERE l.tenant_id = $1 AND l.device_id IS NULL), '[]'::JSON),
                'devices', COALESCE((
                    SELECT json_agg(json_build_array(
                        p.pos, p.id, p.client_id, p.username, CASE WHEN p.enabled THEN 1 ELSE 0 END,
                        p.created_at, c.id, c.kind, c.digest, c.expires_at))
                    FROM page p LEFT JOIN credentials c
                        ON c.tenant_id = p.tenant_id AND c.device_id = p.id), '[]'::JSON),
                'device_rules', COALESCE((
                    SELECT json_agg(json_build_object(
                        'id', r.id, 'device_id', r.device_id, 'permission', r.permission,
                        'action', r.action, 'topic', r.topic))
                    FROM acl_rules r
                    WHERE r.tenant_id = $1 AND r.device_id IN (SELECT id FROM page)), '[]'::JSON),
                'device_limits', COALESCE((
                    SELECT json_agg(json_build_object(
                        'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
                    FROM rate_limits l
                    WHERE l.tenant_id = $1 AND l.device_id IN (SELECT id FROM page)), '[]'::JSON)
            )::TEXT
")
    };
}

/// A warm-up page: tenant `$1`'s devices after client id `$2` (all with NULL), at most `$3`.
const PAGE_SQL: &str = page_doc!(
    "SELECT d.*, row_number() OVER (ORDER BY d.client_id) AS pos FROM (
        SELECT * FROM devices WHERE tenant_id = $1 AND client_id > COALESCE($2, '')
        ORDER BY client_id LIMIT $3) d"
);

/// The cache fills of tenant `$1`'s devices among the client ids `$2`.
const FILL_SQL: &str = page_doc!(
    "SELECT d.*, row_number() OVER (ORDER BY d.id) AS pos FROM devices d
     WHERE d.tenant_id = $1 AND d.client_id = ANY ($2)"
);

impl PgStore {
    pub(crate) async fn resolve_client(&self, client_id: &str) -> StoreResult<Option<TenantId>> {
        let t = sqlx::query_scalar!(
            "SELECT tenant_id FROM client_directory WHERE client_id = $1",
            client_id
        )
        .fetch_optional(&self.pool)
        .await?;
        Ok(t.map(TenantId))
    }

    /// The hot path's cache fill for one client id (a batch of one).
    pub(crate) async fn load_client(&self, client_id: &str) -> StoreResult<Option<DeviceRecord>> {
        Ok(self
            .load_clients(&[client_id.to_string()])
            .await?
            .remove(client_id))
    }

    /// Cache fills for many client ids: their tenants from the directory (the one lookup not
    /// scoped by tenant), then per tenant one set-wise statement ([`FILL_SQL`]) fenced to it.
    pub(crate) async fn load_clients(
        &self,
        ids: &[String],
    ) -> StoreResult<HashMap<String, DeviceRecord>> {
        let owners = sqlx::query!(
            "SELECT client_id, tenant_id FROM client_directory WHERE client_id = ANY ($1)",
            ids
        )
        .fetch_all(&self.pool)
        .await?;
        let mut by_tenant: std::collections::BTreeMap<i64, Vec<String>> = Default::default();
        for o in owners {
            by_tenant.entry(o.tenant_id).or_default().push(o.client_id);
        }
        let mut out = HashMap::with_capacity(ids.len());
        for (tenant, ids) in by_tenant {
            let mut tx = self.scoped(TenantId(tenant)).await?;
            let page: String = sqlx::query_scalar(FILL_SQL)
                .bind(tenant)
                .bind(&ids)
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            for rec in rows::PageDoc::parse(&page)?.into_records()? {
                out.insert(rec.device.client_id.clone(), rec);
            }
        }
        Ok(out)
    }

    pub(crate) async fn load_device(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Option<DeviceRecord>> {
        Ok(self.load(t, Some(client_id)).await?.pop())
    }

    pub(crate) async fn load_tenant_devices(&self, t: TenantId) -> StoreResult<Vec<DeviceRecord>> {
        self.load(t, None).await
    }

    /// A warm-up page: the tenant's devices after client id `after`, at most `limit` ([`PAGE_SQL`]).
    pub(crate) async fn load_tenant_page(
        &self,
        t: TenantId,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let mut tx = self.scoped(t).await?;
        let page: String = sqlx::query_scalar(PAGE_SQL)
            .bind(t.0)
            .bind(after)
            .bind(limit.max(0))
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        rows::PageDoc::parse(&page)?.into_records()
    }

    /// One device (`Some`) or all of a tenant's (by client id): one document per device from
    /// `mqgate_device_doc` (migration 0010), decoded as the cache fill is.
    async fn load(&self, t: TenantId, only: Option<&str>) -> StoreResult<Vec<DeviceRecord>> {
        let mut tx = self.scoped(t).await?;
        let docs = sqlx::query_scalar!(
            r#"SELECT mqgate_device_doc(d) AS "doc!" FROM devices d
               WHERE d.tenant_id = $1 AND ($2::TEXT IS NULL OR d.client_id = $2) ORDER BY d.client_id"#,
            t.0,
            only
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        docs.iter()
            .map(|d| rows::FillDoc::parse(d)?.into_record())
            .collect()
    }
}
