//! Bulk import in SQLite: one write transaction, each chunk handed to SQLite as one JSON array
//! that `json_each` turns into rows (SQLite's counterpart of PostgreSQL's `UNNEST`), so a chunk of
//! thousands of devices is four statements, not thousands.
//!
//! Announcements: the row triggers write one `registry_changes` row per device, credential and
//! rule; rows of this transaction that repeat a device are folded into its first one, so a running
//! server polls one change per new device (see `tidy_after`).

use std::collections::HashMap;

use serde_json::{Value, json};

use super::*;
use crate::registry::import::{IMPORT_CHUNK, ImportProgress, ImportReport, NewImport};

/// One chunk as the JSON array the statements read: `c` client id, `u` username, `k`/`h`
/// credential kind and digest, `r` rules (`p`, `a`, `t`).
fn chunk_json(chunk: &[&NewImport]) -> String {
    let rows: Vec<Value> = chunk
        .iter()
        .map(|d| {
            let rules: Vec<Value> = d
                .rules
                .iter()
                .map(
                    |r| json!({ "p": r.permission.as_str(), "a": r.action.as_str(), "t": r.topic }),
                )
                .collect();
            json!({
                "c": d.client_id, "u": d.username, "k": d.credential.kind.as_str(),
                "h": d.credential.digest, "r": rules,
            })
        })
        .collect();
    Value::Array(rows).to_string()
}

impl SqliteStore {
    pub(crate) async fn import_devices(
        &self,
        t: TenantId,
        devices: &[NewImport],
        tokens: bool,
        now: i64,
        progress: ImportProgress<'_>,
    ) -> StoreResult<ImportReport> {
        let mut tx = self.write().await?;
        let owners = Self::owners(&mut tx, devices).await?;
        let (mut report, fresh) = ImportReport::sort_out(t, devices, &owners, tokens);
        if report.refused() {
            return Ok(report);
        }
        let feed_end = Self::max_of(&mut tx, "SELECT MAX(seq) FROM registry_changes").await?;
        let kicks_end = Self::max_of(&mut tx, "SELECT MAX(id) FROM emqx_kicks").await?;
        let mut done = 0;
        for chunk in fresh.chunks(IMPORT_CHUNK) {
            Self::insert_chunk(&mut tx, t, &chunk_json(chunk), now).await?;
            done += chunk.len();
            progress(done, fresh.len());
        }
        Self::tidy_after(&mut tx, feed_end, kicks_end).await?;
        tx.commit().await?;
        report.created = fresh.iter().map(|d| d.client_id.clone()).collect();
        Ok(report)
    }

    /// Which tenant holds each client id of `devices` that exists anywhere.
    async fn owners(tx: &mut Tx, devices: &[NewImport]) -> StoreResult<HashMap<String, i64>> {
        let ids: Vec<&str> = devices.iter().map(|d| d.client_id.as_str()).collect();
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT c.client_id, c.tenant_id FROM json_each(?) j JOIN client_directory c ON c.client_id = j.value",
        )
        .bind(Value::from(ids).to_string())
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows.into_iter().collect())
    }

    async fn max_of(tx: &mut Tx, sql: &'static str) -> StoreResult<i64> {
        let max: Option<i64> = sqlx::query_scalar(sql).fetch_one(&mut **tx).await?;
        Ok(max.unwrap_or(0))
    }

    async fn insert_chunk(tx: &mut Tx, t: TenantId, rows: &str, now: i64) -> StoreResult<()> {
        let conflict = || "a device of this import (created meanwhile)".to_string();
        sqlx::query(
            "INSERT INTO client_directory (client_id, tenant_id) SELECT j.value ->> 'c', ?1 FROM json_each(?2) j",
        )
        .bind(t.0)
        .bind(rows)
        .execute(&mut **tx)
        .await
        .map_err(|e| rows::conflict(e, conflict))?;
        sqlx::query(
            "INSERT INTO devices (tenant_id, client_id, username, enabled, created_at) \
             SELECT ?1, j.value ->> 'c', j.value ->> 'u', 1, ?2 FROM json_each(?3) j",
        )
        .bind(t.0)
        .bind(now)
        .bind(rows)
        .execute(&mut **tx)
        .await
        .map_err(|e| rows::conflict(e, conflict))?;
        // The device id by a subquery on (tenant_id, client_id): as a join, the planner may
        // loop over `json_each` (no index, parsed again each time) inside a scan of the devices.
        sqlx::query(
            "INSERT INTO credentials (tenant_id, device_id, kind, digest, created_at) \
             SELECT ?1, (SELECT d.id FROM devices d WHERE d.tenant_id = ?1 AND d.client_id = j.value ->> 'c'), \
             j.value ->> 'k', j.value ->> 'h', ?2 FROM json_each(?3) j",
        )
        .bind(t.0)
        .bind(now)
        .bind(rows)
        .execute(&mut **tx)
        .await?;
        // Rule ids are their evaluation order: insert them in file order.
        sqlx::query(
            "INSERT INTO acl_rules (tenant_id, device_id, permission, action, topic, created_at) \
             SELECT ?1, (SELECT d.id FROM devices d WHERE d.tenant_id = ?1 AND d.client_id = j.value ->> 'c'), \
             r.value ->> 'p', r.value ->> 'a', r.value ->> 't', ?2 \
             FROM json_each(?3) j JOIN json_each(j.value, '$.r') r ORDER BY j.key, r.key",
        )
        .bind(t.0)
        .bind(now)
        .bind(rows)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// One writer at a time: every feed row and kick past the ends read at the start is this
    /// transaction's. The rule trigger's `acl_changed` kicks go (a device that did not exist has
    /// no session to end; adding a device never kicks). The feed keeps one row per device, and
    /// those rows are numbered on from `feed_end` without a hole: a poller reads a hole as missed
    /// changes and drops its whole cache.
    async fn tidy_after(tx: &mut Tx, feed_end: i64, kicks_end: i64) -> StoreResult<()> {
        // Copied out once (first of each kind, in feed order), the import's rows dropped as one
        // range and written back numbered: deleting the duplicates one by one and renumbering
        // every survivor twice (through negatives) rewrote the primary key three times, 7 of the
        // 22 s of a million-device import.
        for step in [
            "CREATE TEMP TABLE IF NOT EXISTS import_feed \
             (n INTEGER PRIMARY KEY, tenant_id INTEGER NOT NULL, client_id TEXT, certs INTEGER NOT NULL)",
            "DELETE FROM temp.import_feed",
            "INSERT INTO temp.import_feed (tenant_id, client_id, certs) \
             SELECT tenant_id, client_id, certs FROM registry_changes WHERE seq > ?1 \
             GROUP BY tenant_id, client_id, certs ORDER BY MIN(seq)",
            "DELETE FROM registry_changes WHERE seq > ?1",
            "INSERT INTO registry_changes (seq, tenant_id, client_id, certs) \
             SELECT ?1 + n, tenant_id, client_id, certs FROM temp.import_feed ORDER BY n",
            "DELETE FROM temp.import_feed",
            "UPDATE sqlite_sequence SET seq = (SELECT MAX(seq) FROM registry_changes) WHERE name = 'registry_changes'",
        ] {
            sqlx::query(step).bind(feed_end).execute(&mut **tx).await?;
        }
        sqlx::query("DELETE FROM emqx_kicks WHERE id > ? AND reason = 'acl_changed'")
            .bind(kicks_end)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}
