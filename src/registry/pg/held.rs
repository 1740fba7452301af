//! The cache fill's held PostgreSQL connections (see `registry::held`): one that sat held longer
//! than [`PING_IDLE_AFTER`] is pinged first, as the pool's own acquire does.

use sqlx::PgConnection;

use super::*;

impl PgStore {
    /// Runs `statement` on a held connection (or one from the pool), and keeps the connection
    /// for the next call if it succeeded.
    pub(super) async fn on_held<T>(
        &self,
        statement: impl AsyncFnOnce(&mut PgConnection) -> StoreResult<T>,
    ) -> StoreResult<T> {
        // One closed while held (a restarted server, an idle timeout) fails its ping.
        let usable = async |conn: &mut PgConnection, idle| ping_if_idle(conn, idle).await.is_ok();
        self.held.run(&self.pool, usable, statement).await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::registry::held::held_contract;

    /// The held-connection contract (`registry::held`); what a cancelled statement left on its
    /// connection does not reach the next fill (the pool pings it).
    #[sqlx::test(migrations = false)]
    async fn fills_keep_their_connection_until_a_statement_fails(pool: PgPool) {
        let store = PgStore::from_pool(pool);
        store.migrate().await.unwrap();
        held_contract!(
            store,
            async {
                let slow = store.on_held(async |conn| {
                    sqlx::query("SELECT pg_sleep(1)").execute(conn).await?;
                    Ok(())
                });
                assert!(
                    tokio::time::timeout(Duration::from_millis(200), slow)
                        .await
                        .is_err()
                );
            }
            .await
        );
    }
}
