//! The hot path's table of compiled devices: one pointer per device in a sharded open-addressing
//! table, keyed by the client id the view itself holds (no second copy of the key).
//!
//! A general-purpose cache (moka) costs about 430 bytes per entry in bookkeeping (access and write
//! order queues, timer wheel nodes, a copy of the key): more than the device itself at a million
//! devices. Positive entries here are bounded by the registry (an attacker cannot create devices),
//! so they need no admission policy: a slot is the view's pointer and its fill time, 16 bytes.
//! Entries older than the TTL are refilled on read; above `capacity` an insert evicts an arbitrary
//! entry of its shard (size the capacity above the fleet; the default is 2,000,000).

use std::hash::BuildHasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use hashbrown::{DefaultHashBuilder, HashTable};

use crate::core::DeviceView;

/// Shards (a power of two): readers of different devices rarely share a lock.
const SHARDS: usize = 64;

/// Where the hash bits that pick a shard start (see `DeviceTable::locate`).
const SHARD_SHIFT: u32 = 32;

struct Slot {
    view: Arc<DeviceView>,
    /// When it was filled ([`Seconds`]).
    born: u32,
}

/// Whole seconds on a monotonic clock, for the TTL: read on every lookup, so on Linux it is the
/// kernel's coarse clock, the time of the last tick read from the vDSO (4 ns here, against 25 ns
/// for `Instant::now`, which reads the TSC through kvm-clock). A TTL in seconds needs no finer one.
#[cfg(any(target_os = "linux", target_os = "android"))]
struct Seconds;

#[cfg(any(target_os = "linux", target_os = "android"))]
impl Seconds {
    fn start() -> Self {
        Seconds
    }

    fn now(&self) -> u32 {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::MonotonicCoarse);
        u32::try_from(t.tv_sec).unwrap_or(u32::MAX)
    }
}

/// Elsewhere, seconds since the table's start.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
struct Seconds(std::time::Instant);

#[cfg(not(any(target_os = "linux", target_os = "android")))]
impl Seconds {
    fn start() -> Self {
        Seconds(std::time::Instant::now())
    }

    fn now(&self) -> u32 {
        u32::try_from(self.0.elapsed().as_secs()).unwrap_or(u32::MAX)
    }
}

/// Compiled device views by client id.
pub struct DeviceTable {
    shards: Box<[RwLock<HashTable<Slot>>]>,
    hasher: DefaultHashBuilder,
    len: AtomicUsize,
    capacity: usize,
    ttl_secs: u32,
    clock: Seconds,
}

impl DeviceTable {
    /// An empty table holding at most `capacity` views, each for `ttl` after its fill.
    pub fn new(capacity: u64, ttl: Duration) -> Self {
        DeviceTable {
            shards: (0..SHARDS).map(|_| RwLock::new(HashTable::new())).collect(),
            hasher: DefaultHashBuilder::default(),
            len: AtomicUsize::new(0),
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX).max(1),
            ttl_secs: u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX),
            clock: Seconds::start(),
        }
    }

    fn now(&self) -> u32 {
        self.clock.now()
    }

    fn locate(&self, client_id: &str) -> (u64, &RwLock<HashTable<Slot>>) {
        let hash = self.hasher.hash_one(client_id);
        // Inside a shard hashbrown takes the bucket from the low bits and the tag it compares
        // before any key from the top 7: the shard comes from bits neither uses (from the top
        // bits, a shard's entries all shared six of the tag's seven, and a lookup compared the
        // key of about every other entry it probed).
        let shard = (hash >> SHARD_SHIFT) as usize % SHARDS;
        (hash, &self.shards[shard])
    }

    fn read(lock: &RwLock<HashTable<Slot>>) -> RwLockReadGuard<'_, HashTable<Slot>> {
        lock.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(lock: &RwLock<HashTable<Slot>>) -> RwLockWriteGuard<'_, HashTable<Slot>> {
        lock.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The view for `client_id`, unless absent or older than the TTL.
    pub fn get(&self, client_id: &str) -> Option<Arc<DeviceView>> {
        self.with(client_id, Arc::clone)
    }

    /// `f` of the view for `client_id`, unless absent or older than the TTL: run under its
    /// shard's read lock, the view's reference count untouched (the cached authz path).
    pub fn with<R>(&self, client_id: &str, f: impl FnOnce(&Arc<DeviceView>) -> R) -> Option<R> {
        let (hash, shard) = self.locate(client_id);
        let table = Self::read(shard);
        let slot = table.find(hash, |s| s.view.client_id.as_str() == client_id)?;
        let fresh = self.now().saturating_sub(slot.born) < self.ttl_secs;
        fresh.then(|| f(&slot.view))
    }

    /// Puts (or replaces) `view` under its client id.
    pub fn insert(&self, view: Arc<DeviceView>) {
        let born = self.now();
        let (hash, shard) = self.locate(view.client_id.as_str());
        let mut table = Self::write(shard);
        let key = view.client_id.as_str();
        if let Some(slot) = table.find_mut(hash, |s| s.view.client_id.as_str() == key) {
            *slot = Slot { view, born };
            return;
        }
        let full = self.len.load(Ordering::Relaxed) >= self.capacity;
        let evicted = full && self.evict_one(&mut table);
        let hasher = &self.hasher;
        table.insert_unique(hash, Slot { view, born }, |s| {
            hasher.hash_one(s.view.client_id.as_str())
        });
        self.len.fetch_add(1, Ordering::Relaxed);
        drop(table);
        if full && !evicted {
            // This shard was empty: take one from another (never blocking on its lock, so two
            // inserts cannot wait on each other).
            for other in self.shards.iter().filter(|o| !std::ptr::eq(*o, shard)) {
                if let Ok(mut t) = other.try_write()
                    && self.evict_one(&mut t)
                {
                    break;
                }
            }
        }
    }

    /// Removes an arbitrary entry of `table`; whether there was one.
    fn evict_one(&self, table: &mut HashTable<Slot>) -> bool {
        let Some(victim) = table.iter().next().map(|s| Arc::clone(&s.view)) else {
            return false;
        };
        let h = self.hasher.hash_one(victim.client_id.as_str());
        match table.find_entry(h, |s| Arc::ptr_eq(&s.view, &victim)) {
            Ok(e) => {
                e.remove();
                self.len.fetch_sub(1, Ordering::Relaxed);
                true
            }
            Err(_) => false,
        }
    }

    /// Forgets `client_id`.
    pub fn remove(&self, client_id: &str) {
        let (hash, shard) = self.locate(client_id);
        let mut table = Self::write(shard);
        if let Ok(e) = table.find_entry(hash, |s| s.view.client_id.as_str() == client_id) {
            e.remove();
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets every view for which `drop` holds.
    pub fn remove_if(&self, drop: impl Fn(&DeviceView) -> bool) {
        for shard in self.shards.iter() {
            let mut table = Self::write(shard);
            let before = table.len();
            table.retain(|s| !drop(&s.view));
            self.len.fetch_sub(before - table.len(), Ordering::Relaxed);
        }
    }

    /// Forgets everything (and gives the memory back).
    pub fn clear(&self) {
        for shard in self.shards.iter() {
            let mut table = Self::write(shard);
            self.len.fetch_sub(table.len(), Ordering::Relaxed);
            *table = HashTable::new();
        }
    }

    /// Number of views held.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Whether it holds no view.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::ClientId;
    use crate::registry::TenantId;

    fn view(id: &str) -> Arc<DeviceView> {
        Arc::new(DeviceView::new(
            TenantId(1),
            "t",
            ClientId::parse(id).unwrap(),
            None,
            true,
            vec![],
            &[],
        ))
    }

    #[test]
    fn views_are_found_by_their_own_client_id_replaced_and_removed() {
        let t = DeviceTable::new(100, Duration::from_secs(60));
        let (a, b) = (view("a"), view("b"));
        t.insert(Arc::clone(&a));
        t.insert(b);
        assert!(Arc::ptr_eq(&t.get("a").unwrap(), &a));
        assert!(t.get("c").is_none());
        let a2 = view("a");
        t.insert(Arc::clone(&a2));
        assert!(Arc::ptr_eq(&t.get("a").unwrap(), &a2));
        assert_eq!(t.len(), 2);
        t.remove("a");
        assert!(t.get("a").is_none());
        t.remove_if(|v| v.client_id.as_str() == "b");
        assert!(t.is_empty());
    }

    /// A million of these are held: a field added here costs a megabyte per byte. (80 since the
    /// client id is held inline: 8 bytes more here, a heap allocation of at least 32 less.)
    #[test]
    fn a_device_view_stays_small() {
        assert!(
            std::mem::size_of::<DeviceView>() <= 88,
            "{}",
            std::mem::size_of::<DeviceView>()
        );
        let c = std::mem::size_of::<crate::core::CredentialView>();
        assert!(c <= 72, "{c}");
    }

    #[test]
    fn the_capacity_holds_and_a_zero_ttl_keeps_nothing_fresh() {
        let t = DeviceTable::new(50, Duration::from_secs(60));
        for i in 0..500 {
            t.insert(view(&format!("d{i}")));
        }
        assert!(t.len() <= 50, "{}", t.len());
        assert!(t.get("d499").is_some(), "the newest is kept");
        let stale = DeviceTable::new(10, Duration::ZERO);
        stale.insert(view("a"));
        assert!(stale.get("a").is_none());
        stale.clear();
        assert!(stale.is_empty());
    }

    /// hashbrown compares a 7-bit tag (the hash's top bits) before any key: within one shard the
    /// tags must still spread, or a lookup reads the client id of most entries it probes.
    #[test]
    fn a_shards_entries_keep_distinct_tags() {
        let t = DeviceTable::new(100, Duration::from_secs(60));
        let mut tags = std::collections::HashSet::new();
        for i in 0..20_000 {
            let id = format!("dev-{i}");
            let (hash, shard) = t.locate(&id);
            if std::ptr::eq(shard, &t.shards[0]) {
                tags.insert(hash >> 57);
            }
        }
        assert!(tags.len() > 100, "{} distinct tags of 128", tags.len());
    }
}
