//! Human or `--json` output, and the calls the CLI makes to the running server's ops endpoints
//! (hyper's client).

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use serde_json::Value;

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

/// Longest server answer the CLI reads (lockout lists are bounded well below this).
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The running server's HTTP address (`config.listen`; an unspecified address means this host).
fn server_addr(config: &Config) -> std::net::SocketAddr {
    let mut addr = config.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    addr
}

/// Sends `request` to the server at `addr` (hyper's client); its status and body as text.
async fn send(
    addr: std::net::SocketAddr,
    request: http::Request<Full<Bytes>>,
) -> Result<(http::StatusCode, String)> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = client
        .request(request)
        .await
        .with_context(|| format!("no mqgate server answering on {addr} (set MQGATE_LISTEN)"))?;
    let status = resp.status();
    let text = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading the server's answer: {e}"))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&text).into_owned()))
}

/// `GET /readyz` on the server at `config.listen` within three seconds; `Ok` with its JSON only
/// for a 200 (the container health check).
pub async fn readyz(config: &Config) -> Result<Value> {
    let addr = server_addr(config);
    let request = http::Request::builder()
        .uri(format!("http://{addr}/readyz"))
        .body(Full::new(Bytes::new()))
        .context("building the request")?;
    let (status, text) =
        tokio::time::timeout(std::time::Duration::from_secs(3), send(addr, request))
            .await
            .map_err(|_| anyhow::anyhow!("{addr} did not answer /readyz within 3 s"))??;
    if status != http::StatusCode::OK {
        bail!("not ready: HTTP {}: {}", status.as_u16(), text.trim());
    }
    Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
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
    let addr = server_addr(config);
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut auth = http::HeaderValue::try_from(format!("Bearer {}", secret.expose_secret()))
        .context("the internal secret is not a valid HTTP header value")?;
    auth.set_sensitive(true);
    let request = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"))
        .header(http::header::AUTHORIZATION, auth)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .context("building the request")?;
    let (status, text) = send(addr, request).await?;
    if status != http::StatusCode::OK {
        bail!("server answered HTTP {}: {}", status.as_u16(), text.trim());
    }
    serde_json::from_str(&text).context("server answer is not JSON")
}
