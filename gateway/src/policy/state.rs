//! Policy state that outlives snapshots: retry budgets, outlier detectors and pool limits,
//! keyed by stable ids rather than held in the snapshot, so that a policy change (a new
//! snapshot) does not reset an ejection, refill a budget or forget requests in flight.
//!
//! Keys are strings the data path builds from stable names: a route key per route (for
//! example `api.prod/http[0]`) for budgets, a destination key per destination (for example
//! `api.prod/v2` or `api.prod@east`) for detectors and limits. The three maps share one key
//! space only in [`PolicyState::retain`], which keeps every entry whose key is live; a route
//! key and a destination key should not be spelled alike.
//!
//! When a snapshot arrives the data path calls `retain` with the keys it still names; the
//! state of routes and destinations that left is dropped (a `Limits` still held by a request
//! in flight lives on until that request ends, then goes). Hosts that left a destination are
//! dropped with [`PolicyState::retain_hosts`].
//!
//! Each map sits behind its own `std::sync::Mutex`, held only for the synchronous engine
//! call passed in, never across an `.await` (the closures are not async). A poisoned lock is
//! taken over: the engines' state stays consistent between calls, whatever panicked.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};

use federation::traffic::RetryBudget;

use super::budget::Budget;
use super::limits::Limits;
use super::outlier::Detector;

/// A route or destination key.
pub(crate) type Key = String;

/// Budgets, detectors and limits of every live route and destination.
#[derive(Debug, Default)]
pub(crate) struct PolicyState {
    budgets: Mutex<HashMap<Key, Budget>>,
    detectors: Mutex<HashMap<Key, Detector<String>>>,
    limits: Mutex<HashMap<Key, Arc<Limits>>>,
    /// RateLimitPolicy buckets, and the peers' demand for the mesh-wide ones.
    pub rate_limits: super::ratelimit::Limiter,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `f` on the entry for `key`, created with `new` when absent; allocates the key only
/// then, so the request path does not allocate once the entry exists.
fn with_entry<V, R>(
    map: &mut HashMap<Key, V>,
    key: &str,
    new: impl FnOnce() -> V,
    f: impl FnOnce(&mut V) -> R,
) -> R {
    if let Some(v) = map.get_mut(key) {
        return f(v);
    }
    f(map.entry(key.to_owned()).or_insert_with(new))
}

impl PolicyState {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `f` on the budget of `route`, created with `cfg` if absent; a changed `cfg` is
    /// applied to the existing budget (see `Budget::reconfigure`).
    pub fn with_budget<R>(
        &self,
        route: &str,
        cfg: RetryBudget,
        f: impl FnOnce(&mut Budget) -> R,
    ) -> R {
        with_entry(
            &mut lock(&self.budgets),
            route,
            || Budget::new(cfg),
            |budget| {
                if budget.config() != cfg {
                    budget.reconfigure(cfg);
                }
                f(budget)
            },
        )
    }

    /// Runs `f` on the outlier detector of `destination`, created if absent.
    pub fn with_detector<R>(
        &self,
        destination: &str,
        f: impl FnOnce(&mut Detector<String>) -> R,
    ) -> R {
        with_entry(&mut lock(&self.detectors), destination, Detector::new, f)
    }

    /// The pool limits of `destination`, created if absent.
    pub fn limits(&self, destination: &str) -> Arc<Limits> {
        with_entry(
            &mut lock(&self.limits),
            destination,
            || Arc::new(Limits::new()),
            |limits| Arc::clone(limits),
        )
    }

    /// Keeps the state of the keys in `live` and drops the rest.
    pub fn retain(&self, live: &HashSet<Key>) {
        lock(&self.budgets).retain(|k, _| live.contains(k));
        lock(&self.detectors).retain(|k, _| live.contains(k));
        lock(&self.limits).retain(|k, _| live.contains(k));
    }

    /// Keeps the state whose key `keep` accepts and drops the rest.
    pub fn retain_where(&self, keep: impl Fn(&str) -> bool) {
        lock(&self.budgets).retain(|k, _| keep(k));
        lock(&self.detectors).retain(|k, _| keep(k));
        lock(&self.limits).retain(|k, _| keep(k));
    }

    /// Runs `f` on every detector with its key (to drop hosts that left).
    pub fn each_detector(&self, mut f: impl FnMut(&str, &mut Detector<String>)) {
        for (key, detector) in lock(&self.detectors).iter_mut() {
            f(key, detector);
        }
    }

    /// Drops the outlier state of the hosts of `destination` that `keep` refuses.
    pub fn retain_hosts(&self, destination: &str, keep: impl Fn(&String) -> bool) {
        if let Some(d) = lock(&self.detectors).get_mut(destination) {
            d.retain(keep);
        }
    }

    /// Routes, destinations with a detector, destinations with limits: for tests and metrics.
    pub fn sizes(&self) -> (usize, usize, usize) {
        (
            lock(&self.budgets).len(),
            lock(&self.detectors).len(),
            lock(&self.limits).len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use federation::traffic::{ConnectionPool, OutlierDetection};

    use super::super::outlier::Outcome;
    use super::super::testing::Clock;
    use super::*;

    fn live(keys: &[&str]) -> HashSet<Key> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    fn eject(
        state: &PolicyState,
        cfg: &OutlierDetection,
        dest: &str,
        host: &str,
        now: std::time::Instant,
    ) -> bool {
        let host = host.to_string();
        state.with_detector(dest, |d| {
            let mut ejected = false;
            for _ in 0..5 {
                ejected |= d.record(cfg, &host, Outcome::Status(503), 2, now);
            }
            ejected
        })
    }

    #[test]
    fn a_policy_change_does_not_reset_an_ejection_and_a_gone_key_drops_state() {
        let clock = Clock::new();
        let state = PolicyState::new();
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        assert!(eject(
            &state,
            &cfg,
            "api.prod/v2",
            "10.0.0.1:80",
            clock.secs(0)
        ));
        // A new snapshot with the same destination (its policy changed, say the base time).
        state.retain(&live(&["api.prod/v2"]));
        let changed = OutlierDetection {
            base_ejection_time: Duration::from_secs(60),
            ..cfg.clone()
        };
        let host = "10.0.0.1:80".to_string();
        assert!(state.with_detector("api.prod/v2", |d| d.is_ejected(&host, clock.secs(10))));
        assert_eq!(
            state.with_detector("api.prod/v2", |d| d
                .healthy(&changed, std::slice::from_ref(&host), clock.secs(10))
                .len()),
            0
        );
        // The destination leaves: its state goes; if it comes back, it starts clean.
        state.retain(&live(&[]));
        assert_eq!(state.sizes(), (0, 0, 0));
        assert!(!state.with_detector("api.prod/v2", |d| d.is_ejected(&host, clock.secs(10))));
    }

    #[test]
    fn hosts_that_left_are_dropped() {
        let clock = Clock::new();
        let state = PolicyState::new();
        let cfg = OutlierDetection {
            max_ejection_percent: 100,
            ..OutlierDetection::default()
        };
        assert!(eject(&state, &cfg, "api.prod", "a", clock.secs(0)));
        assert!(eject(&state, &cfg, "api.prod", "b", clock.secs(0)));
        state.retain_hosts("api.prod", |h| h == "a");
        let (a, b) = ("a".to_string(), "b".to_string());
        assert!(state.with_detector("api.prod", |d| d.is_ejected(&a, clock.secs(1))));
        assert!(!state.with_detector("api.prod", |d| d.is_ejected(&b, clock.secs(1))));
        // Unknown destination: nothing to do, nothing created.
        state.retain_hosts("other", |_| false);
        assert_eq!(state.sizes().1, 1);
    }

    #[test]
    fn budgets_survive_snapshots_and_follow_config_changes() {
        let clock = Clock::new();
        let state = PolicyState::new();
        let cfg = RetryBudget {
            ratio: 0.2,
            min_per_second: 0,
            ttl: Duration::from_secs(10),
        };
        for _ in 0..100 {
            state.with_budget("api.prod/http[0]", cfg, |b| b.deposit(clock.secs(0)));
        }
        let withdraw =
            |cfg| state.with_budget("api.prod/http[0]", cfg, |b| b.try_withdraw(clock.secs(1)));
        for _ in 0..20 {
            assert!(withdraw(cfg));
        }
        state.retain(&live(&["api.prod/http[0]"]));
        assert!(!withdraw(cfg));
        // A higher ratio applies to the requests already counted.
        let more = RetryBudget { ratio: 0.3, ..cfg };
        for _ in 0..10 {
            assert!(withdraw(more));
        }
        assert!(!withdraw(more));
        state.retain(&live(&[]));
        assert!(!withdraw(cfg));
        assert_eq!(state.sizes().0, 1);
    }

    #[test]
    fn limits_are_shared_per_destination_and_outlive_retain_while_held() {
        let state = PolicyState::new();
        let pool = ConnectionPool {
            max_requests: Some(1),
            ..ConnectionPool::default()
        };
        let permit = state.limits("api.prod").try_request(&pool).unwrap();
        assert!(state.limits("api.prod").try_request(&pool).is_err());
        assert!(state.limits("web.prod").try_request(&pool).is_ok());
        state.retain(&live(&["api.prod"]));
        assert_eq!(state.limits("api.prod").in_flight(), 1);
        drop(permit);
        assert_eq!(state.limits("api.prod").in_flight(), 0);
        // Dropped from the state while a request holds it: the request still gives back.
        let held = state.limits("api.prod");
        let permit = held.try_request(&pool).unwrap();
        state.retain(&live(&[]));
        drop(permit);
        assert_eq!(held.in_flight(), 0);
        assert_eq!(state.limits("api.prod").in_flight(), 0);
    }
}
