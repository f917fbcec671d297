//! Sans-IO policy engines: the decisions behind retries, retry budgets, outlier detection,
//! connection-pool limits, fault injection and load balancing, as plain state machines.
//!
//! ```text
//!   data path (async) --events, now, rng--> engine --decision--> data path acts
//!                                            ^
//!                         PolicyState (outlives snapshots, keyed by stable ids)
//! ```
//!
//! Nothing here imports tokio, quinn or hyper, nor reads a clock or a global random source:
//! every function that needs time takes `now: Instant`, every random choice takes a
//! [`Random`]. Tests drive the engines with a fake clock (a base `Instant` plus offsets) and a
//! seeded or scripted random source, so every semantic below is checked to the millisecond.
//!
//! Each module names the Envoy, Istio or Linkerd behaviour it follows and where it differs.
//! The typed policy they act on is `federation::traffic`, compiled once per snapshot.
// Removed once the data path drives every engine.
#![allow(dead_code)]

pub(crate) mod budget;
pub(crate) mod fault;
pub(crate) mod lb;
pub(crate) mod limits;
pub(crate) mod locality;
pub(crate) mod outlier;
pub(crate) mod ratelimit;
pub(crate) mod retry;
pub(crate) mod state;

use rand::Rng;

/// A random source, injected so that tests are deterministic.
pub(crate) trait Random {
    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64;
    /// Uniform in `[0, n)`; 0 when `n == 0`.
    fn below(&mut self, n: u32) -> u32;
}

/// The thread-local generator of `rand` (`rand::rng()`), for the data path.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ThreadRandom;

impl Random for ThreadRandom {
    fn unit(&mut self) -> f64 {
        rand::rng().random::<f64>()
    }

    fn below(&mut self, n: u32) -> u32 {
        if n == 0 {
            0
        } else {
            rand::rng().random_range(0..n)
        }
    }
}

/// A draw from `rng` clamped to `[0, 1)`, so that a faulty source cannot make a duration
/// computation panic or a percentage exceed its bounds.
fn unit_clamped(rng: &mut impl Random) -> f64 {
    let u = rng.unit();
    if u.is_finite() {
        u.clamp(0.0, 1.0 - f64::EPSILON)
    } else {
        0.0
    }
}

#[cfg(test)]
pub(crate) mod testing {
    //! Deterministic random sources and a fake clock for the engines' tests.

    use std::collections::VecDeque;
    use std::time::{Duration, Instant};

    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::Random;

    /// A seeded generator: the same seed gives the same sequence on every run.
    pub(crate) struct Seeded(StdRng);

    impl Seeded {
        pub(crate) fn new(seed: u64) -> Self {
            Seeded(StdRng::seed_from_u64(seed))
        }
    }

    impl Random for Seeded {
        fn unit(&mut self) -> f64 {
            self.0.random::<f64>()
        }

        fn below(&mut self, n: u32) -> u32 {
            if n == 0 { 0 } else { self.0.random_range(0..n) }
        }
    }

    /// Returns the scripted values in order; `below(n)` maps a value `u` to `floor(u × n)`.
    /// Running out of values fails the test.
    pub(crate) struct Scripted(VecDeque<f64>);

    impl Scripted {
        pub(crate) fn new(values: &[f64]) -> Self {
            Scripted(values.iter().copied().collect())
        }

        pub(crate) fn remaining(&self) -> usize {
            self.0.len()
        }
    }

    impl Random for Scripted {
        fn unit(&mut self) -> f64 {
            match self.0.pop_front() {
                Some(u) => u,
                None => panic!("scripted random ran out of values"),
            }
        }

        fn below(&mut self, n: u32) -> u32 {
            let u = self.unit();
            ((u * f64::from(n)) as u32).min(n.saturating_sub(1))
        }
    }

    /// A fake clock: a fixed base and offsets from it.
    #[derive(Clone, Copy)]
    pub(crate) struct Clock(Instant);

    impl Clock {
        pub(crate) fn new() -> Self {
            Clock(Instant::now())
        }

        pub(crate) fn at(self, offset: Duration) -> Instant {
            self.0 + offset
        }

        pub(crate) fn secs(self, s: u64) -> Instant {
            self.at(Duration::from_secs(s))
        }

        pub(crate) fn millis(self, ms: u64) -> Instant {
            self.at(Duration::from_millis(ms))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{Scripted, Seeded};
    use super::*;

    #[test]
    fn random_sources_stay_in_range() {
        let mut t = ThreadRandom;
        let mut s = Seeded::new(7);
        for _ in 0..1000 {
            let u = t.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(t.below(3) < 3);
            let u = s.unit();
            assert!((0.0..1.0).contains(&u));
            assert!(s.below(5) < 5);
        }
        assert_eq!(t.below(0), 0);
        assert_eq!(s.below(0), 0);
        let mut a = Seeded::new(42);
        let mut b = Seeded::new(42);
        assert_eq!(a.below(1000), b.below(1000));
        let mut sc = Scripted::new(&[0.0, 0.5, 0.999]);
        assert_eq!(sc.below(4), 0);
        assert_eq!(sc.below(4), 2);
        assert_eq!(sc.below(4), 3);
        assert_eq!(sc.remaining(), 0);
    }

    #[test]
    fn a_faulty_source_is_clamped() {
        let mut nan = Scripted::new(&[f64::NAN, 7.0, -1.0]);
        assert_eq!(unit_clamped(&mut nan), 0.0);
        assert!(unit_clamped(&mut nan) < 1.0);
        assert_eq!(unit_clamped(&mut nan), 0.0);
    }
}
