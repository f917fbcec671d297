//! Busy-polling while an answer is due: keeps the data-plane thread awake for a short while
//! after it has sent a request upstream, so that the response is picked up without a thread
//! wake-up.
//!
//! A tunnelled request crosses two gateways and each of them sleeps twice: waiting for the
//! request, then for the response. On a virtual machine waking a sleeping thread costs about
//! 0.1 ms at the median and several times that in the tail (the vCPU has halted and must be
//! woken by the hypervisor), which is most of what the tunnel adds to a request. Responses
//! from a peer gateway or a local endpoint usually come back within a fraction of a
//! millisecond, so instead of parking, the runtime keeps polling its I/O driver (without
//! blocking) while at least one answer is awaited, for at most its budget since the
//! last request started or finished. Idle gateways, and gateways whose upstreams are slow,
//! sleep as before.
//!
//! How: one task yields in a loop. tokio's current-thread scheduler, finding only a yielded
//! task, polls the I/O driver with a zero timeout instead of sleeping in `epoll_wait`; the
//! awaited response is then handled on the next turn of the loop.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Counts awaited answers and keeps the runtime polling while there are some. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Spinner {
    inner: Arc<Inner>,
}

struct Inner {
    /// Answers being awaited now.
    awaited: AtomicUsize,
    /// When an answer was last asked for or arrived, in µs since `epoch`.
    last_change: AtomicU64,
    epoch: Instant,
    /// Signalled on every change of `awaited`.
    changed: Notify,
    budget: Duration,
    /// Turns of the polling loop so far (for tests).
    turns: AtomicU64,
}

/// An answer being awaited; dropping it says the answer came (or will not).
pub(crate) struct Awaiting {
    inner: Arc<Inner>,
}

impl Spinner {
    /// A spinner that polls for at most `budget` after the last change; a zero budget never
    /// polls. Call [`Spinner::run`] on the data plane's runtime for it to have an effect.
    pub fn new(budget: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                awaited: AtomicUsize::new(0),
                last_change: AtomicU64::new(0),
                epoch: Instant::now(),
                changed: Notify::new(),
                budget,
                turns: AtomicU64::new(0),
            }),
        }
    }

    /// Marks an answer as awaited until the returned guard drops.
    pub fn awaiting(&self) -> Awaiting {
        self.inner.awaited.fetch_add(1, Ordering::Relaxed);
        self.inner.touch();
        Awaiting {
            inner: self.inner.clone(),
        }
    }

    /// Polls while answers are awaited; runs until its task is aborted.
    pub async fn run(self) {
        let inner = self.inner;
        if inner.budget.is_zero() {
            return;
        }
        loop {
            inner.changed.notified().await;
            while inner.awaited.load(Ordering::Relaxed) > 0 && inner.since_change() < inner.budget {
                inner.turns.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        }
    }
}

impl Inner {
    fn touch(&self) {
        let now = self.epoch.elapsed().as_micros() as u64;
        self.last_change.store(now, Ordering::Relaxed);
        self.changed.notify_one();
    }

    fn since_change(&self) -> Duration {
        let now = self.epoch.elapsed().as_micros() as u64;
        Duration::from_micros(now.saturating_sub(self.last_change.load(Ordering::Relaxed)))
    }
}

impl Drop for Awaiting {
    fn drop(&mut self) {
        self.inner.awaited.fetch_sub(1, Ordering::Relaxed);
        self.inner.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// While an answer is awaited the spinner keeps turning, and timers (other tasks) still
    /// fire meanwhile; once none is awaited, or the budget is spent, it parks.
    #[tokio::test(flavor = "current_thread")]
    async fn polls_only_while_an_answer_is_awaited_and_within_budget() {
        let spinner = Spinner::new(Duration::from_millis(50));
        let task = tokio::spawn(spinner.clone().run());
        let turns = || spinner.inner.turns.load(Ordering::Relaxed);
        let settle = || tokio::time::sleep(Duration::from_millis(5));

        settle().await;
        assert_eq!(turns(), 0, "nothing awaited: parked");

        let guard = spinner.awaiting();
        settle().await;
        let spun = turns();
        assert!(spun > 10, "an answer awaited: polling ({spun} turns)");
        drop(guard);
        settle().await;
        let after = turns();
        settle().await;
        assert_eq!(turns(), after, "the answer came: parked again");

        let _slow = spinner.awaiting();
        tokio::time::sleep(spinner.inner.budget + Duration::from_millis(10)).await;
        let spent = turns();
        settle().await;
        assert_eq!(
            turns(),
            spent,
            "budget spent: parked although still awaited"
        );
        assert!(spent > after, "it did poll for the slow answer first");
        task.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_zero_budget_never_polls() {
        let spinner = Spinner::new(Duration::ZERO);
        let task = tokio::spawn(spinner.clone().run());
        let _guard = spinner.awaiting();
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(spinner.inner.turns.load(Ordering::Relaxed), 0);
        assert!(task.is_finished());
    }
}
