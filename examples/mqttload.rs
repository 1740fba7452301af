//! An MQTT 3.1.1 load generator for the broker benchmark (mqgate's embedded broker, rumqttd alone,
//! Mosquitto). Raw TCP with rumqttd's codec for reading; every connection is a device from a
//! `client_id<TAB>token` file (username = client id, password = token).
//!
//! ```text
//! mqttload --addr 127.0.0.1:1883 --devices devices.tsv --tenant bench --mode publish|connect
//!          [--conns 16] [--duration 10] [--window 32] [--payload 64]
//! ```
//! - `publish`: each connection subscribes to `<tenant>/<client_id>/#` and keeps `window` QoS 1
//!   publishes to `<tenant>/<client_id>/t` in flight; counts PUBACKs and deliveries. A run where
//!   deliveries fall short of acks (e.g. publishes silently refused by an ACL) is an error.
//! - `connect`: each connection loops TCP connect → CONNECT → CONNACK (must be 0) → DISCONNECT →
//!   wait for the broker's close, cycling through the devices.
//! - `--tls DIR` (connect mode): each connection is a full TLS handshake (no resumption) with the
//!   device's certificate from `DIR/<client-id>.crt` / `.key`, trusting `DIR/server.pem`; the
//!   CONNECT carries no password (the certificate is the identity).
//!
//! Prints one line: `rate=… ` (acks or connects per second) plus details; exits non-zero on errors.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{Connect, ConnectReturnCode, Login, Packet, Protocol, SubscribeReasonCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

struct Args {
    addr: String,
    devices: Vec<(String, String)>,
    tenant: String,
    mode: String,
    conns: usize,
    duration: u64,
    window: u16,
    payload: usize,
    /// Per device (same order as `devices`): its TLS client configuration.
    tls: Option<Vec<Arc<rustls::ClientConfig>>>,
}

fn parse_args() -> Args {
    let mut a = Args {
        addr: "127.0.0.1:1883".into(),
        devices: Vec::new(),
        tenant: "bench".into(),
        mode: "publish".into(),
        conns: 16,
        duration: 10,
        window: 32,
        payload: 64,
        tls: None,
    };
    let mut tls_dir = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("flag needs a value");
        match k.as_str() {
            "--addr" => a.addr = v(),
            "--devices" => {
                let text = std::fs::read_to_string(v()).expect("devices file");
                a.devices = text
                    .lines()
                    .filter_map(|l| l.split_once('\t'))
                    .map(|(id, t)| (id.to_string(), t.to_string()))
                    .collect();
            }
            "--tenant" => a.tenant = v(),
            "--mode" => a.mode = v(),
            "--conns" => a.conns = v().parse().expect("--conns"),
            "--duration" => a.duration = v().parse().expect("--duration"),
            "--window" => a.window = v().parse().expect("--window"),
            "--payload" => a.payload = v().parse().expect("--payload"),
            "--tls" => tls_dir = Some(std::path::PathBuf::from(v())),
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(!a.devices.is_empty(), "--devices with at least one device");
    if let Some(dir) = tls_dir {
        a.tls = Some(tls_configs(&dir, &a.devices));
    }
    a
}

/// One client configuration per device: its certificate and key, the server's certificate as the
/// only root, no session resumption (every connection pays the full handshake).
fn tls_configs(
    dir: &std::path::Path,
    devices: &[(String, String)],
) -> Vec<Arc<rustls::ClientConfig>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(dir.join("server.pem")).expect("server.pem") {
        roots
            .add(c.expect("server.pem"))
            .expect("server certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    devices
        .iter()
        .map(|(id, _)| {
            let chain = CertificateDer::pem_file_iter(dir.join(format!("{id}.crt")))
                .expect("device certificate")
                .collect::<Result<Vec<_>, _>>()
                .expect("device certificate");
            let key = PrivateKeyDer::from_pem_file(dir.join(format!("{id}.key"))).expect("key");
            let mut c = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
                .with_safe_default_protocol_versions()
                .expect("TLS versions")
                .with_root_certificates(roots.clone())
                .with_client_auth_cert(chain, key)
                .expect("client certificate");
            c.resumption = rustls::client::Resumption::disabled();
            Arc::new(c)
        })
        .collect()
}

fn encode(p: Packet) -> BytesMut {
    let mut b = BytesMut::new();
    V4.write(p, &mut b).expect("encodable packet");
    b
}

fn connect_packet(id: &str, token: Option<&str>) -> BytesMut {
    encode(Packet::Connect(
        Connect {
            keep_alive: 60,
            client_id: id.into(),
            clean_session: true,
        },
        None,
        None,
        None,
        token.map(|t| Login {
            username: id.into(),
            password: t.into(),
        }),
    ))
}

/// A QoS 1 PUBLISH frame (3.1.1), written by hand so that the packet id can be patched in place.
fn publish_frame(topic: &str, payload: usize) -> (BytesMut, usize) {
    let body = 2 + topic.len() + 2 + payload;
    let mut b = BytesMut::new();
    b.put_u8(0x32);
    let mut len = body;
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        b.put_u8(byte);
        if len == 0 {
            break;
        }
    }
    b.put_u16(topic.len() as u16);
    b.put_slice(topic.as_bytes());
    let pkid_at = b.len();
    b.put_u16(0);
    b.put_bytes(b'x', payload);
    (b, pkid_at)
}

fn subscribe_frame(filter: &str) -> BytesMut {
    let body = 2 + 2 + filter.len() + 1;
    let mut b = BytesMut::new();
    b.put_u8(0x82);
    b.put_u8(body as u8);
    b.put_u16(1);
    b.put_u16(filter.len() as u16);
    b.put_slice(filter.as_bytes());
    b.put_u8(0);
    b
}

/// Reads until one packet decodes.
async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
    buf: &mut BytesMut,
) -> Result<Packet, String> {
    loop {
        match V4.read_mut(buf, 1 << 20) {
            Ok(p) => return Ok(p),
            Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("decode: {e}")),
        }
        if s.read_buf(buf).await.map_err(|e| e.to_string())? == 0 {
            return Err("closed by broker".into());
        }
    }
}

async fn open(addr: &str, id: &str, token: &str) -> Result<(TcpStream, BytesMut), String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    hello(s, id, Some(token)).await
}

/// A TLS connection with the device's certificate, then a CONNECT without password.
async fn open_tls(
    addr: &str,
    id: &str,
    config: &Arc<rustls::ClientConfig>,
) -> Result<(tokio_rustls::client::TlsStream<TcpStream>, BytesMut), String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = TlsConnector::from(Arc::clone(config))
        .connect(name, s)
        .await
        .map_err(|e| format!("TLS handshake of {id}: {e}"))?;
    hello(tls, id, None).await
}

/// Sends CONNECT over `s` and reads a successful CONNACK.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    id: &str,
    token: Option<&str>,
) -> Result<(S, BytesMut), String> {
    s.write_all(&connect_packet(id, token))
        .await
        .map_err(|e| e.to_string())?;
    s.flush().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    match read_packet(&mut s, &mut buf).await? {
        Packet::ConnAck(a, _) if a.code == ConnectReturnCode::Success => Ok((s, buf)),
        other => Err(format!("CONNECT of {id} refused: {other:?}")),
    }
}

#[derive(Default)]
struct Tally {
    done: u64,
    delivered: u64,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

async fn publisher(a: Arc<Args>, c: usize, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    if let Err(e) = publish_loop(&a, c, deadline, &mut t).await {
        t.error = Some(e);
    }
    t
}

async fn publish_loop(a: &Args, c: usize, deadline: Instant, t: &mut Tally) -> Result<(), String> {
    let (id, token) = &a.devices[c % a.devices.len()];
    let (mut s, mut buf) = open(&a.addr, id, token).await?;
    let prefix = format!("{}/{id}", a.tenant);
    s.write_all(&subscribe_frame(&format!("{prefix}/#")))
        .await
        .map_err(|e| e.to_string())?;
    match read_packet(&mut s, &mut buf).await? {
        Packet::SubAck(ack, _) if !ack.return_codes.contains(&SubscribeReasonCode::Failure) => {}
        other => return Err(format!("SUBSCRIBE refused: {other:?}")),
    }
    let (mut frame, pkid_at) = publish_frame(&format!("{prefix}/t"), a.payload);
    let mut sent_at = vec![Instant::now(); usize::from(a.window) + 1];
    let mut out = BytesMut::new();
    for pkid in 1..=a.window {
        frame[pkid_at..pkid_at + 2].copy_from_slice(&pkid.to_be_bytes());
        out.extend_from_slice(&frame);
        sent_at[usize::from(pkid)] = Instant::now();
    }
    s.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut in_flight = a.window;
    let mut stopping = false;
    while in_flight > 0
        || (t.delivered < t.done && Instant::now() < deadline + Duration::from_secs(2))
    {
        let read = tokio::time::timeout(Duration::from_secs(5), read_packet(&mut s, &mut buf))
            .await
            .map_err(|_| "no answer for 5 s".to_string())??;
        match read {
            Packet::PubAck(ack, _) => {
                t.done += 1;
                let at = sent_at[usize::from(ack.pkid)];
                t.latencies_us.push(at.elapsed().as_micros() as u32);
                if !stopping && Instant::now() >= deadline {
                    stopping = true;
                }
                if stopping {
                    in_flight -= 1;
                } else {
                    frame[pkid_at..pkid_at + 2].copy_from_slice(&ack.pkid.to_be_bytes());
                    sent_at[usize::from(ack.pkid)] = Instant::now();
                    s.write_all(&frame).await.map_err(|e| e.to_string())?;
                }
            }
            Packet::Publish(..) => t.delivered += 1,
            other => return Err(format!("unexpected {other:?}")),
        }
    }
    let _ = s.write_all(&[0xE0, 0]).await;
    Ok(())
}

async fn connector(a: Arc<Args>, c: usize, deadline: Instant) -> Tally {
    let mut t = Tally::default();
    let mut next = c;
    while Instant::now() < deadline {
        let i = next % a.devices.len();
        let (id, token) = &a.devices[i];
        next += a.conns;
        let started = Instant::now();
        let cycle = match &a.tls {
            None => match open(&a.addr, id, token).await {
                Ok((s, _)) => goodbye(s).await,
                Err(e) => Err(e),
            },
            Some(configs) => match open_tls(&a.addr, id, &configs[i]).await {
                Ok((s, _)) => goodbye(s).await,
                Err(e) => Err(e),
            },
        };
        match cycle {
            Ok(()) => {
                t.done += 1;
                t.latencies_us.push(started.elapsed().as_micros() as u32);
            }
            Err(e) => {
                t.error = Some(e);
                return t;
            }
        }
    }
    t
}

/// DISCONNECT, then wait for the broker to close first, so the client side keeps no TIME_WAIT
/// sockets.
async fn goodbye<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) -> Result<(), String> {
    let _ = s.write_all(&[0xE0, 0]).await;
    let _ = s.flush().await;
    let mut sink = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut sink)).await;
    Ok(())
}

#[tokio::main]
async fn main() {
    let a = Arc::new(parse_args());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(a.duration);
    let tasks: Vec<_> = (0..a.conns)
        .map(|c| match a.mode.as_str() {
            "publish" => tokio::spawn(publisher(Arc::clone(&a), c, deadline)),
            "connect" => tokio::spawn(connector(Arc::clone(&a), c, deadline)),
            m => panic!("unknown mode {m}"),
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("load task");
        all.done += t.done;
        all.delivered += t.delivered;
        all.latencies_us.extend(t.latencies_us);
        all.error = all.error.or(t.error);
    }
    let secs = a.duration as f64;
    all.latencies_us.sort_unstable();
    let pct = |p: f64| {
        let l = &all.latencies_us;
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    let short = a.mode == "publish" && all.delivered < all.done;
    println!(
        "rate={:.0} total={} delivered={} p50_ms={:.2} p99_ms={:.2} errors={}",
        all.done as f64 / secs,
        all.done,
        all.delivered,
        pct(0.50),
        pct(0.99),
        usize::from(all.error.is_some() || short),
    );
    if let Some(e) = all.error {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    if short {
        eprintln!(
            "error: {} publishes acked but only {} delivered",
            all.done, all.delivered
        );
        std::process::exit(1);
    }
}
