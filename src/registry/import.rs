//! Bulk provisioning (`mqgate device import`): what a store is handed, already validated, and what
//! it reports. Each store applies a whole file in one transaction (`pg/import.rs`,
//! `sqlite/import.rs`) with set-based inserts, so 100k devices take seconds, not minutes.

use super::{CredentialKind, NewAclRule, NewCredential, Store, StoreResult, TenantId};

/// Rows per insert statement: big enough that round trips do not dominate, small enough for
/// progress to move and for SQLite's statement limits.
pub const IMPORT_CHUNK: usize = 5000;

/// One device of an import file, validated (client id, username, hash format, rule filters).
#[derive(Debug, Clone)]
pub struct NewImport {
    /// MQTT client id (parsed with [`crate::core::ids::ClientId::parse`]).
    pub client_id: String,
    /// MQTT username the device must present, if any.
    pub username: Option<String>,
    /// Its credential: an imported password hash or a freshly generated token's digest.
    pub credential: NewCredential,
    /// Its own ACL rules, in evaluation order.
    pub rules: Vec<NewAclRule>,
}

/// What an import did. When `foreign` or `need_token` is not empty nothing was applied.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// Client ids created, in file order.
    pub created: Vec<String>,
    /// Client ids that already existed in this tenant: left exactly as they were.
    pub existing: Vec<String>,
    /// Client ids that belong to another tenant (client ids are unique across tenants).
    pub foreign: Vec<String>,
    /// New devices with a token credential, when the caller has nowhere to put their tokens.
    pub need_token: Vec<String>,
}

impl ImportReport {
    /// Whether the import was refused (and nothing applied).
    pub fn refused(&self) -> bool {
        !self.foreign.is_empty() || !self.need_token.is_empty()
    }

    /// Sorts `devices` by what `owners` (client id → tenant) says: existing here, of another
    /// tenant, or new (returned); new devices with a token are refused unless `tokens`.
    pub(crate) fn sort_out<'d>(
        t: TenantId,
        devices: &'d [NewImport],
        owners: &std::collections::HashMap<String, i64>,
        tokens: bool,
    ) -> (ImportReport, Vec<&'d NewImport>) {
        let mut report = ImportReport::default();
        let mut fresh = Vec::new();
        for d in devices {
            match owners.get(&d.client_id) {
                Some(&owner) if owner == t.0 => report.existing.push(d.client_id.clone()),
                Some(_) => report.foreign.push(d.client_id.clone()),
                None if !tokens && d.credential.kind == CredentialKind::Token => {
                    report.need_token.push(d.client_id.clone())
                }
                None => fresh.push(d),
            }
        }
        (report, fresh)
    }
}

/// Told, after each chunk, how many of the new devices are in the transaction so far, and of how
/// many.
pub type ImportProgress<'a> = &'a (dyn Fn(usize, usize) + Sync);

impl Store {
    /// Creates the devices of `devices` that do not exist yet, with their credential and rules,
    /// in one transaction; existing ones (same tenant) are reported and left untouched. A client id
    /// of another tenant, or (without `tokens`) a new device with a token credential, applies
    /// nothing ([`ImportReport::refused`]). Changes are announced as for single writes, except the
    /// EMQX kicks the rule triggers queue (a device that did not exist has no session to end).
    pub async fn import_devices(
        &self,
        t: TenantId,
        devices: &[NewImport],
        tokens: bool,
        now: i64,
        progress: ImportProgress<'_>,
    ) -> StoreResult<ImportReport> {
        dispatch!(self, s => s.import_devices(t, devices, tokens, now, progress).await)
    }
}
