//! Brute-force state in SQLite: one node, so nothing to announce; familiar addresses and
//! lockouts survive a restart.

use super::*;

impl SqliteStore {
    /// One statement per batch, whatever its size; the bound of [`FAMILIAR_KEEP`] addresses a
    /// device is kept by a trigger (migration 0008), so nothing comes back from the upsert.
    pub(crate) async fn remember_addresses(&self, seen: &[AddressSeen]) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let logins = serde_json::to_string(
            &seen
                .iter()
                .map(|s| (s.tenant.0, s.device, &s.address, s.at_ms))
                .collect::<Vec<_>>(),
        )
        .map_err(|e| StoreError::Invalid(e.to_string()))?;
        // A device that is gone, or not of the login's tenant, is skipped by the join (on the
        // devices' own key); a (device, address) seen twice in the batch keeps its latest time
        // (SQLite applies the upsert row by row); a row whose time would move by less than the
        // refresh is left alone.
        sqlx::query(
            "INSERT INTO familiar_addresses (tenant_id, device_id, address, last_ok_ms) \
             SELECT d.tenant_id, d.id, j.value ->> 2, j.value ->> 3 \
             FROM json_each(?1) j JOIN devices d ON d.id = j.value ->> 1 AND d.tenant_id = j.value ->> 0 \
             WHERE true \
             ON CONFLICT (device_id, address) DO UPDATE SET last_ok_ms = excluded.last_ok_ms \
             WHERE excluded.last_ok_ms > familiar_addresses.last_ok_ms + ?2",
        )
        .bind(&logins)
        .bind(FAMILIAR_REFRESH_MS)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn familiar_addresses(
        &self,
        t: TenantId,
        client_id: &str,
    ) -> StoreResult<Vec<(String, i64)>> {
        Ok(sqlx::query_as(
            "SELECT f.address, f.last_ok_ms FROM familiar_addresses f JOIN devices d ON d.id = f.device_id \
             WHERE f.tenant_id = ?1 AND d.tenant_id = ?1 AND d.client_id = ?2 ORDER BY f.last_ok_ms DESC, f.address",
        )
        .bind(t.0)
        .bind(client_id)
        .fetch_all(&self.pool)
        .await?)
    }

    pub(crate) async fn count_failure(
        &self,
        scope: LockScope,
        key: &str,
        now_ms: i64,
        rule: FailureRule,
    ) -> StoreResult<Option<i64>> {
        let mut tx = self.pool.begin().await?;
        let failures: i64 = sqlx::query_scalar(
            "INSERT INTO auth_failures (scope, key, window_start_ms, failures) VALUES (?1, ?2, ?3, 1) \
             ON CONFLICT (scope, key) DO UPDATE SET \
             failures = CASE WHEN window_start_ms <= ?3 - ?4 THEN 1 ELSE failures + 1 END, \
             window_start_ms = CASE WHEN window_start_ms <= ?3 - ?4 THEN ?3 ELSE window_start_ms END \
             RETURNING failures",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(now_ms)
        .bind(rule.window_ms)
        .fetch_one(&mut *tx)
        .await?;
        if failures < i64::from(rule.max) {
            tx.commit().await?;
            return Ok(None);
        }
        let until = now_ms.saturating_add(rule.lockout_ms);
        let started = sqlx::query(
            "UPDATE auth_failures SET locked_until_ms = ?3, failures = 0, window_start_ms = ?4 \
             WHERE scope = ?1 AND key = ?2 AND locked_until_ms <= ?4",
        )
        .bind(scope.as_str())
        .bind(key)
        .bind(until)
        .bind(now_ms)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        tx.commit().await?;
        Ok(started.then_some(until))
    }

    pub(crate) async fn put_lockout(&self, l: &StoredLockout) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO auth_failures (scope, key, window_start_ms, failures, locked_until_ms) VALUES (?1, ?2, ?3, 0, ?3) \
             ON CONFLICT (scope, key) DO UPDATE SET locked_until_ms = MAX(locked_until_ms, excluded.locked_until_ms)",
        )
        .bind(l.scope.as_str())
        .bind(&l.key)
        .bind(l.until_ms)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn active_lockouts(&self, now_ms: i64) -> StoreResult<Vec<StoredLockout>> {
        let rs: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT scope, key, locked_until_ms FROM auth_failures WHERE locked_until_ms > ?",
        )
        .bind(now_ms)
        .fetch_all(&self.pool)
        .await?;
        Ok(rs
            .into_iter()
            .filter_map(|(scope, key, until_ms)| {
                Some(StoredLockout {
                    scope: LockScope::parse(&scope)?,
                    key,
                    until_ms,
                })
            })
            .collect())
    }

    pub(crate) async fn clear_failures(&self, key: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM auth_failures WHERE key = ?")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub(crate) async fn purge_failures(&self, now_ms: i64, window_ms: i64) -> StoreResult<u64> {
        let done = sqlx::query(
            "DELETE FROM auth_failures WHERE locked_until_ms <= ?1 AND window_start_ms <= ?1 - ?2",
        )
        .bind(now_ms)
        .bind(window_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
