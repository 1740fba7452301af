//! The hot-path view of the registry: a moka cache of compiled [`DeviceView`]s in front of the
//! [`Store`], with negative entries for unknown client ids and prompt invalidation.
//!
//! A load that raced with an invalidation is not kept: every invalidation bumps an epoch, and a
//! load that saw the epoch move while it read the store drops its entry again after use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use moka::future::Cache;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::health::Health;
use super::{Change, DeviceRecord, Store, StoreError, StoreResult};
use crate::acl::{Rule, RuleSource};
use crate::core::DeviceView;

type Entry = Option<Arc<DeviceView>>;

/// Cache settings.
#[derive(Debug, Clone, Copy)]
pub struct CacheSettings {
    /// Life of a positive entry without invalidation.
    pub ttl: Duration,
    /// Life of a "no such client id" entry.
    pub negative_ttl: Duration,
    /// Maximum entries.
    pub capacity: u64,
}

struct EntryExpiry(CacheSettings);

impl moka::Expiry<String, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        Some(if v.is_some() {
            self.0.ttl
        } else {
            self.0.negative_ttl
        })
    }
}

/// The store plus its hot-path cache and the file ACL rules every device also gets.
pub struct CachedRegistry {
    store: Store,
    batcher: Option<FillBatcher>,
    cache: Cache<String, Entry>,
    file_rules: RwLock<Arc<Vec<Rule>>>,
    epoch: AtomicU64,
    changes: broadcast::Sender<Change>,
    /// The newest [`Change::Mark`] the change listener has passed (see [`CachedRegistry::settled`]).
    marks: tokio::sync::watch::Sender<i64>,
    health: Arc<Health>,
    load_timeout: Duration,
}

/// How long a cache fill may wait for the store unless [`CachedRegistry::with_deadline`] says
/// otherwise (below the default decision deadline).
const LOAD_TIMEOUT: Duration = Duration::from_millis(1500);

/// Changes re-published after invalidation, for live sessions (a lagging reader re-checks all).
const CHANGE_FEED: usize = 1024;

impl CachedRegistry {
    /// Wraps `store`; `file_rules` are appended after each device's stored rules.
    pub fn new(store: Store, settings: CacheSettings, file_rules: Vec<Rule>) -> Self {
        let cache = Cache::builder()
            .max_capacity(settings.capacity)
            .expire_after(EntryExpiry(settings))
            .support_invalidation_closures()
            .build();
        let batcher = FillBatcher::for_store(&store, LOAD_TIMEOUT);
        CachedRegistry {
            health: Health::new(store.clone(), LOAD_TIMEOUT),
            store,
            batcher,
            cache,
            file_rules: RwLock::new(Arc::new(file_rules)),
            epoch: AtomicU64::new(0),
            changes: broadcast::channel(CHANGE_FEED).0,
            marks: tokio::sync::watch::channel(0).0,
            load_timeout: LOAD_TIMEOUT,
        }
    }

    /// Bounds every store round trip of a cache fill (and the health probe) by `load_timeout`,
    /// so a decision that needs the store still arrives before its deadline.
    pub fn with_deadline(mut self, load_timeout: Duration) -> Self {
        self.batcher = FillBatcher::for_store(&self.store, load_timeout);
        self.health = Health::new(self.store.clone(), load_timeout);
        self.load_timeout = load_timeout;
        self
    }

    /// Whether the store answers (the circuit breaker of the hot path, `/readyz`).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// The underlying store (admin writes go there, then call [`CachedRegistry::invalidate`]).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The device for `client_id`, from the cache or (once, however many ask at once) the store.
    /// While the store is known unreachable only the cache answers (an uncached device is
    /// `Unavailable` at once); a fill that fails or overruns its deadline opens the breaker.
    pub async fn device(&self, client_id: &str) -> StoreResult<Option<Arc<DeviceView>>> {
        if self.health.is_down() {
            return match self.cache.get(client_id).await {
                Some(entry) => Ok(entry),
                None => Err(StoreError::Unavailable("registry known unreachable")),
            };
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let fill = async {
            tokio::time::timeout(self.load_timeout, self.load(client_id))
                .await
                .unwrap_or(Err(StoreError::Unavailable(
                    "registry did not answer in time",
                )))
        };
        let got = match self.cache.try_get_with_by_ref(client_id, fill).await {
            Ok(got) => got,
            Err(e) => {
                if !matches!(*e, StoreError::NotFound(_) | StoreError::Conflict(_)) {
                    self.health.mark_down("a device lookup failed");
                }
                return Err(unshare(e));
            }
        };
        if self.epoch.load(Ordering::Acquire) != epoch {
            self.cache.invalidate(client_id).await;
        }
        Ok(got)
    }

    /// Loads a device without caching it (`acl check` and friends).
    pub async fn load(&self, client_id: &str) -> StoreResult<Entry> {
        let record = match &self.batcher {
            Some(b) => b.load(client_id).await?,
            None => self.store.load_client(client_id).await?,
        };
        Ok(record.map(|r| Arc::new(self.view(r))))
    }

    /// A counter that moves on every invalidation: a reader that saw it unchanged across some
    /// work knows no change landed meanwhile.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Every change applied from now on, after the cache forgot what it made stale (the embedded
    /// broker re-checks live sessions with it).
    pub fn watch_changes(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    /// Forgets what `change` made stale, then tells [`CachedRegistry::watch_changes`] readers.
    pub async fn invalidate(&self, change: &Change) {
        self.forget(change).await;
        // No reader (broker off) is not an error.
        let _ = self.changes.send(change.clone());
    }

    async fn forget(&self, change: &Change) {
        // A lockout changes no device view (the gate's guard takes it from `watch_changes`).
        if matches!(change, Change::Lockout(_)) {
            return;
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        match change {
            Change::Device { client_id, .. } => self.cache.invalidate(client_id).await,
            Change::Tenant(t) => {
                let t = *t;
                let dropped = self
                    .cache
                    .invalidate_entries_if(move |_, v| v.as_ref().is_some_and(|d| d.tenant == t));
                if dropped.is_err() {
                    self.cache.invalidate_all();
                }
            }
            Change::Resync => self.cache.invalidate_all(),
            // Certificates live in the trust store, not in device views.
            Change::Certs(_) | Change::Lockout(_) | Change::Mark(_) => {}
        }
    }

    /// Replaces the file rules (start-up, `acl reload`) and drops every compiled view.
    pub async fn set_file_rules(&self, rules: Vec<Rule>) {
        *self.file_rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        self.invalidate(&Change::Resync).await;
    }

    /// Loads every device of every tenant into the cache; returns how many.
    pub async fn warm(&self) -> StoreResult<usize> {
        let mut n = 0;
        for tenant in self.store.list_tenants().await? {
            for record in self.store.load_tenant_devices(tenant.id).await? {
                let key = record.device.client_id.clone();
                self.cache
                    .insert(key, Some(Arc::new(self.view(record))))
                    .await;
                n += 1;
            }
        }
        Ok(n)
    }

    /// Applies changes announced by the store (other replicas, other processes) until it closes.
    pub fn spawn_change_listener(self: &Arc<Self>, mut rx: tokio::sync::mpsc::Receiver<Change>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            while let Some(change) = rx.recv().await {
                if let Change::Mark(n) = change {
                    me.marks.send_if_modified(|m| {
                        let newer = n > *m;
                        *m = (*m).max(n);
                        newer
                    });
                    continue;
                }
                tracing::debug!(?change, "registry change");
                me.invalidate(&change).await;
            }
        });
    }

    /// Returns once every change committed before the call has been applied here (the cache
    /// forgot what it made stale, and `watch_changes` readers were told): a mark is put on the
    /// change feed and awaited. Unbounded: callers that must not wait forever bound it.
    pub async fn settled(&self) -> StoreResult<()> {
        let mut marks = self.marks.subscribe();
        let mark = self.store.mark().await?;
        // The listener is gone only when the process shuts down: nothing more will be applied.
        let _ = marks.wait_for(|m| *m >= mark).await;
        Ok(())
    }

    /// Number of cached entries (approximate; for metrics and tests).
    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    fn view(&self, r: DeviceRecord) -> DeviceView {
        let files = self
            .file_rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        compile_view(r, &files)
    }
}

fn unshare(e: Arc<StoreError>) -> StoreError {
    Arc::try_unwrap(e).unwrap_or_else(|e| StoreError::Invalid(format!("shared load failed: {e}")))
}

/// Compiles a stored record into the hot path's view: its stored rules (device, then tenant) followed
/// by `file_rules`, placeholders expanded; credentials as digests; limit overrides.
pub fn compile_view(r: DeviceRecord, file_rules: &[Rule]) -> DeviceView {
    let rules: Vec<Rule> = r
        .rules
        .iter()
        .map(|s| Rule {
            permission: s.permission,
            action: s.action,
            topic: s.topic.clone(),
            source: match s.client_id {
                Some(_) => RuleSource::Device { id: s.id },
                None => RuleSource::Tenant { id: s.id },
            },
        })
        .chain(file_rules.iter().cloned())
        .collect();
    let creds = r.credentials;
    let (device_rate, tenant_rate) = (r.device_limit, r.tenant_limit);
    let d = r.device;
    let mut view = DeviceView::new(
        d.tenant_id,
        r.tenant_name,
        d.client_id,
        d.username,
        d.enabled,
        creds,
        &rules,
    );
    view.device_rate = device_rate;
    view.tenant_rate = tenant_rate;
    view
}

type FillReply = oneshot::Sender<Result<Option<DeviceRecord>, String>>;

/// Batches concurrent cache misses into one store call: while one batch is being fetched the next
/// gathers, so a reconnect storm costs a round trip per batch, not per device. Used for
/// PostgreSQL, where the round trip is the cost.
struct FillBatcher {
    tx: mpsc::Sender<(String, FillReply)>,
}

/// Largest batch in one call.
const FILL_BATCH: usize = 256;

impl FillBatcher {
    /// A batcher for PostgreSQL (SQLite reads in-process: nothing to batch).
    fn for_store(store: &Store, timeout: Duration) -> Option<Self> {
        matches!(store, Store::Postgres(_)).then(|| FillBatcher::spawn(store.clone(), timeout))
    }

    /// Each batch waits at most `timeout` for the store: a connection that silently stopped
    /// answering must not hold up every later batch.
    fn spawn(store: Store, timeout: Duration) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, FillReply)>(4 * FILL_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FILL_BATCH);
            while rx.recv_many(&mut batch, FILL_BATCH).await > 0 {
                let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                let found = match tokio::time::timeout(timeout, store.load_clients(&ids)).await {
                    Ok(found) => found.map_err(|e| e.to_string()),
                    Err(_) => Err("registry did not answer in time".to_string()),
                };
                for (id, reply) in batch.drain(..) {
                    let answer = found
                        .as_ref()
                        .map(|f| f.get(&id).cloned())
                        .map_err(Clone::clone);
                    let _ = reply.send(answer);
                }
            }
        });
        FillBatcher { tx }
    }

    async fn load(&self, client_id: &str) -> StoreResult<Option<DeviceRecord>> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Invalid("registry fill task stopped".into());
        self.tx
            .send((client_id.to_string(), reply))
            .await
            .map_err(|_| gone())?;
        answer
            .await
            .map_err(|_| gone())?
            .map_err(|e| StoreError::Invalid(format!("registry fill failed: {e}")))
    }
}
