//! The EMQX kick outbox in PostgreSQL (rows written by triggers, see
//! `migrations/postgres/0008_emqx_kicks.sql`): claimed with `FOR UPDATE SKIP LOCKED` under a lease,
//! so concurrent replicas never take the same row.

use super::*;
use crate::registry::rows::{KickOutboxRow, PendingKickRow};

impl PgStore {
    pub(crate) async fn claim_kicks(&self, c: KickClaim) -> StoreResult<Vec<PendingKick>> {
        let rows = sqlx::query_as!(
            PendingKickRow,
            "UPDATE emqx_kicks SET claimed_until = $3 WHERE id IN ( \
                 SELECT id FROM emqx_kicks WHERE done_at IS NULL \
                 AND (due_at IS NULL OR due_at <= $1) \
                 AND (claimed_until IS NULL OR claimed_until <= $2) \
                 ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED) \
             RETURNING id, tenant_id, client_id, reason",
            c.now,
            c.now_ms,
            c.lease_until_ms,
            c.limit
        )
        .fetch_all(&self.pool)
        .await?;
        let mut kicks: Vec<PendingKick> = rows.into_iter().map(PendingKick::from).collect();
        kicks.sort_by_key(|k| k.id);
        Ok(kicks)
    }

    pub(crate) async fn finish_kick(&self, id: i64, done: KickDone<'_>) -> StoreResult<()> {
        sqlx::query!(
            "UPDATE emqx_kicks SET done_at = $2, outcome = $3, keep_until = $4, claimed_until = NULL WHERE id = $1",
            id,
            done.at,
            done.outcome,
            done.keep_until
        )
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn prune_kicks(&self, now: i64, keep_pending: i64) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "UPDATE emqx_kicks SET keep_until = $2 WHERE keep_until IS NULL AND done_at IS NULL \
             AND (due_at IS NULL OR due_at <= $1)",
            now,
            now.saturating_add(keep_pending)
        )
        .execute(&mut *tx)
        .await?;
        let gone = sqlx::query!("DELETE FROM emqx_kicks WHERE keep_until < $1", now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(gone.rows_affected())
    }

    pub(crate) async fn list_kicks(&self) -> StoreResult<Vec<KickRow>> {
        let rows = sqlx::query_as!(
            KickOutboxRow,
            "SELECT id, tenant_id, client_id, reason, due_at, done_at, outcome FROM emqx_kicks ORDER BY id"
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
        let mut tx = self.scoped(t).await?;
        let done = sqlx::query!(
            "INSERT INTO emqx_kicks (tenant_id, client_id, reason, dedupe) \
             SELECT d.tenant_id, d.client_id, 'certificate_revoked', 'cert:' || c.fingerprint \
             FROM device_certs c JOIN devices d ON d.id = c.device_id AND d.tenant_id = c.tenant_id \
             WHERE c.tenant_id = $1 AND c.ca_id = $2 AND c.revoked_at IS NULL AND c.serial = ANY($3) \
             ON CONFLICT (dedupe) DO NOTHING",
            t.0,
            ca_id,
            serials
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }
}
