//! The audit trail: auth outcomes and admin actions, hash-chained in the store so that an edited,
//! removed or reordered entry shows (`mqgate audit verify`).
//!
//! Events are typed, and no field of any of them can carry a secret: client ids, addresses, topics,
//! verdicts and causes only. The hot path hands events to a bounded in-memory queue
//! ([`sink::AuditSink`]) and never waits for the store; a batch writer appends them.

pub mod chain;
pub mod refusals;
pub mod sink;

use serde::Serialize;

/// Something worth an audit entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AuditEvent {
    /// A CONNECT decision (every one).
    Connect {
        /// Client id.
        client_id: String,
        /// Device address as the broker saw it.
        peer: String,
        /// allow / deny / ignore.
        verdict: &'static str,
        /// Stable cause label.
        cause: &'static str,
        /// Human explanation.
        reason: String,
    },
    /// A refused publish or subscribe (allows are too many to record one by one).
    Denied {
        /// Client id.
        client_id: String,
        /// publish / subscribe.
        action: &'static str,
        /// Topic or filter.
        topic: String,
        /// Stable cause label.
        cause: &'static str,
        /// Human explanation.
        reason: String,
    },
    /// Refused publishes or subscribes of one device beyond the first (recorded as `Denied`)
    /// in one interval.
    DeniedMore {
        /// Client id (`*`: devices past the tracking bound, together).
        client_id: String,
        /// publish / subscribe (`any` for `*`).
        action: &'static str,
        /// How many.
        refused: u64,
    },
    /// A client id or address was locked out after failed authentications.
    Lockout {
        /// Client id whose failure tipped it.
        client_id: String,
        /// Address it came from.
        peer: String,
        /// `client_id` or `address`.
        scope: &'static str,
    },
    /// Publishes refused by ingestion limits since the last such entry.
    RateLimited {
        /// How many.
        refused: u64,
    },
    /// A live EMQX session disconnected (or not) through EMQX's management API.
    Kick {
        /// Client id.
        client_id: String,
        /// The change that ended its right to stay connected.
        reason: String,
        /// `kicked`, `not_connected`, `failed`, `rejected`.
        outcome: &'static str,
    },
    /// An operator action.
    Admin {
        /// What (`device.add`, `cred.rotate`, …).
        action: String,
        /// On what (client id, tenant, rule id).
        subject: String,
    },
}

impl AuditEvent {
    /// The stable name stored in the `kind` column.
    pub fn kind(&self) -> &'static str {
        match self {
            AuditEvent::Connect { .. } => "connect",
            AuditEvent::Denied { .. } => "denied",
            AuditEvent::DeniedMore { .. } => "denied_more",
            AuditEvent::Lockout { .. } => "lockout",
            AuditEvent::RateLimited { .. } => "rate_limited",
            AuditEvent::Kick { .. } => "kick",
            AuditEvent::Admin { .. } => "admin",
        }
    }
}

/// An event with when and for which tenant.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Unix milliseconds.
    pub at_ms: i64,
    /// The tenant concerned, when known.
    pub tenant: Option<i64>,
    /// What happened.
    pub event: AuditEvent,
}

impl AuditRecord {
    /// The event as stored: its kind and its JSON detail.
    pub fn encode(&self) -> (&'static str, String) {
        let detail = serde_json::to_string(&self.event).unwrap_or_else(|_| "{}".into());
        (self.event.kind(), detail)
    }
}

/// Why the stored trail could not be verified.
#[derive(Debug, thiserror::Error)]
pub enum TrailError {
    /// The registry could not be read.
    #[error(transparent)]
    Store(#[from] crate::registry::StoreError),
    /// An entry does not continue the chain.
    #[error(transparent)]
    Broken(#[from] chain::ChainBreak),
}

/// Reads the stored trail from the first entry, `page` entries at a time (memory stays bounded
/// however long the trail), handing each page to `each` in id order.
async fn each_page<E: From<crate::registry::StoreError>>(
    store: &crate::registry::Store,
    page: i64,
    mut each: impl FnMut(Vec<chain::StoredAudit>) -> Result<(), E>,
) -> Result<(), E> {
    let mut after = 0;
    loop {
        let entries = store.list_audit(after, page).await?;
        let Some(last) = entries.last() else {
            return Ok(());
        };
        after = last.id;
        each(entries)?;
    }
}

/// Verifies the whole stored trail, a page at a time; returns how many entries verified.
pub async fn verify_trail(store: &crate::registry::Store, page: i64) -> Result<usize, TrailError> {
    let (mut prev, mut count) = (chain::GENESIS.to_string(), 0usize);
    each_page(store, page, |entries| {
        count += entries.len();
        prev = chain::verify(&entries, std::mem::take(&mut prev))?;
        Ok::<_, TrailError>(())
    })
    .await?;
    Ok(count)
}

/// The newest `limit` stored entries, oldest first, read a page at a time.
pub async fn tail(
    store: &crate::registry::Store,
    limit: usize,
    page: i64,
) -> Result<Vec<chain::StoredAudit>, crate::registry::StoreError> {
    let mut newest = std::collections::VecDeque::with_capacity(limit.min(10_000));
    each_page(store, page, |entries| {
        newest.extend(entries);
        while newest.len() > limit {
            newest.pop_front();
        }
        Ok::<_, crate::registry::StoreError>(())
    })
    .await?;
    Ok(newest.into())
}
