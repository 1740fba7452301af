//! Brute-force protection: failed authentications counted per client id and per source address,
//! with lockouts that cannot be turned against the device they protect. Pure: time is passed in.
//!
//! Why a lockout is not a denial-of-service lever: a client id's lockout applies only to
//! *unfamiliar* addresses. An address becomes familiar for a client id when that client id logs in
//! successfully from it; the real device, connecting from its usual address, is never refused by a
//! lockout that strangers caused. Strangers' failures still count (so guessing from new addresses
//! stops after `max_failures`), and a per-address limit slows one address guessing across many
//! client ids. Where a device and an attacker share one address (a NAT), the per-address limit
//! can still refuse both; that is the accepted edge of this design.
//!
//! This is each process's own view. The gate shares it through the registry (`gate::brute`):
//! familiar addresses are written there and looked up when a lockout would refuse an address this
//! process has not seen, and counted failures and lockouts are shared by replicas.

use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::registry::{LockScope, StoredLockout};

/// Thresholds and durations (milliseconds).
#[derive(Debug, Clone, Copy)]
pub struct LockoutPolicy {
    /// Failures of one client id (from unfamiliar addresses) that lock it.
    pub max_failures: u32,
    /// Window in which those failures count.
    pub window_ms: i64,
    /// How long a client id stays locked for unfamiliar addresses.
    pub lockout_ms: i64,
    /// Failures from one address, across client ids, that lock the address.
    pub ip_max_failures: u32,
    /// How long an address stays locked.
    pub ip_lockout_ms: i64,
    /// How long a successful address stays familiar.
    pub familiar_ms: i64,
}

impl Default for LockoutPolicy {
    fn default() -> Self {
        LockoutPolicy {
            max_failures: 5,
            window_ms: 15 * 60_000,
            lockout_ms: 15 * 60_000,
            ip_max_failures: 20,
            ip_lockout_ms: 15 * 60_000,
            familiar_ms: 30 * 86_400_000,
        }
    }
}

pub use mqgate_core::vocab::Locked;

#[derive(Debug, Default)]
struct Counter {
    failures: VecDeque<i64>,
    locked_until: i64,
    /// The end of the last lockout the registry announced for this key (0: none). One it no
    /// longer holds before then was cleared there ([`FailureGuard::resync`]).
    stored_until: i64,
    /// Slow verifies reserved and not yet settled: each may still become a failure.
    pending: u32,
}

impl Counter {
    /// An operator's clear: no lockout, no failures (slow verifies under way still settle).
    fn clear_lockout(&mut self) {
        self.locked_until = 0;
        self.stored_until = 0;
        self.failures.clear();
    }

    /// Whether one more slow verify may start: failures in the window plus those under way stay
    /// below `max` (so at most `max` attempts per window ever reach the hash), and fewer than
    /// `in_flight` are under way.
    fn has_room(&mut self, now: i64, max: u32, window: i64, in_flight: u32) -> bool {
        while self.failures.front().is_some_and(|t| *t <= now - window) {
            self.failures.pop_front();
        }
        self.pending < in_flight && self.failures.len() + (self.pending as usize) < max as usize
    }

    /// Records a failure; returns true when it locks.
    fn fail(&mut self, now: i64, max: u32, window: i64, lockout: i64) -> bool {
        while self.failures.front().is_some_and(|t| *t <= now - window) {
            self.failures.pop_front();
        }
        self.failures.push_back(now);
        if self.failures.len() >= max as usize && self.locked_until <= now {
            self.locked_until = now + lockout;
            self.failures.clear();
            return true;
        }
        false
    }

    fn is_idle(&self, now: i64, window: i64) -> bool {
        self.pending == 0
            && self.locked_until <= now
            && self.failures.back().is_none_or(|t| *t <= now - window)
    }
}

#[derive(Debug, Default)]
struct ClientState {
    counter: Counter,
    /// When the registry's familiar addresses of this client id were last read (Unix ms; 0:
    /// never): a locked client id hammered from any number of addresses costs the registry one
    /// read per [`STORE_MEMO_MS`], not one per attempt.
    store_read: i64,
}

/// A familiar address's last successful login (Unix ms) and when the registry last heard of it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    last_ok: i64,
    written: i64,
}

/// A client id's familiar addresses, at most [`FAMILIAR_MAX`].
type Addresses = Vec<(String, Seen)>;

/// Client ids' familiar addresses as this process knows them: a cache of the registry's, which
/// holds them all. Two generations of at most [`FAMILIAR_CLIENTS`] / 2 client ids each; when the
/// newer fills, the older goes. A client id in neither is read from the registry when it matters
/// (a lockout of it), and its next login is written again (a no-op there within a day): a fleet
/// of any size costs a bounded few megabytes here, not an entry per device that ever logged in.
#[derive(Debug, Default)]
struct FamiliarCache {
    newer: Generation,
    older: Generation,
}

/// Client id → familiar addresses (hashbrown's map for its lookup-or-insert by `&str`; std's
/// keyed hasher, as every map keyed by a client id here).
type Generation = hashbrown::HashMap<String, Addresses, std::hash::RandomState>;

/// Client ids whose familiar addresses are held in memory at most.
const FAMILIAR_CLIENTS: usize = 65_536;

impl FamiliarCache {
    fn get(&self, client_id: &str) -> Option<&Addresses> {
        self.newer
            .get(client_id)
            .or_else(|| self.older.get(client_id))
    }

    /// The client id's addresses, brought into the newer generation (created empty). When the
    /// newer is full it becomes the older, and the older's table, emptied (and at the first turn
    /// sized for a generation), the newer: a generation fills without growing its table step by
    /// step (a rehash at every doubling).
    fn entry(&mut self, client_id: &str) -> &mut Addresses {
        if self.newer.len() >= FAMILIAR_CLIENTS / 2 && !self.newer.contains_key(client_id) {
            let mut emptied = std::mem::take(&mut self.older);
            emptied.clear();
            // At the first turn the older is still the empty table it started as.
            emptied.reserve(FAMILIAR_CLIENTS / 2);
            self.older = std::mem::replace(&mut self.newer, emptied);
        }
        let older = &mut self.older;
        self.newer
            .entry_ref(client_id)
            .or_insert_with(|| older.remove(client_id).unwrap_or_default())
    }
}

/// A current lockout, for `mqgate lockout list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockoutEntry {
    /// `client_id` or `address`.
    pub kind: &'static str,
    /// The client id or address.
    pub key: String,
    /// Unix ms when it ends.
    pub until_ms: i64,
}

/// Failure counters and lockouts for every client id and address seen failing.
#[derive(Debug, Default)]
pub struct FailureGuard {
    policy: LockoutPolicy,
    clients: HashMap<String, ClientState>,
    addresses: HashMap<String, Counter>,
    familiar: FamiliarCache,
}

/// At most this many familiar addresses are kept per client id (oldest dropped), here and in the
/// registry.
pub const FAMILIAR_MAX: usize = 8;

/// A familiar address is written to the registry again once its last write is this old (so a
/// device reconnecting every minute costs one write a day, and stays familiar everywhere).
const FAMILIAR_REFRESH_MS: i64 = 86_400_000;

/// How long the registry's list of a client id's familiar addresses is believed.
const STORE_MEMO_MS: i64 = 10_000;

/// Slow (password) verifies under way at once for one client id from unfamiliar addresses.
pub const CLIENT_IN_FLIGHT: u32 = 2;

/// Slow verifies under way at once from one address.
pub const ADDRESS_IN_FLIGHT: u32 = 4;

/// What [`FailureGuard::reserve`] took; hand it back to [`FailureGuard::release`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    client_id: Option<String>,
    peer: Option<String>,
}

/// At most this many client ids, and as many addresses, are tracked: past that, new ones are not
/// counted until `sweep` frees room (memory stays bounded under a spray of new addresses).
const TRACKED_MAX: usize = 1_000_000;

/// Makes `peer` familiar, dropping the oldest address past [`FAMILIAR_MAX`].
fn insert_familiar(familiar: &mut Addresses, peer: &str, seen: Seen) {
    match familiar.iter_mut().find(|(a, _)| a == peer) {
        Some((_, known)) => {
            *known = Seen {
                last_ok: known.last_ok.max(seen.last_ok),
                ..seen
            }
        }
        None => familiar.push((peer.to_string(), seen)),
    }
    if familiar.len() > FAMILIAR_MAX
        && let Some(oldest) = familiar
            .iter()
            .enumerate()
            .min_by_key(|(_, (_, t))| t.last_ok)
            .map(|(i, _)| i)
    {
        familiar.swap_remove(oldest);
    }
}

/// The entry for `key`, created if there is room.
fn slot<'a, V: Default>(map: &'a mut HashMap<String, V>, key: &str) -> Option<&'a mut V> {
    if !map.contains_key(key) {
        if map.len() >= TRACKED_MAX {
            return None;
        }
        map.insert(key.to_string(), V::default());
    }
    map.get_mut(key)
}

impl FailureGuard {
    /// A guard with `policy`.
    pub fn new(policy: LockoutPolicy) -> Self {
        FailureGuard {
            policy,
            ..Default::default()
        }
    }

    /// Whether a CONNECT of `client_id` from `peer` must be refused now, whatever its secret.
    pub fn check(&self, client_id: &str, peer: &str, now: i64) -> Option<Locked> {
        if let Some(c) = self.addresses.get(peer).filter(|c| c.locked_until > now) {
            return Some(Locked::Address {
                until_ms: c.locked_until,
            });
        }
        let state = self.clients.get(client_id)?;
        let familiar = self.is_familiar(client_id, peer, now);
        (state.counter.locked_until > now && !familiar).then_some(Locked::ClientId {
            until_ms: state.counter.locked_until,
        })
    }

    /// Reserves a failure slot for a slow verify of `client_id` from `peer`, before it starts:
    /// refused when the failures in the window plus the verifies under way already reach the
    /// limit, or too many verifies are under way. The client id's slot is only taken from an
    /// unfamiliar address (the device at its usual address is never refused for strangers).
    /// `client_id` is `None` for a client id the registry does not know (the address alone pays).
    pub fn reserve(
        &mut self,
        client_id: Option<&str>,
        peer: &str,
        now: i64,
    ) -> Result<Reserved, Locked> {
        let p = self.policy;
        let Some(client_id) = client_id else {
            return self.reserve_address(peer, now);
        };
        let familiar = self.is_familiar(client_id, peer, now);
        let addr_ok = slot(&mut self.addresses, peer)
            .is_none_or(|a| a.has_room(now, p.ip_max_failures, p.window_ms, ADDRESS_IN_FLIGHT));
        if !addr_ok {
            return Err(Locked::Busy { of: "address" });
        }
        let client_ok = familiar
            || slot(&mut self.clients, client_id).is_none_or(|s| {
                s.counter
                    .has_room(now, p.max_failures, p.window_ms, CLIENT_IN_FLIGHT)
            });
        if !client_ok {
            return Err(Locked::Busy { of: "client_id" });
        }
        let mut taken = Reserved {
            client_id: None,
            peer: None,
        };
        if let Some(a) = self.addresses.get_mut(peer) {
            a.pending += 1;
            taken.peer = Some(peer.to_string());
        }
        if let (false, Some(s)) = (familiar, self.clients.get_mut(client_id)) {
            s.counter.pending += 1;
            taken.client_id = Some(client_id.to_string());
        }
        Ok(taken)
    }

    fn reserve_address(&mut self, peer: &str, now: i64) -> Result<Reserved, Locked> {
        let p = self.policy;
        let Some(a) = slot(&mut self.addresses, peer) else {
            return Ok(Reserved {
                client_id: None,
                peer: None,
            });
        };
        if !a.has_room(now, p.ip_max_failures, p.window_ms, ADDRESS_IN_FLIGHT) {
            return Err(Locked::Busy { of: "address" });
        }
        a.pending += 1;
        Ok(Reserved {
            client_id: None,
            peer: Some(peer.to_string()),
        })
    }

    /// Gives back what [`FailureGuard::reserve`] took (record the outcome in the same lock).
    pub fn release(&mut self, taken: Reserved) {
        if let Some(a) = taken.peer.and_then(|p| self.addresses.get_mut(&p)) {
            a.pending = a.pending.saturating_sub(1);
        }
        if let Some(s) = taken.client_id.and_then(|c| self.clients.get_mut(&c)) {
            s.counter.pending = s.counter.pending.saturating_sub(1);
        }
    }

    /// Records a failure of `peer` alone (a verify that timed out or was abandoned).
    pub fn record_address_failure(&mut self, peer: &str, now: i64) -> Option<Locked> {
        let p = self.policy;
        slot(&mut self.addresses, peer)
            .is_some_and(|a| a.fail(now, p.ip_max_failures, p.window_ms, p.ip_lockout_ms))
            .then_some(Locked::Address {
                until_ms: now + p.ip_lockout_ms,
            })
    }

    /// Whether `peer` is familiar for `client_id` in this process's view.
    pub fn is_familiar(&self, client_id: &str, peer: &str, now: i64) -> bool {
        let since = now - self.policy.familiar_ms;
        self.familiar
            .get(client_id)
            .is_some_and(|f| f.iter().any(|(a, t)| a == peer && t.last_ok > since))
    }

    /// Records a failed authentication; returns the lockout it caused, if any. `client_id` is
    /// `None` for a client id the registry does not know: that failure counts against the address
    /// only, so a spray of invented client ids cannot grow the table of client ids.
    pub fn record_failure(
        &mut self,
        client_id: Option<&str>,
        peer: &str,
        now: i64,
    ) -> Option<Locked> {
        let p = self.policy;
        let addr_locked = slot(&mut self.addresses, peer)
            .is_some_and(|a| a.fail(now, p.ip_max_failures, p.window_ms, p.ip_lockout_ms));
        let familiar = client_id.is_some_and(|c| self.is_familiar(c, peer, now));
        let state = client_id.and_then(|c| slot(&mut self.clients, c));
        let client_locked = state.is_some_and(|state| {
            !familiar
                && state
                    .counter
                    .fail(now, p.max_failures, p.window_ms, p.lockout_ms)
        });
        let state = client_id.and_then(|c| self.clients.get(c));
        if let (true, Some(state)) = (client_locked, state) {
            Some(Locked::ClientId {
                until_ms: state.counter.locked_until,
            })
        } else if addr_locked {
            Some(Locked::Address {
                until_ms: now + p.ip_lockout_ms,
            })
        } else {
            None
        }
    }

    /// Records a successful authentication: `peer` becomes familiar for `client_id`. Successes
    /// never count against anyone. Returns whether the registry should hear of it (a new address,
    /// or one not written for a day).
    pub fn record_success(&mut self, client_id: &str, peer: &str, now: i64) -> bool {
        let familiar = self.familiar.entry(client_id);
        let written = familiar
            .iter()
            .find(|(a, _)| a == peer)
            .map(|(_, s)| s.written);
        let due = written.is_none_or(|w| w <= now - FAMILIAR_REFRESH_MS);
        let written = if due { now } else { written.unwrap_or(now) };
        insert_familiar(
            familiar,
            peer,
            Seen {
                last_ok: now,
                written,
            },
        );
        due
    }

    /// Takes the registry's word that `client_id` logged in from `peer` at `last_ok` (another
    /// replica, or before a restart).
    pub fn learn_familiar(&mut self, client_id: &str, peer: &str, last_ok: i64) {
        let seen = Seen {
            last_ok,
            written: last_ok,
        };
        insert_familiar(self.familiar.entry(client_id), peer, seen);
    }

    /// Whether the registry's familiar addresses of `client_id` were read (and learnt) less than
    /// [`STORE_MEMO_MS`] ago: then this view already holds them.
    pub fn store_read_recently(&self, client_id: &str, now: i64) -> bool {
        self.clients
            .get(client_id)
            .is_some_and(|s| s.store_read > now - STORE_MEMO_MS)
    }

    /// Notes that the registry's familiar addresses of `client_id` were read and learnt at `now`.
    pub fn note_store_read(&mut self, client_id: &str, now: i64) {
        if let Some(state) = slot(&mut self.clients, client_id) {
            state.store_read = now;
        }
    }

    /// Applies a lockout another replica started (or, `until_ms` 0, an operator cleared).
    pub fn apply(&mut self, l: &StoredLockout) {
        let counter = match l.scope {
            LockScope::ClientId => slot(&mut self.clients, &l.key).map(|s| &mut s.counter),
            LockScope::Address => slot(&mut self.addresses, &l.key),
        };
        let Some(c) = counter else { return };
        if l.until_ms == 0 {
            c.clear_lockout();
            return;
        }
        c.stored_until = c.stored_until.max(l.until_ms);
        if l.until_ms > c.locked_until {
            c.locked_until = l.until_ms;
            c.failures.clear();
        }
    }

    /// Takes the registry's lockouts in force (`active`, as read at `now`) after notifications
    /// may have been missed: each applies, and a lockout the registry announced but no longer
    /// holds before its end was cleared there meanwhile (an operator's clear whose notice this
    /// process never got) and is cleared here. A lockout only this process counted (the registry
    /// did not take its failures) stays.
    pub fn resync(&mut self, active: &[StoredLockout], now: i64) {
        let held = |scope: LockScope| -> std::collections::HashSet<&str> {
            active
                .iter()
                .filter(|l| l.scope == scope)
                .map(|l| l.key.as_str())
                .collect()
        };
        let (clients, addresses) = (held(LockScope::ClientId), held(LockScope::Address));
        for (key, state) in &mut self.clients {
            if state.counter.stored_until > now && !clients.contains(key.as_str()) {
                state.counter.clear_lockout();
            }
        }
        for (key, c) in &mut self.addresses {
            if c.stored_until > now && !addresses.contains(key.as_str()) {
                c.clear_lockout();
            }
        }
        for l in active {
            self.apply(l);
        }
    }

    /// The thresholds in force.
    pub fn policy(&self) -> LockoutPolicy {
        self.policy
    }

    /// Current lockouts.
    pub fn list(&self, now: i64) -> Vec<LockoutEntry> {
        let clients = self
            .clients
            .iter()
            .filter(|(_, s)| s.counter.locked_until > now)
            .map(|(k, s)| LockoutEntry {
                kind: "client_id",
                key: k.clone(),
                until_ms: s.counter.locked_until,
            });
        let addrs = self
            .addresses
            .iter()
            .filter(|(_, c)| c.locked_until > now)
            .map(|(k, c)| LockoutEntry {
                kind: "address",
                key: k.clone(),
                until_ms: c.locked_until,
            });
        let mut all: Vec<_> = clients.chain(addrs).collect();
        all.sort_by(|a, b| (a.kind, &a.key).cmp(&(b.kind, &b.key)));
        all
    }

    /// Clears the lockout and failure count of a client id or address; returns whether one existed.
    pub fn clear(&mut self, key: &str) -> bool {
        let mut found = false;
        if let Some(s) = self.clients.get_mut(key) {
            found |= s.counter.locked_until > 0 || !s.counter.failures.is_empty();
            s.counter = Counter::default();
        }
        found |= self.addresses.remove(key).is_some();
        found
    }

    /// Forgets state that no longer matters (call periodically to bound memory).
    pub fn sweep(&mut self, now: i64) {
        let p = self.policy;
        self.addresses.retain(|_, c| !c.is_idle(now, p.window_ms));
        self.clients.retain(|_, s| {
            !(s.counter.is_idle(now, p.window_ms) && s.store_read <= now - STORE_MEMO_MS)
        });
    }

    /// Number of tracked client ids and addresses (for tests and metrics).
    pub fn tracked(&self) -> (usize, usize) {
        (self.clients.len(), self.addresses.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;
    const MIN: i64 = 60_000;

    fn guard() -> FailureGuard {
        FailureGuard::new(LockoutPolicy::default())
    }

    #[test]
    fn five_failures_within_fifteen_minutes_lock_the_client_id() {
        let mut g = guard();
        for i in 0..4 {
            assert_eq!(g.record_failure(Some("dev"), "1.1.1.1", T0 + i * MIN), None);
            assert_eq!(g.check("dev", "1.1.1.1", T0 + i * MIN), None);
        }
        let locked = g.record_failure(Some("dev"), "1.1.1.1", T0 + 4 * MIN);
        assert_eq!(
            locked,
            Some(Locked::ClientId {
                until_ms: T0 + 19 * MIN
            })
        );
        assert!(g.check("dev", "1.1.1.1", T0 + 5 * MIN).is_some());
        assert!(
            g.check("dev", "2.2.2.2", T0 + 5 * MIN).is_some(),
            "any unfamiliar address"
        );
        assert_eq!(
            g.check("dev", "1.1.1.1", T0 + 19 * MIN),
            None,
            "the lockout ends"
        );
    }

    #[test]
    fn failures_spread_wider_than_the_window_never_lock() {
        let mut g = guard();
        for i in 0..20 {
            assert_eq!(
                g.record_failure(Some("dev"), "1.1.1.1", T0 + i * 4 * MIN),
                None
            );
        }
        assert_eq!(g.check("dev", "1.1.1.1", T0 + 80 * MIN), None);
    }

    #[test]
    fn a_stranger_failing_on_a_client_id_does_not_lock_out_the_device_at_its_usual_address() {
        let mut g = guard();
        g.record_success("dev", "10.0.0.5", T0);
        for i in 0..10 {
            g.record_failure(Some("dev"), "203.0.113.9", T0 + MIN + i);
        }
        assert!(
            g.check("dev", "203.0.113.9", T0 + 2 * MIN).is_some(),
            "the stranger is locked out"
        );
        assert!(
            g.check("dev", "198.51.100.1", T0 + 2 * MIN).is_some(),
            "so is any other stranger"
        );
        assert_eq!(
            g.check("dev", "10.0.0.5", T0 + 2 * MIN),
            None,
            "the device is not"
        );
    }

    #[test]
    fn one_address_guessing_across_many_client_ids_is_locked() {
        let mut g = guard();
        let mut locked = None;
        for i in 0..20 {
            locked = g.record_failure(Some(&format!("dev-{i}")), "203.0.113.9", T0 + i);
        }
        assert_eq!(
            locked,
            Some(Locked::Address {
                until_ms: T0 + 19 + 15 * MIN
            })
        );
        assert!(matches!(
            g.check("dev-99", "203.0.113.9", T0 + MIN),
            Some(Locked::Address { .. })
        ));
        assert_eq!(g.check("dev-99", "198.51.100.1", T0 + MIN), None);
    }

    #[test]
    fn unknown_client_ids_count_against_the_address_only() {
        let mut g = guard();
        for i in 0..19 {
            assert_eq!(g.record_failure(None, "203.0.113.9", T0 + i), None);
        }
        assert_eq!(g.tracked(), (0, 1), "invented client ids leave no trace");
        assert!(matches!(
            g.record_failure(None, "203.0.113.9", T0 + 20),
            Some(Locked::Address { .. })
        ));
    }

    #[test]
    fn successes_are_never_penalised() {
        let mut g = guard();
        for i in 0..100 {
            g.record_success("dev", "1.1.1.1", T0 + i);
        }
        assert_eq!(g.check("dev", "1.1.1.1", T0 + 100), None);
        assert!(g.list(T0 + 100).is_empty());
    }

    #[test]
    fn operators_can_list_and_clear_lockouts() {
        let mut g = guard();
        for i in 0..5 {
            g.record_failure(Some("dev"), "1.1.1.1", T0 + i);
        }
        let listed = g.list(T0 + 10);
        assert_eq!(
            listed,
            vec![LockoutEntry {
                kind: "client_id",
                key: "dev".into(),
                until_ms: T0 + 4 + 15 * MIN
            }]
        );
        assert!(g.clear("dev"));
        assert_eq!(g.check("dev", "1.1.1.1", T0 + 11), None);
        assert!(!g.clear("nobody"));
    }

    #[test]
    fn a_familiar_address_is_written_once_a_day_and_learnt_from_the_registry() {
        let mut g = guard();
        assert!(g.record_success("dev", "1.1.1.1", T0), "new: written");
        assert!(
            !g.record_success("dev", "1.1.1.1", T0 + MIN),
            "known: not again"
        );
        assert!(
            g.record_success("dev", "1.1.1.1", T0 + 86_400_000),
            "a day on: refreshed"
        );
        for i in 0..5 {
            g.record_failure(Some("dev"), "203.0.113.9", T0 + i);
        }
        assert!(g.check("dev", "10.0.0.5", T0 + 10).is_some());
        assert!(!g.store_read_recently("dev", T0 + 10));
        g.learn_familiar("dev", "10.0.0.5", T0 - MIN);
        g.note_store_read("dev", T0 + 10);
        assert_eq!(g.check("dev", "10.0.0.5", T0 + 10), None);
        assert!(g.store_read_recently("dev", T0 + 10 + 9_999));
        assert!(
            !g.store_read_recently("dev", T0 + 10 + 10_000),
            "read again later"
        );
    }

    #[test]
    fn lockouts_of_other_replicas_apply_and_clear() {
        let mut g = guard();
        let l = |scope, until_ms| StoredLockout {
            scope,
            key: "k".into(),
            until_ms,
        };
        g.apply(&l(LockScope::Address, T0 + MIN));
        assert!(matches!(
            g.check("dev", "k", T0),
            Some(Locked::Address { .. })
        ));
        g.apply(&l(LockScope::Address, T0 + 1));
        assert!(g.check("dev", "k", T0 + 2).is_some(), "a later end is kept");
        g.apply(&l(LockScope::Address, 0));
        assert_eq!(g.check("dev", "k", T0), None, "cleared");
        g.apply(&l(LockScope::ClientId, T0 + MIN));
        assert!(matches!(
            g.check("k", "1.1.1.1", T0),
            Some(Locked::ClientId { .. })
        ));
    }

    #[test]
    fn a_resync_clears_what_the_registry_no_longer_holds_and_keeps_what_only_it_counted() {
        let mut g = guard();
        let l = |scope, key: &str, until_ms| StoredLockout {
            scope,
            key: key.into(),
            until_ms,
        };
        // The registry's: "a" and "9.9.9.9" are cleared there while this process is not
        // listening, "b" is not.
        g.apply(&l(LockScope::ClientId, "a", T0 + MIN));
        g.apply(&l(LockScope::Address, "9.9.9.9", T0 + MIN));
        g.apply(&l(LockScope::ClientId, "b", T0 + MIN));
        // Counted only here (the registry never took these failures).
        for i in 0..5 {
            g.record_failure(Some("c"), "1.1.1.1", T0 + i);
        }
        assert!(g.check("c", "2.2.2.2", T0 + 10).is_some());
        g.resync(&[l(LockScope::ClientId, "b", T0 + MIN)], T0 + 10);
        assert_eq!(g.check("a", "2.2.2.2", T0 + 10), None, "cleared there");
        assert_eq!(g.check("x", "9.9.9.9", T0 + 10), None, "cleared there");
        assert!(g.check("b", "2.2.2.2", T0 + 10).is_some(), "still held");
        assert!(
            g.check("c", "2.2.2.2", T0 + 10).is_some(),
            "only counted here"
        );
        // A lockout the registry starts later applies, and a re-read that holds it keeps it.
        g.resync(&[l(LockScope::ClientId, "a", T0 + 2 * MIN)], T0 + 20);
        assert!(g.check("a", "2.2.2.2", T0 + 20).is_some());
        assert!(g.check("b", "2.2.2.2", T0 + 20).is_none(), "gone there too");
    }

    #[test]
    fn sweeping_forgets_idle_state_but_keeps_familiar_addresses() {
        let mut g = guard();
        g.record_failure(Some("a"), "1.1.1.1", T0);
        g.record_success("b", "2.2.2.2", T0);
        assert_eq!(g.tracked(), (1, 1), "a success is no failure state");
        g.sweep(T0 + 16 * MIN);
        assert_eq!(g.tracked(), (0, 0));
        assert!(g.is_familiar("b", "2.2.2.2", T0 + 16 * MIN));
        assert!(
            !g.is_familiar("b", "2.2.2.2", T0 + 31 * 86_400_000),
            "familiar for thirty days"
        );
    }

    #[test]
    fn familiar_addresses_in_memory_stay_bounded_however_large_the_fleet() {
        let mut g = guard();
        // Past the bound on client ids with failure state too: successes never take its room.
        let fleet = TRACKED_MAX.max(3 * FAMILIAR_CLIENTS);
        for i in 0..fleet {
            assert!(
                g.record_success(&format!("dev-{i}"), "10.0.0.1", T0),
                "a new device's address is written"
            );
        }
        let held = g.familiar.newer.len() + g.familiar.older.len();
        assert!(held <= FAMILIAR_CLIENTS, "{held}");
        assert!(
            g.familiar.newer.capacity() >= FAMILIAR_CLIENTS / 2,
            "the newer generation reuses the table of the one it replaced"
        );
        assert_eq!(g.tracked(), (0, 0));
        let last = format!("dev-{}", fleet - 1);
        assert!(g.is_familiar(&last, "10.0.0.1", T0 + 1));
        assert!(
            !g.record_success(&last, "10.0.0.1", T0 + 1),
            "written a moment ago"
        );
        // The oldest are gone from memory: the registry has them, and a login writes again.
        assert!(!g.is_familiar("dev-0", "10.0.0.1", T0 + 1));
        assert!(g.record_success("dev-0", "10.0.0.1", T0 + 1));
        // A client id still counts its failures and locks, whatever the fleet did before.
        for i in 0..5 {
            g.record_failure(Some("dev-new"), "203.0.113.9", T0 + i);
        }
        assert!(g.check("dev-new", "203.0.113.9", T0 + 10).is_some());
    }
}
