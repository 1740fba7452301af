//! The buffered writer: a bounded queue the hot path never waits on, drained in batches into the
//! store, which links each batch onto the chain inside one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::AuditRecord;
use crate::registry::Store;

/// Events the queue holds before new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Room kept for CONNECT outcomes, lockouts and operator actions: refused publishes and
/// subscriptions (which devices can produce at will) are dropped once only this much is left.
const RESERVED: usize = QUEUE / 4;
/// Largest batch written in one transaction.
const BATCH: usize = 512;
/// How long the writer gathers events after the first of a batch arrives. While it waits, new
/// events wake nobody, so a burst of CONNECTs costs a few transactions a second instead of one
/// wake-up and one transaction per handful of events; an entry reaches the store this much later.
const LINGER: Duration = Duration::from_millis(20);
/// How long [`AuditSink::flush`] waits for the store.
const FLUSH_WAIT: Duration = Duration::from_secs(5);
/// Free queue slots below which [`AuditSink::room`] waits for the writer.
const LOW_ROOM: usize = QUEUE / 2;
/// Longest [`AuditSink::room`] waits (a CONNECT's share of its decision deadline).
const ROOM_WAIT: Duration = Duration::from_millis(250);

/// Where the gate sends audit events.
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    flush: mpsc::Sender<oneshot::Sender<()>>,
    dropped: AtomicU64,
    /// What the writer holds: see [`Unwritten`].
    in_hand: Arc<Unwritten>,
    /// Dropped events by kind (for `/metrics`), and how many since the last [`AuditSink::take_dropped`].
    by_kind: std::sync::Mutex<std::collections::BTreeMap<&'static str, (u64, u64)>>,
}

/// The writer's share of what is not written yet.
#[derive(Default)]
struct Unwritten {
    /// Entries taken off the queue whose batch has not committed.
    batch: AtomicUsize,
    /// Set once the writer stopped (store closed) with `lost` entries never written: the queue
    /// is gone with it.
    stopped: std::sync::atomic::AtomicBool,
    lost: AtomicUsize,
    /// Woken each time the writer takes events off the queue.
    taken: tokio::sync::Notify,
}

impl AuditSink {
    /// Starts the writer for `store`.
    pub fn spawn(store: Store) -> Arc<AuditSink> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let (flush, flushes) = mpsc::channel(4);
        let in_hand = Arc::new(Unwritten::default());
        tokio::spawn(write_batches(store, rx, flushes, Arc::clone(&in_hand)));
        Arc::new(AuditSink {
            tx,
            flush,
            dropped: AtomicU64::new(0),
            in_hand,
            by_kind: Default::default(),
        })
    }

    /// Writes everything queued so far without waiting out the linger (at shutdown, before the
    /// store closes); bounded in time, as a store that is down cannot take the events anyway.
    pub async fn flush(&self) {
        self.flush_until(tokio::time::Instant::now() + FLUSH_WAIT)
            .await;
    }

    /// [`AuditSink::flush`] waiting at most until `deadline` (the shutdown deadline).
    pub async fn flush_until(&self, deadline: tokio::time::Instant) {
        let (done, written) = oneshot::channel();
        let asked = tokio::time::timeout_at(deadline, self.flush.send(done)).await;
        if matches!(asked, Ok(Ok(()))) {
            let _ = tokio::time::timeout_at(deadline, written).await;
        }
    }

    /// Waits, at most [`ROOM_WAIT`], while the queue is more than half full: CONNECTs call it
    /// before they are decided, so a reconnect storm faster than the store takes its audit events
    /// is slowed to the writer's pace instead of dropping them (a CONNECT outcome is dropped only
    /// when the queue fills all the same). The caller skips it while the registry is known down:
    /// then nothing drains the queue and every CONNECT would wait in vain. False when it gave up
    /// waiting (or the writer stopped).
    pub async fn room(&self) -> bool {
        if self.tx.capacity() >= LOW_ROOM {
            return true;
        }
        let deadline = tokio::time::Instant::now() + ROOM_WAIT;
        loop {
            let taken = self.in_hand.taken.notified();
            if self.tx.capacity() >= LOW_ROOM {
                return true;
            }
            if self.in_hand.stopped.load(Ordering::Acquire)
                || tokio::time::timeout_at(deadline, taken).await.is_err()
            {
                return false;
            }
        }
    }

    /// Events [`AuditSink::room`] waits behind: more queued than this and CONNECTs wait.
    pub const ROOM_ABOVE: usize = QUEUE - LOW_ROOM;

    /// Entries not yet written: still queued, or in a batch whose write has not committed.
    pub fn pending(&self) -> u64 {
        if self.in_hand.stopped.load(Ordering::Acquire) {
            return self.in_hand.lost.load(Ordering::Acquire) as u64;
        }
        let queued = self.tx.max_capacity() - self.tx.capacity();
        (queued + self.in_hand.batch.load(Ordering::Acquire)) as u64
    }

    /// Queues an event; if the queue is full the event is dropped and counted (auth never waits
    /// on the audit trail).
    /// Events a device can cause at will only take the queue down to [`RESERVED`]; the drops are
    /// logged once per sweep ([`AuditSink::take_dropped`]).
    pub fn record(&self, r: AuditRecord) {
        let kind = r.event.kind();
        let bulk = matches!(kind, "denied" | "denied_more" | "rate_limited");
        if bulk && self.tx.capacity() <= RESERVED {
            return self.count_drop(kind);
        }
        if self.tx.try_send(r).is_err() {
            self.count_drop(kind);
        }
    }

    fn count_drop(&self, kind: &'static str) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        let mut m = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        let e = m.entry(kind).or_default();
        e.0 += 1;
        e.1 += 1;
    }

    /// Events dropped since the last call, by kind (the sweep logs them, once per interval).
    pub fn take_dropped(&self) -> Vec<(&'static str, u64)> {
        let mut m = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        m.iter_mut()
            .filter(|(_, (_, since))| *since > 0)
            .map(|(k, (_, since))| (*k, std::mem::take(since)))
            .collect()
    }

    /// `mqgate_audit_dropped_total{kind}` in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::from(
            "# HELP mqgate_audit_dropped_total Audit events dropped (queue full), by kind.\n# TYPE mqgate_audit_dropped_total counter\n",
        );
        let m = self.by_kind.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, (total, _)) in m.iter() {
            out.push_str(&format!(
                "mqgate_audit_dropped_total{{kind=\"{kind}\"}} {total}\n"
            ));
        }
        out
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_batches(
    store: Store,
    mut rx: mpsc::Receiver<AuditRecord>,
    mut flushes: mpsc::Receiver<oneshot::Sender<()>>,
    in_hand: Arc<Unwritten>,
) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        // Wait for the first event of a batch (or a flush request) …
        let mut flushed = tokio::select! {
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                None
            }
            f = flushes.recv() => f,
        };
        // … then gather more for a moment, unless the batch is full or a flush is waiting.
        if flushed.is_none() && batch.len() < BATCH {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                f = flushes.recv() => flushed = f,
            }
        }
        loop {
            while batch.len() < BATCH
                && let Ok(r) = rx.try_recv()
            {
                batch.push(r);
            }
            if batch.is_empty() {
                break;
            }
            in_hand.taken.notify_waiters();
            in_hand.batch.store(batch.len(), Ordering::Release);
            if !write(&store, &batch).await {
                in_hand
                    .lost
                    .store(batch.len() + rx.len(), Ordering::Release);
                in_hand.stopped.store(true, Ordering::Release);
                return;
            }
            batch.clear();
            in_hand.batch.store(0, Ordering::Release);
            // A flush drains the whole queue; otherwise one batch per linger.
            if flushed.is_none() {
                break;
            }
        }
        if let Some(done) = flushed {
            let _ = done.send(());
        }
    }
}

/// Appends `batch`, retrying with back-off while the store fails; false once the store is closed.
async fn write(store: &Store, batch: &[AuditRecord]) -> bool {
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = store.append_audit(batch).await {
        if store.is_closed() {
            return false;
        }
        tracing::warn!(error = %e, events = batch.len(), "audit write failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    true
}
