//! Brute-force state in PostgreSQL: familiar addresses (tenant-fenced like every device table) and
//! failure counts and lockouts shared by every replica (announced on the NOTIFY channel).

use super::*;

impl PgStore {
    /// One statement per batch, whatever its size and tenants (`mqgate_remember_addresses`,
    /// migrations 0012, 0016 and 0017: per tenant, fenced to it, an upsert by device id, then a
    /// trim of the devices over [`FAMILIAR_KEEP`]). The table has no foreign keys, whose row locks
    /// on the device and the tenant cost more than the upsert: a trigger on `devices` takes the
    /// addresses along (migration 0014).
    pub(crate) async fn remember_addresses(&self, seen: &[AddressSeen]) -> StoreResult<()> {
        // Each (tenant, device, address) once with its latest time: one INSERT may not touch a
        // row twice.
        let mut latest: std::collections::HashMap<(i64, i64, &str), i64> =
            std::collections::HashMap::with_capacity(seen.len());
        for s in seen {
            let at = latest
                .entry((s.tenant.0, s.device, s.address.as_str()))
                .or_insert(s.at_ms);
            *at = (*at).max(s.at_ms);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let n = latest.len();
        let (mut tenants, mut devices, mut addresses, mut ats) = (
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
            Vec::with_capacity(n),
        );
        for ((tenant, device, address), at) in latest {
            tenants.push(tenant);
            devices.push(device);
            addresses.push(address.to_string());
            ats.push(at);
        }
        sqlx::query!(
            r#"SELECT TRUE AS "done!" FROM mqgate_remember_addresses($1, $2, $3, $4, $5, $6)"#,
            &tenants,
            &devices,
            &addresses,
            &ats,
            FAMILIAR_KEEP,
            FAMILIAR_REFRESH_MS
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn familiar_addresses(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        let mut tx = self.scoped(t).await?;
        let rs = sqlx::query!(
            "SELECT f.address, f.last_ok_ms FROM familiar_addresses f JOIN devices d ON d.id = f.device_id \
             WHERE f.tenant_id = $1 AND d.tenant_id = $1 AND d.client_id = $2 ORDER BY f.last_ok_ms DESC, f.address",
            t.0,
            client_id
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(rs.into_iter().map(|r| (r.address, r.last_ok_ms)).collect())
    }

    pub(crate) async fn count_failure(
        &self,
        scope: LockScope,
        key: &str,
        now_ms: i64,
        rule: FailureRule,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        // A window that is over starts again with this failure.
        let failures = sqlx::query_scalar!(
            "INSERT INTO auth_failures (scope, key, window_start_ms, failures) VALUES ($1, $2, $3, 1) \
             ON CONFLICT (scope, key) DO UPDATE SET \
             failures = CASE WHEN auth_failures.window_start_ms <= $3 - $4 THEN 1 ELSE auth_failures.failures + 1 END, \
             window_start_ms = CASE WHEN auth_failures.window_start_ms <= $3 - $4 THEN $3 ELSE auth_failures.window_start_ms END \
             RETURNING failures",
            scope.as_str(),
            key,
            now_ms,
            rule.window_ms
        )
        .fetch_one(&mut *tx)
        .await?;
        if u32::try_from(failures).unwrap_or(0) < rule.max {
            tx.commit().await?;
            return Ok(None);
        }
        let until = now_ms.saturating_add(rule.lockout_ms);
        // Only one failure starts a lockout: the others of the same window find it in force.
        let started = sqlx::query!(
            "UPDATE auth_failures SET locked_until_ms = $3, failures = 0, window_start_ms = $4 \
             WHERE scope = $1 AND key = $2 AND locked_until_ms <= $4",
            scope.as_str(),
            key,
            until,
            now_ms
        )
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !started {
            tx.commit().await?;
            return Ok(None);
        }
        let l = StoredLockout {
            scope,
            key: key.to_string(),
            until_ms: until,
        };
        Self::commit_announcing(tx, &lockout_payload(&l)).await?;
        Ok(Some(until))
    }

    pub(crate) async fn put_lockout(&self, l: &StoredLockout) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO auth_failures (scope, key, window_start_ms, failures, locked_until_ms) VALUES ($1, $2, $3, 0, $3) \
             ON CONFLICT (scope, key) DO UPDATE SET locked_until_ms = GREATEST(auth_failures.locked_until_ms, EXCLUDED.locked_until_ms)",
            l.scope.as_str(),
            l.key,
            l.until_ms
        )
        .execute(&mut *tx)
        .await?;
        Self::commit_announcing(tx, &lockout_payload(l)).await
    }

    pub(crate) async fn active_lockouts(&self, now_ms: i64) -> StoreResult<Vec<StoredLockout>> {
        let rs = sqlx::query!(
            "SELECT scope, key, locked_until_ms FROM auth_failures WHERE locked_until_ms > $1",
            now_ms
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rs
            .into_iter()
            .filter_map(|r| {
                Some(StoredLockout {
                    scope: LockScope::parse(&r.scope)?,
                    key: r.key,
                    until_ms: r.locked_until_ms,
                })
            })
            .collect())
    }

    pub(crate) async fn clear_failures(&self, key: &str) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let scopes = sqlx::query_scalar!(
            "DELETE FROM auth_failures WHERE key = $1 RETURNING scope",
            key
        )
        .fetch_all(&mut *tx)
        .await?;
        for scope in scopes.iter().filter_map(|s| LockScope::parse(s)) {
            let l = StoredLockout {
                scope,
                key: key.to_string(),
                until_ms: 0,
            };
            sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, lockout_payload(&l))
                .fetch_one(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(!scopes.is_empty())
    }

    pub(crate) async fn purge_failures(&self, now_ms: i64, window_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query!(
            "DELETE FROM auth_failures WHERE locked_until_ms <= $1 AND window_start_ms <= $1 - $2",
            now_ms,
            window_ms
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
