//! Read-ahead of pipelined EMQX authn requests.
//!
//! EMQX sends up to 100 requests on each of its 8 pool connections before the first answer
//! (HTTP/1.1 pipelining, `enable_pipelining`). hyper answers a connection's requests one after
//! the other, so during a reconnect storm the registry would see at most one cache fill per
//! connection at a time: batches of a handful of devices, each paying a store round trip's fixed
//! cost. [`ReadAhead`] sits between the socket and hyper and looks at the bytes hyper reads: for
//! every complete authn request among them (the internal secret presented, the body read whole)
//! it starts the cache fill of its client id, so the requests queued behind the one hyper is
//! answering reach the registry in one batch.
//!
//! It only warms the cache. hyper stays the one parser of what is answered: a request the scan
//! misreads costs at most a wasted fill, never a different answer. The scan gives up on a
//! connection for good at anything it does not expect (a head over [`MAX_HEAD`], a chunked or
//! `Expect` request, unparsable bytes) and after [`GIVE_UP_AFTER`] requests in a row that were not
//! EMQX authn (the authz pool's connections, an operator's `curl`), so other traffic pays nothing
//! after its first requests. Fills started this way are bounded process-wide ([`Prefetcher`]).

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Semaphore;

use super::HttpState;

/// Longest request head scanned (hyper's own limit is larger; a head this long is no EMQX
/// request, and the scan stops).
const MAX_HEAD: usize = 8 * 1024;

/// Requests in a row that were not EMQX authn after which a connection is no longer scanned.
const GIVE_UP_AFTER: u32 = 8;

/// Headers a scanned head may have.
const MAX_HEADERS: usize = 32;

/// Read-ahead fills in flight at once, process-wide: above it, requests are not read ahead (their
/// own turn fills them).
pub const MAX_PREFETCHES: usize = 2048;

/// What the scan reports to.
trait Sink {
    /// Whether `authorization` (a header's value) carries the internal secret.
    fn authorized(&self, authorization: &[u8]) -> bool;
    /// A whole authn body, read ahead.
    fn body(&self, body: &[u8]);
}

/// Starts cache fills for the read-ahead, bounded by [`MAX_PREFETCHES`].
pub struct Prefetcher {
    state: HttpState,
    slots: Arc<Semaphore>,
}

impl Prefetcher {
    /// A prefetcher over the listener's state.
    pub fn new(state: HttpState) -> Self {
        Prefetcher {
            state,
            slots: Arc::new(Semaphore::new(MAX_PREFETCHES)),
        }
    }
}

impl Sink for Arc<Prefetcher> {
    fn authorized(&self, authorization: &[u8]) -> bool {
        http::HeaderValue::from_bytes(authorization)
            .is_ok_and(|v| super::Internal::carried_by(&v, &self.state))
    }

    /// Starts the fill of the client id of an authn `body`, unless it is cached, unreadable, or
    /// every slot is taken.
    fn body(&self, body: &[u8]) {
        let Some(client_id) = super::emqx::authn_client_id(body) else {
            return;
        };
        let registry = Arc::clone(self.state.gate.registry());
        if registry.cached(client_id.as_str()).is_some() {
            return;
        }
        let Ok(slot) = Arc::clone(&self.slots).try_acquire_owned() else {
            return;
        };
        self.state.gate.metrics().read_ahead_fill();
        tokio::spawn(async move {
            // Errors are the request's own to meet (and to count) when its turn comes.
            let _ = registry.device(client_id.as_str()).await;
            drop(slot);
        });
    }
}

/// Where the scan of a connection's bytes is.
enum Scan {
    /// In a request head (its bytes so far in `Scanner::buf`).
    Head,
    /// In a body: `left` bytes to go, kept in `Scanner::buf` when `keep` (an authn body).
    Body { left: usize, keep: bool },
}

/// The scan of one connection.
struct Scanner<K> {
    sink: K,
    max_body: usize,
    buf: Vec<u8>,
    scan: Scan,
    others: u32,
}

/// What a head says about the request it starts.
struct Head {
    /// Body length (`Content-Length`, 0 without one).
    len: usize,
    /// An EMQX authn request.
    authn: bool,
    /// An EMQX authn request to read ahead, carrying the internal secret.
    fill: bool,
}

impl<K: Sink> Scanner<K> {
    fn new(sink: K, max_body: usize) -> Self {
        Scanner {
            sink,
            max_body,
            buf: Vec::new(),
            scan: Scan::Head,
            others: 0,
        }
    }

    /// Follows `data`; `false` when the connection is no longer worth scanning.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        // hyper reads when it has no whole request left: a read that starts a request holds the
        // one hyper answers next, which fills on its own. Only those behind it are read ahead.
        let mut front = matches!(self.scan, Scan::Head) && self.buf.is_empty();
        while !data.is_empty() {
            match self.scan {
                Scan::Head => {
                    let searched = self.buf.len().saturating_sub(3);
                    let room = MAX_HEAD.saturating_sub(self.buf.len());
                    let take = data.get(..room.min(data.len())).unwrap_or_default();
                    self.buf.extend_from_slice(take);
                    let Some(end) = self
                        .buf
                        .get(searched..)
                        .and_then(|b| memchr::memmem::find(b, b"\r\n\r\n"))
                        .map(|at| searched + at + 4)
                    else {
                        // No end of head: more to come, unless the head is already too long.
                        return self.buf.len() < MAX_HEAD;
                    };
                    // What of `data` belonged to this head; the rest is its body and onwards.
                    let used = take
                        .len()
                        .saturating_sub(self.buf.len().saturating_sub(end));
                    data = data.get(used..).unwrap_or_default();
                    self.buf.truncate(end);
                    let behind = !std::mem::take(&mut front);
                    let Some(head) = self.head(behind) else {
                        return false;
                    };
                    self.buf.clear();
                    let keep = head.fill && head.len <= self.max_body;
                    if head.authn {
                        self.others = 0;
                    } else {
                        self.others += 1;
                        if self.others >= GIVE_UP_AFTER {
                            return false;
                        }
                    }
                    self.scan = Scan::Body {
                        left: head.len,
                        keep,
                    };
                    if head.len == 0 {
                        self.body_done(keep);
                    }
                }
                Scan::Body { left, keep } => {
                    let n = left.min(data.len());
                    let (part, rest) = data.split_at(n);
                    if keep {
                        self.buf.extend_from_slice(part);
                    }
                    data = rest;
                    self.scan = Scan::Body {
                        left: left - n,
                        keep,
                    };
                    if left == n {
                        self.body_done(keep);
                    }
                }
            }
        }
        true
    }

    /// A body ended: its fill starts if it was kept; the next head follows.
    fn body_done(&mut self, keep: bool) {
        if keep {
            self.sink.body(&self.buf);
        }
        self.buf.clear();
        self.scan = Scan::Head;
    }

    /// Reads the head in `buf`; `None` for what the scan does not follow. The internal secret is
    /// checked only for a request to read ahead (`wanted`).
    fn head(&self, wanted: bool) -> Option<Head> {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.buf) {
            Ok(httparse::Status::Complete(_)) => {}
            _ => return None,
        }
        let mut len = None;
        let mut authorization = None;
        for h in req.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                // Digits only, as hyper reads it (`usize::from_str` would also take a `+`).
                let digits = std::str::from_utf8(h.value).ok()?.trim();
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let n = digits.parse().ok()?;
                if len.replace(n).is_some_and(|m| m != n) {
                    return None;
                }
            } else if h.name.eq_ignore_ascii_case("transfer-encoding")
                || h.name.eq_ignore_ascii_case("expect")
            {
                return None;
            } else if h.name.eq_ignore_ascii_case("authorization") {
                authorization = Some(h.value);
            }
        }
        let authn = req.method == Some("POST") && req.path == Some(super::emqx::AUTHN_PATH);
        Some(Head {
            len: len.unwrap_or(0),
            authn,
            fill: authn && wanted && authorization.is_some_and(|a| self.sink.authorized(a)),
        })
    }
}

/// A connection's socket as hyper reads it, with the read-ahead scan on what passes (see the
/// module doc). Writes go straight through.
pub struct ReadAhead<S> {
    io: S,
    scanner: Option<Box<Scanner<Arc<Prefetcher>>>>,
}

impl<S> ReadAhead<S> {
    /// Scans what `io` delivers for `prefetcher`; bodies over the listener's body limit are not
    /// read ahead.
    pub fn new(io: S, prefetcher: &Arc<Prefetcher>) -> Self {
        let max_body = prefetcher.state.max_body_bytes;
        ReadAhead {
            io,
            scanner: Some(Box::new(Scanner::new(Arc::clone(prefetcher), max_body))),
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for ReadAhead<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.io).poll_read(cx, buf);
        if let (Poll::Ready(Ok(())), Some(scanner)) = (&polled, this.scanner.as_mut()) {
            let fresh = buf.filled().get(before..).unwrap_or_default();
            if !scanner.feed(fresh) {
                this.scanner = None;
            }
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for ReadAhead<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;

    use proptest::prelude::*;

    use super::*;

    const SECRET: &str = "s3cret";

    /// Records what the scan reports.
    #[derive(Default)]
    struct Record(RefCell<Vec<Vec<u8>>>);

    impl Sink for &Record {
        fn authorized(&self, authorization: &[u8]) -> bool {
            authorization == format!("Bearer {SECRET}").as_bytes()
        }
        fn body(&self, body: &[u8]) {
            self.0.borrow_mut().push(body.to_vec());
        }
    }

    fn request(path: &str, secret: &str, body: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {secret}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    fn authn(i: usize) -> (Vec<u8>, String) {
        let body = format!(r#"{{"clientid":"dev-{i}","password":"p"}}"#);
        (request(super::super::emqx::AUTHN_PATH, SECRET, &body), body)
    }

    /// Feeds `wire` in pieces of `chunk` bytes; the bodies reported and whether the scan is on.
    fn scan(wire: &[u8], chunk: usize, max_body: usize) -> (Vec<String>, bool) {
        let record = Record::default();
        let mut scanner = Scanner::new(&record, max_body);
        let on = wire.chunks(chunk.max(1)).all(|c| scanner.feed(c));
        let bodies = record
            .0
            .take()
            .into_iter()
            .map(|b| String::from_utf8(b).unwrap())
            .collect();
        (bodies, on)
    }

    #[test]
    fn every_authn_body_behind_another_request_is_reported_however_the_bytes_are_cut() {
        // (offset of the request, end of its head, its body) for each authn request.
        let mut authns = Vec::new();
        let mut wire = Vec::new();
        let mut add = |wire: &mut Vec<u8>, r: Vec<u8>, body: Option<String>| {
            if let Some(body) = body {
                let head_end = r.len() - body.len();
                authns.push((wire.len(), wire.len() + head_end, body));
            }
            wire.extend(r);
        };
        for i in 0..5 {
            let (r, body) = authn(i);
            add(&mut wire, r, Some(body));
            // Other requests between them are followed, not reported.
            let authz = request("/v1/emqx/authz", SECRET, r#"{"clientid":"dev-1"}"#);
            add(&mut wire, authz, None);
        }
        add(
            &mut wire,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
            None,
        );
        let (r, body) = authn(9);
        add(&mut wire, r, Some(body));
        for chunk in 1..=wire.len() {
            // A request whose read starts with it and holds its whole head is the one hyper
            // answers next: not read ahead. Every other one is.
            let want: Vec<String> = authns
                .iter()
                .filter(|(at, head_end, _)| !(at % chunk == 0 && head_end - at <= chunk))
                .map(|(_, _, body)| body.clone())
                .collect();
            assert_eq!(scan(&wire, chunk, 1024), (want, true), "chunk {chunk}");
        }
        // All in one read: all but the first.
        let (bodies, _) = scan(&wire, wire.len(), 1024);
        assert_eq!(bodies.len(), authns.len() - 1);
    }

    #[test]
    fn what_is_not_an_authorized_authn_request_is_not_reported() {
        let mut wire = b"GET /healthz HTTP/1.1\r\n\r\n".to_vec();
        wire.extend(request(
            super::super::emqx::AUTHN_PATH,
            "wrong",
            r#"{"clientid":"a"}"#,
        ));
        wire.extend(request("/v1/emqx/authn/x", SECRET, r#"{"clientid":"b"}"#));
        let (r, _) = authn(1);
        wire.extend(&r);
        // A body over the limit is skipped, the next one still found.
        let (bodies, on) = scan(&wire, 7, 10);
        assert_eq!((bodies.len(), on), (0, true));
        let (bodies, on) = scan(&wire, 7, 1024);
        assert_eq!((bodies.len(), on), (1, true));
    }

    #[test]
    fn the_scan_stops_at_what_it_does_not_follow() {
        let chunked = b"POST /v1/emqx/authn HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let expect =
            b"POST /v1/emqx/authn HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}";
        let two_lengths =
            b"POST /v1/emqx/authn HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}";
        let signed = b"POST /v1/emqx/authn HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}";
        let garbage = b"\x00\x01 not http at all\r\n\r\n";
        for wire in [&chunked[..], expect, two_lengths, signed, garbage] {
            assert_eq!(scan(wire, 3, 1024), (vec![], false));
        }
        // A head that never ends stops the scan once it is too long.
        let endless = [b'a'; MAX_HEAD + 1];
        assert_eq!(scan(&endless, 100, 1024), (vec![], false));
        assert_eq!(scan(&endless[..MAX_HEAD - 1], 100, 1024), (vec![], true));
    }

    #[test]
    fn a_connection_of_other_requests_is_left_alone() {
        let mut wire = Vec::new();
        for _ in 0..GIVE_UP_AFTER {
            wire.extend(request("/v1/emqx/authz", SECRET, r#"{"clientid":"dev-1"}"#));
        }
        let (r, _) = authn(1);
        wire.extend(r);
        assert_eq!(scan(&wire, 64, 1024), (vec![], false));
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(
            parts in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..32),
            prefix in 0usize..3,
        ) {
            let record = Record::default();
            let mut scanner = Scanner::new(&record, 64);
            // Sometimes after real requests, so the scan is mid-stream when the bytes turn bad.
            for i in 0..prefix {
                let (r, _) = authn(i);
                scanner.feed(&r);
            }
            for p in &parts {
                if !scanner.feed(p) {
                    break;
                }
            }
            prop_assert!(scanner.buf.len() <= MAX_HEAD.max(64));
        }
    }
}
