//! The only reader of wall-clock time. Everything else takes `now` as an input: Unix seconds for
//! credentials and expiry, milliseconds for rate buckets; what waits for a wall-clock moment
//! (a 5.0 will's delay, a stored session's expiry) waits on [`Clock::sleep_until_ms`], which a
//! manual clock ends when a test moves it past that moment.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use tokio::sync::Notify;

/// A source of "now": the system clock, or a test clock that tests move by hand.
#[derive(Clone, Debug)]
pub enum Clock {
    /// The system clock.
    System,
    /// A clock that only moves when told to.
    Manual(Arc<ManualTime>),
}

/// A manual clock's time (Unix milliseconds) and the wake-up of those sleeping on it.
#[derive(Debug, Default)]
pub struct ManualTime {
    ms: AtomicI64,
    moved: Notify,
}

impl Clock {
    /// A manual clock starting at `unix_secs`.
    pub fn manual(unix_secs: i64) -> Self {
        Clock::Manual(Arc::new(ManualTime {
            ms: AtomicI64::new(unix_secs * 1000),
            moved: Notify::new(),
        }))
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
            Clock::Manual(t) => t.ms.load(Ordering::SeqCst),
        }
    }

    /// Moves a manual clock forward by whole seconds (no effect on the system clock).
    pub fn advance(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }

    /// Moves a manual clock forward by milliseconds (no effect on the system clock).
    pub fn advance_ms(&self, ms: i64) {
        if let Clock::Manual(t) = self {
            t.ms.fetch_add(ms, Ordering::SeqCst);
            t.moved.notify_waiters();
        }
    }

    /// Waits until the clock reads `at_ms` (Unix milliseconds) or later: on the system clock a
    /// tokio sleep (checked again on waking, so a clock set back waits the difference); on a
    /// manual clock until [`Clock::advance_ms`] moves it there.
    pub async fn sleep_until_ms(&self, at_ms: i64) {
        match self {
            Clock::System => loop {
                let left = at_ms.saturating_sub(self.now_ms());
                if left <= 0 {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(left.unsigned_abs())).await;
            },
            Clock::Manual(t) => loop {
                // Registered before the time is read: an advance in between still wakes it.
                let moved = t.moved.notified();
                tokio::pin!(moved);
                moved.as_mut().enable();
                if self.now_ms() >= at_ms {
                    return;
                }
                moved.await;
            },
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

    #[tokio::test]
    async fn a_sleep_on_a_manual_clock_ends_when_the_clock_is_moved_past_it() {
        let c = Clock::manual(100);
        let sleeper = tokio::spawn({
            let c = c.clone();
            async move { c.sleep_until_ms(102_000).await }
        });
        c.advance(1);
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its time");
        c.advance(1);
        tokio::time::timeout(std::time::Duration::from_secs(5), sleeper)
            .await
            .expect("woke once the clock reached its time")
            .unwrap();
        // A time already passed returns at once.
        c.sleep_until_ms(0).await;
    }

    #[tokio::test]
    async fn a_sleep_on_the_system_clock_ends_at_its_time() {
        let c = Clock::System;
        let at = c.now_ms() + 20;
        c.sleep_until_ms(at).await;
        assert!(c.now_ms() >= at);
    }
}
