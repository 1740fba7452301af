//! Human or `--json` output, and the small HTTP call `acl reload` makes to the running server.

use anyhow::{Context, Result, bail};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// Where command results go.
pub struct Out {
    json: bool,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out { json }
    }

    /// A finished action: a sentence, or its JSON.
    pub fn done(&self, human: &str, value: Value) -> Result<()> {
        if self.json {
            println!("{value}");
        } else {
            println!("{human}");
        }
        Ok(())
    }

    /// A finished action that produced a secret, printed this once.
    pub fn secret(
        &self,
        human: &str,
        key: &str,
        secret: &SecretString,
        mut value: Value,
    ) -> Result<()> {
        if self.json {
            value[key] = Value::String(secret.expose_secret().to_string());
            println!("{value}");
        } else {
            println!("{human}");
            println!("{key}: {}", secret.expose_secret());
            println!("(shown once: it cannot be retrieved again)");
        }
        Ok(())
    }

    /// A list: one line per item, or a JSON array.
    pub fn list<T: Serialize>(&self, items: &[T], line: impl Fn(&T) -> String) -> Result<()> {
        if self.json {
            println!("{}", serde_json::to_string(items)?);
        } else {
            for i in items {
                println!("{}", line(i));
            }
        }
        Ok(())
    }
}

/// Calls the running server's guarded ops endpoint `path` (at `config.listen`) and returns its
/// JSON answer; a non-200 answer is an error carrying the server's message.
pub async fn ops_call(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Result<Value> {
    let secret = config.require_internal_secret()?;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("no mqgate server answering on {addr} (set MQGATE_LISTEN)"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        secret.expose_secret(),
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let status = resp.split_whitespace().nth(1).unwrap_or("");
    let text = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim();
    if status != "200" {
        bail!("server answered HTTP {status}: {text}");
    }
    serde_json::from_str(text).context("server answer is not JSON")
}
