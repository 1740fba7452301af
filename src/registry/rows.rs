//! Row plumbing shared by both stores: column encodings, error mapping, and assembling
//! `DeviceRecord`s from the rows of a bulk load.

use std::collections::HashMap;

use super::*;

/// Parses a `kind` column.
pub(crate) fn kind(s: &str) -> StoreResult<CredentialKind> {
    CredentialKind::parse(s)
        .ok_or_else(|| StoreError::Invalid(format!("unknown credential kind {s:?}")))
}

/// A stored rate, checked again on the way out.
pub(crate) fn rate(per_sec: f64, burst: i64) -> StoreResult<Rate> {
    u32::try_from(burst)
        .ok()
        .and_then(|b| Rate::new(per_sec, b))
        .ok_or_else(|| StoreError::Invalid("stored rate limit out of range".into()))
}

/// Maps a unique violation to `Conflict(what())`, anything else to `Db`.
pub(crate) fn conflict(e: sqlx::Error, what: impl FnOnce() -> String) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict(what()),
        _ => StoreError::Db(e),
    }
}

/// The error for a device that is not in this tenant.
pub(crate) fn no_device(client_id: &str) -> StoreError {
    StoreError::NotFound(format!("device {client_id}"))
}

/// `Ok` when exactly one row changed, else `NotFound` for the device.
pub(crate) fn one(affected: u64, client_id: &str) -> StoreResult<()> {
    if affected == 0 {
        Err(no_device(client_id))
    } else {
        Ok(())
    }
}

/// An `acl_rules` row joined with its device's client id.
pub(crate) struct RuleRow {
    pub id: i64,
    pub device_id: Option<i64>,
    pub client_id: Option<String>,
    pub permission: String,
    pub action: String,
    pub topic: String,
}

impl RuleRow {
    pub(crate) fn into_stored(self) -> StoreResult<StoredAclRule> {
        let permission = Permission::parse(&self.permission).ok_or_else(|| {
            StoreError::Invalid(format!("unknown permission {:?}", self.permission))
        })?;
        let action = RuleAction::parse(&self.action)
            .ok_or_else(|| StoreError::Invalid(format!("unknown action {:?}", self.action)))?;
        let client_id = self.device_id.and(self.client_id);
        Ok(StoredAclRule {
            id: self.id,
            client_id,
            permission,
            action,
            topic: self.topic,
        })
    }
}

/// Builds one record per device from bulk rows: credentials by device id (rows in id order), and
/// rules with the device's own first, then the tenant-wide ones (each in id order).
pub(crate) fn assemble(
    tenant_name: &str,
    devices: Vec<Device>,
    creds: Vec<(i64, Credential)>,
    rules: Vec<StoredAclRule>,
    limits: Vec<(Option<i64>, Rate)>,
) -> Vec<DeviceRecord> {
    let tenant_limit = limits.iter().find(|(d, _)| d.is_none()).map(|(_, r)| *r);
    let device_limits: HashMap<i64, Rate> = limits
        .into_iter()
        .filter_map(|(d, r)| Some((d?, r)))
        .collect();
    let mut by_device: HashMap<i64, Vec<Credential>> = HashMap::new();
    for (device_id, c) in creds {
        by_device.entry(device_id).or_default().push(c);
    }
    let (tenant_rules, device_rules): (Vec<_>, Vec<_>) =
        rules.into_iter().partition(|r| r.client_id.is_none());
    let mut rules_of: HashMap<String, Vec<StoredAclRule>> = HashMap::new();
    for r in device_rules {
        rules_of
            .entry(r.client_id.clone().unwrap_or_default())
            .or_default()
            .push(r);
    }
    devices
        .into_iter()
        .map(|device| {
            let mut rules = rules_of.remove(&device.client_id).unwrap_or_default();
            rules.extend(tenant_rules.iter().cloned());
            DeviceRecord {
                tenant_name: tenant_name.to_string(),
                device_limit: device_limits.get(&device.id).copied(),
                tenant_limit,
                credentials: by_device.remove(&device.id).unwrap_or_default(),
                rules,
                device,
            }
        })
        .collect()
}

/// An audit row ready to insert, linked onto the chain.
pub(crate) struct ChainedRow {
    pub at: i64,
    pub tenant: Option<i64>,
    pub kind: &'static str,
    pub detail: String,
    pub prev_hash: String,
    pub hash: String,
}

/// Links `records` onto the chain after `prev`.
pub(crate) fn chain_rows(
    mut prev: String,
    records: &[crate::audit::AuditRecord],
) -> Vec<ChainedRow> {
    records
        .iter()
        .map(|r| {
            let (kind, detail) = r.encode();
            let hash = crate::audit::chain::link(&prev, r.at_ms, r.tenant, kind, &detail);
            let prev_hash = std::mem::replace(&mut prev, hash.clone());
            ChainedRow {
                at: r.at_ms,
                tenant: r.tenant,
                kind,
                detail,
                prev_hash,
                hash,
            }
        })
        .collect()
}

/// One row of a one-device cache fill: `src` says what it is (`c` credential, `r` rule, `l` limit)
/// and the generic columns hold its fields (see `load_client` in either store).
pub(crate) struct ChildRow {
    pub src: String,
    pub id: i64,
    pub device_id: Option<i64>,
    pub s1: Option<String>,
    pub s2: Option<String>,
    pub s3: Option<String>,
    pub n1: Option<i64>,
    pub n2: Option<i64>,
    pub f1: Option<f64>,
}

/// Builds the record of `dev` from its fill rows.
pub(crate) fn from_children(
    tenant_name: &str,
    dev: Device,
    children: Vec<ChildRow>,
) -> StoreResult<Option<DeviceRecord>> {
    let missing = || StoreError::Invalid("incomplete row in a cache fill".into());
    let (mut creds, mut rules, mut limits) = (vec![], vec![], vec![]);
    for r in children {
        match r.src.as_str() {
            "c" => creds.push((
                dev.id,
                Credential {
                    id: r.id,
                    kind: kind(r.s1.as_deref().ok_or_else(missing)?)?,
                    digest: r.s2.ok_or_else(missing)?,
                    created_at: r.n1.ok_or_else(missing)?,
                    expires_at: r.n2,
                },
            )),
            "r" => rules.push(
                RuleRow {
                    id: r.id,
                    device_id: r.device_id,
                    client_id: r.device_id.map(|_| dev.client_id.clone()),
                    permission: r.s1.ok_or_else(missing)?,
                    action: r.s2.ok_or_else(missing)?,
                    topic: r.s3.ok_or_else(missing)?,
                }
                .into_stored()?,
            ),
            "l" => limits.push((
                r.device_id,
                rate(r.f1.ok_or_else(missing)?, r.n1.ok_or_else(missing)?)?,
            )),
            _ => {}
        }
    }
    Ok(assemble(tenant_name, vec![dev], creds, rules, limits).pop())
}
