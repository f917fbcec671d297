//! Linkerd's retry budget (ServiceProfile `retryBudget`): retries may add at most `ratio` of
//! the original requests of the last `ttl`, plus `min_per_second` retries per second of it,
//! so that retries cannot multiply an outage.
//!
//! Semantics are finagle's `RetryBudget`, which Linkerd takes through tower's `TpsBudget`:
//! each original request deposits a token, each retry withdraws `1 / ratio` tokens, a reserve
//! of `min_per_second × ttl` retries is always available, and a retry is allowed only while a
//! whole retry's worth remains. Counted in retries:
//!
//! ```text
//!   allowed  ⇔  retries_in_window + 1  ≤  ratio × requests_in_window + min_per_second × ttl
//! ```
//!
//! so with ratio 0.2 and no reserve, 100 requests allow 20 retries and refuse the 21st.
//! A refused retry withdraws nothing. The window is `ttl` cut into ten slices: a deposit or
//! withdrawal counts from its slice until ten slices later, so for between 0.9 × ttl and ttl
//! (tower keeps it for about ttl to 1.1 × ttl). Memory is ten counters, whatever the traffic.
//!
//! Why not tower's `TpsBudget`: it reads `tokio::time::Instant::now()` itself (no injected
//! clock, so it is neither sans-IO nor testable with a plain fake clock), asserts (panics) on a
//! `ttl` outside 1–60 s, and rounds `1 / ratio` to an integer (a ratio of 0.3 behaves as 1/3).
//! This budget takes `now`, accepts any ttl (a zero ttl acts as 10 ms) and keeps the ratio
//! exact. It is not synchronised itself: `state::PolicyState` holds one per route under a lock.

use std::time::{Duration, Instant};

use federation::traffic::RetryBudget;

/// Slices of the window.
const SLICES: usize = 10;
/// The shortest slice, so that a zero ttl cannot divide by zero.
const MIN_SLICE: Duration = Duration::from_millis(1);
/// Float slack, so that 0.2 × 100 allows exactly 20.
const EPSILON: f64 = 1e-9;

#[derive(Debug, Clone, Copy, Default)]
struct Slice {
    /// Which slice of time (since the budget's origin) these counts belong to.
    epoch: u64,
    requests: u64,
    retries: u64,
}

/// One route's retry budget.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    cfg: RetryBudget,
    slice: Duration,
    /// Set by the first event; epochs count slices from here.
    origin: Option<Instant>,
    /// The latest epoch seen, so that events reported slightly out of order never move the
    /// window backwards.
    latest: u64,
    slices: [Slice; SLICES],
}

impl Budget {
    pub fn new(cfg: RetryBudget) -> Self {
        Budget {
            cfg,
            slice: slice_of(cfg.ttl),
            origin: None,
            latest: 0,
            slices: [Slice::default(); SLICES],
        }
    }

    pub fn config(&self) -> RetryBudget {
        self.cfg
    }

    /// Applies a changed budget. A new ratio or minimum applies to the counts already held; a
    /// new ttl changes the window's geometry, so the counts start over.
    pub fn reconfigure(&mut self, cfg: RetryBudget) {
        if cfg.ttl != self.cfg.ttl {
            *self = Budget::new(cfg);
        } else {
            self.cfg = cfg;
        }
    }

    /// Counts one original request (not a retry).
    pub fn deposit(&mut self, now: Instant) {
        self.current(now).requests += 1;
    }

    /// Asks for one retry; counts it and returns true if the budget allows it.
    pub fn try_withdraw(&mut self, now: Instant) -> bool {
        let (requests, retries) = self.window(now);
        let ratio = if self.cfg.ratio.is_finite() {
            self.cfg.ratio.max(0.0)
        } else {
            0.0
        };
        let reserve = f64::from(self.cfg.min_per_second) * self.cfg.ttl.as_secs_f64();
        let allowance = ratio * requests as f64 + reserve;
        if (retries + 1) as f64 <= allowance + EPSILON {
            self.current(now).retries += 1;
            true
        } else {
            false
        }
    }

    /// Original requests and retries counted in the window ending at `now`.
    pub fn window(&mut self, now: Instant) -> (u64, u64) {
        let epoch = self.epoch(now);
        self.slices
            .iter()
            .filter(|s| s.epoch <= epoch && s.epoch + SLICES as u64 > epoch)
            .fold((0, 0), |(req, ret), s| {
                (
                    req.saturating_add(s.requests),
                    ret.saturating_add(s.retries),
                )
            })
    }

    fn epoch(&mut self, now: Instant) -> u64 {
        let origin = *self.origin.get_or_insert(now);
        let elapsed = now.saturating_duration_since(origin).as_nanos() / self.slice.as_nanos();
        let epoch = u64::try_from(elapsed).unwrap_or(u64::MAX);
        self.latest = self.latest.max(epoch);
        self.latest
    }

    fn current(&mut self, now: Instant) -> &mut Slice {
        let epoch = self.epoch(now);
        let slot = &mut self.slices[(epoch % SLICES as u64) as usize];
        if slot.epoch != epoch {
            *slot = Slice {
                epoch,
                requests: 0,
                retries: 0,
            };
        }
        slot
    }
}

fn slice_of(ttl: Duration) -> Duration {
    (ttl / SLICES as u32).max(MIN_SLICE)
}

#[cfg(test)]
mod tests {
    use super::super::testing::Clock;
    use super::*;

    fn budget(ratio: f64, min_per_second: u32, ttl_secs: u64) -> Budget {
        Budget::new(RetryBudget {
            ratio,
            min_per_second,
            ttl: Duration::from_secs(ttl_secs),
        })
    }

    #[test]
    fn refuses_the_21st_retry_in_a_window_of_100_requests() {
        let clock = Clock::new();
        let mut b = budget(0.2, 0, 10);
        for i in 0..100 {
            b.deposit(clock.millis(i * 10));
        }
        let now = clock.secs(1);
        for n in 1..=20 {
            assert!(b.try_withdraw(now), "retry {n} refused");
        }
        assert!(!b.try_withdraw(now), "the 21st retry was allowed");
        // A refusal withdrew nothing; one more request adds a fifth of a retry, not enough.
        b.deposit(now);
        assert!(!b.try_withdraw(now));
        for _ in 0..4 {
            b.deposit(now);
        }
        assert!(b.try_withdraw(now));
        assert_eq!(b.window(now), (105, 21));
    }

    #[test]
    fn no_requests_no_retries_without_a_reserve() {
        let clock = Clock::new();
        let mut b = budget(0.2, 0, 10);
        assert!(!b.try_withdraw(clock.secs(0)));
        // A fraction of a retry is not a retry.
        for _ in 0..4 {
            b.deposit(clock.secs(0));
        }
        assert!(!b.try_withdraw(clock.secs(0)));
    }

    #[test]
    fn the_reserve_allows_min_per_second_times_ttl() {
        let clock = Clock::new();
        // Linkerd's default: 20% + 10/s over 10 s.
        let mut b = Budget::new(RetryBudget::default());
        for _ in 0..100 {
            assert!(b.try_withdraw(clock.secs(1)));
        }
        assert!(!b.try_withdraw(clock.secs(1)));
        // 50 requests add 10 more.
        for _ in 0..50 {
            b.deposit(clock.secs(2));
        }
        for _ in 0..10 {
            assert!(b.try_withdraw(clock.secs(2)));
        }
        assert!(!b.try_withdraw(clock.secs(2)));
    }

    #[test]
    fn deposits_and_withdrawals_expire_after_ttl() {
        let clock = Clock::new();
        let mut b = budget(1.0, 0, 10);
        for _ in 0..10 {
            b.deposit(clock.secs(0));
        }
        // Still counted 9.9 s later (same ten slices), gone at 10 s.
        assert_eq!(b.window(clock.millis(9_900)), (10, 0));
        assert_eq!(b.window(clock.secs(10)), (0, 0));

        let mut b = budget(1.0, 0, 10);
        for _ in 0..10 {
            b.deposit(clock.secs(0));
        }
        for _ in 0..10 {
            assert!(b.try_withdraw(clock.secs(5)));
        }
        assert!(!b.try_withdraw(clock.secs(5)));
        // At 12 s the requests of 0 s have left the window, the retries of 5 s have not.
        for _ in 0..3 {
            b.deposit(clock.secs(12));
        }
        assert_eq!(b.window(clock.secs(12)), (3, 10));
        assert!(!b.try_withdraw(clock.secs(12)));
        assert_eq!(b.window(clock.secs(15)), (3, 0));
        for _ in 0..3 {
            assert!(b.try_withdraw(clock.secs(15)));
        }
        assert!(!b.try_withdraw(clock.secs(15)));
    }

    #[test]
    fn a_long_idle_gap_starts_clean() {
        let clock = Clock::new();
        let mut b = budget(0.5, 0, 1);
        for _ in 0..100 {
            b.deposit(clock.secs(0));
        }
        // Exactly ten slices later the same slot index is reused; its old counts must go.
        b.deposit(clock.secs(1));
        assert_eq!(b.window(clock.secs(1)), (1, 0));
        assert_eq!(b.window(clock.secs(3600)), (0, 0));
    }

    #[test]
    fn events_out_of_order_do_not_move_the_window_back() {
        let clock = Clock::new();
        let mut b = budget(1.0, 0, 10);
        b.deposit(clock.secs(0));
        b.deposit(clock.secs(5));
        b.deposit(clock.secs(4));
        assert_eq!(b.window(clock.secs(5)), (3, 0));
        // The late report counts in the latest slice, so it leaves with it.
        assert_eq!(b.window(clock.secs(14)), (2, 0));
        // Before the origin counts as the origin.
        let mut b = budget(1.0, 0, 10);
        b.deposit(clock.secs(5));
        b.deposit(clock.secs(0));
        assert_eq!(b.window(clock.secs(5)), (2, 0));
    }

    #[test]
    fn odd_configs_do_not_panic() {
        let clock = Clock::new();
        let mut zero_ttl = budget(0.5, 0, 0);
        zero_ttl.deposit(clock.secs(0));
        zero_ttl.deposit(clock.secs(0));
        assert!(zero_ttl.try_withdraw(clock.secs(0)));
        assert!(!zero_ttl.try_withdraw(clock.secs(1)));
        let mut nan = budget(f64::NAN, 0, 10);
        nan.deposit(clock.secs(0));
        assert!(!nan.try_withdraw(clock.secs(0)));
        let mut negative = budget(-1.0, 1, 10);
        for _ in 0..10 {
            assert!(negative.try_withdraw(clock.secs(0)));
        }
        assert!(!negative.try_withdraw(clock.secs(0)));
        // Ratios above 1 allow several retries per request, as finagle's do.
        let mut generous = budget(2.5, 0, 10);
        for _ in 0..2 {
            generous.deposit(clock.secs(0));
        }
        for _ in 0..5 {
            assert!(generous.try_withdraw(clock.secs(0)));
        }
        assert!(!generous.try_withdraw(clock.secs(0)));
    }

    #[test]
    fn reconfiguring_keeps_counts_unless_the_ttl_changes() {
        let clock = Clock::new();
        let mut b = budget(0.1, 0, 10);
        for _ in 0..100 {
            b.deposit(clock.secs(0));
        }
        b.reconfigure(RetryBudget {
            ratio: 0.2,
            ..b.config()
        });
        assert_eq!(b.window(clock.secs(1)), (100, 0));
        b.reconfigure(RetryBudget {
            ttl: Duration::from_secs(20),
            ..b.config()
        });
        assert_eq!(b.window(clock.secs(1)), (0, 0));
    }
}
