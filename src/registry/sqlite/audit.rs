//! The audit chain in SQLite: appends take the write lock first, so the chain has one end.

use super::*;

/// Rows per INSERT statement (SQLite allows 32,766 parameters per statement).
const AUDIT_ROWS_PER_INSERT: usize = 1_000;

impl SqliteStore {
    pub(crate) async fn append_audit(
        &self,
        records: &[crate::audit::AuditRecord],
    ) -> StoreResult<()> {
        // IMMEDIATE: take the write lock before reading the chain's end, so no other writer can
        // append between our read and our inserts.
        let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
        let prev: Option<String> =
            sqlx::query_scalar("SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *tx)
                .await?;
        let prev = prev.unwrap_or_else(|| crate::audit::chain::GENESIS.into());
        // One statement per chunk (six parameters a row, well under SQLite's limit): a batch is
        // one round trip to the connection's worker thread, not one per event.
        let chained = rows::chain_rows(prev, records);
        for chunk in chained.chunks(AUDIT_ROWS_PER_INSERT) {
            let mut insert = sqlx::QueryBuilder::new(
                "INSERT INTO audit_events (tenant_id, at, kind, detail, prev_hash, hash) ",
            );
            insert.push_values(chunk, |mut row, r| {
                row.push_bind(r.tenant)
                    .push_bind(r.at)
                    .push_bind(r.kind)
                    .push_bind(r.detail.as_str())
                    .push_bind(r.prev_hash.as_str())
                    .push_bind(r.hash.as_str());
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_audit(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<crate::audit::chain::StoredAudit>> {
        let rs = sqlx::query("SELECT id, at, tenant_id, kind, detail, prev_hash, hash FROM audit_events WHERE id > ? ORDER BY id LIMIT ?")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rs.iter()
            .map(|r| {
                Ok(crate::audit::chain::StoredAudit {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at")?,
                    tenant: r.try_get("tenant_id")?,
                    kind: r.try_get("kind")?,
                    detail: r.try_get("detail")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect()
    }
}
