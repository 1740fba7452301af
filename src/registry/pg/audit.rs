//! The audit chain in PostgreSQL: appends under an advisory lock so every replica extends one chain.

use super::*;

impl PgStore {
    pub(crate) fn is_closed(&self) -> bool {
        self.pool.is_closed()
    }

    pub(crate) async fn append_audit(
        &self,
        records: &[crate::audit::AuditRecord],
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        // One chain for every replica: appends take turns under a transaction-scoped lock.
        sqlx::query!("SELECT pg_advisory_xact_lock(7345001)")
            .fetch_one(&mut *tx)
            .await?;
        // Planned afresh each time: a prepared statement keeps the generic plan made while the
        // table was small (a sequential scan and sort of the whole chain), and a reconnect storm
        // appends to the chain far faster than autovacuum re-analyzes it. A fresh plan sees the
        // table's current size and walks the primary key backwards.
        let prev = sqlx::query_scalar!("SELECT hash FROM audit_events ORDER BY id DESC LIMIT 1")
            .persistent(false)
            .fetch_optional(&mut *tx)
            .await?
            .unwrap_or_else(|| crate::audit::chain::GENESIS.into());
        let rows = rows::chain_rows(prev, records);
        let mut cols = (vec![], vec![], vec![], vec![], vec![], vec![]);
        for r in rows {
            cols.0.push(r.at);
            cols.1.push(r.tenant);
            cols.2.push(r.kind.to_string());
            cols.3.push(r.detail);
            cols.4.push(r.prev_hash);
            cols.5.push(r.hash);
        }
        sqlx::query!(
            "INSERT INTO audit_events (at, tenant_id, kind, detail, prev_hash, hash) \
             SELECT a, t, k, d, p, h FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::TEXT[], $5::TEXT[], $6::TEXT[]) WITH ORDINALITY AS x(a, t, k, d, p, h, n) ORDER BY n",
            &cols.0,
            &cols.1 as &[Option<i64>],
            &cols.2,
            &cols.3,
            &cols.4,
            &cols.5
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_audit(
        &self,
        after: i64,
        limit: i64,
    ) -> StoreResult<Vec<crate::audit::chain::StoredAudit>> {
        let rs = sqlx::query!(
            "SELECT id, at, tenant_id, kind, detail, prev_hash, hash FROM audit_events WHERE id > $1 ORDER BY id LIMIT $2",
            after,
            limit
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(rs
            .into_iter()
            .map(|r| crate::audit::chain::StoredAudit {
                id: r.id,
                at_ms: r.at,
                tenant: r.tenant_id,
                kind: r.kind,
                detail: r.detail,
                prev_hash: r.prev_hash,
                hash: r.hash,
            })
            .collect())
    }
}
