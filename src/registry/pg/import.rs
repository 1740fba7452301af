//! Bulk import in PostgreSQL: one transaction fenced to the tenant, rows inserted a chunk at a
//! time from arrays (`UNNEST`), credentials and rules joined to their device by client id.
//!
//! Announcements: the row triggers stand aside (`mqgate.importing`, migration 0011: each is a
//! PL/pgSQL call per row, and they were most of the time spent); the import itself NOTIFYs
//! `d:<tenant>:<client id>` once per new device in the same transaction, delivered at commit, as
//! the triggers would have. It queues no EMQX kick: a device that did not exist has no session.

use std::collections::HashMap;

use super::*;
use crate::registry::import::{IMPORT_CHUNK, ImportProgress, ImportReport, NewImport};

/// Columns of one chunk, as arrays for `UNNEST`.
#[derive(Default)]
struct Columns {
    client_ids: Vec<String>,
    /// `""` for none: a username is never empty (the admin layer refuses it), and an array of
    /// plain text needs no nullable element type.
    usernames: Vec<String>,
    kinds: Vec<String>,
    digests: Vec<String>,
    rule_owners: Vec<String>,
    permissions: Vec<String>,
    actions: Vec<String>,
    topics: Vec<String>,
}

impl Columns {
    fn of(chunk: &[&NewImport]) -> Self {
        let mut c = Columns::default();
        for d in chunk {
            c.client_ids.push(d.client_id.clone());
            c.usernames.push(d.username.clone().unwrap_or_default());
            c.kinds.push(d.credential.kind.as_str().into());
            c.digests.push(d.credential.digest.clone());
            for r in &d.rules {
                c.rule_owners.push(d.client_id.clone());
                c.permissions.push(r.permission.as_str().into());
                c.actions.push(r.action.as_str().into());
                c.topics.push(r.topic.clone());
            }
        }
        c
    }
}

/// New devices from which an import refreshes the planner's statistics of the tables it wrote.
const ANALYZE_AFTER: usize = 10_000;

impl PgStore {
    pub(crate) async fn import_devices(
        &self,
        t: TenantId,
        devices: &[NewImport],
        tokens: bool,
        now: i64,
        progress: ImportProgress<'_>,
    ) -> StoreResult<ImportReport> {
        let mut tx = self.scoped(t).await?;
        sqlx::query!("SELECT set_config('mqgate.importing', 'on', true)")
            .fetch_one(&mut *tx)
            .await?;
        let owners = Self::owners(&mut tx, devices).await?;
        let (mut report, fresh) = ImportReport::sort_out(t, devices, &owners, tokens);
        if report.refused() {
            return Ok(report);
        }
        let mut done = 0;
        for chunk in fresh.chunks(IMPORT_CHUNK) {
            Self::insert_chunk(&mut tx, t, &Columns::of(chunk), now).await?;
            done += chunk.len();
            progress(done, fresh.len());
        }
        report.created = fresh.iter().map(|d| d.client_id.clone()).collect();
        tx.commit().await?;
        if fresh.len() >= ANALYZE_AFTER {
            // Fresh statistics at once, not when autovacuum gets to it: planned without them the
            // warm-up pages read a whole tenant each (measured: 1M devices warm in 28 s, not 10).
            // Skipped with a warning by PostgreSQL for a role that does not own the tables.
            sqlx::raw_sql("ANALYZE devices, client_directory, credentials, acl_rules")
                .execute(&self.pool)
                .await?;
        }
        Ok(report)
    }

    /// Which tenant holds each client id of `devices` that exists anywhere.
    async fn owners(tx: &mut Tx, devices: &[NewImport]) -> StoreResult<HashMap<String, i64>> {
        let ids: Vec<String> = devices.iter().map(|d| d.client_id.clone()).collect();
        let rows = sqlx::query!(
            "SELECT client_id, tenant_id FROM client_directory WHERE client_id = ANY($1)",
            &ids
        )
        .fetch_all(&mut **tx)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| (r.client_id, r.tenant_id))
            .collect())
    }

    async fn insert_chunk(tx: &mut Tx, t: TenantId, c: &Columns, now: i64) -> StoreResult<()> {
        let conflict = || "a device of this import (created meanwhile)".to_string();
        sqlx::query!(
            "INSERT INTO client_directory (client_id, tenant_id) SELECT c, $2 FROM UNNEST($1::text[]) AS c",
            &c.client_ids,
            t.0
        )
        .execute(&mut **tx)
        .await
        .map_err(|e| rows::conflict(e, conflict))?;
        sqlx::query!(
            "INSERT INTO devices (tenant_id, client_id, username, enabled, created_at) \
             SELECT $1, x.c, NULLIF(x.u, ''), TRUE, $2 FROM UNNEST($3::text[], $4::text[]) AS x(c, u)",
            t.0,
            now,
            &c.client_ids,
            &c.usernames
        )
        .execute(&mut **tx)
        .await
        .map_err(|e| rows::conflict(e, conflict))?;
        sqlx::query!(
            "INSERT INTO credentials (tenant_id, device_id, kind, digest, created_at) \
             SELECT $1, d.id, x.k, x.h, $2 FROM UNNEST($3::text[], $4::text[], $5::text[]) AS x(c, k, h) \
             JOIN devices d ON d.tenant_id = $1 AND d.client_id = x.c",
            t.0,
            now,
            &c.client_ids,
            &c.kinds,
            &c.digests
        )
        .execute(&mut **tx)
        .await?;
        // Rule ids are their evaluation order: insert them in file order.
        sqlx::query!(
            "INSERT INTO acl_rules (tenant_id, device_id, permission, action, topic, created_at) \
             SELECT $1, d.id, x.p, x.a, x.t, $2 \
             FROM UNNEST($3::text[], $4::text[], $5::text[], $6::text[]) WITH ORDINALITY AS x(c, p, a, t, n) \
             JOIN devices d ON d.tenant_id = $1 AND d.client_id = x.c ORDER BY x.n",
            t.0,
            now,
            &c.rule_owners,
            &c.permissions,
            &c.actions,
            &c.topics
        )
        .execute(&mut **tx)
        .await?;
        sqlx::query!(
            "SELECT pg_notify($1, 'd:' || $2 || ':' || c) FROM UNNEST($3::text[]) AS c",
            CHANNEL,
            t.0.to_string(),
            &c.client_ids
        )
        .execute(&mut **tx)
        .await?;
        Ok(())
    }
}
