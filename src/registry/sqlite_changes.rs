//! SQLite's change feed. Any process may write the database file (the CLI, another `serve`), and
//! SQLite has no NOTIFY, so triggers append to `registry_changes` and the server polls it.

use std::time::Duration;

use sqlx::{Row, SqlitePool};
use tokio::sync::mpsc;

use super::{Change, StoreResult, TenantId};

/// How often the server looks for changes: well inside the one-second promise.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Rows read per poll; a full page is followed by the next at once (a bulk import leaves a row per
/// device: a revocation after it must not wait behind seconds of backlog).
const PAGE: i64 = 1000;

/// Rows kept behind the newest one, so the table stays small.
const KEEP: i64 = 10_000;

/// Starts polling `registry_changes` from its current end.
pub async fn subscribe(pool: SqlitePool) -> StoreResult<mpsc::Receiver<Change>> {
    let last: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM registry_changes")
        .fetch_one(&pool)
        .await?;
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(poll(pool, last, tx));
    Ok(rx)
}

/// The feed's current end: a mark that is passed once every change before it was forwarded.
pub async fn mark(pool: &SqlitePool) -> StoreResult<i64> {
    Ok(
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM registry_changes")
            .fetch_one(pool)
            .await?,
    )
}

async fn poll(pool: SqlitePool, mut last: i64, tx: mpsc::Sender<Change>) {
    let mut failing = false;
    let mut behind = false;
    while !tx.is_closed() && !pool.is_closed() {
        if !std::mem::take(&mut behind) {
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        match fetch(&pool, last).await {
            Ok(rows) => {
                behind = rows.len() as i64 == PAGE;
                // After an outage, or when another server pruned rows this one had not read yet,
                // changes may have been missed: drop the whole cache.
                let gap = rows.first().is_some_and(|(seq, _)| *seq > last + 1);
                if (std::mem::take(&mut failing) || gap) && tx.send(Change::Resync).await.is_err() {
                    return;
                }
                for (seq, change) in rows {
                    last = seq;
                    if tx.send(change).await.is_err() {
                        return;
                    }
                }
                // Everything up to `last` is forwarded (see `mark`).
                if tx.send(Change::Mark(last)).await.is_err() {
                    return;
                }
                prune(&pool, last).await;
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "polling the SQLite change feed failed");
                }
                failing = true;
            }
        }
    }
}

async fn fetch(pool: &SqlitePool, after: i64) -> Result<Vec<(i64, Change)>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT seq, tenant_id, client_id, certs FROM registry_changes WHERE seq > ? ORDER BY seq LIMIT ?",
    )
    .bind(after)
    .bind(PAGE)
    .fetch_all(pool)
    .await?;
    rows.iter()
        .map(|r| {
            let tenant = TenantId(r.try_get("tenant_id")?);
            let certs: i64 = r.try_get("certs")?;
            let change = match r.try_get::<Option<String>, _>("client_id")? {
                _ if certs != 0 => Change::Certs(tenant),
                Some(client_id) => Change::Device { tenant, client_id },
                None => Change::Tenant(tenant),
            };
            Ok((r.try_get("seq")?, change))
        })
        .collect()
}

async fn prune(pool: &SqlitePool, last: i64) {
    if last > KEEP {
        let _ = sqlx::query("DELETE FROM registry_changes WHERE seq <= ?")
            .bind(last - KEEP)
            .execute(pool)
            .await;
    }
}
