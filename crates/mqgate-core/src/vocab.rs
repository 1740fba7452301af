//! The words every part of mqgate shares: which tenant, how a credential is stored, which
//! ingestion bucket was empty, why a lockout refused. Plain data; the registry, the limits and
//! the gate re-export them where they always were.

use serde::Serialize;

/// A tenant's id; every device-level query is scoped by one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct TenantId(pub i64);

/// How a credential's secret is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CredentialKind {
    /// mqgate-generated device token, stored as a keyed digest (HMAC-SHA256, hex).
    Token,
    /// Operator-chosen password, argon2id PHC string.
    Argon2,
    /// Imported legacy bcrypt hash (`$2a$/$2b$/$2y$`), upgraded to argon2id on next login.
    Bcrypt,
}

impl CredentialKind {
    /// The name stored in the `kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            CredentialKind::Token => "token",
            CredentialKind::Argon2 => "argon2",
            CredentialKind::Bcrypt => "bcrypt",
        }
    }

    /// Parses a `kind` column value.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "token" => Some(CredentialKind::Token),
            "argon2" => Some(CredentialKind::Argon2),
            "bcrypt" => Some(CredentialKind::Bcrypt),
            _ => None,
        }
    }
}

/// Which ingestion bucket was empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitScope {
    /// The device's own bucket.
    Device,
    /// The tenant's shared bucket.
    Tenant,
}

/// Why a CONNECT is refused before its secret is looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum Locked {
    /// The client id is locked for unfamiliar addresses.
    ClientId {
        /// Unix ms when it ends.
        until_ms: i64,
    },
    /// The source address is locked.
    Address {
        /// Unix ms when it ends.
        until_ms: i64,
    },
    /// Attempts already under way (or failed) for this client id or address fill its failure
    /// window or its slow-verify slots: refused before any password hashing.
    Busy {
        /// `client_id` or `address`.
        of: &'static str,
    },
}
