//! Reads for the hot path: resolving a client id, the one-query cache fill (one JSON document),
//! and bulk loads for warm-up.

use super::*;

/// One device's record as a JSON document over `devices d JOIN tenants t`, an expression: the
/// same document PostgreSQL's `mqgate_device_doc` builds (`json(…)` keeps nested documents JSON
/// through the scalar subqueries; the whole is of the JSON subtype while it stays in its own
/// SELECT). A device's and its tenant's rules (and limits) are a `UNION ALL` of two index lookups:
/// an `OR` of the two scanned every rule of the tenant for each device.
macro_rules! device_doc_expr {
    () => {
        "json_object(
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
        FROM (SELECT * FROM acl_rules WHERE tenant_id = d.tenant_id AND device_id = d.id
              UNION ALL
              SELECT * FROM acl_rules WHERE tenant_id = d.tenant_id AND device_id IS NULL) r)),
    'limits', json((
        SELECT json_group_array(json_object(
            'device_id', l.device_id, 'per_sec', l.per_sec, 'burst', l.burst))
        FROM (SELECT * FROM rate_limits WHERE tenant_id = d.tenant_id AND device_id = d.id
              UNION ALL
              SELECT * FROM rate_limits WHERE tenant_id = d.tenant_id AND device_id IS NULL) l))
)"
    };
}

/// `SELECT` of that document, followed by the FROM clause.
macro_rules! device_doc {
    ($from:literal) => {
        concat!("SELECT ", device_doc_expr!(), $from)
    };
}

/// The cache fill of one client id.
const FILL_SQL: &str = device_doc!(
    " FROM client_directory cd \
     JOIN devices d ON d.tenant_id = cd.tenant_id AND d.client_id = cd.client_id \
     JOIN tenants t ON t.id = d.tenant_id WHERE cd.client_id = ?"
);

/// The cache fills of the client ids in the JSON array `?1`, as one JSON array of documents in one
/// row (the driver hands each row over between threads: a row per device would cost a thread
/// hand-off per device in a reconnect storm). The documents are aggregated where they are built:
/// through a subquery they would lose their JSON subtype, and `json(…)` re-parsed each one.
const FILL_MANY_SQL: &str = concat!(
    "SELECT json_group_array(",
    device_doc_expr!(),
    ") FROM client_directory cd \
     JOIN devices d ON d.tenant_id = cd.tenant_id AND d.client_id = cd.client_id \
     JOIN tenants t ON t.id = d.tenant_id \
     WHERE cd.client_id IN (SELECT value FROM json_each(?1))"
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

    /// Cache fills for many client ids in one statement and one row ([`FILL_MANY_SQL`]): a
    /// reconnect storm's concurrent misses cost one hand-off to SQLite's thread per batch, on the
    /// connection the fills keep (its page cache warm).
    pub(crate) async fn load_clients(
        &self,
        ids: &[String],
    ) -> StoreResult<std::collections::HashMap<String, DeviceRecord>> {
        let ids = serde_json::to_string(ids)
            .map_err(|_| StoreError::Invalid("client ids not encodable".into()))?;
        let docs: String = self
            .on_held(async |conn| {
                Ok(sqlx::query_scalar(FILL_MANY_SQL)
                    .bind(ids)
                    .fetch_one(conn)
                    .await?)
            })
            .await?;
        rows::FillDoc::parse_many(&docs)?
            .into_iter()
            .map(|d| {
                let rec = d.into_record()?;
                Ok((rec.device.client_id.clone(), rec))
            })
            .collect()
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::held::held_contract;

    /// The held-connection contract (`registry::held`): fills stay on one connection, its page
    /// cache warm.
    #[tokio::test]
    async fn fills_keep_their_connection_until_a_statement_fails() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("held.db").display());
        let store = SqliteStore::connect(&url).await.unwrap();
        store.migrate().await.unwrap();
        held_contract!(
            store,
            async {
                // A write that waits for another connection's write lock.
                let mut locker = store.pool.begin().await.unwrap();
                sqlx::query("INSERT INTO tenants (name, created_at) VALUES ('locker', 0)")
                    .execute(&mut *locker)
                    .await
                    .unwrap();
                let slow = store.on_held(async |conn| {
                    sqlx::query("INSERT INTO tenants (name, created_at) VALUES ('waiter', 0)")
                        .execute(conn)
                        .await?;
                    Ok(())
                });
                assert!(
                    tokio::time::timeout(Duration::from_millis(100), slow)
                        .await
                        .is_err()
                );
                locker.rollback().await.unwrap();
            }
            .await
        );
    }
}
