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

/// Asks the server at `config.listen` to reload its rule files.
pub async fn post_reload(config: &Config) -> Result<()> {
    let secret = config.require_internal_secret()?;
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("no mqgate server answering on {addr}"))?;
    let req = format!(
        "POST /v1/ops/acl-reload HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        secret.expose_secret()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).await?;
    let status = resp.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        let body = resp.split("\r\n\r\n").nth(1).unwrap_or("").trim();
        bail!("server refused the reload (HTTP {status}): {body}");
    }
    Ok(())
}
