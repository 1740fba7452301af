//! Reads for the hot path: resolving a client id, the one-round-trip cache fill (one JSON document
//! per device), and bulk loads for warm-up.

use std::collections::HashMap;

use super::*;

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

    /// Cache fills for many client ids in one round trip: one JSON document per device from
    /// `mqgate_fill_clients` (migration 0010), decoded by the shared [`rows::FillDoc`].
    pub(crate) async fn load_clients(
        &self,
        ids: &[String],
    ) -> StoreResult<HashMap<String, DeviceRecord>> {
        let rows = sqlx::query!("SELECT cid, doc FROM mqgate_fill_clients($1)", ids)
            .fetch_all(&self.pool)
            .await?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let (Some(cid), Some(doc)) = (r.cid, r.doc) else {
                return Err(StoreError::Invalid(
                    "incomplete row from mqgate_fill_clients".into(),
                ));
            };
            out.insert(cid, rows::FillDoc::parse(&doc)?.into_record()?);
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

    /// A warm-up page: the tenant's devices after client id `after`, at most `limit`, as one
    /// page document ([`rows::PageDoc`], the shape SQLite builds too) in one row, set-wise (a
    /// device document per device costs a correlated subquery per part at a million devices).
    pub(crate) async fn load_tenant_page(
        &self,
        t: TenantId,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let mut tx = self.scoped(t).await?;
        let page = sqlx::query_scalar!(
            r#"WITH page AS (
                SELECT d.*, row_number() OVER (ORDER BY d.client_id) AS pos FROM (
                    SELECT * FROM devices WHERE tenant_id = $1 AND client_id > COALESCE($2, '')
                    ORDER BY client_id LIMIT $3) d)
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
            )::TEXT AS "page!""#,
            t.0,
            after,
            limit.max(0)
        )
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        rows::PageDoc::parse(&page)?.into_records()
    }

    /// One device (`Some`) or all of a tenant's (by client id): one document per device from
    /// `mqgate_device_doc` (migration 0010), the same as the cache fill.
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
