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

    /// One device (`Some`) or all of a tenant's, in a fixed number of indexed queries whatever
    /// the count: children are fetched by `device_id = ANY(ids)`.
    async fn load(&self, t: TenantId, only: Option<&str>) -> StoreResult<Vec<DeviceRecord>> {
        let mut tx = self.scoped(t).await?;
        let Some(name) = sqlx::query_scalar!("SELECT name FROM tenants WHERE id = $1", t.0)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(vec![]);
        };
        let devices = match only {
            Some(c) => sqlx::query_as!(
                DeviceRow,
                "SELECT id, tenant_id, client_id, username, enabled, created_at FROM devices WHERE tenant_id = $1 AND client_id = $2",
                t.0,
                c
            )
            .fetch_all(&mut *tx)
            .await?,
            None => sqlx::query_as!(
                DeviceRow,
                "SELECT id, tenant_id, client_id, username, enabled, created_at FROM devices WHERE tenant_id = $1 ORDER BY client_id",
                t.0
            )
            .fetch_all(&mut *tx)
            .await?,
        };
        if devices.is_empty() {
            return Ok(vec![]);
        }
        let ids: Vec<i64> = devices.iter().map(|d| d.id).collect();
        let creds = sqlx::query!(
            "SELECT id, device_id, kind, digest, created_at, expires_at FROM credentials \
             WHERE tenant_id = $1 AND device_id = ANY($2) ORDER BY id",
            t.0,
            &ids
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| {
            let c = CredentialView {
                id: r.id,
                kind: rows::kind(&r.kind)?,
                digest: r.digest,
                expires_at: r.expires_at,
            };
            Ok((r.device_id, c))
        })
        .collect::<StoreResult<Vec<_>>>()?;
        let rules = sqlx::query!(
            r#"SELECT r.id AS "id!", r.device_id, NULL::TEXT AS "client_id?", r.permission AS "permission!", r.action AS "action!", r.topic AS "topic!"
               FROM acl_rules r WHERE r.tenant_id = $1 AND r.device_id IS NULL
               UNION ALL
               SELECT r.id, r.device_id, d.client_id, r.permission, r.action, r.topic
               FROM acl_rules r JOIN devices d ON d.id = r.device_id
               WHERE r.tenant_id = $1 AND d.tenant_id = $1 AND r.device_id = ANY($2)
               ORDER BY 1"#,
            t.0,
            &ids
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| RuleRow { id: r.id, device_id: r.device_id, client_id: r.client_id, permission: r.permission, action: r.action, topic: r.topic }.into_stored())
        .collect::<StoreResult<Vec<_>>>()?;
        let limits = sqlx::query!(
            r#"SELECT device_id, per_sec AS "per_sec!", burst AS "burst!" FROM rate_limits WHERE tenant_id = $1 AND device_id IS NULL
               UNION ALL
               SELECT device_id, per_sec, burst FROM rate_limits WHERE tenant_id = $1 AND device_id = ANY($2)"#,
            t.0,
            &ids
        )
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|r| Ok((r.device_id, rows::rate(r.per_sec, i64::from(r.burst))?)))
        .collect::<StoreResult<Vec<_>>>()?;
        tx.commit().await?;
        let devices = devices.into_iter().map(Device::from).collect();
        Ok(rows::assemble(&name, devices, creds, rules, limits))
    }
}
