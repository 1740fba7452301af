//! Brute-force state in PostgreSQL: familiar addresses (tenant-fenced like every device table) and
//! failure counts and lockouts shared by every replica (announced on the NOTIFY channel).

use super::*;

impl PgStore {
    /// Two statements per tenant in the batch, whatever its size (a statement per login was a
    /// round trip each: most of a reconnect storm's time).
    pub(crate) async fn remember_addresses(
        &self,
        seen: &[AddressSeen],
        keep: i64,
    ) -> StoreResult<()> {
        // Per tenant (row-level security fences a statement to one), each (device, address) once
        // with its latest time: one INSERT may not touch a row twice.
        let mut by_tenant: std::collections::BTreeMap<
            i64,
            std::collections::HashMap<(&str, &str), i64>,
        > = std::collections::BTreeMap::new();
        for s in seen {
            let at = by_tenant
                .entry(s.tenant.0)
                .or_default()
                .entry((s.client_id.as_str(), s.address.as_str()))
                .or_insert(s.at_ms);
            *at = (*at).max(s.at_ms);
        }
        let Some(&first) = by_tenant.keys().next() else {
            return Ok(());
        };
        let mut tx = self.scoped(TenantId(first)).await?;
        for (tenant, logins) in by_tenant {
            if tenant != first {
                sqlx::query!(
                    "SELECT set_config('mqgate.tenant_id', $1, true)",
                    tenant.to_string()
                )
                .fetch_one(&mut *tx)
                .await?;
            }
            let (mut ids, mut addresses, mut ats) = (Vec::new(), Vec::new(), Vec::new());
            for ((client_id, address), at) in logins {
                ids.push(client_id.to_string());
                addresses.push(address.to_string());
                ats.push(at);
            }
            // A device that is gone is skipped by the join.
            let devices = sqlx::query_scalar!(
                r#"INSERT INTO familiar_addresses (tenant_id, device_id, address, last_ok_ms)
                   SELECT d.tenant_id, d.id, x.address, x.at
                   FROM UNNEST($2::TEXT[], $3::TEXT[], $4::BIGINT[]) AS x (client_id, address, at)
                   JOIN devices d ON d.tenant_id = $1 AND d.client_id = x.client_id
                   ON CONFLICT (device_id, address) DO UPDATE SET last_ok_ms = EXCLUDED.last_ok_ms
                       WHERE EXCLUDED.last_ok_ms > familiar_addresses.last_ok_ms + $5
                   RETURNING device_id"#,
                tenant,
                &ids,
                &addresses,
                &ats,
                FAMILIAR_REFRESH_MS
            )
            .fetch_all(&mut *tx)
            .await?;
            if devices.is_empty() {
                continue;
            }
            // The bound: only devices holding more than `keep` addresses lose their oldest.
            sqlx::query!(
                "DELETE FROM familiar_addresses f WHERE f.tenant_id = $1 AND f.device_id = ANY ($2)                  AND f.address NOT IN (SELECT g.address FROM familiar_addresses g                      WHERE g.tenant_id = $1 AND g.device_id = f.device_id                      ORDER BY g.last_ok_ms DESC, g.address LIMIT $3)",
                tenant,
                &devices,
                keep
            )
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
