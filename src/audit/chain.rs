//! The hash chain: each entry's hash covers the previous entry's hash and the entry itself, so
//! changing, removing or reordering any entry breaks every link after it.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// An entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StoredAudit {
    /// Store id (append order).
    pub id: i64,
    /// Unix milliseconds.
    pub at_ms: i64,
    /// Tenant, when known.
    pub tenant: Option<i64>,
    /// Event kind.
    pub kind: String,
    /// Event detail (JSON text, hashed as stored).
    pub detail: String,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// The hash of an entry following `prev`: SHA-256 over each part's length (8 bytes, big-endian)
/// and bytes, as lowercase hex. Numbers as decimal text, an absent tenant as the empty string.
/// Written for every audited event (each CONNECT), so without a heap allocation but the answer.
pub fn link(prev: &str, at_ms: i64, tenant: Option<i64>, kind: &str, detail: &str) -> String {
    let mut h = Sha256::new();
    let (mut at_buf, mut tenant_buf) = (itoa::Buffer::new(), itoa::Buffer::new());
    let tenant = tenant.map_or("", |t| tenant_buf.format(t));
    for part in [prev, at_buf.format(at_ms), tenant, kind, detail] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut text = [0u8; 64];
    match hex::encode_to_slice(digest, &mut text) {
        // Hex digits are ASCII.
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        Err(_) => hex::encode(digest),
    }
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {id}: {reason}")]
pub struct ChainBreak {
    /// The first entry that does not verify.
    pub id: i64,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks `entries` (in id order) continue the chain from `prev`; returns the last hash.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = &'a StoredAudit>,
    mut prev: String,
) -> Result<String, ChainBreak> {
    for e in entries {
        if e.prev_hash != prev {
            return Err(ChainBreak {
                id: e.id,
                reason: "does not follow the previous entry (one was removed or reordered)",
            });
        }
        if link(&prev, e.at_ms, e.tenant, &e.kind, &e.detail) != e.hash {
            return Err(ChainBreak {
                id: e.id,
                reason: "its content does not match its hash (it was edited)",
            });
        }
        prev = e.hash.clone();
    }
    Ok(prev)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<StoredAudit> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|id| {
                let detail = format!("{{\"n\":{id}}}");
                let hash = link(&prev, id * 10, Some(1), "admin", &detail);
                let e = StoredAudit {
                    id,
                    at_ms: id * 10,
                    tenant: Some(1),
                    kind: "admin".into(),
                    detail,
                    prev_hash: prev.clone(),
                    hash: hash.clone(),
                };
                prev = hash;
                e
            })
            .collect()
    }

    /// Stored chains must keep verifying: the hash of fixed inputs, computed independently
    /// (Python's `hashlib` over the same length-prefixed parts).
    #[test]
    fn link_is_stable() {
        assert_eq!(
            link(
                GENESIS,
                1_700_000_000_123,
                Some(42),
                "connect",
                r#"{"a":1}"#
            ),
            "183374776bb84b32568ece2abe6262e7ffd9a0077e4c2ee7180a244c557800c0"
        );
        assert_eq!(
            link(GENESIS, -5, None, "admin", ""),
            "a1a49c89d43330503534aa904be244dd037adef2044e65bf330c351163605961"
        );
    }

    #[test]
    fn an_untouched_chain_verifies() {
        let c = chain(5);
        assert_eq!(verify(&c, GENESIS.into()).unwrap(), c[4].hash);
    }

    #[test]
    fn an_edited_entry_is_found() {
        let mut c = chain(5);
        c[2].detail = "{\"n\":99}".into();
        assert_eq!(verify(&c, GENESIS.into()).unwrap_err().id, 3);
    }

    #[test]
    fn a_removed_or_reordered_entry_is_found() {
        let mut c = chain(5);
        c.remove(1);
        assert_eq!(verify(&c, GENESIS.into()).unwrap_err().id, 3);
        let mut c = chain(5);
        c.swap(3, 4);
        assert_eq!(verify(&c, GENESIS.into()).unwrap_err().id, 5);
    }

    #[test]
    fn fields_cannot_be_shifted_between_parts() {
        assert_ne!(link("a", 1, None, "bc", "d"), link("a", 1, None, "b", "cd"));
    }
}
