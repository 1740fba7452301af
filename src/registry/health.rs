//! Registry health: a circuit breaker in front of the store for the hot path.
//!
//! Once a lookup has failed or overrun its deadline, the store is *known unreachable*: lookups of
//! devices that are not cached are refused at once (instead of each waiting out a connection
//! attempt) until a background probe sees the store answer again. Cached devices keep their
//! answer meanwhile (the cache is never consulted less, only the store). `/readyz` and the
//! metrics report the state.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use super::Store;

/// How often the probe asks a store known to be down.
pub const PROBE_INTERVAL: Duration = Duration::from_millis(500);

/// Whether the store is known unreachable, and the probe that notices its return.
pub struct Health {
    store: Store,
    down: AtomicBool,
    probe_timeout: Duration,
    outages: AtomicU64,
}

impl Health {
    /// Health of `store`; a probe waits at most `probe_timeout` for an answer.
    pub fn new(store: Store, probe_timeout: Duration) -> Arc<Health> {
        Arc::new(Health {
            store,
            down: AtomicBool::new(false),
            probe_timeout,
            outages: AtomicU64::new(0),
        })
    }

    /// Whether the store is known unreachable (one atomic load: the hot path asks it).
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Records that the store failed to answer; the first report starts the probe.
    pub fn mark_down(self: &Arc<Self>, why: &str) {
        if self.down.swap(true, Ordering::AcqRel) {
            return;
        }
        self.outages.fetch_add(1, Ordering::Relaxed);
        tracing::error!(
            why,
            "registry unreachable: uncached devices are denied until it answers again"
        );
        let me = Arc::clone(self);
        tokio::spawn(async move { me.probe().await });
    }

    /// Asks the store until it answers, then closes the breaker. Ends with the store.
    async fn probe(&self) {
        loop {
            tokio::time::sleep(PROBE_INTERVAL).await;
            if self.store.is_closed() {
                return;
            }
            if self.ping().await {
                self.down.store(false, Ordering::Release);
                tracing::info!("registry reachable again");
                return;
            }
        }
    }

    /// One bounded reachability check.
    async fn ping(&self) -> bool {
        matches!(
            tokio::time::timeout(self.probe_timeout, self.store.ping()).await,
            Ok(Ok(()))
        )
    }

    /// Readiness: false while the store is known down, else one bounded ping (a failed one
    /// opens the breaker).
    pub async fn ready(self: &Arc<Self>) -> bool {
        if self.is_down() {
            return false;
        }
        if self.ping().await {
            return true;
        }
        self.mark_down("readiness check got no answer");
        false
    }

    /// `mqgate_registry_up` and `mqgate_registry_outages_total` in Prometheus text format.
    pub fn render_metrics(&self) -> String {
        let mut out = String::new();
        let up = u8::from(!self.is_down());
        let outages = self.outages.load(Ordering::Relaxed);
        let _ = write!(
            out,
            "# HELP mqgate_registry_up Whether the registry store is answering (0 while known unreachable).\n# TYPE mqgate_registry_up gauge\nmqgate_registry_up {up}\n\
             # HELP mqgate_registry_outages_total Times the registry was found unreachable.\n# TYPE mqgate_registry_outages_total counter\nmqgate_registry_outages_total {outages}\n"
        );
        out
    }
}
