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
        Ok(self.load(t, Some(client_id), None, None).await?.pop())
    }

    pub(crate) async fn load_tenant_devices(&self, t: TenantId) -> StoreResult<Vec<DeviceRecord>> {
        self.load(t, None, None, None).await
    }

    pub(crate) async fn load_tenant_page(
        &self,
        t: TenantId,
        after: Option<&str>,
        limit: i64,
    ) -> StoreResult<Vec<DeviceRecord>> {
        self.load(t, None, after, Some(limit.max(0))).await
    }

    /// One device (`Some`) or a tenant's (a page after a client id, by client id): one document
    /// per device from `mqgate_device_doc` (migration 0010), the same as the cache fill.
    async fn load(
        &self,
        t: TenantId,
        only: Option<&str>,
        after: Option<&str>,
        limit: Option<i64>,
    ) -> StoreResult<Vec<DeviceRecord>> {
        let mut tx = self.scoped(t).await?;
        let docs = sqlx::query_scalar!(
            r#"SELECT mqgate_device_doc(d) AS "doc!" FROM devices d
               WHERE d.tenant_id = $1 AND ($2::TEXT IS NULL OR d.client_id = $2)
                 AND ($3::TEXT IS NULL OR d.client_id > $3)
               ORDER BY d.client_id LIMIT $4"#,
            t.0,
            only,
            after,
            limit
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        docs.iter()
            .map(|d| rows::FillDoc::parse(d)?.into_record())
            .collect()
    }
}
