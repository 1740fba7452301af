//! Token buckets as GCRA (generic cell rate algorithm): one timestamp per bucket, exact refill,
//! burst as tolerance. Pure: `now` (Unix milliseconds) is passed in.

/// A bucket's parameters: sustained rate and how many may come at once.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Rate {
    /// Sustained cells (messages or bytes) per second; must be > 0.
    pub per_sec: f64,
    /// Cells that may arrive at once after a quiet period; at least 1.
    pub burst: u32,
}

impl Rate {
    /// A rate, or `None` when `per_sec` is not positive and finite or `burst` is 0.
    pub fn new(per_sec: f64, burst: u32) -> Option<Rate> {
        (per_sec.is_finite() && per_sec > 0.0 && burst >= 1).then_some(Rate { per_sec, burst })
    }

    fn interval_ms(&self) -> f64 {
        1000.0 / self.per_sec
    }
}

/// One bucket's state: its theoretical arrival time.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Gcra {
    tat_ms: f64,
}

/// What a conforming take would leave behind; apply it with [`Gcra::commit`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Take(f64);

impl Gcra {
    /// Whether `cost` cells conform at `now_ms`; `Err` carries the milliseconds until they would.
    pub fn peek(&self, rate: Rate, now_ms: i64, cost: u32) -> Result<Take, u64> {
        let now = now_ms as f64;
        let t = rate.interval_ms();
        let new_tat = self.tat_ms.max(now) + t * f64::from(cost.max(1));
        let limit = now + t * f64::from(rate.burst);
        if new_tat <= limit + 1e-9 {
            Ok(Take(new_tat))
        } else {
            Err((new_tat - limit).ceil() as u64)
        }
    }

    /// Applies a take returned by [`Gcra::peek`].
    pub fn commit(&mut self, take: Take) {
        self.tat_ms = take.0;
    }

    /// Whether the bucket is full again at `now_ms` (its state then equals a fresh one's).
    pub fn is_full(&self, now_ms: i64) -> bool {
        self.tat_ms <= now_ms as f64
    }

    /// Takes `cost` cells if they conform.
    pub fn take(&mut self, rate: Rate, now_ms: i64, cost: u32) -> Result<(), u64> {
        let t = self.peek(rate, now_ms, cost)?;
        self.commit(t);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_800_000_000_000;

    #[test]
    fn a_full_bucket_allows_its_burst_then_refuses() {
        let rate = Rate::new(10.0, 5).unwrap();
        let mut b = Gcra::default();
        for _ in 0..5 {
            assert!(b.take(rate, T0, 1).is_ok());
        }
        assert_eq!(b.take(rate, T0, 1), Err(100));
    }

    #[test]
    fn the_bucket_refills_at_the_sustained_rate() {
        let rate = Rate::new(10.0, 5).unwrap();
        let mut b = Gcra::default();
        for _ in 0..5 {
            b.take(rate, T0, 1).unwrap();
        }
        assert!(b.take(rate, T0 + 99, 1).is_err());
        assert!(b.take(rate, T0 + 100, 1).is_ok());
        assert!(b.take(rate, T0 + 100, 1).is_err());
        // A long quiet period refills only up to the burst.
        let later = T0 + 60_000;
        for _ in 0..5 {
            assert!(b.take(rate, later, 1).is_ok());
        }
        assert!(b.take(rate, later, 1).is_err());
    }

    #[test]
    fn a_sustained_stream_at_the_rate_is_never_refused() {
        let rate = Rate::new(50.0, 1).unwrap();
        let mut b = Gcra::default();
        for i in 0..1000 {
            assert!(b.take(rate, T0 + i * 20, 1).is_ok(), "message {i}");
        }
        assert!(b.take(rate, T0 + 999 * 20 + 10, 1).is_err());
    }

    #[test]
    fn costs_larger_than_one_draw_more() {
        let rate = Rate::new(1000.0, 1500).unwrap();
        let mut b = Gcra::default();
        assert!(b.take(rate, T0, 1000).is_ok());
        assert!(b.take(rate, T0, 600).is_err());
        assert!(b.take(rate, T0, 500).is_ok());
    }

    #[test]
    fn a_refused_peek_changes_nothing() {
        let rate = Rate::new(1.0, 1).unwrap();
        let mut b = Gcra::default();
        b.take(rate, T0, 1).unwrap();
        let before = b;
        assert!(b.peek(rate, T0, 1).is_err());
        assert_eq!(b, before);
    }

    #[test]
    fn invalid_rates_are_refused() {
        assert!(Rate::new(0.0, 1).is_none());
        assert!(Rate::new(-1.0, 1).is_none());
        assert!(Rate::new(f64::NAN, 1).is_none());
        assert!(Rate::new(1.0, 0).is_none());
    }
}
