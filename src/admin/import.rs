//! `mqgate device import` / `export`: a whole file checked first (every line, with its number),
//! then applied in one transaction, or not at all. Devices without a password hash get a token
//! from the same generator as `device add`; the tokens go once to a file only its owner can read.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};

use super::bulk::{BadLines, DeviceLine, Format, RuleText};
use super::{Admin, AdminError, valid_username};
use crate::acl::{Permission, RuleAction};
use crate::auth::secret;
use crate::core::ids::ClientId;
use crate::registry::import::{ImportProgress, NewImport};
use crate::registry::{CredentialKind, NewAclRule, NewCredential};

/// A checked line: every field is one the store can take.
#[derive(Debug, Clone)]
pub struct ImportLine {
    /// Where it was in the file.
    pub line: u64,
    /// The device.
    pub device: CheckedDevice,
}

/// A device of a checked line.
#[derive(Clone)]
pub struct CheckedDevice {
    /// MQTT client id.
    pub client_id: ClientId,
    /// MQTT username.
    pub username: Option<String>,
    /// An imported hash (argon2id or bcrypt); `None`: generate a token.
    pub hash: Option<(CredentialKind, String)>,
    /// Its rules.
    pub rules: Vec<NewAclRule>,
}

impl std::fmt::Debug for CheckedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedDevice")
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("hash", &self.hash.as_ref().map(|(k, _)| k))
            .field("rules", &self.rules)
            .finish()
    }
}

/// Checks every line (client id, username, hash format, rules, duplicates): all good, or every
/// bad line with its number.
pub fn check(lines: Vec<DeviceLine>) -> Result<Vec<ImportLine>, BadLines> {
    let mut bad = BadLines::default();
    let mut first_seen: HashMap<String, u64> = HashMap::with_capacity(lines.len());
    let mut out = Vec::with_capacity(lines.len());
    for l in lines {
        if let Some(first) = first_seen.get(&l.client_id) {
            bad.push(l.line, format!("client id also on line {first}"));
            continue;
        }
        first_seen.insert(l.client_id.clone(), l.line);
        match check_line(&l) {
            Ok(device) => out.push(ImportLine {
                line: l.line,
                device,
            }),
            Err(problem) => bad.push(l.line, problem),
        }
    }
    if out.is_empty() && bad.total == 0 {
        bad.push(0, "the file holds no device");
    }
    bad.into_result().map(|()| out)
}

fn check_line(l: &DeviceLine) -> Result<CheckedDevice, String> {
    let client_id = ClientId::parse(&l.client_id).map_err(|e| e.to_string())?;
    if let Some(u) = &l.username {
        valid_username(u).map_err(|e| e.to_string())?;
    }
    let hash = l.password_hash.as_deref().map(check_hash).transpose()?;
    let rules = l
        .acl
        .iter()
        .enumerate()
        .map(|(i, r)| check_rule(r).map_err(|e| format!("acl rule {}: {e}", i + 1)))
        .collect::<Result<_, _>>()?;
    Ok(CheckedDevice {
        client_id,
        username: l.username.clone(),
        hash,
        rules,
    })
}

/// The hash's kind, checked as `cred import-bcrypt` checks bcrypt (and argon2id by its PHC
/// form); the message never holds the hash.
fn check_hash(h: &str) -> Result<(CredentialKind, String), String> {
    let found = if h.starts_with("$argon2") {
        secret::validate_argon2_hash(h).map(|()| CredentialKind::Argon2)
    } else {
        secret::validate_bcrypt_hash(h).map(|()| CredentialKind::Bcrypt)
    };
    found
        .map(|kind| (kind, h.to_string()))
        .map_err(|e| format!("password_hash: {e}"))
}

fn check_rule(r: &RuleText) -> Result<NewAclRule, String> {
    let permission = Permission::parse(&r.permission).ok_or("permission must be allow or deny")?;
    let action = RuleAction::parse(&r.action).ok_or("action must be publish, subscribe or all")?;
    crate::acl::file::validate_topic_template(&r.topic)
        .map_err(|e| format!("topic filter: {e}"))?;
    Ok(NewAclRule {
        permission,
        action,
        topic: r.topic.clone(),
    })
}

/// What an import did.
pub struct Imported {
    /// Client ids created, in file order.
    pub created: Vec<String>,
    /// Client ids that existed already in the tenant (left untouched), in file order.
    pub existing: Vec<String>,
    /// The generated tokens of created devices without a hash, in file order. Shown once.
    pub tokens: Vec<(String, SecretString)>,
}

impl Admin {
    /// `mqgate device import`: creates the devices of `lines` that do not exist yet, in one
    /// transaction; existing ones are counted and left untouched. A client id of another tenant
    /// fails the whole import, naming its line, and so does a new device without a password hash
    /// unless `tokens` (the caller has a place for generated tokens).
    pub async fn import_devices(
        &self,
        tenant: &str,
        lines: Vec<ImportLine>,
        tokens: bool,
        progress: ImportProgress<'_>,
    ) -> Result<Imported, AdminError> {
        let t = self.tenant(tenant).await?;
        let line_of: HashMap<String, u64> = lines
            .iter()
            .map(|l| (l.device.client_id.to_string(), l.line))
            .collect();
        let (devices, mut generated) = with_credentials(lines);
        let report = self
            .store
            .import_devices(t.id, &devices, tokens, self.clock.now(), progress)
            .await?;
        if report.refused() {
            let mut bad = BadLines::default();
            for c in &report.foreign {
                let line = line_of.get(c).copied().unwrap_or(0);
                bad.push(line, "client id belongs to another tenant");
            }
            for c in &report.need_token {
                let line = line_of.get(c).copied().unwrap_or(0);
                bad.push(
                    line,
                    "new device without password_hash: its generated token needs --tokens-out",
                );
            }
            return Err(AdminError::BadLines(bad));
        }
        for c in &report.created {
            self.changed(t.id, Some(c)).await;
        }
        let subject = format!(
            "created {}, existing {}",
            report.created.len(),
            report.existing.len()
        );
        self.audit("device.import", t.id, &subject).await?;
        let tokens = report
            .created
            .iter()
            .filter_map(|c| generated.remove(c).map(|t| (c.clone(), t)))
            .collect();
        Ok(Imported {
            created: report.created,
            existing: report.existing,
            tokens,
        })
    }

    /// `mqgate device export`: the tenant's devices with their own rules, no secrets.
    pub async fn export_devices(&self, tenant: &str) -> Result<Vec<DeviceLine>, AdminError> {
        let t = self.tenant(tenant).await?;
        let mut rules: HashMap<String, Vec<RuleText>> = HashMap::new();
        for r in self.store.list_acl_rules(t.id).await? {
            if let Some(c) = r.client_id {
                rules.entry(c).or_default().push(RuleText {
                    permission: r.permission.as_str().into(),
                    action: r.action.as_str().into(),
                    topic: r.topic,
                });
            }
        }
        let devices = self.store.list_devices(t.id).await?;
        Ok(devices
            .into_iter()
            .map(|d| DeviceLine {
                line: 0,
                acl: rules.remove(&d.client_id).unwrap_or_default(),
                client_id: d.client_id,
                username: d.username,
                password_hash: None,
            })
            .collect())
    }
}

/// The store's rows for `lines`: imported hashes as they are, and for the others a new token
/// (its digest stored, the token kept here by client id).
fn with_credentials(lines: Vec<ImportLine>) -> (Vec<NewImport>, HashMap<String, SecretString>) {
    let mut tokens = HashMap::new();
    let devices = lines
        .into_iter()
        .map(|l| {
            let d = l.device;
            let (kind, digest) = d.hash.unwrap_or_else(|| {
                let t = secret::generate_token();
                tokens.insert(d.client_id.to_string(), t.token);
                (CredentialKind::Token, t.digest)
            });
            NewImport {
                client_id: d.client_id.to_string(),
                username: d.username,
                credential: NewCredential {
                    kind,
                    digest,
                    expires_at: None,
                },
                rules: d.rules,
            }
        })
        .collect();
    (devices, tokens)
}

/// The file generated tokens are written to: created before the import touches the store,
/// readable by its owner only, never over an existing file.
pub struct TokenFile {
    file: std::fs::File,
    path: PathBuf,
    format: Format,
}

impl TokenFile {
    /// Creates `path` (mode 0600); fails if it exists.
    pub fn create(path: &Path, format: Format) -> std::io::Result<TokenFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)?;
        Ok(TokenFile {
            file,
            path: path.to_path_buf(),
            format,
        })
    }

    /// Writes the tokens and syncs the file to disk.
    pub fn write(self, tokens: &[(String, SecretString)]) -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(&self.file);
        let rows = tokens.iter().map(|(c, t)| (c.as_str(), t.expose_secret()));
        super::bulk::write_tokens(&mut out, self.format, rows)?;
        out.flush()?;
        drop(out);
        self.file.sync_all()
    }

    /// Removes the file again (the import failed: it holds nothing). It is ours: `create` made it.
    pub fn discard(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
