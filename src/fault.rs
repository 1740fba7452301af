//! Faults mqgate cannot recover from in place (the embedded router's thread died): once raised,
//! `/readyz` answers 503, the broker stops accepting, the queued audit entries are written and
//! `serve` exits non-zero, so that the supervisor restarts a whole, healthy process (crash-only).

use std::sync::OnceLock;

use tokio::sync::watch;

/// The process's fatal fault, raised at most once.
pub struct Fault {
    reason: OnceLock<&'static str>,
    raised: watch::Sender<bool>,
}

impl Default for Fault {
    fn default() -> Self {
        Fault {
            reason: OnceLock::new(),
            raised: watch::channel(false).0,
        }
    }
}

impl Fault {
    /// Raises the fault (the first reason given stays).
    pub fn raise(&self, reason: &'static str) {
        if self.reason.set(reason).is_ok() {
            tracing::error!(reason, "fatal fault: mqgate stops and exits non-zero");
        }
        self.raised.send_replace(true);
    }

    /// The fault's reason, once raised.
    pub fn reason(&self) -> Option<&'static str> {
        self.reason.get().copied()
    }

    /// Resolves once the fault is raised.
    pub async fn raised(&self) {
        let mut rx = self.raised.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}
