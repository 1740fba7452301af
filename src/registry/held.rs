//! Connections the hot path keeps between its statements instead of handing them back to the
//! pool, for either store.
//!
//! PostgreSQL: sqlx pings every connection as it goes back to its pool (a Sync and the wait for
//! the server's ReadyForQuery: a round trip, a wake-up of the backend, and a task of its own), and
//! no option turns that off. In a reconnect storm the cache fill runs one statement per handful of
//! logins, so that was a second round trip per fill: a PostgreSQL cold storm (100k devices,
//! 16 x 1) took 6.73-6.90 s with it and 5.61-6.28 s with sqlx patched not to ping.
//!
//! SQLite: each pooled connection is a thread with its own page cache, and the pool hands its
//! idle connections out in turn, so consecutive fills ran on a different thread each, with a cold
//! page cache and cold CPU caches: on one kept connection the fills of a cold storm cost SQLite's
//! threads a quarter less (`bench/RESULTS.md`, 2026-12-06 session 5).
//!
//! A connection whose statement succeeded is kept, at most [`HELD`], and taken again by the next
//! fill. One whose statement failed, or whose caller was cancelled mid-statement (the decision
//! deadline), goes back to the pool, which checks it (PostgreSQL: pings it, and so reads what a
//! cancelled statement left) or closes it. Closing the store lets the held ones go first: the
//! pool's close waits for every connection.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{Database, Pool};

use super::StoreResult;

/// Connections held at most (cache fills run one batch at a time; a single device's fill or the
/// read-ahead's may overlap it).
const HELD: usize = 2;

/// The held connections, each with when its last statement ended.
#[derive(Debug)]
pub(super) struct Held<DB: Database>(Mutex<Vec<(PoolConnection<DB>, Instant)>>);

impl<DB: Database> Default for Held<DB> {
    fn default() -> Self {
        Held(Mutex::new(Vec::new()))
    }
}

impl<DB: Database> Held<DB> {
    /// Runs `statement` on a held connection (or one from `pool`), and keeps the connection for
    /// the next call if it succeeded. A held connection is used only if `usable` says so, given
    /// how long it sat held (PostgreSQL pings one idle too long); one it refuses is dropped, and
    /// the pool replaces it.
    pub(super) async fn run<T>(
        &self,
        pool: &Pool<DB>,
        usable: impl AsyncFnOnce(&mut DB::Connection, Duration) -> bool,
        statement: impl AsyncFnOnce(&mut DB::Connection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        let held = match self.take() {
            Some((mut conn, since)) => usable(&mut *conn, since.elapsed()).await.then_some(conn),
            None => None,
        };
        let mut conn = match held {
            Some(conn) => conn,
            None => pool.acquire().await?,
        };
        let out = statement(&mut *conn).await;
        if out.is_ok() {
            self.give_back(conn, pool);
        }
        out
    }

    /// A held connection and when its last statement ended, if one is held.
    fn take(&self) -> Option<(PoolConnection<DB>, Instant)> {
        self.lock().pop()
    }

    /// Keeps `conn` (its statement succeeded) unless enough are held or the pool is closing.
    fn give_back(&self, conn: PoolConnection<DB>, pool: &Pool<DB>) {
        let mut held = self.lock();
        // A closing pool waits for every connection: none is kept once it closes.
        if held.len() < HELD && !pool.is_closed() {
            held.push((conn, Instant::now()));
        }
    }

    /// Lets every held connection go back to the pool (before it closes).
    pub(super) fn release(&self) {
        let all = std::mem::take(&mut *self.lock());
        drop(all);
    }

    /// How many are held (tests).
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(PoolConnection<DB>, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The held-connection contract both stores' tests check on `$store` (its fill keeps its
/// connection for the next; a failed statement's goes back to the pool; so does a cancelled
/// one's: `$cancel`, awaited, runs a statement on the held connection that its caller's deadline
/// cancels; closing the store lets the held connection go, the pool's close waiting for every
/// connection).
#[cfg(test)]
macro_rules! held_contract {
    ($store:ident, $cancel:expr) => {{
        let fill = async || {
            let found = $store.load_clients(&["nobody".into()]).await.unwrap();
            assert!(found.is_empty());
        };
        assert_eq!($store.held.len(), 0);
        for _ in 0..3 {
            fill().await;
            assert_eq!($store.held.len(), 1, "the fill's connection is held");
        }
        let failed: StoreResult<()> = $store
            .on_held(async |conn| {
                sqlx::query("SELECT no_such_column FROM devices")
                    .execute(conn)
                    .await?;
                Ok(())
            })
            .await;
        assert!(failed.is_err());
        assert_eq!(
            $store.held.len(),
            0,
            "a failed statement's connection goes back"
        );
        fill().await;
        $cancel;
        assert_eq!(
            $store.held.len(),
            0,
            "a cancelled statement's connection goes back"
        );
        fill().await;
        assert_eq!($store.held.len(), 1);
        tokio::time::timeout(std::time::Duration::from_secs(30), $store.close())
            .await
            .expect("the pool closes with a connection held");
        assert_eq!($store.held.len(), 0);
        assert!($store.load_clients(&["nobody".into()]).await.is_err());
        assert_eq!($store.held.len(), 0, "none held once closed");
    }};
}
#[cfg(test)]
pub(super) use held_contract;
