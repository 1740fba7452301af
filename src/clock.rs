//! The only reader of wall-clock time. Everything else takes `now` as an input: Unix seconds for
//! credentials and expiry, milliseconds for rate buckets.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// A source of "now": the system clock, or a test clock that tests move by hand.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that only moves when told to (holds Unix milliseconds).
    Manual(Arc<AtomicI64>),
}

impl Clock {
    /// A manual clock starting at `unix_secs`.
    pub fn manual(unix_secs: i64) -> Self {
        Clock::Manual(Arc::new(AtomicI64::new(unix_secs * 1000)))
    }

    /// Current Unix time in seconds.
    pub fn now(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Current Unix time in milliseconds.
    pub fn now_ms(&self) -> i64 {
        match self {
            Clock::System => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as i64)
                .unwrap_or(0),
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward by whole seconds (no effect on the system clock).
    pub fn advance(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }

    /// Moves a manual clock forward by milliseconds (no effect on the system clock).
    pub fn advance_ms(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

/// A configured duration as whole Unix seconds (saturating far in the future, never negative).
pub fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let c = Clock::manual(100);
        assert_eq!((c.now(), c.now_ms()), (100, 100_000));
        c.advance_ms(1500);
        assert_eq!((c.now(), c.now_ms()), (101, 101_500));
        c.advance(2);
        assert_eq!(c.now(), 103);
    }
}
