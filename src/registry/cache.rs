//! The hot-path view of the registry: a compact table of compiled [`DeviceView`]s in front of the
//! [`Store`] ([`DeviceTable`]), a bounded cache of "no such client id" answers, one fill per client
//! id however many ask at once, and prompt invalidation.
//!
//! A load that raced with an invalidation is not kept: every invalidation bumps an epoch, and a
//! load that saw the epoch move while it read the store drops its entry again after use.
//!
//! Devices of a tenant share one [`TenantView`] (name, limit, the tenant's rules and the file rules
//! compiled once, placeholders bound at match time): a device costs its own fields only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use moka::future::Cache;
use tokio::sync::{OnceCell, broadcast, mpsc, oneshot};

use super::health::Health;
use super::table::DeviceTable;
use super::{Change, DeviceRecord, Store, StoreError, StoreResult, StoredAclRule, TenantId};
use crate::acl::{Rule, RuleSet, RuleSource};
use crate::core::ids::ClientId;
use crate::core::{DeviceExtras, DeviceView, TenantView};

/// A cached answer: the device, or `None` for a client id the store does not know.
pub type Entry = Option<Arc<DeviceView>>;

/// One fill of one client id, awaited by everyone who asked meanwhile.
type Flight = Arc<OnceCell<Result<Entry, Arc<StoreError>>>>;

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

/// Most "no such client id" answers kept (they are made by whoever connects: bounded apart from
/// the devices, which only operators create).
const UNKNOWN_CAPACITY: u64 = 100_000;

/// Devices per page of a warm-up read.
const WARM_PAGE: i64 = 2_000;

/// Warm-up pages read at once where the store can read them side by side.
const WARM_IN_FLIGHT: usize = 3;

type WarmPage = tokio::task::JoinHandle<StoreResult<Vec<DeviceRecord>>>;

/// A tenant's shared view and what it was built from.
struct Interned {
    view: Arc<TenantView>,
    rule_ids: Box<[i64]>,
    files: Arc<Vec<Rule>>,
}

/// The store plus its hot-path cache and the file ACL rules every device also gets.
pub struct CachedRegistry {
    store: Store,
    batcher: FillBatcher,
    devices: DeviceTable,
    unknown: Cache<String, ()>,
    flights: Mutex<HashMap<Box<str>, Flight>>,
    tenants: Mutex<HashMap<TenantId, Interned>>,
    file_rules: RwLock<Arc<Vec<Rule>>>,
    epoch: AtomicU64,
    changes: broadcast::Sender<Change>,
    /// The newest [`Change::Mark`] the change listener has passed (see [`CachedRegistry::settled`]).
    marks: tokio::sync::watch::Sender<i64>,
    health: Arc<Health>,
    load_timeout: Duration,
    fills: Arc<FillStats>,
}

/// How long a cache fill may wait for the store unless [`CachedRegistry::with_deadline`] says
/// otherwise (below the default decision deadline).
const LOAD_TIMEOUT: Duration = Duration::from_millis(1500);

/// Changes re-published after invalidation, for live sessions (a lagging reader re-checks all).
const CHANGE_FEED: usize = 1024;

impl CachedRegistry {
    /// Wraps `store`; `file_rules` are appended after each device's stored rules.
    pub fn new(store: Store, settings: CacheSettings, file_rules: Vec<Rule>) -> Self {
        let unknown = Cache::builder()
            .max_capacity(settings.capacity.min(UNKNOWN_CAPACITY))
            .time_to_live(settings.negative_ttl)
            .build();
        let fills = Arc::new(FillStats::new());
        let batcher = FillBatcher::spawn(store.clone(), LOAD_TIMEOUT, Arc::clone(&fills));
        CachedRegistry {
            health: Health::new(store.clone(), LOAD_TIMEOUT),
            store,
            batcher,
            devices: DeviceTable::new(settings.capacity, settings.ttl),
            unknown,
            flights: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            file_rules: RwLock::new(Arc::new(file_rules)),
            epoch: AtomicU64::new(0),
            changes: broadcast::channel(CHANGE_FEED).0,
            marks: tokio::sync::watch::channel(0).0,
            load_timeout: LOAD_TIMEOUT,
            fills,
        }
    }

    /// Bounds every store round trip of a cache fill (and the health probe) by `load_timeout`,
    /// so a decision that needs the store still arrives before its deadline.
    pub fn with_deadline(mut self, load_timeout: Duration) -> Self {
        self.batcher =
            FillBatcher::spawn(self.store.clone(), load_timeout, Arc::clone(&self.fills));
        self.health = Health::new(self.store.clone(), load_timeout);
        self.load_timeout = load_timeout;
        self
    }

    /// Whether the store answers (the circuit breaker of the hot path, `/readyz`).
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Whether a fill of the cache from the store is in flight, or one started or ended within
    /// `window`: the store is serving decisions that wait on it (a reconnect storm of devices the
    /// cache does not hold), and writes nobody waits on can hold back (see `gate::brute`).
    pub fn filled_within(&self, window: Duration) -> bool {
        self.fills.busy_within(window)
    }

    /// The underlying store (admin writes go there, then call [`CachedRegistry::invalidate`]).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// What the cache holds for `client_id` (`Some(None)`: known unknown), without asking the
    /// store.
    pub fn cached(&self, client_id: &str) -> Option<Entry> {
        self.with_cached(client_id, |v| v.cloned())
    }

    /// `f` of what the cache holds for `client_id` (`None`: known unknown), without asking the
    /// store; a view is lent under its shard's read lock, its reference count untouched. `None`
    /// when the cache does not know.
    pub fn with_cached<R>(
        &self,
        client_id: &str,
        f: impl FnOnce(Option<&Arc<DeviceView>>) -> R,
    ) -> Option<R> {
        // `f` runs once: under the lock if the table holds the device, else if it is known unknown.
        let mut f = Some(f);
        if let Some(r) = self
            .devices
            .with(client_id, |v| f.take().map(|f| f(Some(v))))
            .flatten()
        {
            return Some(r);
        }
        let f = f?;
        self.unknown.contains_key(client_id).then(|| f(None))
    }

    /// The device for `client_id`, from the cache or (once, however many ask at once) the store.
    /// While the store is known unreachable only the cache answers (an uncached device is
    /// `Unavailable` at once); a fill that fails or overruns its deadline opens the breaker.
    pub async fn device(&self, client_id: &str) -> StoreResult<Option<Arc<DeviceView>>> {
        if let Some(entry) = self.cached(client_id) {
            return Ok(entry);
        }
        if self.health.is_down() {
            return Err(StoreError::Unavailable("registry known unreachable"));
        }
        let flight = {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            Arc::clone(flights.entry(client_id.into()).or_default())
        };
        let got = flight.get_or_init(|| self.fill(client_id)).await.clone();
        {
            let mut flights = self.flights.lock().unwrap_or_else(|e| e.into_inner());
            if flights
                .get(client_id)
                .is_some_and(|f| Arc::ptr_eq(f, &flight))
            {
                flights.remove(client_id);
            }
        }
        match got {
            Ok(entry) => Ok(entry),
            Err(e) => {
                if !matches!(*e, StoreError::NotFound(_) | StoreError::Conflict(_)) {
                    self.health.mark_down("a device lookup failed");
                }
                Err(unshare(e))
            }
        }
    }

    /// Reads `client_id` from the store within the deadline and keeps the answer, unless an
    /// invalidation landed meanwhile.
    async fn fill(&self, client_id: &str) -> Result<Entry, Arc<StoreError>> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let entry = tokio::time::timeout(self.load_timeout, self.load(client_id))
            .await
            .unwrap_or(Err(StoreError::Unavailable(
                "registry did not answer in time",
            )))
            .map_err(Arc::new)?;
        match &entry {
            Some(view) => self.devices.insert(Arc::clone(view)),
            None => self.unknown.insert(client_id.to_string(), ()).await,
        }
        if self.epoch.load(Ordering::Acquire) != epoch {
            self.devices.remove(client_id);
            self.unknown.invalidate(client_id).await;
        }
        Ok(entry)
    }

    /// Loads a device without caching it (`acl check` and friends).
    pub async fn load(&self, client_id: &str) -> StoreResult<Entry> {
        let record = self.batcher.load(client_id).await?;
        Ok(record.and_then(|r| self.view(r)).map(Arc::new))
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
            Change::Device { client_id, .. } => {
                self.devices.remove(client_id);
                self.unknown.invalidate(client_id.as_str()).await;
            }
            Change::Tenant(t) => {
                let t = *t;
                self.tenants_lock().remove(&t);
                self.devices.remove_if(|d| d.tenant.id == t);
            }
            Change::Resync => {
                self.tenants_lock().clear();
                self.devices.clear();
                self.unknown.invalidate_all();
            }
            // Certificates live in the trust store, not in device views.
            Change::Certs(_) | Change::Lockout(_) | Change::Mark(_) => {}
        }
    }

    fn tenants_lock(&self) -> std::sync::MutexGuard<'_, HashMap<TenantId, Interned>> {
        self.tenants.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Replaces the file rules (start-up, `acl reload`) and drops every compiled view.
    pub async fn set_file_rules(&self, rules: Vec<Rule>) {
        *self.file_rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rules);
        self.invalidate(&Change::Resync).await;
    }

    /// Loads every device of every tenant into the cache, a page at a time; returns how many.
    /// Pages are read while earlier ones compile: [`WARM_IN_FLIGHT`] side by side where the store
    /// knows where they start ([`Store::page_starts`], PostgreSQL: a process per connection), else
    /// the next one by keyset.
    pub async fn warm(&self) -> StoreResult<usize> {
        let mut n = 0;
        for tenant in self.store.list_tenants().await? {
            n += match self.store.page_starts(tenant.id, WARM_PAGE).await? {
                Some(starts) => self.warm_side_by_side(tenant.id, starts).await?,
                None => self.warm_in_turn(tenant.id, None).await?,
            };
        }
        Ok(n)
    }

    fn fetch_page(&self, t: TenantId, after: Option<String>) -> WarmPage {
        let store = self.store.clone();
        tokio::spawn(async move { store.load_tenant_page(t, after.as_deref(), WARM_PAGE).await })
    }

    /// Compiles a warm-up page into the cache; returns how many it held and the client id to read
    /// on from when it was full.
    async fn take_page(&self, pending: WarmPage) -> StoreResult<(usize, Option<String>)> {
        let page = pending
            .await
            .map_err(|_| StoreError::Invalid("warm-up read stopped".into()))??;
        let next = (page.len() as i64 == WARM_PAGE)
            .then(|| page.last().map(|r| r.device.client_id.clone()))
            .flatten();
        let mut n = 0;
        for record in page {
            if let Some(view) = self.view(record) {
                self.devices.insert(Arc::new(view));
                n += 1;
            }
        }
        Ok((n, next))
    }

    /// A tenant's pages by keyset from `after`, the next read while this one compiles.
    async fn warm_in_turn(&self, t: TenantId, after: Option<String>) -> StoreResult<usize> {
        let mut n = 0;
        let mut next = Some(self.fetch_page(t, after));
        while let Some(pending) = next.take() {
            let (got, more) = self.take_page(pending).await?;
            n += got;
            next = more.map(|after| self.fetch_page(t, Some(after)));
        }
        Ok(n)
    }

    /// A tenant's pages from known starts, [`WARM_IN_FLIGHT`] read at once; the last one read
    /// on by keyset (devices added since the starts were read). A device added meanwhile inside
    /// a page's range can push that page's last device out of it: it is then filled on demand.
    async fn warm_side_by_side(
        &self,
        t: TenantId,
        starts: Vec<Option<String>>,
    ) -> StoreResult<usize> {
        let mut n = 0;
        let mut starts = starts.into_iter().peekable();
        let mut pending = std::collections::VecDeque::with_capacity(WARM_IN_FLIGHT);
        let mut last_more = None;
        loop {
            while pending.len() < WARM_IN_FLIGHT
                && let Some(after) = starts.next()
            {
                let last = starts.peek().is_none();
                pending.push_back((self.fetch_page(t, after), last));
            }
            let Some((page, last)) = pending.pop_front() else {
                break;
            };
            let (got, more) = self.take_page(page).await?;
            n += got;
            if last {
                last_more = more;
            }
        }
        if let Some(after) = last_more {
            n += self.warm_in_turn(t, Some(after)).await?;
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

    /// Number of cached entries (devices and unknown client ids; for metrics and tests).
    pub fn cached_entries(&self) -> u64 {
        self.devices.len() as u64 + self.unknown.entry_count()
    }

    /// The cache's series in Prometheus text format: what it holds and its fills' round trips to
    /// the store (a reconnect storm's pace is the fills' pace: their count, the client ids they
    /// asked for and the time they took give the batch size and the store's latency).
    pub fn render_metrics(&self) -> String {
        let f = &self.fills;
        format!(
            "# HELP mqgate_registry_cached_entries Devices and unknown client ids the cache holds.\n# TYPE mqgate_registry_cached_entries gauge\nmqgate_registry_cached_entries {}\n\
             # HELP mqgate_registry_fills_total Store calls that filled the cache (one per batch of concurrent misses).\n# TYPE mqgate_registry_fills_total counter\nmqgate_registry_fills_total {}\n\
             # HELP mqgate_registry_fill_client_ids_total Client ids those calls asked for.\n# TYPE mqgate_registry_fill_client_ids_total counter\nmqgate_registry_fill_client_ids_total {}\n\
             # HELP mqgate_registry_fill_seconds_total Time those calls took, answered or not.\n# TYPE mqgate_registry_fill_seconds_total counter\nmqgate_registry_fill_seconds_total {:.6}\n",
            self.cached_entries(),
            f.calls.load(Ordering::Relaxed),
            f.client_ids.load(Ordering::Relaxed),
            f.micros.load(Ordering::Relaxed) as f64 / 1e6,
        )
    }

    /// The hot path's view of a stored record, its tenant's part shared with the tenant's other
    /// devices (built anew when the tenant's rules, limit or name, or the file rules changed).
    fn view(&self, r: DeviceRecord) -> Option<DeviceView> {
        let files = self
            .file_rules
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tenant_rules: Vec<&StoredAclRule> =
            r.rules.iter().filter(|s| s.client_id.is_none()).collect();
        let t = r.device.tenant_id;
        let shared = {
            let mut tenants = self.tenants_lock();
            let same = tenants.get(&t).filter(|i| {
                Arc::ptr_eq(&i.files, &files)
                    && *i.view.name == *r.tenant_name
                    && i.view.rate == r.tenant_limit
                    && i.rule_ids.iter().eq(tenant_rules.iter().map(|s| &s.id))
            });
            match same {
                Some(i) => Arc::clone(&i.view),
                None => {
                    let view = Arc::new(tenant_view(&r, &tenant_rules, &files));
                    let rule_ids = tenant_rules.iter().map(|s| s.id).collect();
                    let interned = Interned {
                        view: Arc::clone(&view),
                        rule_ids,
                        files,
                    };
                    tenants.insert(t, interned);
                    view
                }
            }
        };
        device_view(r, shared)
    }
}

fn unshare(e: Arc<StoreError>) -> StoreError {
    Arc::try_unwrap(e).unwrap_or_else(|e| StoreError::Invalid(format!("shared load failed: {e}")))
}

fn stored_rule(s: &StoredAclRule) -> Rule {
    Rule {
        permission: s.permission,
        action: s.action,
        topic: s.topic.clone(),
        source: match s.client_id {
            Some(_) => RuleSource::Device { id: s.id },
            None => RuleSource::Tenant { id: s.id },
        },
    }
}

/// What a tenant's devices share: its stored rules followed by `file_rules`, compiled once.
fn tenant_view(r: &DeviceRecord, tenant_rules: &[&StoredAclRule], files: &[Rule]) -> TenantView {
    let rules: Vec<Rule> = tenant_rules
        .iter()
        .map(|s| stored_rule(s))
        .chain(files.iter().cloned())
        .collect();
    TenantView {
        id: r.device.tenant_id,
        name: r.tenant_name.as_str().into(),
        rate: r.tenant_limit,
        rules: RuleSet::compile(&rules),
    }
}

/// One device's view over its tenant's shared part: its own rules compiled (usually none),
/// credentials as digests, its limit. `None` for a stored client id no edge can present (a row
/// from before the client id rule): nothing can connect as it.
fn device_view(r: DeviceRecord, tenant: Arc<TenantView>) -> Option<DeviceView> {
    let d = r.device;
    let Ok(client_id) = ClientId::parse(&d.client_id) else {
        tracing::debug!(tenant = %tenant.name, "a stored client id no client can present is not cached");
        return None;
    };
    let own: Vec<Rule> = r
        .rules
        .iter()
        .filter(|s| s.client_id.is_some())
        .map(stored_rule)
        .collect();
    let extras = (!own.is_empty() || r.device_limit.is_some()).then(|| {
        Box::new(DeviceExtras {
            rules: RuleSet::compile(&own),
            rate: r.device_limit,
        })
    });
    Some(DeviceView {
        tenant,
        registry_id: d.id,
        client_id,
        username: d.username.map(String::into_boxed_str),
        enabled: d.enabled,
        // An allocation of exactly its size, apart from the decoder's (kept for the process's life).
        credentials: r.credentials.as_slice().into(),
        extras,
    })
}

/// Compiles a stored record into the hot path's view on its own (`acl check`): its stored rules
/// (device, then tenant) followed by `file_rules`. `None` for a client id no edge can present.
pub fn compile_view(r: DeviceRecord, file_rules: &[Rule]) -> Option<DeviceView> {
    let tenant_rules: Vec<&StoredAclRule> =
        r.rules.iter().filter(|s| s.client_id.is_none()).collect();
    let tenant = Arc::new(tenant_view(&r, &tenant_rules, file_rules));
    device_view(r, tenant)
}

type FillReply = oneshot::Sender<Result<Option<DeviceRecord>, String>>;

/// What the cache's fills cost (see [`CachedRegistry::render_metrics`]), whether one is in flight
/// and when the last one started or ended (see [`CachedRegistry::filled_within`]).
struct FillStats {
    calls: AtomicU64,
    client_ids: AtomicU64,
    micros: AtomicU64,
    /// Fills started and not yet ended.
    in_flight: AtomicU64,
    /// Milliseconds from `since` to the last start or end of a fill, plus one (0: none yet).
    last_busy: AtomicU64,
    since: std::time::Instant,
}

impl FillStats {
    fn new() -> Self {
        FillStats {
            calls: AtomicU64::new(0),
            client_ids: AtomicU64::new(0),
            micros: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            last_busy: AtomicU64::new(0),
            since: std::time::Instant::now(),
        }
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.since.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn mark(&self) {
        self.last_busy
            .store(self.millis().saturating_add(1), Ordering::Relaxed);
    }

    fn started(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.mark();
    }

    /// A fill is in flight, or one started or ended within `window`.
    fn busy_within(&self, window: Duration) -> bool {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return true;
        }
        match self.last_busy.load(Ordering::Relaxed) {
            0 => false,
            last => {
                let window = u64::try_from(window.as_millis()).unwrap_or(u64::MAX);
                self.millis().saturating_add(1).saturating_sub(last) < window
            }
        }
    }

    /// The end of a fill [`FillStats::started`].
    fn record(&self, client_ids: usize, took: Duration) {
        self.mark();
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.client_ids
            .fetch_add(client_ids as u64, Ordering::Relaxed);
        self.micros.fetch_add(
            u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }
}

/// Batches concurrent cache misses into one store call: while one batch is being fetched the next
/// gathers, so a reconnect storm costs a round trip (PostgreSQL) or a hand-off to SQLite's thread
/// per batch, not per device.
struct FillBatcher {
    tx: mpsc::Sender<(String, FillReply)>,
}

/// Largest batch in one call.
const FILL_BATCH: usize = 256;

/// Most scheduler rounds a batch gathers for, while each brings more misses. With one round a
/// cold 16 x 1 storm's requests came in two cohorts and a store call served ~7.5 client ids; with
/// up to four it serves ~13 (7.1–7.8k calls per 100k devices instead of 13.3k), PostgreSQL's CPU
/// per login falls by a fifth and both stores' storms by 8–15 % (`bench/RESULTS.md`, session 6).
/// The bound keeps a steady stream of misses from holding a batch back.
const GATHER_ROUNDS: usize = 4;

impl FillBatcher {
    /// Each batch waits at most `timeout` for the store: a connection that silently stopped
    /// answering must not hold up every later batch.
    fn spawn(store: Store, timeout: Duration, stats: Arc<FillStats>) -> Self {
        let (tx, mut rx) = mpsc::channel::<(String, FillReply)>(4 * FILL_BATCH);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(FILL_BATCH);
            while rx.recv_many(&mut batch, FILL_BATCH).await > 0 {
                // Let the requests that are ready to run reach their misses first: one statement
                // then serves all of them (no timer: nothing waits that could not run anyway).
                // Each yield lets the runtime poll for I/O and run what became ready meanwhile
                // (requests whose bytes arrived, among them the next requests of clients the last
                // batch answered); gathering stops at a round that brings no miss.
                for _ in 0..GATHER_ROUNDS {
                    tokio::task::yield_now().await;
                    let before = batch.len();
                    while batch.len() < FILL_BATCH
                        && let Ok(more) = rx.try_recv()
                    {
                        batch.push(more);
                    }
                    if batch.len() == before || batch.len() >= FILL_BATCH {
                        break;
                    }
                }
                let ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
                let started = std::time::Instant::now();
                stats.started();
                let found = match tokio::time::timeout(timeout, store.load_clients(&ids)).await {
                    Ok(found) => found.map_err(|e| e.to_string()),
                    Err(_) => Err("registry did not answer in time".to_string()),
                };
                stats.record(ids.len(), started.elapsed());
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
