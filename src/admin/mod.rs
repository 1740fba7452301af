//! Operator actions over the store: tenants, devices, credentials, ACL rules. The CLI (and later
//! the admin API) call these; each validates its input, writes, and records an audit line.
//! Secrets are generated or hashed here and returned once; only digests reach the store.

pub mod bulk;
mod certs;
pub mod import;

pub use certs::{IssuedCert, PublishedCrl, crl_path, write_atomically};

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;

use crate::acl::Action;
use crate::audit::{AuditEvent, AuditRecord};
use crate::auth::secret::{self, NewToken, SecretError};
use crate::clock::Clock;
use crate::core::{self, Decision, UnknownClient};
use crate::registry::cache::{CachedRegistry, compile_view};
use crate::registry::{
    Change, CredentialKind, Device, NewAclRule, NewCredential, NewDevice, Rate, Store, StoreError,
    StoredAclRule, StoredRateLimit, Tenant, TenantId,
};

/// Why an operator action failed. Never carries a secret.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No tenant of that name.
    #[error("tenant `{0}` not found")]
    NoTenant(String),
    /// Input refused before touching the store.
    #[error("invalid {0}")]
    Invalid(String),
    /// The store refused or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Hashing failed.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Lines of an import file that cannot be imported (nothing was).
    #[error(transparent)]
    BadLines(#[from] bulk::BadLines),
}

/// Operator actions against one store.
pub struct Admin {
    store: Store,
    clock: Clock,
    registry: Option<Arc<CachedRegistry>>,
}

/// Tenant names appear in topics (`${tenant}`), so they are restricted to safe characters.
fn valid_tenant_name(name: &str) -> Result<(), AdminError> {
    crate::core::ids::TenantName::parse(name)
        .map(drop)
        .map_err(|e| AdminError::Invalid(e.to_string()))
}

/// Names that appear in topics, URIs and file names (tenants, CAs): 1-64 of A-Z a-z 0-9 - _ .
pub(crate) fn valid_name(what: &str, name: &str) -> Result<(), AdminError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(())
    } else {
        Err(AdminError::Invalid(format!(
            "{what}: use 1-64 of A-Z a-z 0-9 - _ ."
        )))
    }
}

/// A username a device can present: 1-256 bytes, no control characters.
pub(crate) fn valid_username(u: &str) -> Result<(), AdminError> {
    if !u.is_empty() && u.len() <= 256 && !u.chars().any(char::is_control) {
        Ok(())
    } else {
        Err(AdminError::Invalid(
            "username: 1-256 bytes, no control characters".into(),
        ))
    }
}

/// The one client-id rule ([`crate::core::ids::ClientId::parse`]) at every registry write.
pub(crate) fn valid_client_id(id: &str) -> Result<(), AdminError> {
    crate::core::ids::ClientId::parse(id)
        .map(drop)
        .map_err(|e| AdminError::Invalid(e.to_string()))
}

impl Admin {
    /// Admin over `store`, with `clock` for timestamps.
    pub fn new(store: Store, clock: Clock) -> Self {
        Admin {
            store,
            clock,
            registry: None,
        }
    }

    /// Also invalidates `registry` in-process after each write (other processes learn through
    /// the store's change feed).
    pub fn with_registry(mut self, registry: Arc<CachedRegistry>) -> Self {
        self.registry = Some(registry);
        self
    }

    /// Appends an admin action to the audit chain (and the log).
    async fn audit(&self, action: &str, tenant: TenantId, subject: &str) -> Result<(), AdminError> {
        tracing::info!(target: "mqgate::audit", event = "admin", action, tenant = tenant.0, subject);
        let record = AuditRecord {
            at_ms: self.clock.now_ms(),
            tenant: Some(tenant.0),
            event: AuditEvent::Admin {
                action: action.into(),
                subject: subject.into(),
            },
        };
        Ok(self.store.append_audit(&[record]).await?)
    }

    /// A new token for the device; only its digest is stored.
    async fn issue_token(
        &self,
        t: TenantId,
        client_id: &str,
        now: i64,
    ) -> Result<NewToken, AdminError> {
        let token = secret::generate_token();
        let cred = NewCredential {
            kind: CredentialKind::Token,
            digest: token.digest.clone(),
            expires_at: None,
        };
        self.store.add_credential(t, client_id, &cred, now).await?;
        Ok(token)
    }

    async fn certs_changed(&self, tenant: TenantId) {
        if let Some(r) = &self.registry {
            r.invalidate(&Change::Certs(tenant)).await;
        }
    }

    async fn changed(&self, tenant: TenantId, client_id: Option<&str>) {
        if let Some(r) = &self.registry {
            let change = match client_id {
                Some(c) => Change::Device {
                    tenant,
                    client_id: c.into(),
                },
                None => Change::Tenant(tenant),
            };
            r.invalidate(&change).await;
        }
    }

    /// The store it acts on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The tenant called `name`.
    pub async fn tenant(&self, name: &str) -> Result<Tenant, AdminError> {
        self.store
            .tenant_by_name(name)
            .await?
            .ok_or_else(|| AdminError::NoTenant(name.into()))
    }

    /// `mqgate tenant add`.
    pub async fn add_tenant(&self, name: &str) -> Result<Tenant, AdminError> {
        valid_tenant_name(name)?;
        let t = self.store.create_tenant(name, self.clock.now()).await?;
        self.audit("tenant.add", t.id, name).await?;
        Ok(t)
    }

    /// `mqgate tenant list`.
    pub async fn list_tenants(&self) -> Result<Vec<Tenant>, AdminError> {
        Ok(self.store.list_tenants().await?)
    }

    /// `mqgate device add`: the device and its first token, shown once.
    pub async fn add_device(
        &self,
        tenant: &str,
        client_id: &str,
        username: Option<&str>,
    ) -> Result<(Device, NewToken), AdminError> {
        valid_client_id(client_id)?;
        if let Some(u) = username {
            valid_username(u)?;
        }
        let t = self.tenant(tenant).await?;
        let now = self.clock.now();
        let new = NewDevice {
            client_id: client_id.into(),
            username: username.map(Into::into),
        };
        let device = self.store.create_device(t.id, &new, now).await?;
        let token = self.issue_token(t.id, client_id, now).await?;
        self.changed(t.id, Some(client_id)).await;
        self.audit("device.add", t.id, client_id).await?;
        Ok((device, token))
    }

    /// `mqgate device enable|disable`.
    pub async fn set_enabled(
        &self,
        tenant: &str,
        client_id: &str,
        enabled: bool,
    ) -> Result<(), AdminError> {
        let t = self.tenant(tenant).await?;
        self.store
            .set_device_enabled(t.id, client_id, enabled)
            .await?;
        self.changed(t.id, Some(client_id)).await;
        self.audit(
            if enabled {
                "device.enable"
            } else {
                "device.disable"
            },
            t.id,
            client_id,
        )
        .await?;
        Ok(())
    }

    /// `mqgate device remove`.
    pub async fn remove_device(&self, tenant: &str, client_id: &str) -> Result<(), AdminError> {
        let t = self.tenant(tenant).await?;
        self.store.remove_device(t.id, client_id).await?;
        self.changed(t.id, Some(client_id)).await;
        self.audit("device.remove", t.id, client_id).await?;
        Ok(())
    }

    /// `mqgate device list`.
    pub async fn list_devices(&self, tenant: &str) -> Result<Vec<Device>, AdminError> {
        let t = self.tenant(tenant).await?;
        Ok(self.store.list_devices(t.id).await?)
    }

    /// `mqgate cred rotate`: a new token; the old ones keep working for `grace`, then never again.
    /// Returns the new token and the Unix time the old ones stop.
    pub async fn rotate(
        &self,
        tenant: &str,
        client_id: &str,
        grace: Duration,
    ) -> Result<(NewToken, i64), AdminError> {
        let t = self.tenant(tenant).await?;
        let now = self.clock.now();
        let until = now.saturating_add(grace.as_secs() as i64);
        self.store
            .expire_credentials(t.id, client_id, &[CredentialKind::Token], until)
            .await?;
        let token = self.issue_token(t.id, client_id, now).await?;
        self.changed(t.id, Some(client_id)).await;
        self.audit("cred.rotate", t.id, client_id).await?;
        Ok((token, until))
    }

    /// `mqgate cred set-password`: an operator-chosen password (argon2id) replaces earlier passwords.
    pub async fn set_password(
        &self,
        tenant: &str,
        client_id: &str,
        password: SecretString,
    ) -> Result<(), AdminError> {
        use secrecy::ExposeSecret;
        if password.expose_secret().chars().count() < 8 {
            return Err(AdminError::Invalid(
                "password: at least 8 characters".into(),
            ));
        }
        let hash = tokio::task::spawn_blocking(move || secret::hash_password(&password))
            .await
            .map_err(|_| SecretError::Interrupted)??;
        self.replace_password(
            tenant,
            client_id,
            CredentialKind::Argon2,
            hash,
            "cred.set-password",
        )
        .await
    }

    /// `mqgate cred import-bcrypt`: a legacy bcrypt hash, re-hashed to argon2id on next login.
    pub async fn import_bcrypt(
        &self,
        tenant: &str,
        client_id: &str,
        hash: &str,
    ) -> Result<(), AdminError> {
        secret::validate_bcrypt_hash(hash)?;
        self.replace_password(
            tenant,
            client_id,
            CredentialKind::Bcrypt,
            hash.into(),
            "cred.import-bcrypt",
        )
        .await
    }

    async fn replace_password(
        &self,
        tenant: &str,
        client_id: &str,
        kind: CredentialKind,
        digest: String,
        action: &str,
    ) -> Result<(), AdminError> {
        let t = self.tenant(tenant).await?;
        let now = self.clock.now();
        let kinds = [CredentialKind::Argon2, CredentialKind::Bcrypt];
        self.store
            .expire_credentials(t.id, client_id, &kinds, now)
            .await?;
        let cred = NewCredential {
            kind,
            digest,
            expires_at: None,
        };
        self.store
            .add_credential(t.id, client_id, &cred, now)
            .await?;
        self.changed(t.id, Some(client_id)).await;
        self.audit(action, t.id, client_id).await?;
        Ok(())
    }

    /// `mqgate acl add`: a rule for one device, or (no client id) for the whole tenant.
    pub async fn add_rule(
        &self,
        tenant: &str,
        client_id: Option<&str>,
        rule: NewAclRule,
    ) -> Result<i64, AdminError> {
        crate::acl::file::validate_topic_template(&rule.topic)
            .map_err(|e| AdminError::Invalid(format!("topic filter: {e}")))?;
        let t = self.tenant(tenant).await?;
        let id = self
            .store
            .add_acl_rule(t.id, client_id, &rule, self.clock.now())
            .await?;
        self.changed(t.id, client_id).await;
        self.audit("acl.add", t.id, client_id.unwrap_or("*"))
            .await?;
        Ok(id)
    }

    /// `mqgate acl list`.
    pub async fn list_rules(&self, tenant: &str) -> Result<Vec<StoredAclRule>, AdminError> {
        let t = self.tenant(tenant).await?;
        Ok(self.store.list_acl_rules(t.id).await?)
    }

    /// `mqgate acl remove`.
    pub async fn remove_rule(&self, tenant: &str, rule_id: i64) -> Result<(), AdminError> {
        let t = self.tenant(tenant).await?;
        let owner = self.store.remove_acl_rule(t.id, rule_id).await?;
        self.changed(t.id, owner.as_deref()).await;
        self.audit("acl.remove", t.id, &rule_id.to_string()).await?;
        Ok(())
    }

    /// `mqgate limits set|clear`: the ingestion limit of a device, or without a client id of the
    /// tenant; `None` returns it to the configured default.
    pub async fn set_limit(
        &self,
        tenant: &str,
        client_id: Option<&str>,
        rate: Option<Rate>,
    ) -> Result<(), AdminError> {
        let t = self.tenant(tenant).await?;
        self.store
            .set_rate_limit(t.id, client_id, rate, self.clock.now())
            .await?;
        self.changed(t.id, client_id).await;
        self.audit(
            if rate.is_some() {
                "limits.set"
            } else {
                "limits.clear"
            },
            t.id,
            client_id.unwrap_or("*"),
        )
        .await?;
        Ok(())
    }

    /// `mqgate limits list`.
    pub async fn list_limits(&self, tenant: &str) -> Result<Vec<StoredRateLimit>, AdminError> {
        let t = self.tenant(tenant).await?;
        Ok(self.store.list_rate_limits(t.id).await?)
    }

    /// `mqgate acl check`: what the gate would answer, and why, for a device of `tenant`.
    pub async fn check(
        &self,
        tenant: &str,
        client_id: &str,
        action: Action,
        topic: &str,
        file_rules: Vec<crate::acl::Rule>,
    ) -> Result<Decision, AdminError> {
        let t = self.tenant(tenant).await?;
        let record = self.store.load_device(t.id, client_id).await?;
        let device = record.and_then(|r| compile_view(r, &file_rules));
        if device.is_none() {
            return Err(
                StoreError::NotFound(format!("device {client_id} in tenant {tenant}")).into(),
            );
        }
        Ok(core::decide_authz(
            device.as_ref(),
            action,
            topic,
            UnknownClient::Deny,
        ))
    }

    /// The store's id of a tenant (for tests and tooling).
    pub async fn tenant_id(&self, name: &str) -> Result<TenantId, AdminError> {
        Ok(self.tenant(name).await?.id)
    }
}
