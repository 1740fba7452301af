//! Reads for the hot path: resolving a client id, the batched cache fill and warm-up pages (one
//! set-wise page document per tenant, `mqgate_page_doc`, each call one statement: migration 0012),
//! and single device reads (one document per device, `mqgate_device_doc`).

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

    /// Cache fills for many client ids in one statement (`mqgate_fill_pages`): their tenants from
    /// the directory (the one lookup not scoped by tenant), then per tenant, fenced to it, one
    /// page document of its devices among them. A batch was five round trips (directory, BEGIN,
    /// fence, page, COMMIT): most of PostgreSQL's time in a reconnect storm. The function keeps
    /// generic plans (migration 0015): its own plan per call was a sixth of a fill. It runs on a
    /// held connection (`held`): no ping per fill as the connection goes back to the pool.
    pub(crate) async fn load_clients(
        &self,
        ids: &[String],
    ) -> StoreResult<HashMap<String, DeviceRecord>> {
        // Boxed: the fill is awaited inside every login's future that misses the cache, and the
        // held connection's acquire, ping and statement inline made a CONNECT's 5 KB.
        let pages = Box::pin(self.on_held(async |conn| {
            Ok(
                sqlx::query_scalar!(r#"SELECT mqgate_fill_pages($1) AS "page!""#, ids)
                    .fetch_all(conn)
                    .await?,
            )
        }))
        .await?;
        let mut out = HashMap::with_capacity(ids.len());
        for page in pages {
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

    /// A warm-up page: the tenant's devices after client id `after`, at most `limit`, in one
    /// statement fenced to the tenant (`mqgate_tenant_page`).
    pub(crate) async fn load_tenant_page(
        &self,
        t: TenantId,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let page = sqlx::query_scalar!(
            r#"SELECT mqgate_tenant_page($1, $2, $3) AS "page!""#,
            t.0,
            after,
            limit.max(0)
        )
        .fetch_one(&self.pool)
        .await?;
        rows::PageDoc::parse(&page)?.into_records()
    }

    /// Where warm-up pages of `every` devices of tenant `t` start: the client id before each
    /// page's first (`None` for the first page), read from the (tenant_id, client_id) index, so
    /// pages can be read side by side on separate connections.
    pub(crate) async fn page_starts(
        &self,
        t: TenantId,
        every: i64,
    ) -> StoreResult<Vec<Option<String>>> {
        let mut tx = self.scoped(t).await?;
        let ends = sqlx::query_scalar!(
            r#"SELECT s.client_id AS "client_id!" FROM (
                   SELECT client_id, row_number() OVER (ORDER BY client_id) AS n
                   FROM devices WHERE tenant_id = $1) s
               WHERE s.n % $2 = 0 ORDER BY s.client_id"#,
            t.0,
            every.max(1)
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(std::iter::once(None)
            .chain(ends.into_iter().map(Some))
            .collect())
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
