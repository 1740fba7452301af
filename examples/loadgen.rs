//! An HTTP/1.1 load generator for the EMQX endpoints (and the bare reference server): C keep-alive
//! connections, each sending EMQX-shaped requests back to back. Any answer that is not HTTP 200
//! with `"result":"allow"` is counted as an error, so a misconfigured run cannot pass for a fast one.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --kind authz|authn --devices devices.tsv --tenant bench
//!         --secret S [--conns 16] (--duration 20 | --each)
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

struct Args {
    url: String,
    kind: String,
    devices: String,
    tenant: String,
    secret: String,
    conns: usize,
    duration: Option<u64>,
}

fn parse_args() -> Args {
    let mut a = Args {
        url: String::new(),
        kind: "authz".into(),
        devices: String::new(),
        tenant: "bench".into(),
        secret: String::new(),
        conns: 16,
        duration: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().expect("flag needs a value");
        match k.as_str() {
            "--url" => a.url = v(),
            "--kind" => a.kind = v(),
            "--devices" => a.devices = v(),
            "--tenant" => a.tenant = v(),
            "--secret" => a.secret = v(),
            "--conns" => a.conns = v().parse().unwrap(),
            "--duration" => a.duration = Some(v().parse().unwrap()),
            "--each" => a.duration = None,
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn bodies(a: &Args) -> Vec<Bytes> {
    let text = std::fs::read_to_string(&a.devices).expect("devices file");
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, token)| {
            let v = if a.kind == "authn" {
                serde_json::json!({"clientid": id, "username": "", "password": token, "peerhost": "10.0.0.7", "cert_subject": "", "cert_common_name": "", "cert_pem": ""})
            } else {
                serde_json::json!({"clientid": id, "username": "", "peerhost": "10.0.0.7", "topic": format!("{}/{id}/telemetry", a.tenant), "action": "publish", "qos": "1", "retain": "false"})
            };
            Bytes::from(v.to_string())
        })
        .collect()
}

struct Tally {
    latencies_us: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

async fn connection(
    args: Arc<Args>,
    bodies: Arc<Vec<Bytes>>,
    next: Arc<AtomicUsize>,
    deadline: Option<Instant>,
    seed: u64,
) -> Tally {
    let authority = args.url.trim_start_matches("http://").to_string();
    let stream = tokio::net::TcpStream::connect(&authority)
        .await
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let path = format!("/v1/emqx/{}", args.kind);
    let bearer = format!("Bearer {}", args.secret);
    let mut rng = seed | 1;
    let mut t = Tally {
        latencies_us: Vec::with_capacity(1 << 16),
        errors: 0,
        first_error: None,
    };
    loop {
        let i = match deadline {
            Some(d) => {
                if Instant::now() >= d {
                    break;
                }
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                (rng % bodies.len() as u64) as usize
            }
            None => match next.fetch_add(1, Ordering::Relaxed) {
                i if i < bodies.len() => i,
                _ => break,
            },
        };
        let req = hyper::Request::post(&path)
            .header("host", &authority)
            .header("content-type", "application/json")
            .header("authorization", &bearer)
            .body(Full::new(bodies[i].clone()))
            .unwrap();
        let started = Instant::now();
        let resp = send.send_request(req).await.expect("request");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        t.latencies_us
            .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        if status != 200 || !body.windows(16).any(|w| w == br#""result":"allow""#) {
            t.errors += 1;
            t.first_error.get_or_insert_with(|| {
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body))
            });
        }
    }
    t
}

#[tokio::main]
async fn main() {
    let args = Arc::new(parse_args());
    let bodies = Arc::new(bodies(&args));
    assert!(!bodies.is_empty(), "no devices in {}", args.devices);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let deadline = args.duration.map(|s| started + Duration::from_secs(s));
    let tasks: Vec<_> = (0..args.conns)
        .map(|c| {
            tokio::spawn(connection(
                Arc::clone(&args),
                Arc::clone(&bodies),
                Arc::clone(&next),
                deadline,
                0x9E37_79B9_7F4A_7C15 ^ c as u64,
            ))
        })
        .collect();
    let mut all = Vec::new();
    let (mut errors, mut first_error) = (0, None);
    for t in tasks {
        let t = t.await.unwrap();
        all.extend(t.latencies_us);
        errors += t.errors;
        first_error = first_error.or(t.first_error);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len() - 1))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests={} seconds={secs:.2} rate={:.0}/s p50_us={} p99_us={} max_us={} errors={errors}",
        all.len(),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0)
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
        std::process::exit(1);
    }
}
