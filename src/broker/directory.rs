//! The directory of live connections: who is connected (one live session per client id, a new
//! one takes the old one over), a count of connections per peer address, the handles revocation
//! uses to reach live sessions, and a watch of how many are live (what shutdown waits on).

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, watch};

use crate::registry::{Change, TenantId};

/// What a live session is told from outside.
#[derive(Debug)]
pub enum Control {
    /// The registry changed: check the device is still admitted.
    Recheck,
    /// A new connection with the same client id was admitted: leave (MQTT session takeover),
    /// then say so through `done`. `resumes`: the new connection continues the session (clean
    /// start off), so a will still held back by its delay is not sent.
    TakeOver {
        /// Told once the old session has left.
        done: oneshot::Sender<()>,
        /// Whether the new connection resumes the session.
        resumes: bool,
    },
    /// mqgate is shutting down.
    Shutdown,
}

struct Entry {
    id: u64,
    tenant: TenantId,
    control: mpsc::Sender<Control>,
}

/// The live sessions and connections per peer.
#[derive(Default)]
pub struct Directory {
    by_client: Mutex<HashMap<String, Entry>>,
    /// How many sessions `by_client` holds, sent under its lock on every change.
    live: watch::Sender<usize>,
    per_peer: Mutex<HashMap<IpAddr, usize>>,
    next_id: AtomicU64,
    /// Filters of stored (clean session off) sessions, which the router restores on reconnect:
    /// kept so that they are re-checked against the ACL then.
    stored_filters: Mutex<HashMap<String, HashSet<String>>>,
}

/// A live session's place in [`Directory`]; leaving it (drop) removes the session.
pub struct Registration {
    directory: Arc<Directory>,
    client_id: String,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut map = lock(&self.directory.by_client);
        if map.get(&self.client_id).is_some_and(|e| e.id == self.id) {
            map.remove(&self.client_id);
            self.directory.live.send_replace(map.len());
        }
    }
}

/// One connection from a peer address; dropping it gives the slot back.
pub struct PeerSlot {
    directory: Arc<Directory>,
    ip: IpAddr,
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut map = lock(&self.directory.per_peer);
        if let Some(n) = map.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

impl Directory {
    /// Counts a new connection from `ip`; `None` when `ip` already has `limit` (0: no limit).
    pub fn peer_slot(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<PeerSlot> {
        let mut map = lock(&self.per_peer);
        let n = map.entry(ip).or_default();
        if limit > 0 && *n >= limit {
            return None;
        }
        *n += 1;
        Some(PeerSlot {
            directory: Arc::clone(self),
            ip,
        })
    }

    /// Registers the session of `client_id`, returning the previous one's control handle (to be
    /// taken over) if there was one.
    pub fn register(
        self: &Arc<Self>,
        client_id: &str,
        tenant: TenantId,
        control: mpsc::Sender<Control>,
    ) -> (Registration, Option<mpsc::Sender<Control>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let entry = Entry {
            id,
            tenant,
            control,
        };
        let old = {
            let mut map = lock(&self.by_client);
            let old = map.insert(client_id.to_string(), entry);
            self.live.send_replace(map.len());
            old
        };
        let reg = Registration {
            directory: Arc::clone(self),
            client_id: client_id.to_string(),
            id,
        };
        (reg, old.map(|e| e.control))
    }

    /// Asks every live session that `change` may concern to re-check itself.
    pub fn notify(&self, change: &Change) {
        let map = lock(&self.by_client);
        let concerned: Vec<&mpsc::Sender<Control>> = match change {
            Change::Device { client_id, .. } => {
                map.get(client_id).map(|e| &e.control).into_iter().collect()
            }
            Change::Tenant(t) | Change::Certs(t) => map
                .values()
                .filter(|e| e.tenant == *t)
                .map(|e| &e.control)
                .collect(),
            Change::Resync => map.values().map(|e| &e.control).collect(),
            // A lockout concerns the next CONNECT, not a live session; a mark, nobody.
            Change::Lockout(_) | Change::Mark(_) => Vec::new(),
        };
        for control in concerned {
            // A full queue already holds a re-check; a closed one is a session on its way out.
            let _ = control.try_send(Control::Recheck);
        }
    }

    /// Remembers the filters of a session the router stores (`Some`), or forgets them (`None`).
    pub fn store_filters(&self, client_id: &str, filters: Option<HashSet<String>>) {
        let mut map = lock(&self.stored_filters);
        match filters {
            Some(f) => map.insert(client_id.to_string(), f),
            None => map.remove(client_id),
        };
    }

    /// The filters of the stored session of `client_id`, if any.
    pub fn stored_filters(&self, client_id: &str) -> HashSet<String> {
        lock(&self.stored_filters)
            .get(client_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Tells every live session to end (shutdown). Sessions watch their own control channel only,
    /// so that no lock is shared by all of them on every turn of their loops.
    pub async fn shutdown_all(&self) {
        let controls: Vec<mpsc::Sender<Control>> = lock(&self.by_client)
            .values()
            .map(|e| e.control.clone())
            .collect();
        for control in controls {
            let _ = control.send(Control::Shutdown).await;
        }
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        lock(&self.by_client).len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until no session is live (at once if none is).
    pub async fn emptied(&self) {
        let mut live = self.live.subscribe();
        // The sender lives in `self`, so the watch cannot close while this waits.
        let _ = live.wait_for(|n| *n == 0).await;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_gets_at_most_its_limit_and_slots_come_back_on_drop() {
        let s = Arc::new(Directory::default());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = s.peer_slot(ip, 2).unwrap();
        let _b = s.peer_slot(ip, 2).unwrap();
        assert!(s.peer_slot(ip, 2).is_none());
        drop(a);
        assert!(s.peer_slot(ip, 2).is_some());
        assert!(s.peer_slot("10.0.0.2".parse().unwrap(), 2).is_some());
    }

    #[test]
    fn a_second_registration_returns_the_first_and_only_the_newest_is_removed() {
        let s = Arc::new(Directory::default());
        let (tx1, _rx1) = mpsc::channel(1);
        let (tx2, _rx2) = mpsc::channel(1);
        let (first, none) = s.register("c", TenantId(1), tx1);
        assert!(none.is_none());
        let (second, old) = s.register("c", TenantId(1), tx2);
        assert!(old.is_some());
        drop(first);
        assert_eq!(
            s.len(),
            1,
            "the old session leaving must not remove the new one"
        );
        drop(second);
        assert!(s.is_empty());
    }

    #[tokio::test]
    async fn emptied_waits_for_the_last_session_to_leave() {
        let s = Arc::new(Directory::default());
        s.emptied().await;
        let (tx, _rx) = mpsc::channel(1);
        let (reg, _) = s.register("c", TenantId(1), tx);
        let waiting = tokio::spawn({
            let s = Arc::clone(&s);
            async move { s.emptied().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a live session keeps drain waiting");
        drop(reg);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("drain ends once the last session leaves")
            .unwrap();
    }

    #[test]
    fn changes_reach_the_sessions_they_concern() {
        let s = Arc::new(Directory::default());
        let (tx1, mut rx1) = mpsc::channel(1);
        let (tx2, mut rx2) = mpsc::channel(1);
        let _a = s.register("a", TenantId(1), tx1);
        let _b = s.register("b", TenantId(2), tx2);
        s.notify(&Change::Device {
            tenant: TenantId(1),
            client_id: "a".into(),
        });
        assert!(matches!(rx1.try_recv(), Ok(Control::Recheck)));
        assert!(rx2.try_recv().is_err());
        s.notify(&Change::Tenant(TenantId(2)));
        assert!(matches!(rx2.try_recv(), Ok(Control::Recheck)));
        s.notify(&Change::Resync);
        assert!(rx1.try_recv().is_ok() && rx2.try_recv().is_ok());
    }
}
