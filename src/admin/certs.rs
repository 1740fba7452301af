//! Operator actions on certificates: tenant CAs (created here or imported), device certificates
//! (issued here or registered by fingerprint), revocation, and CRLs (signed here or imported).

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::ExposeSecret;

use super::{Admin, AdminError, valid_client_id, valid_name};
use crate::auth::cert::{self, CertError, DeviceCertSpec, Issued, KeySealer};
use crate::auth::crl::{self, CrlError, VerifiedCrl};
use crate::clock::secs;
use crate::registry::{
    CrlUpdate, NewCa, NewDeviceCert, StoredCa, StoredDeviceCert, Tenant, TenantId,
};

impl From<CertError> for AdminError {
    fn from(e: CertError) -> Self {
        AdminError::Invalid(e.to_string())
    }
}

impl From<CrlError> for AdminError {
    fn from(e: CrlError) -> Self {
        AdminError::Invalid(e.to_string())
    }
}

/// A device certificate just issued: the record, the certificate and its key (shown once).
#[derive(Debug)]
pub struct IssuedCert {
    /// What was stored.
    pub record: StoredDeviceCert,
    /// Certificate and private key.
    pub issued: Issued,
    /// The issuing CA's certificate (DER), for the device's trust bundle.
    pub ca_der: Vec<u8>,
}

/// One CRL written by `crl publish`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PublishedCrl {
    /// Tenant name.
    pub tenant: String,
    /// CA name.
    pub ca: String,
    /// CRL number.
    pub number: i64,
    /// Its next-update, Unix seconds.
    pub next_update: i64,
    /// Revoked certificates listed.
    pub revoked: usize,
    /// The PEM file written, if a directory was given.
    pub path: Option<PathBuf>,
}

fn valid_ca_name(name: &str) -> Result<(), AdminError> {
    valid_name("CA name", name)
}

/// The file a CA's CRL is written to under `dir`.
pub fn crl_path(dir: &Path, tenant: &str, ca: &str) -> PathBuf {
    dir.join(format!("{tenant}-{ca}.crl.pem"))
}

impl Admin {
    /// After a certificate write: tells this process's registry (when wired) and records the
    /// action in the audit trail.
    async fn certs_written(
        &self,
        action: &str,
        t: TenantId,
        subject: &str,
    ) -> Result<(), AdminError> {
        self.certs_changed(t).await;
        self.audit(action, t, subject).await
    }

    async fn find_ca(&self, t: TenantId, name: &str) -> Result<StoredCa, AdminError> {
        self.store()
            .list_cas(t)
            .await?
            .into_iter()
            .find(|c| c.name == name)
            .ok_or_else(|| AdminError::Invalid(format!("CA `{name}` not found in this tenant")))
    }

    /// `mqgate ca init`: a new CA whose key is sealed in the store.
    pub async fn ca_init(
        &self,
        tenant: &str,
        name: &str,
        validity: Duration,
        sealer: &KeySealer,
    ) -> Result<StoredCa, AdminError> {
        valid_ca_name(name)?;
        let t = self.tenant(tenant).await?;
        let now = self.clock.now();
        let made = cert::new_ca(&t.name, name, now, secs(validity))?;
        let info = cert::parse(&made.cert_der)?;
        let new = NewCa {
            name: name.into(),
            key_sealed: Some(
                sealer.seal(&info.fingerprint, made.key_pem.expose_secret().as_bytes())?,
            ),
            cert_der: made.cert_der,
            fingerprint: info.fingerprint,
            subject: info.subject,
            not_after: info.not_after,
            crl_url: None,
        };
        let ca = self.store().create_ca(t.id, &new, now).await?;
        self.certs_written("ca.init", t.id, name).await?;
        Ok(ca)
    }

    /// `mqgate ca import`: an external CA (no key); its CRL comes from `crl import` or `crl_url`.
    pub async fn ca_import(
        &self,
        tenant: &str,
        name: &str,
        pem_or_der: &[u8],
        crl_url: Option<&str>,
    ) -> Result<StoredCa, AdminError> {
        valid_ca_name(name)?;
        if let Some(url) = crl_url
            && !url.starts_with("http://")
        {
            return Err(AdminError::Invalid(
                "CRL URL: only http:// (CRLs are signed; their distribution points use plain HTTP)"
                    .into(),
            ));
        }
        let t = self.tenant(tenant).await?;
        let der = cert::read_certs(pem_or_der)?
            .into_iter()
            .next()
            .ok_or_else(|| AdminError::Invalid("no certificate in the input".into()))?;
        let info = cert::parse(&der)?;
        if !info.is_ca {
            return Err(AdminError::Invalid(
                "that certificate is not a CA (basic constraints say so)".into(),
            ));
        }
        let new = NewCa {
            name: name.into(),
            cert_der: der,
            fingerprint: info.fingerprint,
            subject: info.subject,
            not_after: info.not_after,
            key_sealed: None,
            crl_url: crl_url.map(Into::into),
        };
        let ca = self.store().create_ca(t.id, &new, self.clock.now()).await?;
        self.certs_written("ca.import", t.id, name).await?;
        Ok(ca)
    }

    /// `mqgate ca list`.
    pub async fn ca_list(&self, tenant: &str) -> Result<Vec<StoredCa>, AdminError> {
        let t = self.tenant(tenant).await?;
        Ok(self.store().list_cas(t.id).await?)
    }

    /// `mqgate ca show`: the CA certificate (DER) for device trust bundles and broker config.
    pub async fn ca_cert(&self, tenant: &str, name: &str) -> Result<Vec<u8>, AdminError> {
        let t = self.tenant(tenant).await?;
        Ok(self.find_ca(t.id, name).await?.cert_der)
    }

    async fn open_key(&self, ca: &StoredCa, sealer: &KeySealer) -> Result<String, AdminError> {
        let sealed = ca.key_sealed.as_ref().ok_or_else(|| {
            AdminError::Invalid(format!(
                "CA `{}` was imported: mqgate has no key to sign with",
                ca.name
            ))
        })?;
        let key = sealer.open(&ca.fingerprint, sealed)?;
        // A key sealed the first way (one HMAC, no salt) is sealed again with argon2id on its
        // first use; it keeps working if that write fails.
        if KeySealer::is_legacy(sealed) {
            let resealed = sealer.seal(&ca.fingerprint, &key)?;
            match self
                .store()
                .update_ca_key(ca.tenant_id, ca.id, &resealed)
                .await
            {
                Ok(()) => tracing::info!(ca = %ca.name, "CA key sealed again with argon2id"),
                Err(e) => tracing::warn!(ca = %ca.name, error = %e, "re-sealing the CA key failed"),
            }
        }
        String::from_utf8(key).map_err(|_| AdminError::Invalid("stored CA key is not PEM".into()))
    }

    /// `mqgate cert issue`: a certificate and key for an existing device, signed by the tenant's
    /// CA (`ca`, or its only mqgate-created CA).
    pub async fn cert_issue(
        &self,
        tenant: &str,
        client_id: &str,
        ca: Option<&str>,
        validity: Duration,
        sealer: &KeySealer,
    ) -> Result<IssuedCert, AdminError> {
        valid_client_id(client_id)?;
        let t = self.tenant(tenant).await?;
        let ca = match ca {
            Some(name) => self.find_ca(t.id, name).await?,
            None => {
                let mut own: Vec<_> = self
                    .store()
                    .list_cas(t.id)
                    .await?
                    .into_iter()
                    .filter(|c| c.key_sealed.is_some())
                    .collect();
                match own.len() {
                    1 => own.remove(0),
                    0 => {
                        return Err(AdminError::Invalid(format!(
                            "tenant `{tenant}` has no mqgate CA: run `mqgate ca init --tenant {tenant}` first"
                        )));
                    }
                    _ => {
                        return Err(AdminError::Invalid(
                            "the tenant has several CAs: name one with --ca".into(),
                        ));
                    }
                }
            }
        };
        let key = self.open_key(&ca, sealer).await?;
        let now = self.clock.now();
        let not_after = (now + secs(validity)).min(ca.not_after);
        let issued = cert::issue_device(
            &ca.cert_der,
            &key,
            &DeviceCertSpec {
                tenant: &t.name,
                client_id,
                not_before: now - 60,
                not_after,
            },
        )?;
        let info = cert::parse(&issued.cert_der)?;
        let record = self
            .store()
            .add_device_cert(t.id, client_id, &new_device_cert(Some(ca.id), &info), now)
            .await?;
        self.certs_written(
            "cert.issue",
            t.id,
            &format!("{client_id} {}", info.fingerprint),
        )
        .await?;
        Ok(IssuedCert {
            record,
            issued,
            ca_der: ca.cert_der,
        })
    }

    /// `mqgate cert register`: binds an externally issued certificate to a device by its SHA-256
    /// fingerprint. A certificate bound to another tenant, or naming another device in its common
    /// name, is refused.
    pub async fn cert_register(
        &self,
        tenant: &str,
        client_id: &str,
        pem_or_der: &[u8],
    ) -> Result<StoredDeviceCert, AdminError> {
        valid_client_id(client_id)?;
        let t = self.tenant(tenant).await?;
        let der = cert::read_certs(pem_or_der)?
            .into_iter()
            .next()
            .ok_or_else(|| AdminError::Invalid("no certificate in the input".into()))?;
        let info = cert::parse(&der)?;
        if info.is_ca {
            return Err(AdminError::Invalid(
                "that is a CA certificate: use `mqgate ca import`".into(),
            ));
        }
        if info.bound_tenant.as_ref().is_some_and(|b| *b != t.name) {
            return Err(AdminError::Invalid(
                "the certificate is bound to another tenant".into(),
            ));
        }
        let ca_id = self
            .store()
            .list_cas(t.id)
            .await?
            .into_iter()
            .find(|c| cert::parse(&c.cert_der).is_ok_and(|ca| ca.subject_raw == info.issuer_raw))
            .map(|c| c.id);
        let record = self
            .store()
            .add_device_cert(
                t.id,
                client_id,
                &new_device_cert(ca_id, &info),
                self.clock.now(),
            )
            .await?;
        self.certs_written(
            "cert.register",
            t.id,
            &format!("{client_id} {}", info.fingerprint),
        )
        .await?;
        Ok(record)
    }

    /// `mqgate cert revoke`: by fingerprint (as `cert list` shows it).
    pub async fn cert_revoke(
        &self,
        tenant: &str,
        fingerprint: &str,
    ) -> Result<StoredDeviceCert, AdminError> {
        let fingerprint = fingerprint.trim().to_ascii_lowercase().replace(':', "");
        if fingerprint.len() != 64 || !fingerprint.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(AdminError::Invalid(
                "fingerprint: 64 hex digits (SHA-256 of the certificate's DER)".into(),
            ));
        }
        let t = self.tenant(tenant).await?;
        let record = self
            .store()
            .revoke_device_cert(t.id, &fingerprint, self.clock.now())
            .await?;
        self.certs_written(
            "cert.revoke",
            t.id,
            &format!("{} {fingerprint}", record.client_id),
        )
        .await?;
        Ok(record)
    }

    /// `mqgate cert list`.
    pub async fn cert_list(&self, tenant: &str) -> Result<Vec<StoredDeviceCert>, AdminError> {
        let t = self.tenant(tenant).await?;
        Ok(self.store().list_device_certs(t.id).await?)
    }

    /// `mqgate cert expiring`: unrevoked certificates ending within `within` (those already
    /// expired included), soonest first, in `tenant` or every tenant.
    pub async fn cert_expiring(
        &self,
        tenant: Option<&str>,
        within: Duration,
    ) -> Result<Vec<(String, StoredDeviceCert)>, AdminError> {
        let tenants: Vec<Tenant> = match tenant {
            Some(name) => vec![self.tenant(name).await?],
            None => self.store().list_tenants().await?,
        };
        let until = self.clock.now() + secs(within);
        let mut out = Vec::new();
        for t in tenants {
            for c in self.store().list_device_certs(t.id).await? {
                if c.expires_before(until) {
                    out.push((t.name.clone(), c));
                }
            }
        }
        out.sort_by(|a, b| a.1.expiry_order(&b.1));
        Ok(out)
    }

    /// `mqgate crl publish`: signs a fresh CRL for every mqgate CA (of `tenant`, or all), stores
    /// it, and writes it as PEM under `dir` when given.
    pub async fn crl_publish(
        &self,
        tenant: Option<&str>,
        validity: Duration,
        dir: Option<&Path>,
        sealer: &KeySealer,
    ) -> Result<Vec<PublishedCrl>, AdminError> {
        let tenants: Vec<Tenant> = match tenant {
            Some(name) => vec![self.tenant(name).await?],
            None => self.store().list_tenants().await?,
        };
        let mut out = Vec::new();
        for t in tenants {
            let certs = self.store().list_device_certs(t.id).await?;
            for ca in self.store().list_cas(t.id).await? {
                if ca.key_sealed.is_none() {
                    continue;
                }
                out.push(
                    self.publish_one(&t, &ca, &certs, validity, dir, sealer)
                        .await?,
                );
            }
        }
        Ok(out)
    }

    async fn publish_one(
        &self,
        t: &Tenant,
        ca: &StoredCa,
        certs: &[StoredDeviceCert],
        validity: Duration,
        dir: Option<&Path>,
        sealer: &KeySealer,
    ) -> Result<PublishedCrl, AdminError> {
        let key = self.open_key(ca, sealer).await?;
        let revoked: Vec<crl::Revoked> = certs
            .iter()
            .filter(|c| c.ca_id == Some(ca.id))
            .filter_map(|c| {
                c.revoked_at.map(|at| crl::Revoked {
                    serial: c.serial.clone(),
                    at,
                })
            })
            .collect();
        let now = self.clock.now();
        let number = ca.crl_number + 1;
        let next_update = now + secs(validity);
        let der = crl::sign(
            &ca.cert_der,
            &key,
            &revoked,
            u64::try_from(number).unwrap_or(0),
            now,
            next_update,
        )?;
        self.store()
            .update_ca_crl(
                t.id,
                ca.id,
                CrlUpdate::Accepted {
                    der: &der,
                    number,
                    next_update,
                },
            )
            .await?;
        let path = match dir {
            Some(dir) => {
                let path = crl_path(dir, &t.name, &ca.name);
                write_atomically(&path, cert::to_pem("X509 CRL", &der).as_bytes())?;
                Some(path)
            }
            None => None,
        };
        self.certs_written("crl.publish", t.id, &format!("{} #{number}", ca.name))
            .await?;
        Ok(PublishedCrl {
            tenant: t.name.clone(),
            ca: ca.name.clone(),
            number,
            next_update,
            revoked: revoked.len(),
            path,
        })
    }

    /// `mqgate crl import` (and the scheduled fetch): accepts a CRL for an imported CA only if
    /// its signature verifies against the CA, it is not past next-update and it is strictly
    /// newer than the one held or the same bytes ([`crl::check_fresh`]). A refused CRL is recorded on the CA (so `ca list` and the server report it) and
    /// nothing in it is trusted.
    pub async fn crl_import(
        &self,
        tenant: &str,
        ca_name: &str,
        input: &[u8],
    ) -> Result<VerifiedCrl, AdminError> {
        let t = self.tenant(tenant).await?;
        let ca = self.find_ca(t.id, ca_name).await?;
        self.accept_crl(t.id, &ca, input).await
    }

    pub(crate) async fn accept_crl(
        &self,
        t: TenantId,
        ca: &StoredCa,
        input: &[u8],
    ) -> Result<VerifiedCrl, AdminError> {
        if ca.key_sealed.is_some() {
            return Err(AdminError::Invalid(format!(
                "CA `{}` is mqgate's own: its CRL is signed with `crl publish`",
                ca.name
            )));
        }
        // The CRL in force, read again from its bytes (number and thisUpdate); one that no longer
        // verifies is no CRL at all, and the offered one must stand on its own.
        let have = ca
            .crl_der
            .as_ref()
            .and_then(|der| crl::verify(der, &ca.cert_der).ok());
        let checked = crl::verify(input, &ca.cert_der)
            .and_then(|c| crl::check_fresh(&c, self.clock.now(), have.as_ref()).map(|()| c));
        match checked {
            Ok(c) => {
                self.store()
                    .update_ca_crl(
                        t,
                        ca.id,
                        CrlUpdate::Accepted {
                            der: &c.der,
                            number: i64::try_from(c.number).unwrap_or(i64::MAX),
                            next_update: c.next_update,
                        },
                    )
                    .await?;
                // Live EMQX sessions of certificates it newly lists are kicked (once each).
                let serials: Vec<String> = c.revoked.iter().cloned().collect();
                self.store()
                    .kick_revoked_serials(t, ca.id, &serials)
                    .await?;
                self.certs_written("crl.import", t, &format!("{} #{}", ca.name, c.number))
                    .await?;
                Ok(c)
            }
            Err(e) => {
                tracing::error!(ca = %ca.name, tenant = t.0, error = %e, "CRL refused");
                self.store()
                    .update_ca_crl(t, ca.id, CrlUpdate::Refused(&e.to_string()))
                    .await?;
                self.audit("crl.refused", t, &format!("{}: {e}", ca.name))
                    .await?;
                Err(e.into())
            }
        }
    }
}

fn new_device_cert(ca_id: Option<i64>, info: &cert::CertInfo) -> NewDeviceCert {
    NewDeviceCert {
        ca_id,
        fingerprint: info.fingerprint.clone(),
        serial: info.serial.clone(),
        subject: info.subject.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
    }
}

/// Writes `bytes` to `path` through a temporary file and a rename, so readers (a broker loading
/// the CRL) never see half a file.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AdminError> {
    let io = |e: std::io::Error| AdminError::Invalid(format!("writing {}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}
