//! The trust in force, swapped whole when certificates, CAs or CRLs change.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::{CrlFailure, TenantNames, TrustSnapshot};
use crate::registry::{StoredCa, StoredDeviceCert};

/// The current snapshot, swapped whole when certificates change, with the settings it is built
/// and reported with.
#[derive(Debug)]
pub struct TrustStore {
    current: RwLock<Arc<TrustSnapshot>>,
    policy: CrlFailure,
    expiry_warning: i64,
    reloaded: tokio::sync::broadcast::Sender<crate::registry::Change>,
    /// One reload at a time: two overlapping reloads could otherwise finish in the wrong order, and
    /// the one that read the registry first (before a revocation) would put its stale view in
    /// force last.
    reloading: tokio::sync::Mutex<()>,
}

impl TrustStore {
    /// Nothing trusted yet; `policy` for CRL trouble, `expiry_warning` (seconds) for reports.
    pub fn new(policy: CrlFailure, expiry_warning: i64) -> Self {
        TrustStore {
            current: RwLock::new(Arc::new(TrustSnapshot::empty(policy))),
            policy,
            expiry_warning,
            reloaded: tokio::sync::broadcast::channel(256).0,
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The changes whose new trust is in force, each sent after its reload (live TLS sessions
    /// re-check their certificate on these, never against the trust before the change).
    pub fn watch_reloads(&self) -> tokio::sync::broadcast::Receiver<crate::registry::Change> {
        self.reloaded.subscribe()
    }

    /// Announces that the trust reflecting `change` is in force.
    pub fn announce(&self, change: crate::registry::Change) {
        let _ = self.reloaded.send(change);
    }

    /// The snapshot in force.
    pub fn current(&self) -> Arc<TrustSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Builds and puts in force a snapshot of `cas` and `certs`.
    pub fn replace(&self, cas: Vec<StoredCa>, certs: Vec<StoredDeviceCert>, names: TenantNames) {
        let snapshot = TrustSnapshot::build(cas, certs, names, self.policy);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }

    /// Loads every tenant's CAs and device certificates from `store` (tenant by tenant, each
    /// query fenced) and puts them in force.
    pub async fn reload(&self, store: &crate::registry::Store) -> crate::registry::StoreResult<()> {
        let _one_at_a_time = self.reloading.lock().await;
        let mut cas = Vec::new();
        let mut certs = Vec::new();
        let mut names = HashMap::new();
        for t in store.list_tenants().await? {
            cas.extend(store.list_cas(t.id).await?);
            certs.extend(store.list_device_certs(t.id).await?);
            names.insert(t.id, t.name);
        }
        self.replace(cas, certs, names);
        Ok(())
    }

    /// How far ahead expiry is reported, seconds.
    pub fn expiry_warning(&self) -> i64 {
        self.expiry_warning
    }
}
