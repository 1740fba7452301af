//! The buffered writer: a bounded queue the hot path never waits on, drained in batches into the
//! store, which links each batch onto the chain inside one transaction.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;

use super::AuditRecord;
use crate::registry::Store;

/// Events the queue holds before new ones are dropped (and counted).
const QUEUE: usize = 65_536;
/// Largest batch written in one transaction.
const BATCH: usize = 512;

/// Where the gate sends audit events.
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
    dropped: AtomicU64,
}

impl AuditSink {
    /// Starts the writer for `store`.
    pub fn spawn(store: Store) -> Arc<AuditSink> {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(write_batches(store, rx));
        Arc::new(AuditSink {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues an event; if the queue is full the event is dropped and counted (auth never waits
    /// on the audit trail).
    pub fn record(&self, r: AuditRecord) {
        if self.tx.try_send(r).is_err() {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if n.is_power_of_two() {
                tracing::error!(dropped = n, "audit queue full: events dropped");
            }
        }
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<AuditRecord>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let mut backoff = Duration::from_millis(100);
        while let Err(e) = store.append_audit(&batch).await {
            if store.is_closed() {
                return;
            }
            tracing::warn!(error = %e, events = batch.len(), "audit write failed; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        batch.clear();
    }
}
