//! Refused publishes and subscriptions, recorded in aggregate: the first refusal of each device
//! and action in an interval is recorded in full, the rest only counted, and the count recorded
//! once at the end of the interval. A device can send refused packets as fast as its link allows;
//! the audit trail and the log then grow by two entries per device per interval, not per packet.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Devices tracked per interval; refusals of devices beyond it are only counted in sum.
const MAX_DEVICES: usize = 10_000;

/// Refusals since the last [`RefusalTally::take`], per client id and action.
#[derive(Default)]
pub struct RefusalTally {
    by_client: Mutex<HashMap<String, [u64; 2]>>,
    untracked: AtomicU64,
}

/// Refusals beyond the first, for one device and action, over one interval.
#[derive(Debug, PartialEq, Eq)]
pub struct MoreRefusals {
    /// Client id (`*`: devices past the tracking bound, together).
    pub client_id: String,
    /// `publish` or `subscribe`.
    pub action: &'static str,
    /// How many beyond the one recorded in full.
    pub refused: u64,
}

const ACTIONS: [&str; 2] = ["publish", "subscribe"];

impl RefusalTally {
    /// Counts a refusal; true when it is the first of this device and action in the interval
    /// (record it in full).
    pub fn first(&self, client_id: &str, action: &'static str) -> bool {
        let i = usize::from(action != ACTIONS[0]);
        let mut m = self.by_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(counts) = m.get_mut(client_id) {
            counts[i] += 1;
            return counts[i] == 1;
        }
        if m.len() >= MAX_DEVICES {
            self.untracked.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let mut counts = [0; 2];
        counts[i] = 1;
        m.insert(client_id.to_string(), counts);
        true
    }

    /// The refusals beyond the first of each device and action since the last call; starts a
    /// new interval.
    pub fn take(&self) -> Vec<MoreRefusals> {
        let m = std::mem::take(&mut *self.by_client.lock().unwrap_or_else(|e| e.into_inner()));
        let mut out: Vec<MoreRefusals> = m
            .into_iter()
            .flat_map(|(client_id, counts)| {
                let more = counts.map(|n| n.saturating_sub(1));
                ACTIONS.into_iter().zip(more).filter(|(_, n)| *n > 0).map(
                    move |(action, refused)| MoreRefusals {
                        client_id: client_id.clone(),
                        action,
                        refused,
                    },
                )
            })
            .collect();
        let untracked = self.untracked.swap(0, Ordering::Relaxed);
        if untracked > 0 {
            out.push(MoreRefusals {
                client_id: "*".into(),
                action: "any",
                refused: untracked,
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_refusal_per_device_and_action_is_recorded_and_the_rest_counted() {
        let t = RefusalTally::default();
        assert!(t.first("a", "subscribe"));
        assert!(!t.first("a", "subscribe"));
        assert!(!t.first("a", "subscribe"));
        assert!(t.first("a", "publish"));
        assert!(t.first("b", "subscribe"));
        let more = t.take();
        assert_eq!(
            more,
            vec![MoreRefusals {
                client_id: "a".into(),
                action: "subscribe",
                refused: 2
            }]
        );
        // A new interval records the first one in full again.
        assert!(t.first("a", "subscribe"));
    }
}
