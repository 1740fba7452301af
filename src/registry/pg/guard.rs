//! Brute-force state in PostgreSQL: familiar addresses (tenant-fenced like every device table) and
//! failure counts and lockouts shared by every replica (announced on the NOTIFY channel).

use super::*;

impl PgStore {
    pub(crate) async fn remember_addresses(
        &self,
        seen: &[AddressSeen],
        keep: i64,
    ) -> StoreResult<()> {
        let Some(first) = seen.first() else {
            return Ok(());
        };
        let mut tx = self.scoped(first.tenant).await?;
        let mut scope = first.tenant;
        for s in seen {
            if s.tenant != scope {
                sqlx::query!(
                    "SELECT set_config('mqgate.tenant_id', $1, true)",
                    s.tenant.0.to_string()
                )
                .fetch_one(&mut *tx)
                .await?;
                scope = s.tenant;
            }
            Self::remember_in(&mut tx, s.tenant, &s.client_id, &s.address, s.at_ms, keep).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remember_in(
        tx: &mut Tx,
        t: TenantId,
        client_id: &str,
        address: &str,
        at_ms: i64,
        keep: i64,
    ) -> StoreResult<()> {
        let Ok(device_id) = Self::device_id(tx, t, client_id).await else {
            return Ok(());
        };
        sqlx::query!(
            "INSERT INTO familiar_addresses (tenant_id, device_id, address, last_ok_ms) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (device_id, address) DO UPDATE SET last_ok_ms = GREATEST(familiar_addresses.last_ok_ms, EXCLUDED.last_ok_ms)",
            t.0,
            device_id,
            address,
            at_ms
        )
        .execute(&mut **tx)
        .await?;
        // Most devices log in from one address or a few: the bound costs a count, not a delete.
        let held = sqlx::query_scalar!(
            r#"SELECT COUNT(*) AS "n!" FROM familiar_addresses WHERE tenant_id = $1 AND device_id = $2"#,
            t.0,
            device_id
        )
        .fetch_one(&mut **tx)
        .await?;
        if held <= keep {
            return Ok(());
        }
        sqlx::query!(
            "DELETE FROM familiar_addresses WHERE tenant_id = $1 AND device_id = $2 AND address NOT IN \
             (SELECT address FROM familiar_addresses WHERE tenant_id = $1 AND device_id = $2 ORDER BY last_ok_ms DESC, address LIMIT $3)",
            t.0,
            device_id,
            keep
        )
        .execute(&mut **tx)
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
