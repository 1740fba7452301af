//! The audit chain in SQLite: appends take the write lock first, so the chain has one end.

use super::*;

/// The most rows one INSERT statement takes (six parameters a row, well under SQLite's 32,766).
const AUDIT_ROWS_PER_INSERT: usize = 512;

/// How many of `left` rows the next INSERT takes: the largest power of two up to
/// [`AUDIT_ROWS_PER_INSERT`]. A statement's text depends only on its row count, so appends use at
/// most ten texts, each parsed once and then taken from sqlx's statement cache. (A statement per
/// batch size made nearly every append a new text: SQLite parsed a statement of hundreds of rows
/// afresh each time, a tenth of a warm login's CPU.)
fn rows_per_insert(left: usize) -> usize {
    let most = left.clamp(1, AUDIT_ROWS_PER_INSERT);
    1 << most.ilog2()
}

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
        let chained = rows::chain_rows(prev, records);
        let mut rest = chained.as_slice();
        while !rest.is_empty() {
            let (chunk, after) = rest.split_at(rows_per_insert(rest.len()).min(rest.len()));
            rest = after;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_take_powers_of_two_up_to_the_bound() {
        let sizes = |mut n: usize| {
            let mut out = vec![];
            while n > 0 {
                let k = rows_per_insert(n);
                out.push(k);
                n -= k;
            }
            out
        };
        assert_eq!(sizes(1), vec![1]);
        assert_eq!(sizes(7), vec![4, 2, 1]);
        assert_eq!(sizes(512), vec![512]);
        assert_eq!(sizes(1300), vec![512, 512, 256, 16, 4]);
        let texts: std::collections::BTreeSet<usize> = (1..=2048).flat_map(sizes).collect();
        assert_eq!(texts.len(), 10, "one statement text per power of two");
    }
}
