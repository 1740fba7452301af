//! The brute-force guard's shared half: what the in-memory [`FailureGuard`](crate::limit::lockout::FailureGuard) learns is shared with
//! the registry, so it survives a restart and every replica sees the same failures and lockouts.
//!
//! - **Familiar addresses** go to the registry through a bounded queue and one writer task, off
//!   the hot path: a full queue drops the write and counts it (`familiar_dropped`), it never holds
//!   a CONNECT up. While the cache fills from the store (a reconnect storm of devices it does
//!   not hold) the writer holds them back, so the store serves the decisions first. They are
//!   read back lazily, only when a client id's lockout (or its full failure window) would refuse
//!   an address this process has not seen the device at: the device's whole list, at most once
//!   per client id every 10 s, so a locked client id hammered from any number of addresses costs
//!   one query per 10 s, not one per attempt.
//! - **Failures** that the guard counts (before any lockout; once locked, the refusal is local)
//!   are counted in the registry too, one upsert each; the failure that reaches the limit there
//!   starts the lockout, which PostgreSQL announces to every replica on the change feed. SQLite
//!   is one node: it keeps the lockouts across a restart, nothing to announce.
//! - **Write budget**: at most [`SHARED_WRITES`] failure writes per second per replica (burst
//!   twice that). A spray of wrong secrets from many addresses would otherwise turn every attempt
//!   into a database write; past the budget, failures are counted in this process only (its own
//!   guard still locks out) and the skipped writes are counted
//!   (`mqgate_shared_failure_writes_skipped_total`).
//! - **Outage**: while the registry is known unreachable (`registry::health`) none of this is
//!   asked, and every call is bounded well below the decision deadline: decisions fall back to
//!   this process's own view (its familiar addresses, counts and lockouts) and never wait for it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};

use super::Gate;
use crate::core::DeviceView;
use crate::limit::bucket::{Gcra, Rate};
use crate::limit::lockout::Locked;
use crate::registry::cache::CachedRegistry;
use crate::registry::{AddressSeen, Change, FailureRule, LockScope, StoreResult, StoredLockout};

/// A store call of the shared guard, boxed (see [`Gate::shared_call`]).
type StoreCall<'a, T> = std::pin::Pin<Box<dyn Future<Output = StoreResult<T>> + Send + 'a>>;

/// Familiar-address writes queued at most (then dropped and counted), about 100 bytes each: the
/// writes [`FAMILIAR_HOLD`] keeps back during a reconnect storm of devices the cache does not
/// hold (half the queue, ~13 MB) and as many again arriving meanwhile, so the writer's commits,
/// not the queue, set how many are lost.
const FAMILIAR_QUEUE: usize = 262_144;

/// Shared failure writes per second per replica (burst: twice as many).
pub const SHARED_WRITES: u32 = 200;

/// The writer's end of the familiar-address queue.
#[derive(Debug)]
pub(super) struct Shared {
    queue: mpsc::Sender<AddressSeen>,
    familiar: Arc<FamiliarCounts>,
    /// The failure-write budget (see the module docs).
    writes: Mutex<Gcra>,
    /// Failures counted here only because the budget was spent.
    skipped: AtomicU64,
    /// The keys whose clear the change feed has applied, once the feed runs and when the store
    /// announces lockouts (see [`Gate::clear_shared`]).
    cleared: OnceLock<broadcast::Sender<String>>,
}

impl Gate {
    /// Shares the brute-force guard through the registry (see the module doc): familiar
    /// addresses written by a background writer, failures and lockouts counted in the store.
    /// Without it (unit tests) the guard is this process's memory alone.
    pub fn with_shared_guard(mut self) -> Self {
        let (queue, rx) = mpsc::channel(FAMILIAR_QUEUE);
        let familiar = Arc::new(FamiliarCounts::default());
        // Off the hot path: the writer may take the whole decision deadline per write.
        tokio::spawn(write_familiar(
            Arc::clone(&self.registry),
            rx,
            Arc::clone(&familiar),
            self.deadline,
        ));
        self.shared = Some(Shared {
            queue,
            familiar,
            writes: Mutex::default(),
            skipped: AtomicU64::new(0),
            cleared: OnceLock::new(),
        });
        self
    }

    /// Failure writes skipped so far because the write budget was spent.
    pub fn shared_writes_skipped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.skipped.load(Ordering::Relaxed))
    }

    /// Familiar-address writes dropped so far (queue full, or the registry unreachable).
    pub fn familiar_dropped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.familiar.dropped.load(Ordering::Relaxed))
    }

    /// Familiar-address writes queued, held or being written.
    pub fn familiar_pending(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.familiar.pending.load(Ordering::Relaxed))
    }

    /// Longest wait for one brute-force store call: a small part of the decision deadline.
    fn store_timeout(&self) -> Duration {
        self.deadline / 8
    }

    /// Runs a store call of the shared guard unless the registry is known down, within
    /// [`Gate::store_timeout`]; `None` when it could not answer (the in-memory view then decides).
    /// The call is boxed before the returned future exists: a store call's future is ~17 KB, and
    /// held inline it made every CONNECT's future that size (copied whole into the HTTP handler's
    /// box on every login), though these calls run only on failures and lockouts.
    fn shared_call<'a, T: 'a>(
        &'a self,
        what: &'static str,
        call: impl Future<Output = StoreResult<T>> + Send + 'a,
    ) -> impl Future<Output = Option<T>> + Send + 'a {
        let call: StoreCall<'a, T> = Box::pin(call);
        async move {
            if self.shared.is_none() || self.registry.health().is_down() {
                return None;
            }
            match tokio::time::timeout(self.store_timeout(), call).await {
                Ok(Ok(v)) => Some(v),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, what, "brute-force state: registry call failed");
                    None
                }
                Err(_) => {
                    tracing::warn!(what, "brute-force state: registry did not answer in time");
                    None
                }
            }
        }
    }

    /// Queues `peer` as a familiar address of the device (never waits).
    pub(super) fn remember(&self, device: &DeviceView, peer: &str, now: i64) {
        let Some(shared) = &self.shared else { return };
        let write = AddressSeen {
            tenant: device.tenant_id(),
            device: device.registry_id,
            address: peer.to_string(),
            at_ms: now,
        };
        // Counted before it is sent: the writer's decrement cannot come first.
        shared.familiar.pending.fetch_add(1, Ordering::Relaxed);
        if shared.queue.try_send(write).is_err() {
            shared.familiar.pending.fetch_sub(1, Ordering::Relaxed);
            shared.familiar.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the registry knows `peer` as a familiar address of `client_id` (another replica,
    /// or this one before a restart, saw the device log in from it). The device's whole list (at
    /// most [`FAMILIAR_MAX`](crate::limit::lockout::FAMILIAR_MAX)) is read and learnt, at most
    /// once per client id every few seconds however many addresses ask.
    pub(super) async fn familiar_in_store(&self, client_id: &str, peer: &str) -> bool {
        let now = self.clock.now_ms();
        if self.shared.is_none() || self.guard().store_read_recently(client_id, now) {
            return false;
        }
        let Ok(Some(device)) = self.registry.device(client_id).await else {
            return false;
        };
        let store = self.registry.store();
        let call = store.familiar_addresses(device.tenant_id(), client_id);
        let Some(all) = self.shared_call("familiar lookup", call).await else {
            return false;
        };
        let mut guard = self.guard();
        guard.note_store_read(client_id, now);
        for (address, last_ok) in &all {
            guard.learn_familiar(client_id, address, *last_ok);
        }
        guard.is_familiar(client_id, peer, now)
    }

    /// Counts a failure the guard counted in the registry too (`client_id` when the client id's
    /// count took it, the address always). Returns the lockout to report: the guard's own
    /// (`local`), else one the shared count started. A lockout the guard started that the store
    /// did not (failures it counted while the store was unreachable) is stored and announced.
    pub(super) async fn share_failure(
        &self,
        client_id: Option<&str>,
        peer: &str,
        now: i64,
        local: Option<Locked>,
    ) -> Option<Locked> {
        let shared = self.shared.as_ref()?;
        let writes = 1 + u32::from(client_id.is_some());
        let budget = Rate::new(f64::from(SHARED_WRITES), 2 * SHARED_WRITES);
        let within = budget.is_some_and(|rate| {
            let mut bucket = shared.writes.lock().unwrap_or_else(|e| e.into_inner());
            bucket.take(rate, now, writes).is_ok()
        });
        if !within {
            shared
                .skipped
                .fetch_add(u64::from(writes), Ordering::Relaxed);
            return local;
        }
        let p = self.guard().policy();
        let mut started = None;
        if let Some(c) = client_id {
            let rule = FailureRule {
                max: p.max_failures,
                window_ms: p.window_ms,
                lockout_ms: p.lockout_ms,
            };
            started = self.count_shared(LockScope::ClientId, c, now, rule).await;
        }
        let rule = FailureRule {
            max: p.ip_max_failures,
            window_ms: p.window_ms,
            lockout_ms: p.ip_lockout_ms,
        };
        started = started.or(self.count_shared(LockScope::Address, peer, now, rule).await);
        if let (Some(l), None) = (&local, &started) {
            let stored = match l {
                Locked::ClientId { until_ms } => {
                    client_id.map(|c| (LockScope::ClientId, c, until_ms))
                }
                Locked::Address { until_ms } => Some((LockScope::Address, peer, until_ms)),
                Locked::Busy { .. } => None,
            };
            if let Some((scope, key, until_ms)) = stored {
                let l = StoredLockout {
                    scope,
                    key: key.to_string(),
                    until_ms: *until_ms,
                };
                let store = self.registry.store();
                self.shared_call("lockout write", store.put_lockout(&l))
                    .await;
            }
        }
        local.or(started)
    }

    /// One shared failure count; a lockout it started is applied here at once.
    async fn count_shared(
        &self,
        scope: LockScope,
        key: &str,
        now: i64,
        rule: FailureRule,
    ) -> Option<Locked> {
        let store = self.registry.store();
        let call = store.count_failure(scope, key, now, rule);
        let until_ms = self.shared_call("failure count", call).await??;
        let l = StoredLockout {
            scope,
            key: key.to_string(),
            until_ms,
        };
        self.guard().apply(&l);
        Some(match scope {
            LockScope::ClientId => Locked::ClientId { until_ms },
            LockScope::Address => Locked::Address { until_ms },
        })
    }

    /// Takes the registry's lockouts in force into the guard (start-up, missed notifications),
    /// and clears those it announced and no longer holds
    /// ([`FailureGuard::resync`](crate::limit::lockout::FailureGuard::resync)).
    pub async fn load_lockouts(&self) {
        let now = self.clock.now_ms();
        let store = self.registry.store();
        let Some(all) = self
            .shared_call("lockout load", store.active_lockouts(now))
            .await
        else {
            return;
        };
        self.guard().resync(&all, now);
    }

    /// Clears a client id's or address's failures and lockout in the registry (announced).
    /// A lockout announced before the clear (this replica's own among them) can reach the change
    /// feed after the caller cleared the key here, and lock it again until the clear's own notice
    /// follows (PostgreSQL delivers notices in commit order): so a clear the store announced is
    /// answered once the feed has applied that notice, within [`Gate::store_timeout`].
    pub(super) async fn clear_shared(&self, key: &str) -> bool {
        let store = self.registry.store();
        // Subscribed before the clear commits: its notice cannot pass unseen.
        let mut applied = self
            .shared
            .as_ref()
            .and_then(|s| s.cleared.get())
            .map(broadcast::Sender::subscribe);
        let cleared = self
            .shared_call("lockout clear", store.clear_failures(key))
            .await
            .unwrap_or(false);
        if let (true, Some(rx)) = (cleared, applied.as_mut()) {
            let seen = async {
                loop {
                    match rx.recv().await {
                        Ok(k) if k == key => return,
                        Err(broadcast::error::RecvError::Closed) => return,
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    }
                }
            };
            if tokio::time::timeout(self.store_timeout(), seen)
                .await
                .is_err()
            {
                tracing::warn!("lockout clear: its notice was not applied in time");
            }
        }
        cleared
    }

    /// Forgets failure rows that no longer matter (called by the lockout feed, once a minute).
    async fn purge_shared(&self) {
        let (now, window) = (self.clock.now_ms(), self.guard().policy().window_ms);
        let store = self.registry.store();
        self.shared_call("failure purge", store.purge_failures(now, window))
            .await;
    }

    fn apply_lockout(&self, l: &StoredLockout) {
        self.guard().apply(l);
    }
}

/// Applies the lockouts other replicas announce (PostgreSQL's change feed), re-reads them all when
/// notifications may have been missed, and purges stale failure rows once a minute; for as long
/// as the gate lives.
pub fn spawn_lockout_feed(gate: &Arc<Gate>) {
    let mut rx = gate.registry().watch_changes();
    // Only PostgreSQL announces lockouts and their clears; SQLite has one node.
    let cleared = gate
        .shared
        .as_ref()
        .filter(|_| gate.registry().store().announces_lockouts())
        .map(|s| s.cleared.get_or_init(|| broadcast::channel(64).0).clone());
    let weak = Arc::downgrade(gate);
    tokio::spawn(async move {
        let mut purge = tokio::time::interval(Duration::from_secs(60));
        loop {
            let change = tokio::select! {
                c = rx.recv() => c,
                _ = purge.tick() => {
                    let Some(gate) = weak.upgrade() else { return };
                    gate.purge_shared().await;
                    continue;
                }
            };
            let Some(gate) = weak.upgrade() else { return };
            match change {
                Ok(Change::Lockout(l)) => {
                    gate.apply_lockout(&l);
                    if let (0, Some(cleared)) = (l.until_ms, &cleared) {
                        let _ = cleared.send(l.key);
                    }
                }
                Ok(Change::Resync) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    gate.load_lockouts().await
                }
                Ok(_) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            }
        }
    });
}

/// The familiar-address writes' counts, kept by [`Gate::remember`] and the writer.
#[derive(Debug, Default)]
struct FamiliarCounts {
    /// Not written: the queue was full, or the registry did not take them.
    dropped: AtomicU64,
    /// Queued, held, or being written.
    pending: AtomicU64,
}

/// Familiar-address writes committed together at most.
const FAMILIAR_BATCH: usize = 1024;
/// How long the writer gathers addresses after the first of a batch (as the audit writer does):
/// in a reconnect storm a commit, and on SQLite its fsync and the write lock it holds, then
/// serve a few hundred logins instead of a couple of dozen. Nobody waits on these writes.
const FAMILIAR_LINGER: Duration = Duration::from_millis(20);

/// While the cache fills from the store (a reconnect storm of devices it does not hold: every
/// login waits on a fill, and every one of them queues an address), the writer holds its writes
/// until no fill has been in flight for this long: the store serves the decisions first, and the
/// addresses, which nobody waits on, follow the storm instead of competing with it.
const FAMILIAR_QUIET: Duration = Duration::from_millis(100);
/// The longest a queued address is held back by fills: past it (or with the queue half full)
/// the writer writes until the queue is empty, fills or not, then may hold again.
const FAMILIAR_HOLD: Duration = Duration::from_secs(10);

/// Whether the writer keeps holding its writes: the cache filled within [`FAMILIAR_QUIET`]
/// (`filling`), the oldest has been held for less than [`FAMILIAR_HOLD`] and less than half the
/// queue is taken.
fn hold(filling: bool, held_for: Duration, queued: usize) -> bool {
    filling && held_for < FAMILIAR_HOLD && queued < FAMILIAR_QUEUE / 2
}

/// Writes familiar addresses until the gate is gone: whatever queued while the last batch was
/// written, or arrived within [`FAMILIAR_LINGER`] of its first, goes in one transaction (a
/// reconnect storm costs a commit per batch, not per device); held back while the cache fills
/// (see [`FAMILIAR_QUIET`], [`FAMILIAR_HOLD`]).
/// A batch the registry cannot take now is dropped and counted: the in-memory view still holds
/// the addresses.
async fn write_familiar(
    registry: Arc<CachedRegistry>,
    mut rx: mpsc::Receiver<AddressSeen>,
    counts: Arc<FamiliarCounts>,
    timeout: Duration,
) {
    let mut batch = Vec::with_capacity(FAMILIAR_BATCH);
    // When the writes now queued started being held (none again once the queue is empty).
    let mut holding: Option<tokio::time::Instant> = None;
    while rx.recv_many(&mut batch, FAMILIAR_BATCH).await > 0 {
        if batch.len() < FAMILIAR_BATCH {
            tokio::time::sleep(FAMILIAR_LINGER).await;
            while batch.len() < FAMILIAR_BATCH
                && let Ok(seen) = rx.try_recv()
            {
                batch.push(seen);
            }
        }
        let since = *holding.get_or_insert_with(tokio::time::Instant::now);
        while hold(
            registry.filled_within(FAMILIAR_QUIET),
            since.elapsed(),
            rx.len(),
        ) {
            tokio::time::sleep(FAMILIAR_QUIET).await;
        }
        let n = batch.len() as u64;
        let written = if registry.health().is_down() {
            false
        } else {
            let write = registry.store().remember_addresses(&batch);
            match tokio::time::timeout(timeout, write).await {
                Ok(Ok(())) => true,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, addresses = n, "familiar addresses not written");
                    false
                }
                Err(_) => {
                    tracing::warn!(addresses = n, "familiar addresses not written in time");
                    false
                }
            }
        };
        if !written {
            counts.dropped.fetch_add(n, Ordering::Relaxed);
        }
        counts.pending.fetch_sub(n, Ordering::Relaxed);
        batch.clear();
        if rx.is_empty() {
            holding = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{FAMILIAR_HOLD, FAMILIAR_QUEUE, hold};
    use std::time::Duration;

    #[test]
    fn familiar_writes_are_held_only_while_filling_and_within_bounds() {
        assert!(hold(true, Duration::ZERO, 0));
        assert!(hold(
            true,
            FAMILIAR_HOLD - Duration::from_millis(1),
            FAMILIAR_QUEUE / 2 - 1
        ));
        assert!(!hold(false, Duration::ZERO, 0), "no fill: written at once");
        assert!(!hold(true, FAMILIAR_HOLD, 0), "held long enough");
        assert!(
            !hold(true, Duration::ZERO, FAMILIAR_QUEUE / 2),
            "the queue half full"
        );
    }
}
