//! The settings, one struct per part of mqgate. Each field is a config key, named as users write
//! it (top-level `key = value` in the file, `MQGATE_<KEY>` in the environment); its doc says what
//! it means and the part's `Default` gives its default. This is the one list of keys: the layers
//! refuse any other, and README's configuration table is checked against it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use secrecy::SecretString;
use serde::Deserialize;

use super::layers::invalid;
use super::{ConfigError, de};
use crate::auth::trust::CrlFailure;
use crate::broker::tls::ClientCerts;
use crate::core::UnknownClient;

/// Every part, read from the same layers; each part takes its own keys and leaves the others.
macro_rules! parts {
    ($($(#[doc = $doc:literal])* $field:ident: $part:ty,)*) => {
        /// All settings, by part.
        #[derive(Debug, Clone, Default)]
        pub struct Settings {
            $($(#[doc = $doc])* pub $field: $part,)*
        }

        impl Settings {
            /// Reads every part from `figment`; the first bad value stops it.
            pub(super) fn extract(figment: &Figment) -> Result<Self, ConfigError> {
                Ok(Settings { $($field: figment.extract().map_err(invalid)?,)* })
            }

            /// Every key mqgate understands, part by part.
            pub fn keys() -> Vec<&'static str> {
                let mut keys = Vec::new();
                $(keys.extend_from_slice(field_names::<$part>());)*
                keys
            }
        }
    };
}

parts! {
    /// HTTP endpoints and the process.
    server: ServerSettings,
    /// The registry, its cache and password checks.
    registry: RegistrySettings,
    /// EMQX answers and kicks.
    emqx: EmqxSettings,
    /// Brute-force lockouts.
    lockout: LockoutSettings,
    /// Ingestion limit defaults.
    limits: LimitSettings,
    /// Certificate authorities and revocation lists.
    certs: CertSettings,
    /// The embedded MQTT broker.
    mqtt: MqttSettings,
    /// The broker's TLS listener.
    mqtts: MqttsSettings,
}

/// HTTP endpoints and the process.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct ServerSettings {
    /// HTTP listen address (port 0 picks a free one).
    #[serde(deserialize_with = "de::socket_addr")]
    pub listen: SocketAddr,
    /// Bearer secret brokers send to the internal endpoints (required by `serve`).
    #[serde(deserialize_with = "de::some_long_secret")]
    pub internal_secret: Option<SecretString>,
    /// Time a client has to send request headers.
    #[serde(deserialize_with = "de::duration")]
    pub header_read_timeout: Duration,
    /// Time a request may take.
    #[serde(deserialize_with = "de::duration")]
    pub request_timeout: Duration,
    /// Every broker-facing answer leaves within this.
    #[serde(deserialize_with = "de::positive_duration")]
    pub decision_timeout: Duration,
    /// `serve` exits within this after SIGTERM / Ctrl-C.
    #[serde(deserialize_with = "de::positive_duration")]
    pub shutdown_timeout: Duration,
    /// Largest accepted request body.
    #[serde(deserialize_with = "de::num")]
    pub max_body_bytes: usize,
    /// tracing filter.
    #[serde(deserialize_with = "de::string")]
    pub log: String,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 8080)),
            internal_secret: None,
            header_read_timeout: secs(10),
            request_timeout: secs(5),
            decision_timeout: secs(2),
            shutdown_timeout: secs(10),
            max_body_bytes: 16384,
            log: "info".into(),
        }
    }
}

/// The registry, its cache and password checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RegistrySettings {
    /// `postgres://…` or `sqlite://…`.
    #[serde(deserialize_with = "de::secret")]
    pub database_url: SecretString,
    /// Answer for unknown client ids.
    #[serde(deserialize_with = "de::unknown_client")]
    pub unknown_client: UnknownClient,
    /// Directory of declarative ACL rule files.
    #[serde(deserialize_with = "de::path")]
    pub acl_rules_dir: PathBuf,
    /// How long a cached device lives without an invalidation.
    #[serde(deserialize_with = "de::duration")]
    pub cache_ttl: Duration,
    /// How long "no such client id" is remembered.
    #[serde(deserialize_with = "de::duration")]
    pub negative_cache_ttl: Duration,
    /// Maximum number of cached devices.
    #[serde(deserialize_with = "de::num")]
    pub cache_capacity: u64,
    /// Load every device into the cache at start-up.
    #[serde(deserialize_with = "de::bool")]
    pub warm_cache: bool,
    /// Concurrent argon2/bcrypt verifications.
    #[serde(deserialize_with = "de::num")]
    pub password_concurrency: usize,
    /// How long a verified password is remembered.
    #[serde(deserialize_with = "de::duration")]
    pub password_cache_ttl: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            database_url: SecretString::from("sqlite://mqgate.db?mode=rwc"),
            unknown_client: UnknownClient::Deny,
            acl_rules_dir: "acl-rules".into(),
            cache_ttl: mins(10),
            negative_cache_ttl: secs(5),
            cache_capacity: 2_000_000,
            warm_cache: true,
            password_concurrency: 2,
            password_cache_ttl: mins(10),
        }
    }
}

/// EMQX answers and kicks.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct EmqxSettings {
    /// Send the device's ACL in EMQX authn answers.
    #[serde(deserialize_with = "de::bool")]
    pub emqx_acl_in_authn: bool,
    /// Allow on a certificate's names alone.
    #[serde(deserialize_with = "de::bool")]
    pub emqx_trust_cert_names: bool,
    /// Caps `expire_at` in EMQX authn allows (zero: no cap).
    #[serde(deserialize_with = "de::duration")]
    pub emqx_max_session_age: Duration,
    /// EMQX's management API (`None`: off).
    #[serde(deserialize_with = "de::http_url_or_off")]
    pub emqx_api_url: Option<String>,
    /// Its API key.
    #[serde(deserialize_with = "de::some_string")]
    pub emqx_api_key: Option<String>,
    /// Its API secret.
    #[serde(deserialize_with = "de::some_secret")]
    pub emqx_api_secret: Option<SecretString>,
    /// Its API secret, from the first line of this file.
    #[serde(deserialize_with = "de::some_secret_file")]
    pub emqx_api_secret_file: Option<SecretString>,
}

impl Default for EmqxSettings {
    fn default() -> Self {
        Self {
            emqx_acl_in_authn: true,
            emqx_trust_cert_names: false,
            emqx_max_session_age: hours(24),
            emqx_api_url: None,
            emqx_api_key: None,
            emqx_api_secret: None,
            emqx_api_secret_file: None,
        }
    }
}

/// Brute-force lockouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LockoutSettings {
    /// Failures of one client id before it is locked out.
    #[serde(deserialize_with = "de::positive")]
    pub lockout_max_failures: u32,
    /// The window those failures count in.
    #[serde(deserialize_with = "de::duration")]
    pub lockout_window: Duration,
    /// How long a client id stays locked out.
    #[serde(deserialize_with = "de::duration")]
    pub lockout_duration: Duration,
    /// Failures from one address before it is locked out.
    #[serde(deserialize_with = "de::positive")]
    pub lockout_ip_max_failures: u32,
    /// How long an address stays locked out.
    #[serde(deserialize_with = "de::duration")]
    pub lockout_ip_duration: Duration,
    /// How long an address a device succeeded from stays familiar.
    #[serde(deserialize_with = "de::duration")]
    pub lockout_familiar_for: Duration,
}

impl Default for LockoutSettings {
    fn default() -> Self {
        Self {
            lockout_max_failures: 5,
            lockout_window: mins(15),
            lockout_duration: mins(15),
            lockout_ip_max_failures: 20,
            lockout_ip_duration: mins(15),
            lockout_familiar_for: hours(30 * 24),
        }
    }
}

/// Ingestion limit defaults (publishes per second; rate 0: none, burst 0: one second's worth).
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LimitSettings {
    /// Per device.
    #[serde(deserialize_with = "de::per_second")]
    pub device_rate: f64,
    /// Per device.
    #[serde(deserialize_with = "de::num")]
    pub device_burst: u32,
    /// Per tenant.
    #[serde(deserialize_with = "de::per_second")]
    pub tenant_rate: f64,
    /// Per tenant.
    #[serde(deserialize_with = "de::num")]
    pub tenant_burst: u32,
    /// mqgate replicas sharing those limits.
    #[serde(deserialize_with = "de::positive")]
    pub replicas: u32,
}

impl Default for LimitSettings {
    fn default() -> Self {
        Self {
            device_rate: 0.0,
            device_burst: 0,
            tenant_rate: 0.0,
            tenant_burst: 0,
            replicas: 1,
        }
    }
}

/// Certificate authorities and revocation lists.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct CertSettings {
    /// Seals the private keys of mqgate-created CAs in the store.
    #[serde(deserialize_with = "de::some_long_secret")]
    pub ca_key_secret: Option<SecretString>,
    /// Certificates of a CA whose CRL is unusable or stale.
    #[serde(deserialize_with = "de::crl_failure")]
    pub crl_failure: CrlFailure,
    /// Next-update of CRLs mqgate signs.
    #[serde(deserialize_with = "de::positive_duration")]
    pub crl_validity: Duration,
    /// Fetch interval of imported CAs' CRLs.
    #[serde(deserialize_with = "de::positive_duration")]
    pub crl_refresh: Duration,
    /// Where signed CRLs are written.
    #[serde(deserialize_with = "de::path")]
    pub crl_dir: PathBuf,
    /// Horizon of expiry warnings.
    #[serde(deserialize_with = "de::duration")]
    pub cert_expiry_warning: Duration,
}

impl Default for CertSettings {
    fn default() -> Self {
        Self {
            ca_key_secret: None,
            crl_failure: CrlFailure::Deny,
            crl_validity: hours(7 * 24),
            crl_refresh: hours(1),
            crl_dir: "certs/crl".into(),
            cert_expiry_warning: hours(30 * 24),
        }
    }
}

/// The embedded MQTT broker and its resource bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MqttSettings {
    /// Plain-TCP listener (`None`: the broker is off).
    #[serde(deserialize_with = "de::addr_or_off")]
    pub mqtt_addr: Option<SocketAddr>,
    /// Time to send CONNECT.
    #[serde(deserialize_with = "de::duration")]
    pub mqtt_connect_timeout: Duration,
    /// Largest packet.
    #[serde(deserialize_with = "de::packet_size")]
    pub mqtt_max_packet_size: usize,
    /// Connections per address (0: no limit).
    #[serde(deserialize_with = "de::num")]
    pub mqtt_max_conns_per_peer: usize,
    /// Live sessions in all.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_max_connections: usize,
    /// Threads of the broker's own runtime.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_threads: usize,
    /// Connections before CONNACK.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_max_unauthenticated: usize,
    /// Filters per SUBSCRIBE.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_max_filters_per_subscribe: usize,
    /// Subscriptions per session.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_max_subscriptions: usize,
    /// Messages in flight per session.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_max_inflight: u64,
    /// Retained messages one device may own.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_retained_per_device: usize,
    /// Their bytes.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_retained_bytes_per_device: usize,
    /// Retained messages one tenant may own.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_retained_per_tenant: usize,
    /// Their bytes.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_retained_bytes_per_tenant: usize,
    /// Router log bytes per segment, per subscription filter.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_router_segment_size: usize,
    /// Router log segments kept.
    #[serde(deserialize_with = "de::positive")]
    pub mqtt_router_segment_count: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            mqtt_addr: Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 1883))),
            mqtt_connect_timeout: secs(10),
            mqtt_max_packet_size: 1_048_576,
            mqtt_max_conns_per_peer: 1000,
            mqtt_max_connections: 10_000,
            mqtt_threads: 1,
            mqtt_max_unauthenticated: 256,
            mqtt_max_filters_per_subscribe: 32,
            mqtt_max_subscriptions: 100,
            mqtt_max_inflight: 100,
            mqtt_retained_per_device: 100,
            mqtt_retained_bytes_per_device: 1_048_576,
            mqtt_retained_per_tenant: 10_000,
            mqtt_retained_bytes_per_tenant: 67_108_864,
            mqtt_router_segment_size: 4_194_304,
            mqtt_router_segment_count: 4,
        }
    }
}

/// The broker's TLS listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct MqttsSettings {
    /// Its address (`None`: off).
    #[serde(deserialize_with = "de::addr_or_off")]
    pub mqtts_addr: Option<SocketAddr>,
    /// Server certificate chain (PEM).
    #[serde(deserialize_with = "de::some_path")]
    pub mqtts_cert_file: Option<PathBuf>,
    /// Server private key (PEM).
    #[serde(deserialize_with = "de::some_path")]
    pub mqtts_key_file: Option<PathBuf>,
    /// Client certificate policy.
    #[serde(deserialize_with = "de::client_certs")]
    pub mqtts_client_certs: ClientCerts,
    /// Time to finish the handshake.
    #[serde(deserialize_with = "de::positive_duration")]
    pub mqtts_handshake_timeout: Duration,
}

impl Default for MqttsSettings {
    fn default() -> Self {
        Self {
            mqtts_addr: None,
            mqtts_cert_file: None,
            mqtts_key_file: None,
            mqtts_client_certs: ClientCerts::Required,
            mqtts_handshake_timeout: secs(10),
        }
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn mins(n: u64) -> Duration {
    secs(60 * n)
}

fn hours(n: u64) -> Duration {
    mins(60 * n)
}

/// The keys serde derived for `T`: asked to deserialize itself, a struct names its fields to
/// the deserializer, which keeps them and stops.
fn field_names<T: for<'de> Deserialize<'de>>() -> &'static [&'static str] {
    use serde::de::{Error as _, Visitor, value::Error};

    struct Names<'a>(&'a mut &'static [&'static str]);

    impl<'de> serde::Deserializer<'de> for Names<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            fields: &'static [&'static str],
            _: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("names read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut names: &'static [&'static str] = &[];
    let _ = T::deserialize(Names(&mut names));
    names
}
