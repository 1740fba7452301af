//! Load from hostile devices, for `bench/hostile.sh` (raw MQTT 3.1.1 bytes on TCP).
//!
//! `hostile --addr A --devices devices.tsv --mode retained --duration S [--payload BYTES]`:
//! the first device publishes retained messages of `--payload` bytes to ever new topics of its
//! own subtree (QoS 0, as fast as its socket takes them; when the broker closes it at its bound,
//! it reconnects and goes on); prints `retained sent=N reconnects=N`.
//!
//! `hostile --addr A --devices devices.tsv --mode pings --duration S`: the second device sends
//! SUBSCRIBEs of 32 refused filters of 32 KiB each (the largest packet the default bounds allow)
//! in a loop, while the third device (the bystander) sends PINGREQ and times each PINGRESP;
//! prints `pings n=N p50_ms=… p99_ms=… max_ms=… subscribes=N`.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![first];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        v.push(b);
        if len == 0 {
            break;
        }
    }
    v.extend_from_slice(body);
    v
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

/// Connects as `id`; the stream after its CONNACK (success checked).
async fn connect(addr: &str, id: &str, token: &str) -> std::io::Result<TcpStream> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut body = Vec::new();
    string(&mut body, b"MQTT");
    body.extend_from_slice(&[4, 0b1100_0010, 0, 60]);
    for f in [id, id, token] {
        string(&mut body, f.as_bytes());
    }
    s.write_all(&frame(0x10, &body)).await?;
    let mut ack = [0u8; 4];
    s.read_exact(&mut ack).await?;
    if ack[3] != 0 {
        return Err(std::io::Error::other(format!("CONNACK {}", ack[3])));
    }
    Ok(s)
}

async fn retained(
    addr: &str,
    dev: &(String, String),
    tenant: &str,
    payload: usize,
    until: Instant,
) {
    let (id, token) = dev;
    let data = vec![b'x'; payload];
    let (mut sent, mut reconnects, mut i) = (0u64, 0u64, 0u64);
    while Instant::now() < until {
        let Ok(mut s) = connect(addr, id, token).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        loop {
            let mut body = Vec::new();
            string(&mut body, format!("{tenant}/{id}/r/{i}").as_bytes());
            body.extend_from_slice(&data);
            if s.write_all(&frame(0x31, &body)).await.is_err() || Instant::now() >= until {
                break;
            }
            sent += 1;
            i += 1;
        }
        reconnects += 1;
    }
    println!("retained sent={sent} reconnects={reconnects}");
}

async fn subscriber(addr: String, dev: (String, String), until: Instant) -> u64 {
    // 32 filters of this size fill the default 1 MiB packet bound.
    let filter = "f".repeat(32 * 1024 - 64);
    let mut n = 0u64;
    while Instant::now() < until {
        let Ok(s) = connect(&addr, &dev.0, &dev.1).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut r, mut w) = s.into_split();
        // Drain SUBACKs so the broker never waits on this socket.
        let drain = tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while matches!(r.read(&mut buf).await, Ok(k) if k > 0) {}
        });
        let mut pkid = 1u16;
        while Instant::now() < until {
            let mut body = pkid.to_be_bytes().to_vec();
            for j in 0..32 {
                string(&mut body, format!("other/{j}/{filter}").as_bytes());
                body.push(0);
            }
            if w.write_all(&frame(0x82, &body)).await.is_err() {
                break;
            }
            n += 1;
            pkid = pkid.wrapping_add(1).max(1);
        }
        drain.abort();
    }
    n
}

async fn pings(addr: &str, devs: &[(String, String)], until: Instant) {
    // The load runs on a thread (and runtime) of its own: on the pinger's thread, a SUBSCRIBE
    // loop whose writes never block would hold the pinger back for its whole coop budget, and
    // the round trip would measure the generator instead of the broker.
    let (addr2, dev) = (addr.to_string(), devs[1].clone());
    let load = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(subscriber(addr2, dev, until))
    });
    let mut s = connect(addr, &devs[2].0, &devs[2].1)
        .await
        .expect("bystander connects");
    let mut rtts = Vec::new();
    let mut buf = [0u8; 2];
    while Instant::now() < until {
        let t = Instant::now();
        s.write_all(&[0xC0, 0]).await.expect("PINGREQ");
        s.read_exact(&mut buf).await.expect("PINGRESP");
        rtts.push(t.elapsed());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let subscribes = load.join().unwrap_or(0);
    rtts.sort();
    let at = |q: f64| {
        let i = ((rtts.len() as f64 - 1.0) * q).round() as usize;
        rtts.get(i).map_or(0.0, |d| d.as_secs_f64() * 1000.0)
    };
    println!(
        "pings n={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3} subscribes={subscribes}",
        rtts.len(),
        at(0.5),
        at(0.99),
        at(1.0)
    );
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let addr = arg("--addr").expect("--addr");
    let tenant = arg("--tenant").unwrap_or_else(|| "bench".into());
    let duration: u64 = arg("--duration").map_or(10, |d| d.parse().expect("--duration"));
    let payload: usize = arg("--payload").map_or(1000 * 1024, |p| p.parse().expect("--payload"));
    let devices = std::fs::read_to_string(arg("--devices").expect("--devices")).expect("devices");
    let devs: Vec<(String, String)> = devices
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    assert!(devs.len() >= 3, "need three devices");
    let until = Instant::now() + Duration::from_secs(duration);
    match arg("--mode").as_deref() {
        Some("retained") => retained(&addr, &devs[0], &tenant, payload, until).await,
        Some("pings") => pings(&addr, &devs, until).await,
        _ => panic!("--mode retained|pings"),
    }
}
