//! `mqgate ca | cert | crl`: tenant CAs, device certificates, revocation lists.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use secrecy::ExposeSecret;
use serde_json::json;

use super::output::Out;
use crate::admin::{Admin, write_atomically};
use crate::auth::cert::to_pem;
use crate::config::Config;
use crate::registry::{StoredCa, StoredDeviceCert};

#[derive(Debug, Subcommand)]
pub(super) enum CaCmd {
    /// Create a CA for a tenant; its private key is sealed in the store with MQGATE_CA_KEY_SECRET.
    Init {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// CA name (unique in the tenant).
        #[arg(long, default_value = "default")]
        name: String,
        /// How long the CA is valid.
        #[arg(long, default_value = "10years")]
        validity: humantime::Duration,
        /// Also write the CA certificate (PEM) to this file.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Register an external CA (certificate only; mqgate cannot sign for it).
    Import {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// CA name (unique in the tenant).
        #[arg(long)]
        name: String,
        /// CA certificate, PEM or DER.
        #[arg(long)]
        file: PathBuf,
        /// Fetch its CRL from this http:// URL on a schedule while serving.
        #[arg(long)]
        crl_url: Option<String>,
    },
    /// List a tenant's CAs with their CRL state.
    List {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
    /// Print a CA certificate (PEM), for device trust bundles and broker configuration.
    Show {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// CA name.
        #[arg(long, default_value = "default")]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CertCmd {
    /// Issue a certificate and key for a device from the tenant's CA (CN = client id, tenant
    /// bound as `urn:mqgate:tenant:<name>`). The key is shown or written once.
    Issue {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// MQTT client id of an existing device.
        #[arg(long)]
        client_id: String,
        /// CA name (default: the tenant's only mqgate CA).
        #[arg(long)]
        ca: Option<String>,
        /// How long the certificate is valid (capped at the CA's end).
        #[arg(long, default_value = "365days")]
        validity: humantime::Duration,
        /// Write `<client-id>.crt.pem`, `<client-id>.key.pem` (mode 0600) and `ca.crt.pem` here
        /// instead of printing them.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Bind an externally issued certificate to a device (by its SHA-256 fingerprint).
    Register {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// MQTT client id.
        #[arg(long)]
        client_id: String,
        /// The certificate, PEM or DER.
        #[arg(long)]
        file: PathBuf,
    },
    /// Revoke a certificate: refused from the next handshake or CONNECT on.
    Revoke {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// SHA-256 fingerprint (as `cert list` shows it; colons allowed).
        #[arg(long)]
        fingerprint: String,
    },
    /// List a tenant's device certificates.
    List {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
    /// List unrevoked certificates that end within a period (expired ones included).
    Expiring {
        /// Period, e.g. 30d (default: cert_expiry_warning).
        #[arg(long)]
        within: Option<humantime::Duration>,
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
pub(super) enum CrlCmd {
    /// Sign a fresh CRL for every mqgate CA and write each as PEM (`<tenant>-<ca>.crl.pem`).
    Publish {
        /// Only this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Directory (default: crl_dir).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Import a CRL for an imported CA; refused unless its signature verifies against the CA
    /// and it is current.
    Import {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// CA name.
        #[arg(long)]
        ca: String,
        /// The CRL, PEM or DER.
        #[arg(long)]
        file: PathBuf,
    },
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading {}", path.display()))
}

fn ca_json(c: &StoredCa) -> serde_json::Value {
    json!({
        "name": c.name,
        "fingerprint": c.fingerprint,
        "subject": c.subject,
        "not_after": c.not_after,
        "internal": c.key_sealed.is_some(),
        "crl_url": c.crl_url,
        "crl_number": c.crl_der.as_ref().map(|_| c.crl_number),
        "crl_next_update": c.crl_next_update,
        "crl_error": c.crl_error,
    })
}

fn cert_json(c: &StoredDeviceCert) -> serde_json::Value {
    json!({
        "client_id": c.client_id,
        "fingerprint": c.fingerprint,
        "serial": c.serial,
        "subject": c.subject,
        "not_before": c.not_before,
        "not_after": c.not_after,
        "revoked_at": c.revoked_at,
    })
}

fn when(unix: i64) -> String {
    u64::try_from(unix)
        .ok()
        .map(|s| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(s))
                .to_string()
        })
        .unwrap_or_else(|| unix.to_string())
}

pub(super) async fn ca(cmd: CaCmd, admin: &Admin, config: &Config, out: &Out) -> Result<()> {
    match cmd {
        CaCmd::Init {
            tenant,
            name,
            validity,
            out: file,
        } => {
            let sealer = config.certs.sealer()?;
            let ca = admin
                .ca_init(&tenant, &name, validity.into(), &sealer)
                .await?;
            if let Some(f) = &file {
                write_atomically(f, to_pem("CERTIFICATE", &ca.cert_der).as_bytes())?;
            }
            out.done(
                &format!(
                    "CA {name} created for tenant {tenant} (fingerprint {}); its key is sealed in the store",
                    ca.fingerprint
                ),
                ca_json(&ca),
            )
        }
        CaCmd::Import {
            tenant,
            name,
            file,
            crl_url,
        } => {
            let ca = admin
                .ca_import(&tenant, &name, &read(&file)?, crl_url.as_deref())
                .await?;
            out.done(
                &format!(
                    "CA {name} imported for tenant {tenant} (fingerprint {})",
                    ca.fingerprint
                ),
                ca_json(&ca),
            )
        }
        CaCmd::List { tenant } => {
            let cas = admin.ca_list(&tenant).await?;
            let rows: Vec<_> = cas.iter().map(ca_json).collect();
            out.list(&rows, |v| {
                format!(
                    "{}\t{}\t{}\tuntil {}\tcrl #{}{}",
                    v["name"].as_str().unwrap_or_default(),
                    if v["internal"] == json!(true) {
                        "mqgate"
                    } else {
                        "imported"
                    },
                    v["fingerprint"].as_str().unwrap_or_default(),
                    when(v["not_after"].as_i64().unwrap_or_default()),
                    v["crl_number"],
                    v["crl_error"]
                        .as_str()
                        .map(|e| format!("\tCRL REFUSED: {e}"))
                        .unwrap_or_default(),
                )
            })
        }
        CaCmd::Show { tenant, name } => {
            let der = admin.ca_cert(&tenant, &name).await?;
            print!("{}", to_pem("CERTIFICATE", &der));
            Ok(())
        }
    }
}

pub(super) async fn cert(cmd: CertCmd, admin: &Admin, config: &Config, out: &Out) -> Result<()> {
    match cmd {
        CertCmd::Issue {
            tenant,
            client_id,
            ca,
            validity,
            out: dir,
        } => {
            let sealer = config.certs.sealer()?;
            let issued = admin
                .cert_issue(&tenant, &client_id, ca.as_deref(), validity.into(), &sealer)
                .await?;
            let cert_pem = to_pem("CERTIFICATE", &issued.issued.cert_der);
            let ca_pem = to_pem("CERTIFICATE", &issued.ca_der);
            let summary = cert_json(&issued.record);
            match dir {
                Some(dir) => {
                    // The client id is parsed (no `/`), so each name is one component in `dir`.
                    let id = crate::core::ids::ClientId::parse(&client_id)?;
                    let key_path = dir.join(format!("{id}.key.pem"));
                    write_key(&key_path, issued.issued.key_pem.expose_secret().as_bytes())?;
                    write_atomically(&dir.join(format!("{id}.crt.pem")), cert_pem.as_bytes())?;
                    write_atomically(&dir.join("ca.crt.pem"), ca_pem.as_bytes())?;
                    out.done(
                        &format!(
                            "certificate for {client_id} written to {} (key {}, mode 0600); fingerprint {}",
                            dir.display(),
                            key_path.display(),
                            issued.record.fingerprint
                        ),
                        summary,
                    )
                }
                None => {
                    let mut v = summary;
                    v["certificate"] = json!(cert_pem);
                    v["ca"] = json!(ca_pem);
                    let human = format!(
                        "certificate for {client_id} (fingerprint {})\n{cert_pem}{ca_pem}",
                        issued.record.fingerprint
                    );
                    out.secret(&human, "private_key", &issued.issued.key_pem, v)
                }
            }
        }
        CertCmd::Register {
            tenant,
            client_id,
            file,
        } => {
            let c = admin
                .cert_register(&tenant, &client_id, &read(&file)?)
                .await?;
            out.done(
                &format!("certificate {} bound to {client_id}", c.fingerprint),
                cert_json(&c),
            )
        }
        CertCmd::Revoke {
            tenant,
            fingerprint,
        } => {
            let c = admin.cert_revoke(&tenant, &fingerprint).await?;
            out.done(
                &format!(
                    "certificate {} of {} revoked; run `mqgate crl publish` for brokers that read CRL files",
                    c.fingerprint, c.client_id
                ),
                cert_json(&c),
            )
        }
        CertCmd::List { tenant } => {
            let rows: Vec<_> = admin
                .cert_list(&tenant)
                .await?
                .iter()
                .map(cert_json)
                .collect();
            out.list(&rows, cert_line)
        }
        CertCmd::Expiring { within, tenant } => {
            let within = within
                .map(Duration::from)
                .unwrap_or(config.certs.expiry_warning);
            let rows: Vec<_> = admin
                .cert_expiring(tenant.as_deref(), within)
                .await?
                .into_iter()
                .map(|(t, c)| {
                    let mut v = cert_json(&c);
                    v["tenant"] = json!(t);
                    v
                })
                .collect();
            out.list(&rows, |v| {
                format!(
                    "{}\t{}",
                    v["tenant"].as_str().unwrap_or_default(),
                    cert_line(v)
                )
            })
        }
    }
}

fn cert_line(v: &serde_json::Value) -> String {
    format!(
        "{}\t{}\tuntil {}{}",
        v["client_id"].as_str().unwrap_or_default(),
        v["fingerprint"].as_str().unwrap_or_default(),
        when(v["not_after"].as_i64().unwrap_or_default()),
        if v["revoked_at"].is_null() {
            ""
        } else {
            "\tREVOKED"
        },
    )
}

pub(super) async fn crl(cmd: CrlCmd, admin: &Admin, config: &Config, out: &Out) -> Result<()> {
    match cmd {
        CrlCmd::Publish { tenant, out: dir } => {
            let sealer = config.certs.sealer()?;
            let dir = dir.unwrap_or_else(|| config.certs.crl_dir.clone());
            let done = admin
                .crl_publish(
                    tenant.as_deref(),
                    config.certs.crl_validity,
                    Some(&dir),
                    &sealer,
                )
                .await?;
            if done.is_empty() {
                bail!("no mqgate CA to publish a CRL for (create one with `mqgate ca init`)");
            }
            out.list(&done, |p| {
                format!(
                    "{}\t{}\t#{}\t{} revoked\tnext update {}\t{}",
                    p.tenant,
                    p.ca,
                    p.number,
                    p.revoked,
                    when(p.next_update),
                    p.path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default()
                )
            })
        }
        CrlCmd::Import { tenant, ca, file } => {
            let c = admin.crl_import(&tenant, &ca, &read(&file)?).await?;
            out.done(
                &format!(
                    "CRL #{} for CA {ca} accepted: {} revoked, next update {}",
                    c.number,
                    c.revoked.len(),
                    when(c.next_update)
                ),
                json!({ "ca": ca, "number": c.number, "revoked": c.revoked.len(), "next_update": c.next_update }),
            )
        }
    }
}

/// Writes a private key readable by its owner only; never overwrites one.
fn write_key(path: &Path, pem: &[u8]) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| {
            format!(
                "creating {} (an existing key is never overwritten)",
                path.display()
            )
        })?;
    f.write_all(pem)?;
    Ok(())
}
