//! The header-read timeout's timer: one alarm per connection instead of one per request.
//!
//! hyper starts the header-read timeout each time it waits for a request head (`sleep_until`) and
//! drops it once the head is read. On hyper's stock tokio timer (`hyper_util::rt::TokioTimer`)
//! every request of a keep-alive connection then boxes a fresh `tokio::time::Sleep`, enters it in
//! the runtime's timer wheel, and takes it out again: about 600 instructions and two locks of the
//! timer wheel per request (`bench/instructions.sh`), where a cached EMQX authz answer costs about
//! 16,500 in all.
//!
//! [`HeadTimer`] gives hyper the same deadlines, and every sleep of one connection shares one
//! [`tokio::time::Sleep`], the connection's alarm. A sleep waiting for a later deadline than the
//! alarm's leaves the alarm where it is: when the alarm goes off before that sleep's deadline, the
//! sleep is polled again (hyper polls it whenever the connection is woken while it waits for a
//! head) and moves the alarm to its own deadline. So the alarm moves at most once per timeout
//! period, and a request costs a small box and an uncontended lock (about 110 instructions). A
//! sleep is ready only once the alarm has gone off at or after its own deadline: a head is never
//! cut short, and a head that takes longer than the timeout is cut off as hyper's own timer
//! would.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A timer for one connection's hyper `http1` server (`Builder::timer`): its sleeps share one
/// alarm. Make one per connection; sleeps of several connections would wake each other's tasks.
#[derive(Clone, Default)]
pub struct HeadTimer {
    alarm: Arc<Mutex<Option<Alarm>>>,
}

/// The connection's alarm, and the waker it holds.
struct Alarm {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The waker `sleep` was last polled with, until it is reset or goes off (`None` when it must
    /// be polled again to wake anyone).
    waker: Option<Waker>,
}

impl HeadTimer {
    /// A timer with no alarm set yet (the alarm is made when a sleep is first polled).
    pub fn new() -> Self {
        Self::default()
    }
}

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HeadSleep {
            deadline: tokio::time::Instant::from_std(deadline),
            alarm: Arc::clone(&self.alarm),
        })
    }

    /// tokio's clock (the same as `Instant::now` unless a test paused it).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One wait for a head: ready when the connection's alarm has gone off at or after `deadline`.
struct HeadSleep {
    deadline: tokio::time::Instant,
    alarm: Arc<Mutex<Option<Alarm>>>,
}

impl hyper::rt::Sleep for HeadSleep {}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        // Only this connection's task polls its sleeps: the lock is never contended. A poisoned
        // lock holds no broken state (every field is checked before it is trusted).
        let mut slot = self.alarm.lock().unwrap_or_else(|e| e.into_inner());
        let alarm = slot.get_or_insert_with(|| Alarm {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            waker: None,
        });
        // An alarm set later than this deadline is moved to it. One set earlier is kept while it
        // is pending (it wakes this task, whose next poll moves it on) and moved once it has gone
        // off (below).
        if alarm.sleep.deadline() > deadline {
            alarm.sleep.as_mut().reset(deadline);
            alarm.waker = None;
        }
        // Pending and holding a waker of this task: it will wake it (going off after this check
        // wakes the waker it holds). Polling it again would change nothing.
        if !alarm.sleep.is_elapsed()
            && alarm
                .waker
                .as_ref()
                .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        loop {
            match alarm.sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    alarm.waker = Some(cx.waker().clone());
                    return Poll::Pending;
                }
                Poll::Ready(()) if alarm.sleep.deadline() >= deadline => return Poll::Ready(()),
                // Gone off for an earlier deadline: set again for this one.
                Poll::Ready(()) => alarm.sleep.as_mut().reset(deadline),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::rt::Timer;

    use super::*;

    fn poll(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> Poll<()> {
        sleep.as_mut().poll(&mut Context::from_waker(Waker::noop()))
    }

    const T: Duration = Duration::from_secs(10);
    const MS: Duration = Duration::from_millis(1);

    /// Polled by hand (a waker of no task): pending until `left` from now, ready then.
    async fn ends_in(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>, left: Duration) {
        assert!(poll(sleep).is_pending());
        tokio::time::advance(left - MS).await;
        assert!(poll(sleep).is_pending());
        tokio::time::advance(MS).await;
        assert!(poll(sleep).is_ready());
    }

    /// Awaited by this task, a wait of `T` ends after exactly `T` (woken by the alarm).
    async fn awaited_ends_on_time(timer: &HeadTimer) {
        let start = tokio::time::Instant::now();
        tokio::time::timeout(T * 2, timer.sleep(T))
            .await
            .expect("woken at its deadline");
        assert_eq!(start.elapsed(), T);
    }

    /// A wait of `timeout` that sets the alarm and is then dropped (its head arrived).
    fn set_alarm(timer: &HeadTimer, timeout: Duration) {
        let mut s = timer.sleep(timeout);
        assert!(poll(&mut s).is_pending());
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_is_ready_at_its_deadline_not_before() {
        ends_in(&mut HeadTimer::new().sleep(T), T).await;
    }

    /// Request after request, each head read within the timeout: the alarm set for the first one
    /// goes off long before the later heads' deadlines, and none of them is cut short by it.
    #[tokio::test(start_paused = true)]
    async fn a_later_sleep_outlives_the_alarm_an_earlier_one_set() {
        let timer = HeadTimer::new();
        for _ in 0..50 {
            let mut s = timer.sleep(T);
            assert!(poll(&mut s).is_pending());
            tokio::time::advance(Duration::from_secs(1)).await;
            assert!(poll(&mut s).is_pending());
        }
        // 50 s in, the first alarm (at 10 s) long gone off: a new wait still gets its full time.
        ends_in(&mut timer.sleep(T), T).await;
    }

    /// A sleep whose deadline the alarm set by an earlier sleep passes without the later sleep
    /// being polled in between (the task was busy answering) still ends at its own deadline.
    #[tokio::test(start_paused = true)]
    async fn an_alarm_gone_off_unseen_is_moved_on() {
        let timer = HeadTimer::new();
        set_alarm(&timer, T);
        tokio::time::advance(Duration::from_secs(5)).await;
        let mut second = timer.sleep(T); // deadline at 15 s; the alarm is at 10 s
        tokio::time::advance(Duration::from_secs(6)).await; // 11 s: the alarm went off unseen
        ends_in(&mut second, Duration::from_secs(4)).await;
    }

    /// The alarm wakes the task that waits: a sleep awaited (not polled by hand) ends on time.
    #[tokio::test(start_paused = true)]
    async fn the_alarm_wakes_the_waiting_task() {
        let timer = HeadTimer::new();
        set_alarm(&timer, T);
        tokio::time::advance(Duration::from_secs(3)).await;
        awaited_ends_on_time(&timer).await;
    }

    /// A sleep that finds the alarm holding its own task's waker does not poll it again (the
    /// common case: the next request's head on the same connection), and still ends on time.
    #[tokio::test(start_paused = true)]
    async fn a_sleep_finding_its_tasks_waker_in_the_alarm_ends_on_time() {
        let timer = HeadTimer::new();
        let mut first = timer.sleep(T);
        // Polled by this task: the alarm, at 10 s, holds this task's waker.
        let polled = std::future::poll_fn(|cx| Poll::Ready(first.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        drop(first);
        tokio::time::advance(Duration::from_secs(4)).await;
        awaited_ends_on_time(&timer).await;
    }

    /// A sleep with an earlier deadline than the alarm's (a shorter timeout) moves the alarm
    /// back: it is not held to the later one.
    #[tokio::test(start_paused = true)]
    async fn a_shorter_sleep_moves_the_alarm_back() {
        let timer = HeadTimer::new();
        set_alarm(&timer, T * 3);
        awaited_ends_on_time(&timer).await;
    }
}
