//! Row plumbing shared by both stores: the row types both read (PostgreSQL through `query_as!`,
//! SQLite through `FromRow`), column encodings, error mapping, and the device-record document.

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

/// A `tenants` row, as both stores read it.
#[derive(sqlx::FromRow)]
pub(crate) struct TenantRow {
    pub id: i64,
    pub name: String,
    pub created_at: i64,
}

impl From<TenantRow> for Tenant {
    fn from(r: TenantRow) -> Tenant {
        Tenant {
            id: TenantId(r.id),
            name: r.name,
            created_at: r.created_at,
        }
    }
}

/// A `devices` row, as both stores read it.
#[derive(sqlx::FromRow)]
pub(crate) struct DeviceRow {
    pub id: i64,
    pub tenant_id: i64,
    pub client_id: String,
    pub username: Option<String>,
    pub enabled: bool,
    pub created_at: i64,
}

impl From<DeviceRow> for Device {
    fn from(r: DeviceRow) -> Device {
        Device {
            id: r.id,
            tenant_id: TenantId(r.tenant_id),
            client_id: r.client_id,
            username: r.username,
            enabled: r.enabled,
            created_at: r.created_at,
        }
    }
}

/// A `cas` row, as both stores read it.
#[derive(sqlx::FromRow)]
pub(crate) struct CaRow {
    pub id: i64,
    pub tenant_id: i64,
    pub name: String,
    pub cert_der: Vec<u8>,
    pub fingerprint: String,
    pub subject: String,
    pub not_after: i64,
    pub key_sealed: Option<Vec<u8>>,
    pub crl_url: Option<String>,
    pub crl_der: Option<Vec<u8>>,
    pub crl_number: i64,
    pub crl_next_update: Option<i64>,
    pub crl_error: Option<String>,
    pub created_at: i64,
}

impl From<CaRow> for StoredCa {
    fn from(r: CaRow) -> StoredCa {
        StoredCa {
            id: r.id,
            tenant_id: TenantId(r.tenant_id),
            name: r.name,
            cert_der: r.cert_der,
            fingerprint: r.fingerprint,
            subject: r.subject,
            not_after: r.not_after,
            key_sealed: r.key_sealed,
            crl_url: r.crl_url,
            crl_der: r.crl_der,
            crl_number: r.crl_number,
            crl_next_update: r.crl_next_update,
            crl_error: r.crl_error,
            created_at: r.created_at,
        }
    }
}

/// A `device_certs` row with its device's client id, as both stores read it.
#[derive(sqlx::FromRow)]
pub(crate) struct CertRow {
    pub id: i64,
    pub tenant_id: i64,
    pub client_id: String,
    pub ca_id: Option<i64>,
    pub fingerprint: String,
    pub serial: String,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub revoked_at: Option<i64>,
    pub created_at: i64,
}

impl From<CertRow> for StoredDeviceCert {
    fn from(r: CertRow) -> StoredDeviceCert {
        StoredDeviceCert {
            id: r.id,
            tenant_id: TenantId(r.tenant_id),
            client_id: r.client_id,
            ca_id: r.ca_id,
            fingerprint: r.fingerprint,
            serial: r.serial,
            subject: r.subject,
            not_before: r.not_before,
            not_after: r.not_after,
            revoked_at: r.revoked_at,
            created_at: r.created_at,
        }
    }
}

/// An `emqx_kicks` row being claimed, as both stores read it.
#[derive(sqlx::FromRow)]
pub(crate) struct PendingKickRow {
    pub id: i64,
    pub tenant_id: i64,
    pub client_id: String,
    pub reason: String,
}

impl From<PendingKickRow> for PendingKick {
    fn from(r: PendingKickRow) -> PendingKick {
        PendingKick {
            id: r.id,
            tenant: TenantId(r.tenant_id),
            client_id: r.client_id,
            reason: r.reason,
        }
    }
}

/// An `emqx_kicks` row as listed, as both stores read it.
#[derive(sqlx::FromRow)]
pub(crate) struct KickOutboxRow {
    pub id: i64,
    pub tenant_id: i64,
    pub client_id: String,
    pub reason: String,
    pub due_at: Option<i64>,
    pub done_at: Option<i64>,
    pub outcome: Option<String>,
}

impl From<KickOutboxRow> for KickRow {
    fn from(r: KickOutboxRow) -> KickRow {
        KickRow {
            id: r.id,
            tenant: TenantId(r.tenant_id),
            client_id: r.client_id,
            reason: r.reason,
            due_at: r.due_at,
            done_at: r.done_at,
            outcome: r.outcome,
        }
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

/// The cache fill of one device: one JSON document, built by either database (PostgreSQL's
/// `mqgate_device_doc`, migration 0010; SQLite's `device_doc!`) and decoded here, the one place
/// that turns a fill into a [`DeviceRecord`].
#[derive(serde::Deserialize)]
pub(crate) struct FillDoc {
    tenant_name: String,
    device: FillDevice,
    credentials: Vec<FillCredential>,
    rules: Vec<FillRule>,
    limits: Vec<FillLimit>,
}

/// A page of a tenant's devices for warm-up, decoded into the same [`DeviceRecord`]s as
/// [`FillDoc`]: the tenant's part once; each device with each of its credentials as one flat
/// array (`[position, id, client_id, username, enabled, created_at, credential id, kind, digest,
/// expires_at]`, credential fields null for a device without one); the page's own device rules
/// and limits. Built set-wise by each database, a page in one row: a document per device with
/// correlated subqueries costs four times as much at a million devices.
#[derive(serde::Deserialize)]
pub(crate) struct PageDoc {
    tenant_id: i64,
    tenant_name: String,
    rules: Vec<FillRule>,
    limits: Vec<FillLimit>,
    devices: Vec<PageRow>,
    device_rules: Vec<FillRule>,
    device_limits: Vec<FillLimit>,
}

type PageRow = (
    i64,
    i64,
    String,
    Option<String>,
    i64,
    i64,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

impl PageDoc {
    /// Decodes a page (never echoing it: it holds credential digests).
    pub(crate) fn parse(json: &str) -> StoreResult<PageDoc> {
        serde_json::from_str(json).map_err(|e| {
            StoreError::Invalid(format!(
                "malformed warm-up page (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// The records in the database's order of the page (its position column): the last one is
    /// where the next page starts, whatever the database's collation.
    pub(crate) fn into_records(self) -> StoreResult<Vec<DeviceRecord>> {
        // A device per row at most (a row per credential).
        let rows = self.devices.len();
        let mut docs: Vec<(i64, FillDoc)> = Vec::with_capacity(rows);
        let mut at: std::collections::HashMap<i64, usize> =
            std::collections::HashMap::with_capacity(rows);
        for (pos, id, client_id, username, enabled, created_at, cid, kind, digest, expires_at) in
            self.devices
        {
            let slot = *at.entry(id).or_insert_with(|| {
                let device = FillDevice {
                    id,
                    tenant_id: self.tenant_id,
                    client_id,
                    username,
                    enabled: enabled != 0,
                    created_at,
                };
                let doc = FillDoc {
                    tenant_name: self.tenant_name.clone(),
                    device,
                    credentials: Vec::new(),
                    rules: Vec::new(),
                    limits: Vec::new(),
                };
                docs.push((pos, doc));
                docs.len() - 1
            });
            if let (Some(id), Some(kind), Some(digest)) = (cid, kind, digest)
                && let Some((_, doc)) = docs.get_mut(slot)
            {
                doc.credentials.push(FillCredential {
                    id,
                    kind,
                    digest,
                    expires_at,
                });
            }
        }
        for r in self.device_rules {
            if let Some((_, doc)) = r
                .device_id
                .and_then(|d| at.get(&d))
                .and_then(|&i| docs.get_mut(i))
            {
                doc.rules.push(r);
            }
        }
        for l in self.device_limits {
            if let Some((_, doc)) = l
                .device_id
                .and_then(|d| at.get(&d))
                .and_then(|&i| docs.get_mut(i))
            {
                doc.limits.push(l);
            }
        }
        docs.sort_by_key(|(pos, _)| *pos);
        docs.into_iter()
            .map(|(_, mut doc)| {
                doc.rules.extend(self.rules.iter().cloned());
                doc.limits.extend(self.limits.iter().cloned());
                doc.into_record()
            })
            .collect()
    }
}

#[derive(serde::Deserialize)]
struct FillDevice {
    id: i64,
    tenant_id: i64,
    client_id: String,
    username: Option<String>,
    enabled: bool,
    created_at: i64,
}

#[derive(serde::Deserialize)]
struct FillCredential {
    id: i64,
    kind: String,
    digest: String,
    expires_at: Option<i64>,
}

#[derive(serde::Deserialize, Clone)]
struct FillRule {
    id: i64,
    device_id: Option<i64>,
    permission: String,
    action: String,
    topic: String,
}

#[derive(serde::Deserialize, Clone)]
struct FillLimit {
    device_id: Option<i64>,
    per_sec: f64,
    burst: i64,
}

impl FillDoc {
    /// Decodes a JSON array of fill documents (never echoing it).
    pub(crate) fn parse_many(json: &str) -> StoreResult<Vec<FillDoc>> {
        serde_json::from_str(json).map_err(|e| {
            StoreError::Invalid(format!(
                "malformed cache fill (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// Decodes a fill document (never echoing it: it holds credential digests).
    pub(crate) fn parse(json: &str) -> StoreResult<FillDoc> {
        serde_json::from_str(json).map_err(|e| {
            StoreError::Invalid(format!(
                "malformed cache fill (line {}, column {})",
                e.line(),
                e.column()
            ))
        })
    }

    /// The record: credentials in id order, the device's own rules then the tenant's (each in id
    /// order), whatever order the database aggregated them in.
    pub(crate) fn into_record(self) -> StoreResult<DeviceRecord> {
        let d = self.device;
        let mut credentials = self
            .credentials
            .into_iter()
            .map(|c| {
                Ok(CredentialView::stored(
                    c.id,
                    kind(&c.kind)?,
                    &c.digest,
                    c.expires_at,
                ))
            })
            .collect::<StoreResult<Vec<_>>>()?;
        credentials.sort_by_key(|c| c.id);
        let mut rules = self.rules;
        rules.sort_by_key(|r| (r.device_id.is_none(), r.id));
        let rules = rules
            .into_iter()
            .map(|r| {
                RuleRow {
                    id: r.id,
                    device_id: r.device_id,
                    client_id: r.device_id.map(|_| d.client_id.clone()),
                    permission: r.permission,
                    action: r.action,
                    topic: r.topic,
                }
                .into_stored()
            })
            .collect::<StoreResult<Vec<_>>>()?;
        let (mut device_limit, mut tenant_limit) = (None, None);
        for l in self.limits {
            let slot = match l.device_id {
                Some(_) => &mut device_limit,
                None => &mut tenant_limit,
            };
            *slot = Some(rate(l.per_sec, l.burst)?);
        }
        Ok(DeviceRecord {
            tenant_name: self.tenant_name,
            device: Device {
                id: d.id,
                tenant_id: TenantId(d.tenant_id),
                client_id: d.client_id,
                username: d.username,
                enabled: d.enabled,
                created_at: d.created_at,
            },
            credentials,
            rules,
            device_limit,
            tenant_limit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = r#"{"tenant_name":"acme",
        "device":{"id":4,"tenant_id":1,"client_id":"d","username":null,"enabled":true,"created_at":9},
        "credentials":[{"id":8,"kind":"token","digest":"secret-digest","expires_at":null},
                       {"id":2,"kind":"argon2","digest":"$argon2id$x","expires_at":5}],
        "rules":[{"id":1,"device_id":null,"permission":"deny","action":"all","topic":"t"},
                 {"id":7,"device_id":4,"permission":"allow","action":"publish","topic":"d"},
                 {"id":3,"device_id":4,"permission":"allow","action":"subscribe","topic":"e"}],
        "limits":[{"device_id":null,"per_sec":5,"burst":5},{"device_id":4,"per_sec":0.5,"burst":1}]}"#;

    #[test]
    fn a_fill_document_decodes_in_evaluation_order() {
        let rec = FillDoc::parse(DOC).unwrap().into_record().unwrap();
        assert_eq!(rec.tenant_name, "acme");
        assert_eq!((rec.device.id, rec.device.tenant_id), (4, TenantId(1)));
        assert_eq!(
            rec.credentials.iter().map(|c| c.id).collect::<Vec<_>>(),
            [2, 8]
        );
        assert_eq!(
            rec.rules.iter().map(|r| r.id).collect::<Vec<_>>(),
            [3, 7, 1]
        );
        assert_eq!(rec.rules[0].client_id.as_deref(), Some("d"));
        assert_eq!(rec.rules[2].client_id, None);
        assert_eq!(
            (rec.device_limit, rec.tenant_limit),
            (Rate::new(0.5, 1), Rate::new(5.0, 5))
        );
    }

    #[test]
    fn a_bad_fill_document_is_refused_without_echoing_it() {
        for bad in [
            DOC.replace("\"token\"", "\"rot13\""),
            DOC.replace("\"burst\":1}", "\"burst\":0}"),
            DOC.replace("\"enabled\":true", "\"enabled\":1"),
            DOC.replace("\"tenant_name\":\"acme\",", ""),
            "{\"secret-digest\"".to_string(),
        ] {
            let e = FillDoc::parse(&bad)
                .and_then(FillDoc::into_record)
                .expect_err("refused");
            assert!(matches!(e, StoreError::Invalid(_)), "{e}");
            assert!(!e.to_string().contains("secret-digest"), "{e}");
        }
    }
}
