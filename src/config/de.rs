//! How each key's value is read, whatever layer it came from.
//!
//! A value reaches a settings field as a TOML string, number or boolean, or as an environment /
//! flag string; every field reads it as text and parses that, so `cache_ttl = 600`,
//! `cache_ttl = "600"` and `MQGATE_CACHE_TTL=600` mean the same. Messages say what is wrong and
//! never repeat the value, which may be a secret.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserializer;
use serde::de::{Error, Visitor};

use super::MIN_SECRET_LEN;
use crate::auth::trust::CrlFailure;
use crate::broker::tls::ClientCerts;
use crate::core::UnknownClient;

/// Reads a scalar as text; anything else (a table, an array) is refused by serde's default
/// `invalid_type`, which names the kind of value, never its content.
struct Scalar;

impl Visitor<'_> for Scalar {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string, number or boolean")
    }
    fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }
    fn visit_string<E: Error>(self, v: String) -> Result<String, E> {
        Ok(v)
    }
    fn visit_char<E: Error>(self, v: char) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_bool<E: Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i128<E: Error>(self, v: i128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u128<E: Error>(self, v: u128) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

/// The value as text, parsed by `parse` (whose message becomes the error).
fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    let text = d.deserialize_any(Scalar)?;
    parse(&text).map_err(D::Error::custom)
}

/// Any text.
pub fn string<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    parsed(d, |s| Ok(s.to_string()))
}

/// Any text, present.
pub fn some_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string(d).map(Some)
}

/// A path.
pub fn path<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    parsed(d, |s| Ok(PathBuf::from(s)))
}

/// A path, present.
pub fn some_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    path(d).map(Some)
}

/// A secret of any length (a database URL may embed a password).
pub fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<SecretString, D::Error> {
    parsed(d, |s| Ok(SecretString::from(s)))
}

/// A secret of any length, present.
pub fn some_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    secret(d).map(Some)
}

/// A secret mqgate keys something with: at least [`MIN_SECRET_LEN`] characters.
pub fn some_long_secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    parsed(d, |s| {
        if s.chars().count() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret must be at least {MIN_SECRET_LEN} characters (e.g. `openssl rand -hex 32`)"
            ));
        }
        Ok(Some(SecretString::from(s)))
    })
}

/// The first line of the secret file named (Docker/Kubernetes secrets end with a newline).
pub fn some_secret_file<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    parsed(d, |path| {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("cannot read the file: {e}"))?;
        let first = text.lines().next().unwrap_or("").trim();
        Ok(Some(SecretString::from(first)))
    })
}

/// A socket address.
pub fn socket_addr<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parsed(d, |s| s.parse().map_err(|_| "not a socket address".into()))
}

/// A socket address, or `off` (`None`).
pub fn addr_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    parsed(d, |s| match s {
        "off" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|_| "not a socket address (or `off`)".into()),
    })
}

/// EMQX's management API: `off` (or empty), or `http://host:port` (a trailing `/` dropped).
pub fn http_url_or_off<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    parsed(d, |s| {
        match s {
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
    }
    })
}

/// A duration: `30s`, `5m`, `24h`, `30days`, or a bare number of seconds.
pub fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, parse_duration)
}

/// A duration longer than zero.
pub fn positive_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, |s| {
        parse_duration(s).and_then(|d| {
            if d.is_zero() {
                Err("must be longer than zero".into())
            } else {
                Ok(d)
            }
        })
    })
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("not a duration ({e}); use e.g. 30s, 5m, 24h"))
}

/// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`).
pub fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parsed(d, |s| match s {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err("must be true or false".into()),
    })
}

/// A whole number.
pub fn num<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> Result<T, D::Error> {
    parsed(d, |s| s.parse().map_err(|_| "not a whole number".into()))
}

/// A whole number from 1 to 2³²−1.
pub fn positive<'de, D: Deserializer<'de>, T: TryFrom<u32>>(d: D) -> Result<T, D::Error> {
    parsed(d, |s| match s.parse::<u32>() {
        Ok(n) if n > 0 => T::try_from(n).map_err(|_| "too large".into()),
        _ => Err("must be a whole number above 0".into()),
    })
}

/// MQTT's largest packet: at least 16 bytes, at most what the remaining length can say.
pub fn packet_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    parsed(d, |s| match s.parse::<usize>() {
        // MQTT's remaining length tops out at 268,435,455.
        Ok(n) if (16..=268_435_455).contains(&n) => Ok(n),
        _ => Err("must be a number of bytes from 16 to 268435455".into()),
    })
}

/// Messages per second: a finite number, 0 for none.
pub fn per_second<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    parsed(d, |s| {
        s.parse::<f64>()
            .ok()
            .filter(|r| r.is_finite() && *r >= 0.0)
            .ok_or_else(|| "must be a number of messages per second, 0 for none".to_string())
    })
}

/// `deny` or `ignore`.
pub fn unknown_client<'de, D: Deserializer<'de>>(d: D) -> Result<UnknownClient, D::Error> {
    parsed(d, |s| match s {
        "deny" => Ok(UnknownClient::Deny),
        "ignore" => Ok(UnknownClient::Ignore),
        _ => Err("must be `deny` or `ignore`".into()),
    })
}

/// `deny` or `allow`.
pub fn crl_failure<'de, D: Deserializer<'de>>(d: D) -> Result<CrlFailure, D::Error> {
    parsed(d, |s| match s {
        "deny" => Ok(CrlFailure::Deny),
        "allow" => Ok(CrlFailure::Allow),
        _ => Err("must be `deny` or `allow`".into()),
    })
}

/// `required` or `optional`.
pub fn client_certs<'de, D: Deserializer<'de>>(d: D) -> Result<ClientCerts, D::Error> {
    parsed(d, |s| match s {
        "required" => Ok(ClientCerts::Required),
        "optional" => Ok(ClientCerts::Optional),
        _ => Err("must be `required` or `optional`".into()),
    })
}
