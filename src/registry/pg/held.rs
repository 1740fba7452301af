//! Connections the hot path keeps between its statements instead of handing them back to the pool.
//!
//! sqlx pings every connection as it goes back to its pool (a Sync and the wait for the server's
//! ReadyForQuery: a round trip, a wake-up of the PostgreSQL backend, and a task of its own), and no
//! option turns that off. In a reconnect storm the cache fill runs one statement per handful of
//! logins, so that was a second round trip per fill: a PostgreSQL cold storm (100k devices,
//! 16 x 1) took 6.73-6.90 s with it and 5.61-6.28 s with sqlx patched not to ping. A connection whose
//! statement succeeded is kept here, at most [`HELD`], and taken again by the next fill; one that
//! sat here longer than [`PING_IDLE_AFTER`] is pinged first, as the pool's own acquire does. One
//! whose statement failed, or whose caller was cancelled mid-statement (the decision deadline),
//! goes back to the pool, which pings it (and so reads what a cancelled statement left) or closes
//! it.

use std::sync::Mutex;
use std::time::Instant;

use sqlx::PgConnection;
use sqlx::pool::PoolConnection;

use super::*;

/// Connections held at most (cache fills run one batch at a time; a single device's fill or the
/// read-ahead's may overlap it).
const HELD: usize = 2;

/// The held connections, each with when its last statement ended.
#[derive(Debug, Default)]
pub(super) struct Held(Mutex<Vec<(PoolConnection<Postgres>, Instant)>>);

impl Held {
    fn take(&self) -> Option<(PoolConnection<Postgres>, Instant)> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).pop()
    }

    fn give_back(&self, conn: PoolConnection<Postgres>, pool: &PgPool) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // A closing pool waits for every connection: none is kept once it closes.
        if held.len() < HELD && !pool.is_closed() {
            held.push((conn, Instant::now()));
        }
    }

    /// Lets every held connection go back to the pool (before it closes).
    pub(super) fn release(&self) {
        let all = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        drop(all);
    }

    /// How many are held (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

impl PgStore {
    /// Runs `statement` on a held connection (or one from the pool), and keeps the connection
    /// for the next call if it succeeded.
    pub(super) async fn on_held<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let mut conn = match self.held.take() {
            Some((mut conn, since)) => match ping_if_idle(&mut conn, since.elapsed()).await {
                Ok(()) => conn,
                // Closed while held (a restarted server, an idle timeout): dropped, and the pool
                // replaces it.
                Err(_) => self.pool.acquire().await?,
            },
            None => self.pool.acquire().await?,
        };
        let out = statement(&mut conn).await;
        if out.is_ok() {
            self.held.give_back(conn, &self.pool);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A fill keeps its connection for the next (no ping as it would go back to the pool); a
    /// failed statement's, or a cancelled one's, goes back to the pool, and what a cancelled
    /// statement left on it does not reach the next fill; closing the store lets the held
    /// connections go (the pool's close waits for every connection).
    #[sqlx::test(migrations = false)]
    async fn fills_keep_their_connection_until_a_statement_fails(pool: PgPool) {
        let store = PgStore::from_pool(pool);
        store.migrate().await.unwrap();
        // A fill of a client id no device has: it succeeds, and finds nothing.
        let fill = async || {
            let found = store.load_clients(&["nobody".into()]).await.unwrap();
            assert!(found.is_empty());
        };
        assert_eq!(store.held.len(), 0);
        for _ in 0..3 {
            fill().await;
            assert_eq!(store.held.len(), 1, "the fill's connection is held");
        }
        let failed: StoreResult<()> = store
            .on_held(async |conn| {
                sqlx::query("SELECT no_such_column FROM devices")
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            store.held.len(),
            0,
            "a failed statement's connection goes back"
        );
        let slow = store.on_held(async |conn| {
            sqlx::query("SELECT pg_sleep(1)").execute(conn).await?;
            Ok(())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(200), slow)
                .await
                .is_err()
        );
        assert_eq!(
            store.held.len(),
            0,
            "a cancelled statement's connection goes back"
        );
        fill().await;
        assert_eq!(store.held.len(), 1);
        tokio::time::timeout(Duration::from_secs(10), store.close())
            .await
            .expect("the pool closes with connections held");
        assert_eq!(store.held.len(), 0);
        assert!(store.load_clients(&["nobody".into()]).await.is_err());
        assert_eq!(store.held.len(), 0, "none held once closed");
    }
}
