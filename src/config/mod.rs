//! Typed configuration: defaults → TOML file → `MQGATE_*` environment → command-line flags.
//!
//! The keys are the fields of the per-part settings structs ([`settings`]), with their defaults;
//! [`Layers`] stacks the other layers on figment, every value remembering where it came from, and
//! [`Layers::build`] reads the parts and checks what spans keys into a [`Config`]. A value means
//! the same whatever layer it came from (`de.rs`); an error names the key and its origin and never
//! the value. Secrets are wrapped and never printed.

mod de;
mod layers;
pub mod settings;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::trust::CrlFailure;
use crate::broker::BrokerSettings;
use crate::broker::limits::{BrokerLimits, Quota};
use crate::broker::tls::TlsSettings;
use crate::core::UnknownClient;
use crate::limit::bucket::Rate;
use crate::limit::ingest::LimitDefaults;
use crate::limit::lockout::LockoutPolicy;

pub use layers::Layers;
use settings::{
    CertSettings, EmqxSettings, LimitSettings, LockoutSettings, MqttSettings, MqttsSettings,
    Settings,
};

/// The shortest internal shared secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// mqgate's configuration, validated.
#[derive(Clone)]
pub struct Config {
    /// HTTP listen address (port 0 picks a free one).
    pub listen: SocketAddr,
    /// `postgres://…` or `sqlite://…`.
    pub database_url: SecretString,
    /// Bearer secret brokers must send to the internal endpoints (required by `serve`).
    pub internal_secret: Option<SecretString>,
    /// Answer for unknown client ids.
    pub unknown_client: UnknownClient,
    /// Directory of declarative ACL rule files.
    pub acl_rules_dir: PathBuf,
    /// How long a cached device lives without an invalidation (a backstop for lost notifications).
    pub cache_ttl: Duration,
    /// How long "no such client id" is remembered.
    pub negative_cache_ttl: Duration,
    /// Maximum number of cached devices.
    pub cache_capacity: u64,
    /// Load every device into the cache at start-up.
    pub warm_cache: bool,
    /// Concurrent argon2/bcrypt verifications.
    pub password_concurrency: usize,
    /// How long a verified password is remembered (as a keyed digest).
    pub password_cache_ttl: Duration,
    /// Send the device's ACL in EMQX authn answers (EMQX ≥ 5.8).
    pub emqx_acl_in_authn: bool,
    /// Allow on a certificate's names alone (EMQX `cert_common_name`/`cert_subject`, no `cert_pem`).
    pub emqx_trust_cert_names: bool,
    /// Caps `expire_at` in every EMQX authn allow (zero: no cap), so every EMQX session
    /// re-authenticates at least this often even without kicks.
    pub emqx_max_session_age: Duration,
    /// EMQX's management API, for kicking revoked sessions (`emqx_api_url`, off by default).
    pub emqx_api: Option<EmqxApiConfig>,
    /// Time a client has to send request headers.
    pub header_read_timeout: Duration,
    /// Time a request may take.
    pub request_timeout: Duration,
    /// Every broker-facing answer (EMQX authn/authz, the embedded broker's checks) arrives
    /// within this, whatever the registry does; keep it below EMQX's `request_timeout`.
    pub decision_timeout: Duration,
    /// `serve` exits within this after SIGTERM / Ctrl-C (a second signal exits at once).
    pub shutdown_timeout: Duration,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// tracing filter (`info`, `mqgate=debug`, …).
    pub log: String,
    /// Brute-force thresholds.
    pub lockout: LockoutPolicy,
    /// Ingestion limit defaults (rate 0: none) and the replica count sharing them.
    pub limits: LimitDefaults,
    /// The embedded MQTT broker (`mqtt_addr = "off"` turns it off).
    pub broker: BrokerSettings,
    /// The broker's TLS listener (`mqtts_addr`, off by default).
    pub mqtts: Option<TlsSettings>,
    /// Certificate authorities and revocation lists.
    pub certs: CertConfig,
}

/// EMQX's management API (`DELETE /api/v5/clients/{clientid}` kicks a revoked session).
#[derive(Clone)]
pub struct EmqxApiConfig {
    /// `http://host:port` of any EMQX node (a kick there is cluster-wide).
    pub url: String,
    /// The API key (EMQX dashboard "API Keys", or `api_key.bootstrap_file`).
    pub key: String,
    /// The API key's secret (`emqx_api_secret`, or the first line of `emqx_api_secret_file`).
    pub secret: SecretString,
}

/// Certificate settings.
#[derive(Clone)]
pub struct CertConfig {
    /// Seals the private keys of mqgate-created CAs in the store (required to create a CA, issue
    /// certificates and sign CRLs).
    pub ca_key_secret: Option<SecretString>,
    /// What happens to certificates of a CA whose CRL is unavailable or stale.
    pub crl_failure: CrlFailure,
    /// How long a CRL mqgate signs stays valid (its next-update); `serve` re-signs at half-life.
    pub crl_validity: Duration,
    /// How often CRLs of imported CAs are fetched from their URLs (sooner when next-update nears).
    pub crl_refresh: Duration,
    /// Where `serve` and `crl publish` write signed CRLs (PEM), one file per CA.
    pub crl_dir: PathBuf,
    /// Certificates ending within this are reported (`cert expiring`, metric, log warning).
    pub expiry_warning: Duration,
}

impl CertConfig {
    /// The CA key sealer, or the error CA operations stop with.
    pub fn sealer(&self) -> Result<crate::auth::cert::KeySealer, ConfigError> {
        self.ca_key_secret
            .as_ref()
            .map(|s| crate::auth::cert::KeySealer::new(s.expose_secret()))
            .ok_or_else(|| {
                ConfigError::Missing(format!(
                    "MQGATE_CA_KEY_SECRET is not set: it seals CA private keys in the store \
                     (at least {MIN_SECRET_LEN} characters; e.g. `openssl rand -hex 32`; keep it \
                     apart from the database backups)"
                ))
            })
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("unknown_client", &self.unknown_client)
            .field("acl_rules_dir", &self.acl_rules_dir)
            .field("broker", &self.broker)
            .finish_non_exhaustive()
    }
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not TOML.
    #[error("config file {path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A key nobody knows.
    #[error("unknown config key `{key}` in {origin}")]
    UnknownKey {
        /// The key.
        key: String,
        /// Where it came from.
        origin: String,
    },
    /// A value that does not parse.
    #[error("config key `{key}` (from {origin}): {reason}")]
    Invalid {
        /// The key.
        key: String,
        /// Where it came from.
        origin: String,
        /// What is wrong (never the value itself, which may be secret).
        reason: String,
    },
    /// A required key is missing.
    #[error("{0}")]
    Missing(String),
}

impl TryFrom<Settings> for Config {
    type Error = ConfigError;

    /// Assembles the parts and checks what spans keys (the EMQX API's key, the TLS files).
    fn try_from(s: Settings) -> Result<Config, ConfigError> {
        let (server, registry) = (s.server, s.registry);
        Ok(Config {
            listen: server.listen,
            database_url: registry.database_url,
            internal_secret: server.internal_secret,
            unknown_client: registry.unknown_client,
            acl_rules_dir: registry.acl_rules_dir,
            cache_ttl: registry.cache_ttl,
            negative_cache_ttl: registry.negative_cache_ttl,
            cache_capacity: registry.cache_capacity,
            warm_cache: registry.warm_cache,
            password_concurrency: registry.password_concurrency,
            password_cache_ttl: registry.password_cache_ttl,
            emqx_acl_in_authn: s.emqx.emqx_acl_in_authn,
            emqx_trust_cert_names: s.emqx.emqx_trust_cert_names,
            emqx_max_session_age: s.emqx.emqx_max_session_age,
            emqx_api: emqx_api(s.emqx)?,
            header_read_timeout: server.header_read_timeout,
            request_timeout: server.request_timeout,
            decision_timeout: server.decision_timeout,
            shutdown_timeout: server.shutdown_timeout,
            max_body_bytes: server.max_body_bytes,
            log: quiet_router(&server.log),
            lockout: lockout(&s.lockout),
            limits: limits(&s.limits),
            certs: certs(s.certs),
            broker: broker(&s.mqtt),
            mqtts: tls_settings(s.mqtts)?,
        })
    }
}

/// EMQX's management API, when `emqx_api_url` is set: it then needs a key and a secret.
fn emqx_api(s: EmqxSettings) -> Result<Option<EmqxApiConfig>, ConfigError> {
    let Some(url) = s.emqx_api_url else {
        return Ok(None);
    };
    let missing = |what: &str| {
        ConfigError::Missing(format!(
            "config key `{what}` is required when `emqx_api_url` is set (an EMQX API key: \
             dashboard → System → API Keys, or EMQX's `api_key.bootstrap_file`)"
        ))
    };
    let key = s
        .emqx_api_key
        .filter(|k| !k.is_empty())
        .ok_or_else(|| missing("emqx_api_key"))?;
    let secret = s
        .emqx_api_secret
        .or(s.emqx_api_secret_file)
        .ok_or_else(|| missing("emqx_api_secret` (or `emqx_api_secret_file"))?;
    if secret.expose_secret().is_empty() {
        return Err(missing("emqx_api_secret"));
    }
    Ok(Some(EmqxApiConfig { url, key, secret }))
}

fn lockout(s: &LockoutSettings) -> LockoutPolicy {
    LockoutPolicy {
        max_failures: s.lockout_max_failures,
        window_ms: millis(s.lockout_window),
        lockout_ms: millis(s.lockout_duration),
        ip_max_failures: s.lockout_ip_max_failures,
        ip_lockout_ms: millis(s.lockout_ip_duration),
        familiar_ms: millis(s.lockout_familiar_for),
    }
}

fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

fn limits(s: &LimitSettings) -> LimitDefaults {
    LimitDefaults {
        device: rate(s.device_rate, s.device_burst),
        tenant: rate(s.tenant_rate, s.tenant_burst),
        replicas: s.replicas,
    }
}

/// A rate from messages/s (0 = none) and a burst (0 = one second's worth).
fn rate(per_sec: f64, burst: u32) -> Option<Rate> {
    if per_sec == 0.0 {
        return None;
    }
    let burst = if burst == 0 {
        per_sec.ceil().max(1.0) as u32
    } else {
        burst
    };
    Rate::new(per_sec, burst)
}

fn certs(s: CertSettings) -> CertConfig {
    CertConfig {
        ca_key_secret: s.ca_key_secret,
        crl_failure: s.crl_failure,
        crl_validity: s.crl_validity,
        crl_refresh: s.crl_refresh,
        crl_dir: s.crl_dir,
        expiry_warning: s.cert_expiry_warning,
    }
}

fn broker(s: &MqttSettings) -> BrokerSettings {
    BrokerSettings {
        addr: s.mqtt_addr,
        connect_timeout: s.mqtt_connect_timeout,
        max_packet_size: s.mqtt_max_packet_size,
        max_conns_per_peer: s.mqtt_max_conns_per_peer,
        max_connections: s.mqtt_max_connections,
        threads: s.mqtt_threads,
        limits: BrokerLimits {
            max_unauthenticated: s.mqtt_max_unauthenticated,
            max_filters_per_subscribe: s.mqtt_max_filters_per_subscribe,
            max_subscriptions: s.mqtt_max_subscriptions,
            max_inflight: s.mqtt_max_inflight,
            retained_per_device: Quota {
                count: s.mqtt_retained_per_device,
                bytes: s.mqtt_retained_bytes_per_device,
            },
            retained_per_tenant: Quota {
                count: s.mqtt_retained_per_tenant,
                bytes: s.mqtt_retained_bytes_per_tenant,
            },
            segment_size: s.mqtt_router_segment_size,
            segment_count: s.mqtt_router_segment_count,
        },
    }
}

/// The TLS listener, when `mqtts_addr` is set; it then needs a certificate and key file.
fn tls_settings(s: MqttsSettings) -> Result<Option<TlsSettings>, ConfigError> {
    let Some(addr) = s.mqtts_addr else {
        return Ok(None);
    };
    let file = |key: &str, path: Option<PathBuf>| {
        path.ok_or_else(|| {
            ConfigError::Missing(format!(
                "config key `{key}` is required when `mqtts_addr` is set (PEM file)"
            ))
        })
    };
    Ok(Some(TlsSettings {
        addr,
        cert_file: file("mqtts_cert_file", s.mqtts_cert_file)?,
        key_file: file("mqtts_key_file", s.mqtts_key_file)?,
        client_certs: s.mqtts_client_certs,
        handshake_timeout: s.mqtts_handshake_timeout,
    }))
}

impl Config {
    /// Loads defaults, then the file (`path`, or `MQGATE_CONFIG`), then the process environment.
    pub fn load(path: Option<&Path>) -> Result<Layers, ConfigError> {
        let mut layers = Layers::defaults();
        let env_path = std::env::var_os("MQGATE_CONFIG").map(PathBuf::from);
        if let Some(p) = path.map(Path::to_path_buf).or(env_path) {
            layers = layers.file(&p)?;
        }
        layers.env(std::env::vars())
    }

    /// The internal secret, or the error `serve` stops with.
    pub fn require_internal_secret(&self) -> Result<&SecretString, ConfigError> {
        self.internal_secret.as_ref().ok_or_else(|| {
            ConfigError::Missing(format!(
                "MQGATE_INTERNAL_SECRET is not set: brokers authenticate to mqgate with it \
                 (at least {MIN_SECRET_LEN} characters; e.g. `openssl rand -hex 32`)"
            ))
        })
    }

    /// The database URL (not a secret to mqgate's own code, but it may embed a password).
    pub fn database_url(&self) -> &str {
        self.database_url.expose_secret()
    }
}

/// rumqttd's router opens a span per routed packet with the topic formatted into it; with a
/// subscriber listening at error level that costs a tenth of the broker's throughput. Its logging
/// is off unless the filter names `rumqttd` itself.
fn quiet_router(filter: &str) -> String {
    if filter.contains("rumqttd") {
        filter.to_string()
    } else {
        format!("{filter},rumqttd=off")
    }
}

#[cfg(test)]
mod tests;
