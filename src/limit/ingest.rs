//! Ingestion limits: every publish draws one token from its device's bucket and one from its
//! tenant's bucket, and is refused when either is empty (a refused publish draws from neither).
//!
//! Buckets live in this process. With several mqgate replicas behind one broker each replica
//! enforces `1 / replicas` of every rate and burst (`replicas` in the configuration), which holds
//! the fleet-wide limit when the broker spreads its calls evenly (EMQX's pool does).

use std::collections::HashMap;
use std::sync::Mutex;

use super::bucket::{Gcra, Rate};
use crate::registry::TenantId;

pub use mqgate_core::vocab::LimitScope;

/// Default limits from configuration (`None`: unlimited unless the registry sets one).
#[derive(Debug, Clone, Copy, Default)]
pub struct LimitDefaults {
    /// Per device.
    pub device: Option<Rate>,
    /// Per tenant, shared by its devices.
    pub tenant: Option<Rate>,
    /// How many replicas share the limits (≥ 1).
    pub replicas: u32,
}

#[derive(Default)]
struct Buckets {
    devices: HashMap<String, Gcra>,
    tenants: HashMap<TenantId, Gcra>,
    refused: HashMap<TenantId, u64>,
}

/// The process's ingestion buckets.
pub struct IngestLimiter {
    defaults: LimitDefaults,
    buckets: Mutex<Buckets>,
}

impl IngestLimiter {
    /// A limiter with `defaults`.
    pub fn new(defaults: LimitDefaults) -> Self {
        IngestLimiter {
            defaults,
            buckets: Mutex::new(Buckets::default()),
        }
    }

    /// The limits that apply (registry override, else default), as this replica's share.
    pub fn effective(
        &self,
        device: Option<Rate>,
        tenant: Option<Rate>,
    ) -> (Option<Rate>, Option<Rate>) {
        let share = |r: Option<Rate>| r.map(|r| self.share(r));
        (
            share(device.or(self.defaults.device)),
            share(tenant.or(self.defaults.tenant)),
        )
    }

    fn share(&self, r: Rate) -> Rate {
        let n = self.defaults.replicas.max(1);
        Rate {
            per_sec: r.per_sec / f64::from(n),
            burst: (r.burst / n).max(1),
        }
    }

    /// Draws one publish for `client_id` of `tenant` at `now_ms` under the given limits.
    pub fn take(
        &self,
        tenant: TenantId,
        client_id: &str,
        limits: (Option<Rate>, Option<Rate>),
        now_ms: i64,
    ) -> Result<(), LimitScope> {
        let (device_rate, tenant_rate) = limits;
        if device_rate.is_none() && tenant_rate.is_none() {
            return Ok(());
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let Buckets {
            devices,
            tenants,
            refused,
        } = &mut *b;
        // One lookup per bucket: peek both, and commit both only when both conform.
        let mut device = device_rate.map(|rate| (devices.entry_ref(client_id), rate));
        let mut shared = tenant_rate.map(|rate| (tenants.entry(tenant).or_default(), rate));
        let device_take = device
            .as_ref()
            .map(|(g, rate)| g.peek(*rate, now_ms, 1).map_err(|_| LimitScope::Device));
        let tenant_take = shared
            .as_ref()
            .map(|(g, rate)| g.peek(*rate, now_ms, 1).map_err(|_| LimitScope::Tenant));
        match (device_take, tenant_take) {
            (Some(Err(scope)), _) | (_, Some(Err(scope))) => {
                *refused.entry(tenant).or_default() += 1;
                Err(scope)
            }
            (d, t) => {
                if let (Some((g, _)), Some(Ok(take))) = (device.as_mut(), d) {
                    g.commit(take);
                }
                if let (Some((g, _)), Some(Ok(take))) = (shared.as_mut(), t) {
                    g.commit(take);
                }
                Ok(())
            }
        }
    }

    /// Publishes refused per tenant since the last call (for the aggregated audit line and metric).
    pub fn take_refused(&self) -> Vec<(TenantId, u64)> {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let mut v: Vec<_> = b.refused.drain().collect();
        v.sort();
        v
    }

    /// Forgets full buckets (an untouched bucket refills to full, which is what a new one is).
    pub fn sweep(&self, now_ms: i64) {
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        b.devices.retain(|_, g| !g.is_full(now_ms));
        b.tenants.retain(|_, g| !g.is_full(now_ms));
    }

    /// Tracked buckets (devices, tenants), for tests and metrics.
    pub fn tracked(&self) -> (usize, usize) {
        let b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        (b.devices.len(), b.tenants.len())
    }
}

trait EntryRef {
    fn entry_ref(&mut self, key: &str) -> &mut Gcra;
}

impl EntryRef for HashMap<String, Gcra> {
    /// Looks up without allocating the key unless the bucket is new.
    fn entry_ref(&mut self, key: &str) -> &mut Gcra {
        if !self.contains_key(key) {
            self.insert(key.to_string(), Gcra::default());
        }
        self.get_mut(key).expect("just inserted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    fn limiter(device: Option<Rate>, tenant: Option<Rate>, replicas: u32) -> IngestLimiter {
        IngestLimiter::new(LimitDefaults {
            device,
            tenant,
            replicas,
        })
    }

    #[test]
    fn a_device_is_held_to_its_own_rate_and_refills() {
        let l = limiter(Rate::new(2.0, 2), None, 1);
        let lim = l.effective(None, None);
        assert!(l.take(TenantId(1), "d", lim, T0).is_ok());
        assert!(l.take(TenantId(1), "d", lim, T0).is_ok());
        assert_eq!(l.take(TenantId(1), "d", lim, T0), Err(LimitScope::Device));
        assert!(
            l.take(TenantId(1), "other", lim, T0).is_ok(),
            "devices have separate buckets"
        );
        assert!(
            l.take(TenantId(1), "d", lim, T0 + 500).is_ok(),
            "half a second refills one"
        );
        assert_eq!(l.take_refused(), vec![(TenantId(1), 1)]);
        assert_eq!(l.take_refused(), vec![]);
    }

    #[test]
    fn the_tenant_cap_is_shared_by_its_devices() {
        let l = limiter(Rate::new(100.0, 100), Rate::new(10.0, 3), 1);
        let lim = l.effective(None, None);
        assert!(l.take(TenantId(1), "a", lim, T0).is_ok());
        assert!(l.take(TenantId(1), "b", lim, T0).is_ok());
        assert!(l.take(TenantId(1), "c", lim, T0).is_ok());
        assert_eq!(l.take(TenantId(1), "d", lim, T0), Err(LimitScope::Tenant));
        assert!(
            l.take(TenantId(2), "e", lim, T0).is_ok(),
            "another tenant has its own cap"
        );
    }

    #[test]
    fn a_refused_publish_draws_from_neither_bucket() {
        let l = limiter(Rate::new(1.0, 1), Rate::new(1.0, 2), 1);
        let lim = l.effective(None, None);
        assert!(l.take(TenantId(1), "a", lim, T0).is_ok());
        assert_eq!(l.take(TenantId(1), "a", lim, T0), Err(LimitScope::Device));
        assert!(
            l.take(TenantId(1), "b", lim, T0).is_ok(),
            "a's refusal took nothing from the tenant"
        );
    }

    #[test]
    fn registry_overrides_replace_defaults_and_replicas_split_the_limit() {
        let l = limiter(Rate::new(100.0, 100), None, 4);
        let (d, t) = l.effective(Rate::new(8.0, 8), Rate::new(40.0, 2));
        assert_eq!(d, Rate::new(2.0, 2));
        assert_eq!(t, Rate::new(10.0, 1), "burst never drops below one");
        let unlimited = limiter(None, None, 1);
        assert_eq!(unlimited.effective(None, None), (None, None));
        for _ in 0..10_000 {
            assert!(unlimited.take(TenantId(1), "d", (None, None), T0).is_ok());
        }
        assert_eq!(unlimited.tracked(), (0, 0), "no limits, no state");
    }

    #[test]
    fn sweeping_drops_buckets_that_have_refilled() {
        let l = limiter(Rate::new(10.0, 1), Rate::new(10.0, 10), 1);
        let lim = l.effective(None, None);
        l.take(TenantId(1), "a", lim, T0).unwrap();
        l.sweep(T0 + 50);
        assert_eq!(l.tracked(), (1, 1));
        l.sweep(T0 + 1000);
        assert_eq!(l.tracked(), (0, 0));
    }
}
