//! An HTTP/1.1 load generator for the EMQX endpoints (and the bare reference server): C keep-alive
//! connections, each sending EMQX-shaped requests back to back: by default one at a time, or with
//! `--pipeline N` up to N requests written and not yet answered, answers read back in order (as
//! EMQX 5's HTTP client, ehttpc, drives an auth server: `pool_size` connections, each with up to
//! `enable_pipelining`, default 100, requests in flight).
//! Any answer that is not HTTP 200 with `"result":"allow"` is counted as an error, so a
//! misconfigured run cannot pass for a fast one.
//!
//! Built to cost the generator as little as possible per request, so that it is not what sets the
//! pace: one thread (a current-thread runtime), every request rendered to its bytes before the run,
//! one `write` per request on a raw `TcpStream` and a minimal response reader (status line,
//! `content-length`, body) instead of a full HTTP client, the clock read only for the one request
//! in [`SAMPLE`] whose latency is kept (the end of a timed run is a flag). It prints its own CPU use over the
//! measured window (`cpu=`, user+system of this process, 100 % = one core) and, when pinned to a
//! single CPU, that CPU's busy share from `/proc/stat` (`core_busy=`, softirq included, and
//! anything else running there): near 100 % means the generator may be the bottleneck.
//!
//! ```text
//! loadgen --url http://127.0.0.1:8080 --kind authz|authn --devices devices.tsv --tenant bench
//!         --secret S [--conns 16] [--pipeline 1] (--duration 20 | --each)
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, mpsc};

struct Args {
    url: String,
    kind: String,
    devices: String,
    tenant: String,
    secret: String,
    conns: usize,
    /// Requests each connection may have written and not yet answered (1: one at a time).
    pipeline: usize,
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
        pipeline: 1,
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
            "--pipeline" => a.pipeline = v().parse().unwrap(),
            "--duration" => a.duration = Some(v().parse().unwrap()),
            "--each" => a.duration = None,
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(a.pipeline >= 1, "--pipeline needs at least 1");
    a
}

/// Every request, rendered to the bytes sent (EMQX 5's placeholders, all as JSON strings).
fn requests(a: &Args, authority: &str) -> Vec<Box<[u8]>> {
    let text = std::fs::read_to_string(&a.devices).expect("devices file");
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, token)| {
            let v = if a.kind == "authn" {
                serde_json::json!({"clientid": id, "username": "", "password": token, "peerhost": "10.0.0.7", "cert_subject": "", "cert_common_name": "", "cert_pem": ""})
            } else {
                serde_json::json!({"clientid": id, "username": "", "peerhost": "10.0.0.7", "topic": format!("{}/{id}/telemetry", a.tenant), "action": "publish", "qos": "1", "retain": "false"})
            };
            let body = v.to_string();
            format!(
                "POST /v1/emqx/{} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n{body}",
                a.kind,
                a.secret,
                body.len()
            )
            .into_bytes()
            .into_boxed_slice()
        })
        .collect()
}

/// One request in this many has its latency measured (every connection's 0th, 4th, …: independent
/// of the latency itself, so the percentiles are those of all requests).
const SAMPLE: usize = 4;

struct Tally {
    requests: usize,
    latencies_us: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

impl Tally {
    fn new() -> Self {
        Tally {
            requests: 0,
            latencies_us: Vec::with_capacity(1 << 16),
            errors: 0,
            first_error: None,
        }
    }

    /// Counts a failed `answer` (anything but a 200 allow; its body is in `buf`); whether it
    /// failed, after which the connection stops (its stream may be out of step).
    fn failed(
        &mut self,
        answer: Result<(u16, std::ops::Range<usize>), String>,
        buf: &[u8],
    ) -> bool {
        let problem = match answer {
            Ok((200, body)) if ALLOW.find(&buf[body.clone()]).is_some() => return false,
            Ok((status, body)) => format!("HTTP {status}: {}", String::from_utf8_lossy(&buf[body])),
            Err(e) => e,
        };
        self.errors += 1;
        self.first_error.get_or_insert(problem);
        true
    }
}

/// The next of `n` requests at random (one xorshift step of `rng`).
fn pick(rng: &mut u64, n: usize) -> usize {
    *rng ^= *rng << 13;
    *rng ^= *rng >> 7;
    *rng ^= *rng << 17;
    (*rng % n as u64) as usize
}

async fn open(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).await.expect("connect");
    stream.set_nodelay(true).unwrap();
    stream
}

static HEAD_END: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\r\n\r\n"));
static ALLOW: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new(br#""result":"allow""#));

/// The status and `content-length` of a response head (the bytes before its blank line).
fn head(head: &[u8]) -> Result<(u16, usize), String> {
    let head = std::str::from_utf8(head).map_err(|_| "head not UTF-8")?;
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or("no HTTP/1.1 status line")?;
    let len = head
        .split('\n')
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or("no content-length")?;
    Ok((status, len))
}

/// Reads one response into `buf` (cleared first); returns (status, body range) or a reason.
async fn response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<(u16, std::ops::Range<usize>), String> {
    buf.clear();
    loop {
        if let Some(head_end) = HEAD_END.find(buf) {
            let (status, len) = head(&buf[..head_end])?;
            let body = head_end + 4..head_end + 4 + len;
            while buf.len() < body.end {
                read_more(s, buf).await?;
            }
            if buf.len() > body.end {
                return Err("more bytes than one response (the server pipelined?)".into());
            }
            return Ok((status, body));
        }
        read_more(s, buf).await?;
    }
}

/// The response at the start of `buf`, if all of it is there: (status, body range), the body's
/// end being the response's.
fn parse(buf: &[u8]) -> Result<Option<(u16, std::ops::Range<usize>)>, String> {
    let Some(head_end) = HEAD_END.find(buf) else {
        return Ok(None);
    };
    let (status, len) = head(&buf[..head_end])?;
    let body = head_end + 4..head_end + 4 + len;
    Ok((buf.len() >= body.end).then_some((status, body)))
}

async fn read_more(s: &mut (impl AsyncRead + Unpin), buf: &mut Vec<u8>) -> Result<(), String> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    match s.read_buf(buf).await {
        Ok(0) => Err("connection closed".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

async fn connection(
    addr: SocketAddr,
    requests: Arc<Vec<Box<[u8]>>>,
    next: Arc<AtomicUsize>,
    stop: Option<Arc<AtomicBool>>,
    seed: u64,
) -> Tally {
    let mut stream = open(addr).await;
    let mut buf = Vec::with_capacity(4096);
    let mut rng = seed | 1;
    let mut t = Tally::new();
    loop {
        let i = match &stop {
            Some(stop) => {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                pick(&mut rng, requests.len())
            }
            None => match next.fetch_add(1, Ordering::Relaxed) {
                i if i < requests.len() => i,
                _ => break,
            },
        };
        let started = t.requests.is_multiple_of(SAMPLE).then(Instant::now);
        stream.write_all(&requests[i]).await.expect("write");
        let answer = response(&mut stream, &mut buf).await;
        t.requests += 1;
        if let Some(started) = started {
            t.latencies_us
                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        if t.failed(answer, &buf) {
            break;
        }
    }
    t
}

/// Requests written together in one `write_all`: how many, and when if one of them is sampled
/// (the reader counts answers, so it knows which one: the same every-[`SAMPLE`]th as unpipelined).
struct Batch {
    count: usize,
    written: Option<Instant>,
}

/// [`connection`] with up to `depth` requests in flight: a writer that writes the next requests
/// (several free slots: one concatenated `write_all`) whenever fewer than `depth` are unanswered,
/// and a reader that takes the answers in order from a buffer that may hold several, or part of
/// one. At the end (`next` used up, or `stop`) the writer stops and the reader drains what is
/// outstanding; an error ends the connection at once.
async fn pipelined(
    addr: SocketAddr,
    requests: Arc<Vec<Box<[u8]>>>,
    next: Arc<AtomicUsize>,
    stop: Option<Arc<AtomicBool>>,
    seed: u64,
    depth: usize,
) -> Tally {
    let mut stream = open(addr).await;
    // Borrowed halves (one task): dropping the writer when it is done sends no FIN before the
    // answers are in, which an owned write half would.
    let (mut rd, mut wr) = stream.split();
    // Free slots: the writer takes one per request written, the reader gives one back per answer.
    let slots = Semaphore::new(depth);
    // Written but unanswered, in order; closed when the writer is done.
    let (tx, mut rx) = mpsc::unbounded_channel::<Batch>();

    let writer = async {
        let tx = tx; // dropped on return: the reader's sign that nothing more is coming
        let mut out = Vec::with_capacity(depth * requests[0].len());
        let mut rng = seed | 1;
        let mut written = 0usize;
        loop {
            let Ok(one) = slots.acquire().await else {
                return;
            };
            one.forget();
            let more = slots.available_permits();
            let free = match slots.try_acquire_many(more as u32) {
                Ok(p) => {
                    p.forget();
                    1 + more
                }
                Err(_) => 1,
            };
            out.clear();
            let count = match &stop {
                Some(stop) => {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    for _ in 0..free {
                        out.extend_from_slice(&requests[pick(&mut rng, requests.len())]);
                    }
                    free
                }
                None => {
                    let first = next.fetch_add(free, Ordering::Relaxed);
                    let last = (first + free).min(requests.len());
                    if first >= last {
                        return;
                    }
                    for r in &requests[first..last] {
                        out.extend_from_slice(r);
                    }
                    last - first
                }
            };
            // Is one of requests written..written+count an every-SAMPLE-th?
            let sampled = written.div_ceil(SAMPLE) * SAMPLE < written + count;
            written += count;
            let batch = Batch {
                count,
                written: sampled.then(Instant::now),
            };
            if tx.send(batch).is_err() {
                return;
            }
            wr.write_all(&out).await.expect("write");
        }
    };

    let reader = async {
        let mut t = Tally::new();
        let mut buf = Vec::with_capacity(64 * 1024);
        let mut at = 0; // where the next answer starts in `buf`
        let mut batch = Batch {
            count: 0,
            written: None,
        };
        let mut answered = 0; // slots to give back, before the reader next waits
        loop {
            if batch.count == 0 {
                slots.add_permits(std::mem::take(&mut answered));
                match rx.recv().await {
                    Some(b) => batch = b,
                    None => break, // the writer is done and every answer is in
                }
            }
            let answer = loop {
                match parse(&buf[at..]) {
                    Ok(Some((status, body))) => {
                        let body = at + body.start..at + body.end;
                        at = body.end;
                        break Ok((status, body));
                    }
                    Ok(None) => {
                        slots.add_permits(std::mem::take(&mut answered));
                        buf.drain(..at); // keep the part of the next answer already read
                        at = 0;
                        if let Err(e) = read_more(&mut rd, &mut buf).await {
                            break Err(e);
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            batch.count -= 1;
            answered += 1;
            if t.requests.is_multiple_of(SAMPLE)
                && let Some(written) = batch.written
            {
                t.latencies_us
                    .push(written.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
            t.requests += 1;
            if t.failed(answer, &buf) {
                break; // and with the reader, its writer
            }
        }
        t
    };

    let (mut writer, mut reader) = (std::pin::pin!(writer), std::pin::pin!(reader));
    tokio::select! {
        t = &mut reader => t,
        () = &mut writer => reader.await,
    }
}

/// This process's user+system CPU time, in clock ticks (`/proc/self/stat` fields 14 and 15).
fn process_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

/// The one CPU this process may run on, if pinned to exactly one.
fn pinned_cpu() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
        .trim();
    list.parse().ok()
}

/// (busy, total) ticks of `cpu` from `/proc/stat` (busy: all but idle and iowait).
fn cpu_ticks(cpu: usize) -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let name = format!("cpu{cpu} ");
    let Some(line) = stat.lines().find(|l| l.starts_with(&name)) else {
        return (0, 0);
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let total: u64 = f.iter().sum();
    let idle = f.get(3).copied().unwrap_or(0) + f.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = parse_args();
    let authority = args.url.trim_start_matches("http://").to_string();
    let addr: SocketAddr = authority.parse().expect("--url http://IP:PORT");
    let requests = Arc::new(requests(&args, &authority));
    assert!(!requests.is_empty(), "no devices in {}", args.devices);
    let next = Arc::new(AtomicUsize::new(0));
    let pinned = pinned_cpu();
    let (ticks0, core0) = (process_ticks(), pinned.map(cpu_ticks));
    let started = Instant::now();
    let stop = args.duration.map(|_| Arc::new(AtomicBool::new(false)));
    let tasks: Vec<_> = (0..args.conns)
        .map(|c| {
            let (requests, next, stop) = (Arc::clone(&requests), Arc::clone(&next), stop.clone());
            let seed = 0x9E37_79B9_7F4A_7C15 ^ c as u64;
            match args.pipeline {
                1 => tokio::spawn(connection(addr, requests, next, stop, seed)),
                depth => tokio::spawn(pipelined(addr, requests, next, stop, seed, depth)),
            }
        })
        .collect();
    if let (Some(secs), Some(stop)) = (args.duration, &stop) {
        tokio::time::sleep(Duration::from_secs(secs)).await;
        stop.store(true, Ordering::Relaxed);
    }
    let mut all = Vec::new();
    let (mut requests, mut errors, mut first_error) = (0, 0, None);
    for t in tasks {
        let t = t.await.unwrap();
        requests += t.requests;
        all.extend(t.latencies_us);
        errors += t.errors;
        first_error = first_error.or(t.first_error);
    }
    let secs = started.elapsed().as_secs_f64();
    // USER_HZ is 100 on every Linux /proc/self/stat.
    let cpu = (process_ticks() - ticks0) as f64 / 100.0 / secs;
    let core = match (pinned, core0) {
        (Some(c), Some((b0, t0))) => {
            let (b1, t1) = cpu_ticks(c);
            format!(
                " core{c}_busy={:.0}%",
                100.0 * (b1 - b0) as f64 / (t1 - t0).max(1) as f64
            )
        }
        _ => String::new(),
    };
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    println!(
        "requests={requests} seconds={secs:.2} rate={:.0}/s p50_us={} p99_us={} max_us={} errors={errors} cpu={:.0}%{core}",
        requests as f64 / secs,
        pct(0.50),
        pct(0.99),
        all.last().copied().unwrap_or(0),
        cpu * 100.0
    );
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
        std::process::exit(1);
    }
}
