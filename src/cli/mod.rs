//! The operator CLI: `mqgate serve | migrate | tenant | device | cred | acl | ca | cert | crl | …`. Every command takes
//! `--json` for scripts. Secrets are printed once (new tokens) and read from stdin (passwords).

mod certs;
mod import;
mod output;

use std::io::BufRead;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use crate::acl::Action;
use crate::acl::{Permission, RuleAction};
use crate::admin::Admin;
use crate::app::App;
use crate::clock::Clock;
use crate::config::Config;
use crate::limit::bucket::Rate;
use crate::registry::{NewAclRule, Store};
use output::Out;

/// mqgate: decides who may talk on an MQTT broker.
#[derive(Debug, Parser)]
#[command(name = "mqgate", version)]
pub struct Cli {
    /// Config file (TOML); also `MQGATE_CONFIG`.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Registry database URL; overrides `MQGATE_DATABASE_URL`.
    #[arg(long, global = true)]
    database_url: Option<String>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (HTTP endpoints for brokers).
    Serve {
        /// Listen address; overrides `MQGATE_LISTEN`.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Ask the running server (at `MQGATE_LISTEN`) whether it is ready (`GET /readyz`); exits
    /// non-zero when it is not. For container health checks: needs no shell, curl or secret.
    Health,
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCmd),
    /// Manage devices.
    #[command(subcommand)]
    Device(DeviceCmd),
    /// Manage device credentials.
    #[command(subcommand)]
    Cred(CredCmd),
    /// Manage and check ACL rules.
    #[command(subcommand)]
    Acl(AclCmd),
    /// List or clear brute-force lockouts on the running server.
    #[command(subcommand)]
    Lockout(LockoutCmd),
    /// Ingestion limits (publishes per second) of tenants and devices.
    #[command(subcommand)]
    Limits(LimitsCmd),
    /// Inspect and verify the audit trail.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Tenant certificate authorities.
    #[command(subcommand)]
    Ca(certs::CaCmd),
    /// Device certificates.
    #[command(subcommand)]
    Cert(certs::CertCmd),
    /// Certificate revocation lists.
    #[command(subcommand)]
    Crl(certs::CrlCmd),
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Check the whole hash chain; fails naming the first entry that was edited, removed or moved.
    Verify,
    /// Show the newest entries.
    Tail {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
enum LimitsCmd {
    /// Set the limit of a device (--client-id) or of the whole tenant.
    Set {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Device; omit for the tenant's shared limit.
        #[arg(long)]
        client_id: Option<String>,
        /// Sustained publishes per second.
        #[arg(long)]
        rate: f64,
        /// Publishes allowed at once after a quiet period (default: one second's worth).
        #[arg(long)]
        burst: Option<u32>,
    },
    /// Return a device or tenant to the configured default.
    Clear {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Device; omit for the tenant.
        #[arg(long)]
        client_id: Option<String>,
    },
    /// List a tenant's limit overrides.
    List {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
}

#[derive(Debug, Subcommand)]
enum LockoutCmd {
    /// Current lockouts (client ids and source addresses).
    List,
    /// Clear the lockout of a client id or address.
    Clear {
        /// Client id or address.
        key: String,
    },
}

#[derive(Debug, Subcommand)]
enum TenantCmd {
    /// Create a tenant.
    Add { name: String },
    /// List tenants.
    List,
}

#[derive(Debug, clap::Args)]
struct DeviceRef {
    /// Tenant name.
    #[arg(long)]
    tenant: String,
    /// MQTT client id.
    #[arg(long)]
    client_id: String,
}

#[derive(Debug, Subcommand)]
enum DeviceCmd {
    /// Create a device and print its first token (shown once).
    Add {
        #[command(flatten)]
        device: DeviceRef,
        /// MQTT username the device must present.
        #[arg(long)]
        username: Option<String>,
    },
    /// Disable a device (denied until enabled).
    Disable(DeviceRef),
    /// Enable a device.
    Enable(DeviceRef),
    /// Remove a device with its credentials and rules.
    Remove(DeviceRef),
    /// List a tenant's devices.
    List {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
    /// Create many devices from a CSV or JSON-lines file, all or nothing; existing ones are left
    /// as they are.
    Import(import::ImportArgs),
    /// Write a tenant's devices and their own rules (no secrets) in the import format.
    Export(import::ExportArgs),
}

#[derive(Debug, Subcommand)]
enum CredCmd {
    /// Issue a new token; old tokens keep working for the grace period, then never again.
    Rotate {
        #[command(flatten)]
        device: DeviceRef,
        /// How long old tokens stay valid (e.g. 0s, 15m, 24h).
        #[arg(long, default_value = "0s")]
        grace: humantime::Duration,
    },
    /// Set an operator-chosen password (argon2id), read from stdin's first line.
    SetPassword(DeviceRef),
    /// Import a legacy bcrypt hash ($2a$/$2b$/$2y$), read from stdin's first line.
    ImportBcrypt(DeviceRef),
}

#[derive(Debug, Subcommand)]
enum AclCmd {
    /// Explain the decision for one action on one topic.
    Check {
        #[command(flatten)]
        device: DeviceRef,
        /// publish or subscribe.
        #[arg(long)]
        action: String,
        /// Topic (publish) or filter (subscribe).
        #[arg(long)]
        topic: String,
    },
    /// Add a stored rule for a device (--client-id) or the whole tenant.
    Add {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Device the rule is for; omit for a tenant-wide rule.
        #[arg(long)]
        client_id: Option<String>,
        /// allow or deny.
        #[arg(long)]
        permission: String,
        /// publish, subscribe or all.
        #[arg(long)]
        action: String,
        /// Topic filter; may use ${tenant}, ${clientid}, ${username}.
        #[arg(long)]
        topic: String,
    },
    /// List a tenant's stored rules in evaluation order.
    List {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
    },
    /// Remove a stored rule by id.
    Remove {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Rule id (from `acl list`).
        #[arg(long)]
        id: i64,
    },
    /// Validate the rule files and make the running server reload them.
    Reload,
}

impl Cli {
    /// Runs the parsed command.
    pub async fn run(self) -> Result<()> {
        let mut layers = Config::load(self.config.as_deref())?;
        if let Some(url) = &self.database_url {
            layers.set("database_url", url.clone(), "--database-url")?;
        }
        if let Command::Serve { listen: Some(l) } = &self.command {
            layers.set("listen", l.clone(), "--listen")?;
        }
        let config = layers.build()?;
        init_tracing(&config.log);
        let out = Out::new(self.json);
        match self.command {
            Command::Serve { .. } => serve(&config).await,
            Command::Migrate => {
                store(&config).await?;
                out.done("migrations applied", json!({ "migrated": true }))
            }
            Command::Health => {
                let status = output::readyz(&config).await?;
                out.done("ready", json!({ "ready": true, "readyz": status }))
            }
            command => {
                let admin = Admin::new(store(&config).await?, Clock::System);
                run_admin(command, &admin, &config, &out).await
            }
        }
    }
}

async fn store(config: &Config) -> Result<Store> {
    let store = Store::connect(config.database_url())
        .await
        .context("opening the registry")?;
    store.migrate().await.context("applying migrations")?;
    Ok(store)
}

async fn serve(config: &Config) -> Result<()> {
    crate::app::raise_fd_limit();
    let app = App::build(config).await?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let grace = config.shutdown_timeout;
    let mut signals = StopSignals::new();
    tokio::spawn(async move {
        signals.recv().await;
        tracing::info!("shutting down (a second SIGTERM or Ctrl-C exits at once)");
        let _ = tx.send(true);
        // `run_until_stopped` keeps its own deadline; this is the backstop, and the operator's
        // way out.
        tokio::select! {
            _ = signals.recv() => tracing::warn!("second stop signal: exiting now"),
            _ = tokio::time::sleep(grace + std::time::Duration::from_secs(2)) => {
                tracing::error!("shutdown deadline passed: exiting now")
            }
        }
        std::process::exit(1);
    });
    app.run_until_stopped(rx).await?;
    Ok(())
}

/// Ctrl-C, or SIGTERM as service managers and container runtimes send it: the first ends
/// `serve` cleanly (live MQTT sessions closed, queued audit events written, within the shutdown
/// deadline), a second one at once. Registered once, so no signal falls between two waits.
struct StopSignals {
    #[cfg(unix)]
    unix: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl StopSignals {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let unix = signal(SignalKind::terminate())
                .and_then(|t| Ok((t, signal(SignalKind::interrupt())?)))
                .ok();
            StopSignals { unix }
        }
        #[cfg(not(unix))]
        StopSignals {}
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.unix {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run_admin(command: Command, admin: &Admin, config: &Config, out: &Out) -> Result<()> {
    match command {
        Command::Tenant(TenantCmd::Add { name }) => {
            let t = admin.add_tenant(&name).await?;
            out.done(&format!("tenant {} created", t.name), json!(t))
        }
        Command::Tenant(TenantCmd::List) => {
            out.list(&admin.list_tenants().await?, |t| t.name.clone())
        }
        Command::Device(cmd) => device(cmd, admin, out).await,
        Command::Cred(cmd) => cred(cmd, admin, out).await,
        Command::Acl(cmd) => acl(cmd, admin, config, out).await,
        Command::Lockout(cmd) => lockout(cmd, config, out).await,
        Command::Limits(cmd) => limits(cmd, admin, out).await,
        Command::Audit(cmd) => audit(cmd, admin.store(), out).await,
        Command::Ca(cmd) => certs::ca(cmd, admin, config, out).await,
        Command::Cert(cmd) => certs::cert(cmd, admin, config, out).await,
        Command::Crl(cmd) => certs::crl(cmd, admin, config, out).await,
        Command::Serve { .. } | Command::Migrate | Command::Health => {
            unreachable!("handled by Cli::run")
        }
    }
}

async fn device(cmd: DeviceCmd, admin: &Admin, out: &Out) -> Result<()> {
    match cmd {
        DeviceCmd::Add {
            device: d,
            username,
        } => {
            let (dev, token) = admin
                .add_device(&d.tenant, &d.client_id, username.as_deref())
                .await?;
            out.secret(
                &format!("device {} created in tenant {}", dev.client_id, d.tenant),
                "token",
                &token.token,
                json!({ "device": dev }),
            )
        }
        DeviceCmd::Disable(d) => {
            admin.set_enabled(&d.tenant, &d.client_id, false).await?;
            out.done(
                &format!("device {} disabled", d.client_id),
                json!({ "client_id": d.client_id, "enabled": false }),
            )
        }
        DeviceCmd::Enable(d) => {
            admin.set_enabled(&d.tenant, &d.client_id, true).await?;
            out.done(
                &format!("device {} enabled", d.client_id),
                json!({ "client_id": d.client_id, "enabled": true }),
            )
        }
        DeviceCmd::Remove(d) => {
            admin.remove_device(&d.tenant, &d.client_id).await?;
            out.done(
                &format!("device {} removed", d.client_id),
                json!({ "client_id": d.client_id, "removed": true }),
            )
        }
        DeviceCmd::Import(args) => import::import(args, admin, out).await,
        DeviceCmd::Export(args) => import::export(args, admin, out).await,
        DeviceCmd::List { tenant } => out.list(&admin.list_devices(&tenant).await?, |d| {
            format!(
                "{}\t{}",
                d.client_id,
                if d.enabled { "enabled" } else { "disabled" }
            )
        }),
    }
}

async fn cred(cmd: CredCmd, admin: &Admin, out: &Out) -> Result<()> {
    match cmd {
        CredCmd::Rotate { device: d, grace } => {
            let (token, until) = admin
                .rotate(&d.tenant, &d.client_id, Duration::from(grace))
                .await?;
            out.secret(
                &format!(
                    "new token for {}; old tokens stop working at {until} (Unix seconds)",
                    d.client_id
                ),
                "token",
                &token.token,
                json!({ "client_id": d.client_id, "old_tokens_expire_at": until }),
            )
        }
        CredCmd::SetPassword(d) => {
            let pw = read_stdin_line("password")?;
            admin.set_password(&d.tenant, &d.client_id, pw).await?;
            out.done(
                &format!("password set for {}", d.client_id),
                json!({ "client_id": d.client_id, "kind": "argon2" }),
            )
        }
        CredCmd::ImportBcrypt(d) => {
            let hash = read_stdin_line("bcrypt hash")?;
            admin
                .import_bcrypt(&d.tenant, &d.client_id, hash.expose_secret())
                .await?;
            out.done(
                &format!("bcrypt hash imported for {}", d.client_id),
                json!({ "client_id": d.client_id, "kind": "bcrypt" }),
            )
        }
    }
}

async fn acl(cmd: AclCmd, admin: &Admin, config: &Config, out: &Out) -> Result<()> {
    match cmd {
        AclCmd::Check {
            device: d,
            action,
            topic,
        } => {
            let action = Action::parse(&action).context("--action must be publish or subscribe")?;
            let files = crate::rule_files::load_dir(&config.acl_rules_dir)?;
            let decision = admin
                .check(&d.tenant, &d.client_id, action, &topic, files)
                .await?;
            let reason = decision.cause.explain();
            let verdict = if decision.is_allow() { "allow" } else { "deny" };
            out.done(
                &format!("{verdict}: {reason}"),
                json!({ "result": verdict, "reason": reason, "cause": decision.cause.label() }),
            )
        }
        AclCmd::Add {
            tenant,
            client_id,
            permission,
            action,
            topic,
        } => {
            let rule = NewAclRule {
                permission: Permission::parse(&permission)
                    .context("--permission must be allow or deny")?,
                action: RuleAction::parse(&action)
                    .context("--action must be publish, subscribe or all")?,
                topic,
            };
            let id = admin.add_rule(&tenant, client_id.as_deref(), rule).await?;
            out.done(&format!("rule {id} added"), json!({ "id": id }))
        }
        AclCmd::List { tenant } => out.list(&admin.list_rules(&tenant).await?, |r| {
            format!(
                "{}\t{}\t{:?}\t{:?}\t{}",
                r.id,
                r.client_id.as_deref().unwrap_or("*"),
                r.permission,
                r.action,
                r.topic
            )
        }),
        AclCmd::Remove { tenant, id } => {
            admin.remove_rule(&tenant, id).await?;
            out.done(
                &format!("rule {id} removed"),
                json!({ "id": id, "removed": true }),
            )
        }
        AclCmd::Reload => {
            let n = crate::rule_files::load_dir(&config.acl_rules_dir)?.len();
            output::ops_call(config, "POST", "/v1/ops/acl-reload", None).await?;
            out.done(
                &format!("{n} file rules valid; server reloaded"),
                json!({ "rules": n, "reloaded": true }),
            )
        }
    }
}

/// Entries read per page by `audit verify|tail`.
const AUDIT_PAGE: i64 = 5000;

async fn audit(cmd: AuditCmd, store: &Store, out: &Out) -> Result<()> {
    match cmd {
        AuditCmd::Verify => {
            let count = crate::audit::verify_trail(store, AUDIT_PAGE).await?;
            out.done(
                &format!("{count} audit entries, chain intact"),
                json!({ "entries": count, "intact": true }),
            )
        }
        AuditCmd::Tail { limit } => {
            let items = crate::audit::tail(store, limit, AUDIT_PAGE).await?;
            out.list(&items, |e| {
                format!("{}\t{}\t{}\t{}", e.id, e.at_ms, e.kind, e.detail)
            })
        }
    }
}

async fn limits(cmd: LimitsCmd, admin: &Admin, out: &Out) -> Result<()> {
    match cmd {
        LimitsCmd::Set {
            tenant,
            client_id,
            rate,
            burst,
        } => {
            let burst = burst.unwrap_or_else(|| rate.ceil().max(1.0) as u32);
            let r =
                Rate::new(rate, burst).context("--rate must be above 0 and --burst at least 1")?;
            admin
                .set_limit(&tenant, client_id.as_deref(), Some(r))
                .await?;
            let scope = client_id.as_deref().unwrap_or("the tenant");
            out.done(
                &format!("{scope}: {rate}/s, burst {burst}"),
                json!({ "tenant": tenant, "client_id": client_id, "rate": r }),
            )
        }
        LimitsCmd::Clear { tenant, client_id } => {
            admin.set_limit(&tenant, client_id.as_deref(), None).await?;
            out.done(
                "limit cleared: the configured default applies",
                json!({ "tenant": tenant, "client_id": client_id, "rate": null }),
            )
        }
        LimitsCmd::List { tenant } => out.list(&admin.list_limits(&tenant).await?, |l| {
            format!(
                "{}\t{}/s\tburst {}",
                l.client_id.as_deref().unwrap_or("*"),
                l.rate.per_sec,
                l.rate.burst
            )
        }),
    }
}

async fn lockout(cmd: LockoutCmd, config: &Config, out: &Out) -> Result<()> {
    match cmd {
        LockoutCmd::List => {
            let v = output::ops_call(config, "GET", "/v1/ops/lockouts", None).await?;
            let items = v["lockouts"].as_array().cloned().unwrap_or_default();
            out.list(&items, |l| {
                format!(
                    "{}\t{}\tuntil {} (Unix ms)",
                    l["kind"].as_str().unwrap_or(""),
                    l["key"].as_str().unwrap_or(""),
                    l["until_ms"]
                )
            })
        }
        LockoutCmd::Clear { key } => {
            let v = output::ops_call(
                config,
                "POST",
                "/v1/ops/lockouts/clear",
                Some(json!({ "key": key })),
            )
            .await?;
            let cleared = v["cleared"].as_bool().unwrap_or(false);
            out.done(
                &if cleared {
                    format!("lockout of {key} cleared")
                } else {
                    format!("{key} was not locked out")
                },
                v,
            )
        }
    }
}

fn read_stdin_line(what: &str) -> Result<SecretString> {
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("reading the {what} from stdin"))?;
    let line = line.trim_end_matches(['\r', '\n']).to_string();
    if line.is_empty() {
        bail!("expected the {what} on stdin's first line");
    }
    Ok(line.into())
}

fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
