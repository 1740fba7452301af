//! Typed configuration: defaults → TOML file → `MQGATE_*` environment → command-line flags.
//!
//! Every layer is flattened to `key → string` and parsed once, so a value means the same whatever
//! layer it came from, and an error names the key and where it came from. Secrets are wrapped and
//! never printed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::auth::trust::CrlFailure;
use crate::broker::BrokerSettings;
use crate::broker::limits::{BrokerLimits, Quota};
use crate::broker::tls::{ClientCerts, TlsSettings};
use crate::core::UnknownClient;
use crate::limit::bucket::Rate;
use crate::limit::ingest::LimitDefaults;
use crate::limit::lockout::LockoutPolicy;

/// The shortest internal shared secret accepted.
pub const MIN_SECRET_LEN: usize = 32;

/// Every key mqgate understands, with its default (`None`: no default).
const KEYS: &[(&str, Option<&str>)] = &[
    ("listen", Some("127.0.0.1:8080")),
    ("database_url", Some("sqlite://mqgate.db?mode=rwc")),
    ("internal_secret", None),
    ("unknown_client", Some("deny")),
    ("acl_rules_dir", Some("acl-rules")),
    ("cache_ttl", Some("10m")),
    ("negative_cache_ttl", Some("5s")),
    ("cache_capacity", Some("2000000")),
    ("warm_cache", Some("true")),
    ("password_concurrency", Some("2")),
    ("password_cache_ttl", Some("10m")),
    ("emqx_acl_in_authn", Some("true")),
    ("emqx_trust_cert_names", Some("false")),
    ("emqx_max_session_age", Some("24h")),
    ("emqx_api_url", Some("off")),
    ("emqx_api_key", None),
    ("emqx_api_secret", None),
    ("emqx_api_secret_file", None),
    ("header_read_timeout", Some("10s")),
    ("request_timeout", Some("5s")),
    ("decision_timeout", Some("2s")),
    ("shutdown_timeout", Some("10s")),
    ("max_body_bytes", Some("16384")),
    ("log", Some("info")),
    ("lockout_max_failures", Some("5")),
    ("lockout_window", Some("15m")),
    ("lockout_duration", Some("15m")),
    ("lockout_ip_max_failures", Some("20")),
    ("lockout_ip_duration", Some("15m")),
    ("lockout_familiar_for", Some("30days")),
    ("device_rate", Some("0")),
    ("device_burst", Some("0")),
    ("tenant_rate", Some("0")),
    ("tenant_burst", Some("0")),
    ("replicas", Some("1")),
    ("ca_key_secret", None),
    ("crl_failure", Some("deny")),
    ("crl_validity", Some("7d")),
    ("crl_refresh", Some("1h")),
    ("crl_dir", Some("certs/crl")),
    ("cert_expiry_warning", Some("30d")),
    ("mqtt_addr", Some("127.0.0.1:1883")),
    ("mqtt_connect_timeout", Some("10s")),
    ("mqtt_max_packet_size", Some("1048576")),
    ("mqtt_max_conns_per_peer", Some("1000")),
    ("mqtt_max_connections", Some("10000")),
    ("mqtts_addr", Some("off")),
    ("mqtts_cert_file", None),
    ("mqtts_key_file", None),
    ("mqtts_client_certs", Some("required")),
    ("mqtts_handshake_timeout", Some("10s")),
    ("mqtt_threads", Some("1")),
    ("mqtt_max_unauthenticated", Some("256")),
    ("mqtt_max_filters_per_subscribe", Some("32")),
    ("mqtt_max_subscriptions", Some("100")),
    ("mqtt_max_inflight", Some("100")),
    ("mqtt_retained_per_device", Some("100")),
    ("mqtt_retained_bytes_per_device", Some("1048576")),
    ("mqtt_retained_per_tenant", Some("10000")),
    ("mqtt_retained_bytes_per_tenant", Some("67108864")),
    ("mqtt_router_segment_size", Some("4194304")),
    ("mqtt_router_segment_count", Some("4")),
];

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

/// Layers of raw values; later layers win.
#[derive(Debug, Default, Clone)]
pub struct Layers {
    values: BTreeMap<String, (String, String)>,
}

impl Layers {
    /// Starts from the built-in defaults.
    pub fn defaults() -> Self {
        let mut l = Layers::default();
        for (k, v) in KEYS {
            if let Some(v) = v {
                l.values
                    .insert((*k).into(), ((*v).into(), "default".into()));
            }
        }
        l
    }

    /// Sets `key` from `origin`, refusing unknown keys.
    pub fn set(&mut self, key: &str, value: String, origin: &str) -> Result<(), ConfigError> {
        if !KEYS.iter().any(|(k, _)| *k == key) {
            return Err(ConfigError::UnknownKey {
                key: key.into(),
                origin: origin.into(),
            });
        }
        self.values.insert(key.into(), (value, origin.into()));
        Ok(())
    }

    /// Overlays a TOML file of top-level `key = value` pairs.
    pub fn file(mut self, path: &Path) -> Result<Self, ConfigError> {
        let err = |reason: String| ConfigError::File {
            path: path.into(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let origin = path.display().to_string();
        for (k, v) in table {
            let v = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Float(f) => f.to_string(),
                _ => return Err(err(format!("`{k}` must be a string, number or boolean"))),
            };
            self.set(&k, v, &origin)?;
        }
        Ok(self)
    }

    /// Overlays `MQGATE_<KEY>` variables (`MQGATE_CONFIG` names the file and is skipped here).
    pub fn env(
        mut self,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        for (k, v) in vars {
            let Some(key) = k.strip_prefix("MQGATE_") else {
                continue;
            };
            if key == "CONFIG" {
                continue;
            }
            self.set(&key.to_ascii_lowercase(), v, &k)?;
        }
        Ok(self)
    }

    /// Parses and validates everything.
    pub fn build(&self) -> Result<Config, ConfigError> {
        Ok(Config {
            listen: self.parse("listen", |s| {
                s.parse().map_err(|_| "not a socket address".into())
            })?,
            database_url: self.parse("database_url", |s| Ok(SecretString::from(s)))?,
            internal_secret: self.optional("internal_secret", parse_secret)?,
            unknown_client: self.parse("unknown_client", |s| match s {
                "deny" => Ok(UnknownClient::Deny),
                "ignore" => Ok(UnknownClient::Ignore),
                _ => Err("must be `deny` or `ignore`".into()),
            })?,
            acl_rules_dir: self.parse("acl_rules_dir", |s| Ok(PathBuf::from(s)))?,
            cache_ttl: self.parse("cache_ttl", parse_duration)?,
            negative_cache_ttl: self.parse("negative_cache_ttl", parse_duration)?,
            cache_capacity: self.parse("cache_capacity", parse_num)?,
            warm_cache: self.parse("warm_cache", parse_bool)?,
            password_concurrency: self.parse("password_concurrency", parse_num)?,
            password_cache_ttl: self.parse("password_cache_ttl", parse_duration)?,
            emqx_acl_in_authn: self.parse("emqx_acl_in_authn", parse_bool)?,
            emqx_trust_cert_names: self.parse("emqx_trust_cert_names", parse_bool)?,
            emqx_max_session_age: self.parse("emqx_max_session_age", parse_duration)?,
            emqx_api: self.emqx_api()?,
            header_read_timeout: self.parse("header_read_timeout", parse_duration)?,
            request_timeout: self.parse("request_timeout", parse_duration)?,
            decision_timeout: self.parse("decision_timeout", parse_positive_duration)?,
            shutdown_timeout: self.parse("shutdown_timeout", parse_positive_duration)?,
            max_body_bytes: self.parse("max_body_bytes", parse_num)?,
            log: self.parse("log", |s| Ok(quiet_router(s)))?,
            lockout: LockoutPolicy {
                max_failures: self.parse("lockout_max_failures", parse_positive)?,
                window_ms: self.parse("lockout_window", parse_ms)?,
                lockout_ms: self.parse("lockout_duration", parse_ms)?,
                ip_max_failures: self.parse("lockout_ip_max_failures", parse_positive)?,
                ip_lockout_ms: self.parse("lockout_ip_duration", parse_ms)?,
                familiar_ms: self.parse("lockout_familiar_for", parse_ms)?,
            },
            limits: LimitDefaults {
                device: self.rate("device_rate", "device_burst")?,
                tenant: self.rate("tenant_rate", "tenant_burst")?,
                replicas: self.parse("replicas", parse_positive)?,
            },
            certs: CertConfig {
                ca_key_secret: self.optional("ca_key_secret", parse_secret)?,
                crl_failure: self.parse("crl_failure", |s| match s {
                    "deny" => Ok(CrlFailure::Deny),
                    "allow" => Ok(CrlFailure::Allow),
                    _ => Err("must be `deny` or `allow`".into()),
                })?,
                crl_validity: self.parse("crl_validity", parse_positive_duration)?,
                crl_refresh: self.parse("crl_refresh", parse_positive_duration)?,
                crl_dir: self.parse("crl_dir", |s| Ok(PathBuf::from(s)))?,
                expiry_warning: self.parse("cert_expiry_warning", parse_duration)?,
            },
            broker: BrokerSettings {
                addr: self.parse("mqtt_addr", |s| match s {
                    "off" => Ok(None),
                    s => s
                        .parse()
                        .map(Some)
                        .map_err(|_| "not a socket address (or `off`)".into()),
                })?,
                connect_timeout: self.parse("mqtt_connect_timeout", parse_duration)?,
                max_packet_size: self.parse("mqtt_max_packet_size", |s| {
                    match s.parse::<usize>() {
                        // MQTT's remaining length tops out at 268,435,455.
                        Ok(n) if (16..=268_435_455).contains(&n) => Ok(n),
                        _ => Err("must be a number of bytes from 16 to 268435455".into()),
                    }
                })?,
                max_conns_per_peer: self.parse("mqtt_max_conns_per_peer", parse_num)?,
                max_connections: self.parse("mqtt_max_connections", |s| {
                    parse_positive(s).map(|n| n as usize)
                })?,
                threads: self.parse("mqtt_threads", |s| parse_positive(s).map(|n| n as usize))?,
                limits: self.broker_limits()?,
            },
            mqtts: self.tls_settings()?,
        })
    }

    /// EMQX's management API, when `emqx_api_url` is set: it then needs a key and a secret.
    fn emqx_api(&self) -> Result<Option<EmqxApiConfig>, ConfigError> {
        let url = self.parse("emqx_api_url", |s| match s {
            "off" | "" => Ok(None),
            s if s.starts_with("http://") && s.len() > "http://".len() => {
                s.parse::<http::Uri>()
                    .map_err(|e| format!("not a URL ({e})"))?;
                Ok(Some(s.trim_end_matches('/').to_string()))
            }
            s if s.starts_with("https://") => Err(
                "https is not supported yet: reach EMQX's API (port 18083) over a private network as http://host:18083".into(),
            ),
            _ => Err("must be `off` or http://host:port".into()),
        })?;
        let Some(url) = url else { return Ok(None) };
        let missing = |what: &str| {
            ConfigError::Missing(format!(
                "config key `{what}` is required when `emqx_api_url` is set (an EMQX API key: \
                 dashboard → System → API Keys, or EMQX's `api_key.bootstrap_file`)"
            ))
        };
        let key = self
            .optional("emqx_api_key", |s| Ok(s.to_string()))?
            .filter(|k| !k.is_empty())
            .ok_or_else(|| missing("emqx_api_key"))?;
        let secret = match self.optional("emqx_api_secret", |s| Ok(SecretString::from(s)))? {
            Some(s) => s,
            None => self
                .optional("emqx_api_secret_file", read_secret_file)?
                .ok_or_else(|| missing("emqx_api_secret` (or `emqx_api_secret_file"))?,
        };
        if secret.expose_secret().is_empty() {
            return Err(missing("emqx_api_secret"));
        }
        Ok(Some(EmqxApiConfig { url, key, secret }))
    }

    /// The broker's resource bounds (every one a positive number).
    fn broker_limits(&self) -> Result<BrokerLimits, ConfigError> {
        let n = |key: &str| self.parse(key, |s| parse_positive(s).map(|n| n as usize));
        Ok(BrokerLimits {
            max_unauthenticated: n("mqtt_max_unauthenticated")?,
            max_filters_per_subscribe: n("mqtt_max_filters_per_subscribe")?,
            max_subscriptions: n("mqtt_max_subscriptions")?,
            max_inflight: n("mqtt_max_inflight")? as u64,
            retained_per_device: Quota {
                count: n("mqtt_retained_per_device")?,
                bytes: n("mqtt_retained_bytes_per_device")?,
            },
            retained_per_tenant: Quota {
                count: n("mqtt_retained_per_tenant")?,
                bytes: n("mqtt_retained_bytes_per_tenant")?,
            },
            segment_size: n("mqtt_router_segment_size")?,
            segment_count: n("mqtt_router_segment_count")?,
        })
    }

    /// The TLS listener, when `mqtts_addr` is set; it then needs a certificate and key file.
    fn tls_settings(&self) -> Result<Option<TlsSettings>, ConfigError> {
        let addr = self.parse("mqtts_addr", |s| match s {
            "off" => Ok(None),
            s => s
                .parse()
                .map(Some)
                .map_err(|_| "not a socket address (or `off`)".into()),
        })?;
        let Some(addr) = addr else { return Ok(None) };
        let file = |key: &str| {
            self.optional(key, |s| Ok(PathBuf::from(s)))?
                .ok_or_else(|| {
                    ConfigError::Missing(format!(
                        "config key `{key}` is required when `mqtts_addr` is set (PEM file)"
                    ))
                })
        };
        Ok(Some(TlsSettings {
            addr,
            cert_file: file("mqtts_cert_file")?,
            key_file: file("mqtts_key_file")?,
            client_certs: self.parse("mqtts_client_certs", |s| match s {
                "required" => Ok(ClientCerts::Required),
                "optional" => Ok(ClientCerts::Optional),
                _ => Err("must be `required` or `optional`".into()),
            })?,
            handshake_timeout: self.parse("mqtts_handshake_timeout", parse_positive_duration)?,
        }))
    }

    /// A rate from `<scope>_rate` (messages/s, 0 = none) and `<scope>_burst` (0 = one second's worth).
    fn rate(&self, rate_key: &str, burst_key: &str) -> Result<Option<Rate>, ConfigError> {
        let per_sec: f64 = self.parse(rate_key, |s| {
            s.parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r >= 0.0)
                .ok_or_else(|| "must be a number of messages per second, 0 for none".to_string())
        })?;
        let burst: u32 = self.parse(burst_key, parse_num)?;
        if per_sec == 0.0 {
            return Ok(None);
        }
        let burst = if burst == 0 {
            per_sec.ceil().max(1.0) as u32
        } else {
            burst
        };
        Ok(Rate::new(per_sec, burst))
    }

    fn optional<T>(
        &self,
        key: &str,
        f: impl Fn(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.values.get(key) {
            None => Ok(None),
            Some((v, origin)) => f(v).map(Some).map_err(|reason| ConfigError::Invalid {
                key: key.into(),
                origin: origin.clone(),
                reason,
            }),
        }
    }

    fn parse<T>(&self, key: &str, f: impl Fn(&str) -> Result<T, String>) -> Result<T, ConfigError> {
        self.optional(key, f)?
            .ok_or_else(|| ConfigError::Missing(format!("config key `{key}` is required")))
    }
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

fn parse_secret(s: &str) -> Result<SecretString, String> {
    if s.chars().count() < MIN_SECRET_LEN {
        return Err(format!(
            "the secret must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"
        ));
    }
    Ok(SecretString::from(s))
}

/// The first line of a secret file (Docker/Kubernetes secrets end with a newline).
fn read_secret_file(path: &str) -> Result<SecretString, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
    Ok(SecretString::from(text.lines().next().unwrap_or("").trim()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m, 24h"))
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    parse_duration(s).and_then(|d| {
        if d.is_zero() {
            Err("must be longer than zero".into())
        } else {
            Ok(d)
        }
    })
}

fn parse_ms(s: &str) -> Result<i64, String> {
    parse_duration(s).map(|d| d.as_millis().min(i64::MAX as u128) as i64)
}

fn parse_positive(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err("must be a whole number above 0".into()),
    }
}

fn parse_num<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.parse().map_err(|_| "not a whole number".into())
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_build_and_env_overrides_them() {
        let c = Layers::defaults()
            .env(env(&[
                ("MQGATE_LISTEN", "0.0.0.0:9000"),
                ("MQGATE_CACHE_TTL", "30s"),
                ("PATH", "/bin"),
            ]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.cache_ttl, Duration::from_secs(30));
        assert_eq!(c.unknown_client, UnknownClient::Deny);
        assert!(c.internal_secret.is_none());
    }

    #[test]
    fn a_short_internal_secret_is_refused_without_echoing_it() {
        let err = Layers::defaults()
            .env(env(&[("MQGATE_INTERNAL_SECRET", "hunter2")]))
            .unwrap()
            .build()
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("at least 32 characters"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_their_origin() {
        let err = Layers::defaults()
            .env(env(&[("MQGATE_LISTN", "x")]))
            .unwrap_err();
        assert!(err.to_string().contains("MQGATE_LISTN"));
        let err = Layers::defaults()
            .env(env(&[("MQGATE_UNKNOWN_CLIENT", "maybe")]))
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(err.to_string().contains("MQGATE_UNKNOWN_CLIENT"));
    }

    #[test]
    fn the_emqx_api_needs_a_key_and_secret_and_never_shows_the_secret() {
        let c = Layers::defaults().build().unwrap();
        assert!(c.emqx_api.is_none());
        assert_eq!(c.emqx_max_session_age, Duration::from_secs(24 * 3600));
        let err = Layers::defaults()
            .env(env(&[("MQGATE_EMQX_API_URL", "http://emqx:18083")]))
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(err.to_string().contains("emqx_api_key"), "{err}");
        let c = Layers::defaults()
            .env(env(&[
                ("MQGATE_EMQX_API_URL", "http://emqx:18083/"),
                ("MQGATE_EMQX_API_KEY", "mqgate"),
                ("MQGATE_EMQX_API_SECRET", "very-secret-value"),
                ("MQGATE_EMQX_MAX_SESSION_AGE", "0"),
            ]))
            .unwrap()
            .build()
            .unwrap();
        let api = c.emqx_api.unwrap();
        assert_eq!(api.url, "http://emqx:18083");
        assert_eq!(api.secret.expose_secret(), "very-secret-value");
        assert!(c.emqx_max_session_age.is_zero());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("secret");
        std::fs::write(&f, "from-a-file\n").unwrap();
        let c = Layers::defaults()
            .env(env(&[
                ("MQGATE_EMQX_API_URL", "http://emqx:18083"),
                ("MQGATE_EMQX_API_KEY", "mqgate"),
                ("MQGATE_EMQX_API_SECRET_FILE", f.to_str().unwrap()),
            ]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.emqx_api.unwrap().secret.expose_secret(), "from-a-file");
        let err = Layers::defaults()
            .env(env(&[("MQGATE_EMQX_API_URL", "https://emqx:18083")]))
            .unwrap()
            .build()
            .err()
            .unwrap();
        assert!(err.to_string().contains("https"), "{err}");
    }

    #[test]
    fn a_file_layer_sits_between_defaults_and_env() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("mqgate.toml");
        std::fs::write(
            &p,
            "listen = \"127.0.0.1:7000\"\nwarm_cache = false\ncache_ttl = \"1m\"\n",
        )
        .unwrap();
        let c = Layers::defaults()
            .file(&p)
            .unwrap()
            .env(env(&[("MQGATE_CACHE_TTL", "2m")]))
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(c.listen.port(), 7000);
        assert!(!c.warm_cache);
        assert_eq!(c.cache_ttl, Duration::from_secs(120));
    }
}
