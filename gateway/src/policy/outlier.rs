//! Outlier detection: Envoy's consecutive-error ejection, as Istio's `outlierDetection`
//! configures it (`source/common/upstream/outlier_detection_impl.cc`). Applied to endpoints
//! at the destination gateway and to whole clusters at the source gateway; a host is whatever
//! `K` names.
//!
//! - **Counting** (`DetectorHostMonitorImpl::putHttpResponseCode`, with Istio's default of not
//!   splitting local and external errors): a 5xx adds to the consecutive-5xx count, a 502, 503
//!   or 504 also to the consecutive-gateway-error count (any other 5xx zeroes that one); a
//!   local failure (connect failure, reset, timeout) counts as both, as Envoy maps it to 503 or
//!   504. Any other status is a success and zeroes both.
//! - **Ejection** (`onConsecutiveErrorWorker`, `ejectHost`): when a count reaches its
//!   threshold (none or 0 = off) the host is ejected if `100 × (ejected + 1) / hosts ≤
//!   max_ejection_percent`, Envoy's current rule (without `always_eject_one_host`, which Istio
//!   does not set): with the default 10%, a pool of fewer than ten hosts ejects none. Either
//!   way the count that fired starts over. Gateway errors are checked before 5xx, as Envoy
//!   does; once ejected, the second trigger of the same response is moot.
//! - **Ejection time** (`ejectHost`, `checkHostForUneject`): `min(base × n, max(base, 300 s))`,
//!   where `n` grows by one with each ejection (Envoy's `eject_time_backoff`) — 30 s, then
//!   60 s, … — and shrinks by one for each `interval` the host stays healthy after it comes
//!   back (`onIntervalTimer`). 300 s is Envoy's default `max_ejection_time`; Istio raises it
//!   to the base when the base is longer, as here.
//! - **Return**: Envoy returns a host at the first interval tick after its time is over;
//!   here it is back as soon as the time is over (at most one interval earlier), and
//!   [`Detector::is_ejected`] needs no timer: it compares `now` with the end of the ejection.
//!   The counts start over on return, as in `unejectHost`. The interval decay is computed
//!   lazily from the return time when the host is next seen, anchored at its return rather
//!   than at the detector's tick phase. Results that arrive while a host is ejected (answers
//!   to requests already under way) are ignored; Envoy counts them, but zeroes the counts on
//!   return, so no decision differs.
//! - **Panic threshold** (Istio `minHealthPercent` → Envoy `healthy_panic_threshold`,
//!   `LoadBalancerBase::isHostSetInPanic`): if fewer than that share of hosts is healthy, the
//!   ejections are ignored and every host is used. With 0 (Istio's default) there is no panic
//!   mode: when every host is ejected there is none to use, and the caller answers 503 (UH).
//!
//! The ejection time is fixed when a host is ejected; a policy change during an ejection
//! applies to the next one. Success-rate and failure-percentage ejection, which Istio does
//! not expose, are not implemented.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use federation::traffic::OutlierDetection;

/// Envoy's default `max_ejection_time`.
const MAX_EJECTION_TIME: Duration = Duration::from_secs(300);

/// What one call to a host came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// A response that is not a 5xx.
    Success,
    /// A response with this status (a 5xx counts as an error, anything else as a success).
    Status(u16),
    /// Connect failure, reset or timeout: counts as a gateway error and as a 5xx.
    LocalFailure,
}

#[derive(Debug, Clone, Default)]
struct Host {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// Envoy's `eject_time_backoff`: the multiplier of the base ejection time.
    backoff: u32,
    /// When the current (or last) ejection ends; in the past once the host is back.
    ejected_until: Option<Instant>,
    /// Whether the counts and the decay anchor were already reset for the last return.
    returned: bool,
    /// Where the interval decay of `backoff` counts from: the return, advanced by whole
    /// intervals as they are applied.
    decay_from: Option<Instant>,
    ejections: u64,
}

impl Host {
    fn is_ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|until| now < until)
    }

    /// Brings the host up to `now`: a finished ejection becomes a return (counts zeroed), and
    /// each whole interval healthy since then takes one off the backoff.
    fn settle(&mut self, cfg: &OutlierDetection, now: Instant) {
        let Some(until) = self.ejected_until else {
            return;
        };
        if now < until {
            return;
        }
        if !self.returned {
            self.returned = true;
            self.consecutive_5xx = 0;
            self.consecutive_gateway = 0;
            self.decay_from = Some(until);
        }
        if let Some(from) = self.decay_from {
            let interval = cfg.interval.max(Duration::from_millis(1));
            let elapsed = now.saturating_duration_since(from);
            let ticks = elapsed.as_nanos() / interval.as_nanos();
            if ticks > 0 {
                let ticks32 = u32::try_from(ticks).unwrap_or(u32::MAX);
                self.backoff = self.backoff.saturating_sub(ticks32);
                self.decay_from = if self.backoff == 0 {
                    None
                } else {
                    interval
                        .checked_mul(ticks32)
                        .and_then(|d| from.checked_add(d))
                };
            }
        }
    }
}

/// Consecutive-error outlier detection over the hosts of one destination.
#[derive(Debug, Clone)]
pub(crate) struct Detector<K> {
    hosts: BTreeMap<K, Host>,
}

impl<K: Ord + Clone> Default for Detector<K> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + Clone> Detector<K> {
    pub fn new() -> Self {
        Detector {
            hosts: BTreeMap::new(),
        }
    }

    /// Records a result for host `key` among `hosts` hosts (the pool size, for
    /// `max_ejection_percent`); returns true if this call ejected the host.
    pub fn record(
        &mut self,
        cfg: &OutlierDetection,
        key: &K,
        outcome: Outcome,
        hosts: usize,
        now: Instant,
    ) -> bool {
        // Counted before the entry is borrowed; the host itself is not ejected (checked below).
        let ejected_others = self.ejected_count(now);
        let host = match self.hosts.get_mut(key) {
            Some(h) => h,
            None => self.hosts.entry(key.clone()).or_default(),
        };
        host.settle(cfg, now);
        if host.is_ejected(now) {
            return false;
        }
        let (error, gateway_error) = match outcome {
            Outcome::Status(code) if (500..=599).contains(&code) => {
                (true, matches!(code, 502..=504))
            }
            Outcome::Success | Outcome::Status(_) => (false, false),
            Outcome::LocalFailure => (true, true),
        };
        if !error {
            host.consecutive_5xx = 0;
            host.consecutive_gateway = 0;
            return false;
        }
        host.consecutive_5xx = host.consecutive_5xx.saturating_add(1);
        host.consecutive_gateway = if gateway_error {
            host.consecutive_gateway.saturating_add(1)
        } else {
            0
        };
        // `>=` where Envoy has `==`: the same in steady state (the count starts over when it
        // fires), and a threshold lowered below a running count still fires.
        let reached =
            |threshold: Option<u32>, count: u32| threshold.is_some_and(|n| n > 0 && count >= n);
        let mut ejected = false;
        if reached(cfg.consecutive_gateway_errors, host.consecutive_gateway) {
            ejected = try_eject(cfg, host, ejected_others, hosts, now);
            host.consecutive_gateway = 0;
        }
        if !ejected && reached(cfg.consecutive_5xx, host.consecutive_5xx) {
            ejected = try_eject(cfg, host, ejected_others, hosts, now);
            host.consecutive_5xx = 0;
        }
        ejected
    }

    /// Whether `key` is ejected at `now`.
    pub fn is_ejected(&self, key: &K, now: Instant) -> bool {
        self.hosts.get(key).is_some_and(|h| h.is_ejected(now))
    }

    /// When the ejection of `key` ends, if it is ejected at `now`.
    pub fn ejected_until(&self, key: &K, now: Instant) -> Option<Instant> {
        self.hosts
            .get(key)
            .filter(|h| h.is_ejected(now))
            .and_then(|h| h.ejected_until)
    }

    /// How many times `key` was ejected since it was first seen.
    pub fn ejections(&self, key: &K) -> u64 {
        self.hosts.get(key).map_or(0, |h| h.ejections)
    }

    /// The hosts among `candidates` to use: the ejected ones removed, unless fewer than
    /// `min_health_percent` of the candidates would remain (Envoy's panic mode: all are used).
    /// Empty when every candidate is ejected and there is no panic threshold.
    pub fn healthy<'a>(
        &self,
        cfg: &OutlierDetection,
        candidates: &'a [K],
        now: Instant,
    ) -> Vec<&'a K> {
        let healthy: Vec<&'a K> = candidates
            .iter()
            .filter(|k| !self.is_ejected(k, now))
            .collect();
        let threshold = u64::from(cfg.min_health_percent.min(100));
        // Envoy: panic when 100 × healthy / total < threshold.
        let panic = 100 * (healthy.len() as u64) < threshold * (candidates.len() as u64);
        if panic {
            candidates.iter().collect()
        } else {
            healthy
        }
    }

    /// Drops the state of the hosts `keep` refuses (hosts that left the destination).
    pub fn retain(&mut self, keep: impl Fn(&K) -> bool) {
        self.hosts.retain(|k, _| keep(k));
    }

    /// Hosts ejected at `now`.
    pub fn ejected_count(&self, now: Instant) -> usize {
        self.hosts.values().filter(|h| h.is_ejected(now)).count()
    }

    /// Hosts with state held.
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }
}

/// Envoy's `DetectorImpl::ejectHost`: ejects if the pool's ejected share, this host included,
/// stays within `max_ejection_percent`.
fn try_eject(
    cfg: &OutlierDetection,
    host: &mut Host,
    ejected_others: usize,
    hosts: usize,
    now: Instant,
) -> bool {
    let max_percent = f64::from(cfg.max_ejection_percent.min(100));
    let ejected_percent = 100.0 * (ejected_others + 1) as f64 / hosts.max(1) as f64;
    if ejected_percent > max_percent {
        return false;
    }
    let base = cfg.base_ejection_time;
    let max = MAX_EJECTION_TIME.max(base);
    // Envoy grows the multiplier only while base × n < max + base, so it stops one past the cap.
    let grow = match (base.checked_mul(host.backoff), max.checked_add(base)) {
        (Some(t), Some(limit)) => t < limit,
        _ => false,
    };
    if grow {
        host.backoff = host.backoff.saturating_add(1);
    }
    let time = base.checked_mul(host.backoff).unwrap_or(max).min(max);
    let Some(until) = now.checked_add(time) else {
        // Beyond what the clock can represent: treated as an ejection refused.
        return false;
    };
    host.ejected_until = Some(until);
    host.returned = false;
    host.decay_from = None;
    host.ejections += 1;
    true
}

#[cfg(test)]
mod tests {
    use super::super::testing::Clock;
    use super::*;

    fn cfg() -> OutlierDetection {
        OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 100,
            min_health_percent: 0,
        }
    }

    fn fail(
        d: &mut Detector<&'static str>,
        cfg: &OutlierDetection,
        key: &'static str,
        n: usize,
        hosts: usize,
        now: Instant,
    ) -> bool {
        let mut ejected = false;
        for _ in 0..n {
            ejected |= d.record(cfg, &key, Outcome::Status(500), hosts, now);
        }
        ejected
    }

    #[test]
    fn five_5xx_eject_for_30s_and_the_second_ejection_lasts_60s() {
        let clock = Clock::new();
        let cfg = cfg();
        let mut d = Detector::new();
        assert!(!fail(&mut d, &cfg, "a", 4, 3, clock.secs(0)));
        assert!(!d.is_ejected(&"a", clock.secs(0)));
        assert!(d.record(&cfg, &"a", Outcome::Status(503), 3, clock.secs(1)));
        assert!(d.is_ejected(&"a", clock.secs(1)));
        assert!(d.is_ejected(&"a", clock.millis(30_999)));
        assert!(!d.is_ejected(&"a", clock.secs(31)));
        assert_eq!(d.ejected_count(clock.secs(30)), 1);
        assert_eq!(d.ejected_count(clock.secs(31)), 0);
        // Back, and failing again within an interval: twice the base.
        assert!(fail(&mut d, &cfg, "a", 5, 3, clock.secs(35)));
        assert_eq!(d.ejected_until(&"a", clock.secs(35)), Some(clock.secs(95)));
        assert!(d.is_ejected(&"a", clock.millis(94_999)));
        assert!(!d.is_ejected(&"a", clock.secs(95)));
        assert_eq!(d.ejections(&"a"), 2);
    }

    #[test]
    fn a_success_or_a_non_5xx_resets_the_count() {
        let clock = Clock::new();
        let cfg = cfg();
        let mut d = Detector::new();
        let now = clock.secs(0);
        fail(&mut d, &cfg, "a", 4, 1, now);
        d.record(&cfg, &"a", Outcome::Success, 1, now);
        assert!(!fail(&mut d, &cfg, "a", 4, 1, now));
        d.record(&cfg, &"a", Outcome::Status(404), 1, now);
        assert!(!fail(&mut d, &cfg, "a", 4, 1, now));
        assert!(d.record(&cfg, &"a", Outcome::LocalFailure, 1, now));
    }

    #[test]
    fn gateway_errors_count_502_503_504_and_local_failures_in_a_row() {
        let clock = Clock::new();
        let cfg = OutlierDetection {
            consecutive_5xx: None,
            consecutive_gateway_errors: Some(3),
            ..cfg()
        };
        let now = clock.secs(0);
        let mut d = Detector::new();
        assert!(!d.record(&cfg, &"a", Outcome::Status(502), 2, now));
        assert!(!d.record(&cfg, &"a", Outcome::LocalFailure, 2, now));
        // A 500 is a 5xx but not a gateway error: the gateway count starts over.
        assert!(!d.record(&cfg, &"a", Outcome::Status(500), 2, now));
        assert!(!d.record(&cfg, &"a", Outcome::Status(503), 2, now));
        assert!(!d.record(&cfg, &"a", Outcome::Status(504), 2, now));
        assert!(d.record(&cfg, &"a", Outcome::LocalFailure, 2, now));
        // With 5xx counting off, any number of 500s never ejects.
        let mut d = Detector::new();
        assert!(!fail(&mut d, &cfg, "b", 100, 2, now));
        // Both off: nothing ejects.
        let off = OutlierDetection {
            consecutive_gateway_errors: Some(0),
            ..cfg
        };
        let mut d = Detector::new();
        for _ in 0..100 {
            assert!(!d.record(&off, &"c", Outcome::LocalFailure, 2, now));
        }
    }

    #[test]
    fn the_count_that_fired_starts_over_even_when_ejection_is_refused() {
        let clock = Clock::new();
        let now = clock.secs(0);
        // 10% of 3 hosts: Envoy ejects none.
        let cfg = OutlierDetection {
            max_ejection_percent: 10,
            ..cfg()
        };
        let mut d = Detector::new();
        assert!(!fail(&mut d, &cfg, "a", 5, 3, now));
        assert!(!fail(&mut d, &cfg, "a", 4, 3, now));
        assert_eq!(d.ejected_count(now), 0);
        // With ten hosts, one may go.
        assert!(d.record(&cfg, &"a", Outcome::Status(500), 10, now));
        assert!(!fail(&mut d, &cfg, "b", 5, 10, now));
    }

    #[test]
    fn max_ejection_percent_counts_the_host_being_ejected() {
        let clock = Clock::new();
        let now = clock.secs(0);
        let cfg = OutlierDetection {
            max_ejection_percent: 50,
            ..cfg()
        };
        let mut d = Detector::new();
        // 4 hosts at 50%: two may be ejected, not three.
        assert!(fail(&mut d, &cfg, "a", 5, 4, now));
        assert!(fail(&mut d, &cfg, "b", 5, 4, now));
        assert!(!fail(&mut d, &cfg, "c", 5, 4, now));
        assert_eq!(d.ejected_count(now), 2);
        // When one comes back, room for another.
        assert!(fail(&mut d, &cfg, "c", 5, 4, clock.secs(30)));
        // 100% may eject all.
        let all = OutlierDetection {
            max_ejection_percent: 100,
            ..cfg
        };
        let mut d = Detector::new();
        for k in ["a", "b", "c"] {
            assert!(fail(&mut d, &all, k, 5, 3, now));
        }
        // Above 100 is 100.
        let over = OutlierDetection {
            max_ejection_percent: 250,
            ..cfg
        };
        let mut d = Detector::new();
        assert!(fail(&mut d, &over, "a", 5, 1, now));
    }

    #[test]
    fn results_while_ejected_are_ignored_and_counts_start_over_on_return() {
        let clock = Clock::new();
        let cfg = cfg();
        let mut d = Detector::new();
        assert!(fail(&mut d, &cfg, "a", 5, 1, clock.secs(0)));
        assert!(!fail(&mut d, &cfg, "a", 20, 1, clock.secs(10)));
        assert_eq!(d.ejections(&"a"), 1);
        // Back at 30 s with a clean count: four errors do not eject, the fifth does.
        assert!(!fail(&mut d, &cfg, "a", 4, 1, clock.secs(31)));
        assert!(fail(&mut d, &cfg, "a", 1, 1, clock.secs(31)));
    }

    #[test]
    fn the_multiplier_decays_one_step_per_healthy_interval() {
        let clock = Clock::new();
        let cfg = cfg();
        let mut d = Detector::new();
        // Three ejections back to back: 30 s, 60 s, 90 s.
        assert!(fail(&mut d, &cfg, "a", 5, 1, clock.secs(0)));
        assert!(fail(&mut d, &cfg, "a", 5, 1, clock.secs(30)));
        assert_eq!(d.ejected_until(&"a", clock.secs(30)), Some(clock.secs(90)));
        assert!(fail(&mut d, &cfg, "a", 5, 1, clock.secs(90)));
        assert_eq!(d.ejected_until(&"a", clock.secs(90)), Some(clock.secs(180)));
        // Back at 180 s; healthy for two whole intervals (20 s): 3 → 1, so the next is 2 × 30.
        assert!(fail(&mut d, &cfg, "a", 5, 1, clock.secs(205)));
        assert_eq!(
            d.ejected_until(&"a", clock.secs(205)),
            Some(clock.secs(265))
        );
        // Back at 265 s; a long healthy spell returns it to the base.
        assert!(fail(&mut d, &cfg, "a", 5, 1, clock.secs(1000)));
        assert_eq!(
            d.ejected_until(&"a", clock.secs(1000)),
            Some(clock.secs(1030))
        );
    }

    #[test]
    fn decay_applied_in_steps_equals_decay_applied_at_once() {
        let clock = Clock::new();
        let cfg = cfg();
        let mut stepwise = Detector::new();
        let mut at_once = Detector::new();
        for d in [&mut stepwise, &mut at_once] {
            for start in [0, 30, 90, 180] {
                assert!(fail(d, &cfg, "a", 5, 1, clock.secs(start)));
            }
        }
        // Both back at 300 s (4 × 30 s from 180 s).
        for s in (300..=325).step_by(5) {
            stepwise.record(&cfg, &"a", Outcome::Success, 1, clock.secs(s));
        }
        assert!(fail(&mut stepwise, &cfg, "a", 5, 1, clock.secs(325)));
        assert!(fail(&mut at_once, &cfg, "a", 5, 1, clock.secs(325)));
        // 4 − 2 intervals = 2, +1 = 3: 90 s.
        assert_eq!(
            stepwise.ejected_until(&"a", clock.secs(325)),
            Some(clock.secs(415))
        );
        assert_eq!(
            at_once.ejected_until(&"a", clock.secs(325)),
            Some(clock.secs(415))
        );
    }

    #[test]
    fn ejection_time_is_capped_at_300s_or_the_base() {
        let clock = Clock::new();
        let cfg = cfg();
        let mut d = Detector::new();
        let mut t = clock.secs(0);
        let mut times = Vec::new();
        for _ in 0..14 {
            assert!(fail(&mut d, &cfg, "a", 5, 1, t));
            let until = d.ejected_until(&"a", t).unwrap();
            times.push((until - t).as_secs());
            t = until;
        }
        assert_eq!(
            times,
            [
                30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300, 300, 300
            ]
        );
        let long = OutlierDetection {
            base_ejection_time: Duration::from_secs(600),
            ..cfg
        };
        let mut d = Detector::new();
        assert!(fail(&mut d, &long, "a", 5, 1, clock.secs(0)));
        assert_eq!(d.ejected_until(&"a", clock.secs(0)), Some(clock.secs(600)));
        assert!(fail(&mut d, &long, "a", 5, 1, clock.secs(600)));
        assert_eq!(
            d.ejected_until(&"a", clock.secs(600)),
            Some(clock.secs(1200))
        );
    }

    #[test]
    fn healthy_removes_ejected_hosts_unless_in_panic() {
        let clock = Clock::new();
        let now = clock.secs(0);
        let cfg = cfg();
        let hosts = ["a", "b", "c", "d"];
        let mut d = Detector::new();
        assert!(fail(&mut d, &cfg, "b", 5, 4, now));
        assert_eq!(d.healthy(&cfg, &hosts, now), [&"a", &"c", &"d"]);
        assert!(fail(&mut d, &cfg, "c", 5, 4, now));
        // 50% healthy with a 50% threshold: not below it, ejections hold.
        let half = OutlierDetection {
            min_health_percent: 50,
            ..cfg.clone()
        };
        assert_eq!(d.healthy(&half, &hosts, now), [&"a", &"d"]);
        // A 51% threshold: panic, every host is used.
        let panicky = OutlierDetection {
            min_health_percent: 51,
            ..cfg.clone()
        };
        assert_eq!(d.healthy(&panicky, &hosts, now).len(), 4);
        // No panic threshold and everything ejected: nothing to use.
        assert!(fail(&mut d, &cfg, "a", 5, 4, now));
        assert!(fail(&mut d, &cfg, "d", 5, 4, now));
        assert!(d.healthy(&cfg, &hosts, now).is_empty());
        // They come back with time.
        assert_eq!(d.healthy(&cfg, &hosts, clock.secs(30)).len(), 4);
        let none: [&str; 0] = [];
        assert!(d.healthy(&panicky, &none, now).is_empty());
    }

    #[test]
    fn retain_drops_hosts_that_left() {
        let clock = Clock::new();
        let now = clock.secs(0);
        let cfg = cfg();
        let mut d = Detector::new();
        assert!(fail(&mut d, &cfg, "a", 5, 2, now));
        fail(&mut d, &cfg, "b", 4, 2, now);
        d.retain(|k| *k == "a");
        assert_eq!(d.len(), 1);
        assert!(d.is_ejected(&"a", now));
        // "b" comes back with a clean count.
        assert!(!fail(&mut d, &cfg, "b", 1, 2, now));
        d.retain(|_| false);
        assert!(d.is_empty());
        assert!(!d.is_ejected(&"a", now));
    }
}
