//! The EMQX kick outbox in SQLite (rows written by triggers, see
//! `migrations/sqlite/0006_emqx_kicks.sql`); one writer at a time makes each claim atomic.

use super::*;
use crate::registry::rows::{KickOutboxRow, PendingKickRow};

impl SqliteStore {
    pub(crate) async fn claim_kicks(&self, c: KickClaim) -> StoreResult<Vec<PendingKick>> {
        let rows: Vec<PendingKickRow> = sqlx::query_as(
            "UPDATE emqx_kicks SET claimed_until = ? WHERE id IN ( \
                 SELECT id FROM emqx_kicks WHERE done_at IS NULL \
                 AND (due_at IS NULL OR due_at <= ?) \
                 AND (claimed_until IS NULL OR claimed_until <= ?) \
                 ORDER BY id LIMIT ?) \
             RETURNING id, tenant_id, client_id, reason",
        )
        .bind(c.lease_until_ms)
        .bind(c.now)
        .bind(c.now_ms)
        .bind(c.limit)
        .fetch_all(&self.pool)
        .await?;
        let mut kicks: Vec<PendingKick> = rows.into_iter().map(PendingKick::from).collect();
        kicks.sort_by_key(|k| k.id);
        Ok(kicks)
    }

    pub(crate) async fn finish_kick(&self, id: i64, done: KickDone<'_>) -> StoreResult<()> {
        sqlx::query(
            "UPDATE emqx_kicks SET done_at = ?, outcome = ?, keep_until = ?, claimed_until = NULL WHERE id = ?",
        )
        .bind(done.at)
        .bind(done.outcome)
        .bind(done.keep_until)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn prune_kicks(&self, now: i64, keep_pending: i64) -> StoreResult<u64> {
        let mut tx = self.write().await?;
        sqlx::query(
            "UPDATE emqx_kicks SET keep_until = ? WHERE keep_until IS NULL AND done_at IS NULL \
             AND (due_at IS NULL OR due_at <= ?)",
        )
        .bind(now.saturating_add(keep_pending))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query("DELETE FROM emqx_kicks WHERE keep_until < ?")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone.rows_affected())
    }

    pub(crate) async fn list_kicks(&self) -> StoreResult<Vec<KickRow>> {
        let rows: Vec<KickOutboxRow> = sqlx::query_as(
            "SELECT id, tenant_id, client_id, reason, due_at, done_at, outcome FROM emqx_kicks ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(KickRow::from).collect())
    }

    pub(crate) async fn kick_revoked_serials(
        &self,
        t: TenantId,
        ca_id: i64,
        serials: &[String],
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for serial in serials {
            let done = sqlx::query(
                "INSERT OR IGNORE INTO emqx_kicks (tenant_id, client_id, reason, dedupe) \
                 SELECT d.tenant_id, d.client_id, 'certificate_revoked', 'cert:' || c.fingerprint \
                 FROM device_certs c JOIN devices d ON d.id = c.device_id AND d.tenant_id = c.tenant_id \
                 WHERE c.tenant_id = ? AND c.ca_id = ? AND c.revoked_at IS NULL AND c.serial = ?",
            )
            .bind(t.0)
            .bind(ca_id)
            .bind(serial)
            .execute(&mut *tx)
            .await?;
            n += done.rows_affected();
        }
        tx.commit().await?;
        Ok(n)
    }
}
