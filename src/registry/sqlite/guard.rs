//! Brute-force state in SQLite: one node, so nothing to announce; familiar addresses and
//! lockouts survive a restart.

use super::*;

impl SqliteStore {
    /// Two statements per batch, whatever its size (a statement or two per login, each a hop to
    /// sqlx's SQLite thread and back, were most of a warm reconnect storm's time), and a third
    /// only when some device then holds more than `keep` addresses.
    pub(crate) async fn remember_addresses(
        &self,
        seen: &[AddressSeen],
        keep: i64,
    ) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        let logins = serde_json::Value::Array(
            seen.iter()
                .map(|s| serde_json::json!([s.tenant.0, s.client_id, s.address, s.at_ms]))
                .collect(),
        )
        .to_string();
        // The first statement writes: a read first would have to upgrade its lock later, which
        // SQLite refuses (busy) while another connection writes. A device that is gone is
        // skipped by the join (fenced to each login's tenant); a (device, address) seen twice in
        // the batch keeps its latest time (SQLite applies the upsert row by row); a row whose
        // time would move by less than the refresh is left alone (and not returned).
        let mut tx = self.pool.begin().await?;
        let devices: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO familiar_addresses (tenant_id, device_id, address, last_ok_ms) \
             SELECT d.tenant_id, d.id, j.value ->> 2, j.value ->> 3 \
             FROM json_each(?1) j JOIN devices d ON d.tenant_id = j.value ->> 0 AND d.client_id = j.value ->> 1 \
             WHERE true \
             ON CONFLICT (device_id, address) DO UPDATE SET last_ok_ms = excluded.last_ok_ms \
             WHERE excluded.last_ok_ms > familiar_addresses.last_ok_ms + ?2 \
             RETURNING device_id",
        )
        .bind(&logins)
        .bind(FAMILIAR_REFRESH_MS)
        .fetch_all(&mut *tx)
        .await?;
        let devices = serde_json::Value::from(devices).to_string();
        // Most devices log in from one address or a few: the bound costs a count, not a delete.
        let over: Vec<i64> = sqlx::query_scalar(
            "SELECT f.device_id FROM familiar_addresses f \
             WHERE f.device_id IN (SELECT value FROM json_each(?1)) \
             GROUP BY f.device_id HAVING COUNT(*) > ?2",
        )
        .bind(&devices)
        .bind(keep)
        .fetch_all(&mut *tx)
        .await?;
        for device_id in over {
            sqlx::query(
                "DELETE FROM familiar_addresses WHERE device_id = ?1 AND address NOT IN \
                 (SELECT address FROM familiar_addresses WHERE device_id = ?1 ORDER BY last_ok_ms DESC, address LIMIT ?2)",
            )
            .bind(device_id)
            .bind(keep)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
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
