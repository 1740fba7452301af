//! Bounds no device or tenant can push the broker past (`mqtt_*` limit keys), and the book of
//! retained messages that enforces the retained ones.
//!
//! rumqttd's router keeps every retained message until it is cleared, and a routed message in a
//! per-filter log of segments; neither has a per-device bound of its own. mqgate sees every
//! retained publish before the router does, so it keeps the count and bytes per device and per
//! tenant here and refuses what would pass them.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::registry::TenantId;

/// A count and a byte bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    /// Most items.
    pub count: usize,
    /// Most bytes (payload plus topic).
    pub bytes: usize,
}

/// The broker's resource bounds (see README, "Limits").
#[derive(Debug, Clone, Copy)]
pub struct BrokerLimits {
    /// Connections that have not been answered a CONNACK yet (TLS handshakes included).
    pub max_unauthenticated: usize,
    /// Filters one SUBSCRIBE may carry.
    pub max_filters_per_subscribe: usize,
    /// Subscriptions one session may hold.
    pub max_subscriptions: usize,
    /// Messages the router sends a session before it must acknowledge (QoS 1/2 in flight).
    pub max_inflight: u64,
    /// Retained messages one device may own.
    pub retained_per_device: Quota,
    /// Retained messages one tenant's devices may own together.
    pub retained_per_tenant: Quota,
    /// Bytes of one segment of a filter's log in the router.
    pub segment_size: usize,
    /// Segments kept per filter (older ones are dropped).
    pub segment_count: usize,
}

impl Default for BrokerLimits {
    /// The shipped defaults (sized for a small box).
    fn default() -> Self {
        BrokerLimits {
            max_unauthenticated: 256,
            max_filters_per_subscribe: 32,
            max_subscriptions: 100,
            max_inflight: 100,
            retained_per_device: Quota {
                count: 100,
                bytes: 1 << 20,
            },
            retained_per_tenant: Quota {
                count: 10_000,
                bytes: 64 << 20,
            },
            segment_size: 4 << 20,
            segment_count: 4,
        }
    }
}

/// Which retained bound a publish would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetainedExceeded {
    /// The device's.
    Device,
    /// The tenant's.
    Tenant,
}

#[derive(Default, Clone, Copy)]
struct Usage {
    count: usize,
    bytes: usize,
}

impl Usage {
    fn within(self, q: Quota) -> bool {
        self.count <= q.count && self.bytes <= q.bytes
    }
}

struct Owner {
    tenant: TenantId,
    client_id: String,
    bytes: usize,
}

#[derive(Default)]
struct Book {
    topics: HashMap<String, Owner>,
    devices: HashMap<(TenantId, String), Usage>,
    tenants: HashMap<TenantId, Usage>,
}

impl Book {
    fn add(&mut self, tenant: TenantId, client_id: &str, bytes: usize, sign: bool) {
        let key = (tenant, client_id.to_string());
        for u in [
            self.devices.entry(key).or_default(),
            self.tenants.entry(tenant).or_default(),
        ] {
            if sign {
                u.count += 1;
                u.bytes += bytes;
            } else {
                u.count = u.count.saturating_sub(1);
                u.bytes = u.bytes.saturating_sub(bytes);
            }
        }
        // Forget owners with nothing retained, so the book only holds what the router holds.
        let key = (tenant, client_id.to_string());
        if self.devices.get(&key).is_some_and(|u| u.count == 0) {
            self.devices.remove(&key);
        }
        if self.tenants.get(&tenant).is_some_and(|u| u.count == 0) {
            self.tenants.remove(&tenant);
        }
    }

    fn usage(&self, tenant: TenantId, client_id: &str) -> (Usage, Usage) {
        let d = self.devices.get(&(tenant, client_id.to_string()));
        let t = self.tenants.get(&tenant);
        (
            d.copied().unwrap_or_default(),
            t.copied().unwrap_or_default(),
        )
    }
}

/// Retained messages by topic with their owners' totals (the router's retained store, mirrored).
#[derive(Default)]
pub struct RetainedBook {
    book: Mutex<Book>,
}

impl RetainedBook {
    /// Admits a retained publish of `bytes` on `topic` by `client_id` of `tenant` (an empty
    /// payload clears the topic and is always admitted), or says which bound it would pass. The
    /// publish that replaces a retained message takes over its place.
    pub fn admit(
        &self,
        limits: &BrokerLimits,
        tenant: TenantId,
        client_id: &str,
        topic: &str,
        payload_len: usize,
    ) -> Result<(), RetainedExceeded> {
        let mut book = self.book.lock().unwrap_or_else(|e| e.into_inner());
        let old = book.topics.remove(topic);
        if let Some(o) = &old {
            book.add(o.tenant, &o.client_id, o.bytes, false);
        }
        if payload_len == 0 {
            return Ok(());
        }
        let bytes = payload_len + topic.len();
        let (mut device, mut all) = book.usage(tenant, client_id);
        device.count += 1;
        device.bytes += bytes;
        all.count += 1;
        all.bytes += bytes;
        let verdict = if !device.within(limits.retained_per_device) {
            Err(RetainedExceeded::Device)
        } else if !all.within(limits.retained_per_tenant) {
            Err(RetainedExceeded::Tenant)
        } else {
            Ok(())
        };
        // Refused: the retained message in place stays (the router keeps it too).
        let keep = match verdict {
            Ok(()) => Owner {
                tenant,
                client_id: client_id.to_string(),
                bytes,
            },
            Err(_) => match old {
                Some(o) => o,
                None => return verdict,
            },
        };
        book.add(keep.tenant, &keep.client_id, keep.bytes, true);
        book.topics.insert(topic.to_string(), keep);
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BrokerLimits {
        BrokerLimits {
            retained_per_device: Quota {
                count: 2,
                bytes: 100,
            },
            retained_per_tenant: Quota {
                count: 3,
                bytes: 1000,
            },
            ..BrokerLimits::default()
        }
    }

    #[test]
    fn retained_messages_are_bounded_per_device_and_per_tenant() {
        let (book, l, t) = (RetainedBook::default(), limits(), TenantId(1));
        assert_eq!(book.admit(&l, t, "a", "t/a/1", 10), Ok(()));
        assert_eq!(book.admit(&l, t, "a", "t/a/2", 10), Ok(()));
        assert_eq!(
            book.admit(&l, t, "a", "t/a/3", 10),
            Err(RetainedExceeded::Device)
        );
        // Replacing one of its own is no new message; clearing one makes room.
        assert_eq!(book.admit(&l, t, "a", "t/a/2", 20), Ok(()));
        assert_eq!(book.admit(&l, t, "a", "t/a/1", 0), Ok(()));
        assert_eq!(book.admit(&l, t, "a", "t/a/3", 10), Ok(()));
        assert_eq!(book.admit(&l, t, "b", "t/b/1", 10), Ok(()));
        assert_eq!(
            book.admit(&l, t, "c", "t/c/1", 10),
            Err(RetainedExceeded::Tenant)
        );
        // Bytes count too; another tenant has its own room.
        assert_eq!(
            book.admit(&l, TenantId(2), "d", "t/d/1", 200),
            Err(RetainedExceeded::Device)
        );
        assert_eq!(book.admit(&l, TenantId(2), "d", "t/d/1", 20), Ok(()));
    }
}
