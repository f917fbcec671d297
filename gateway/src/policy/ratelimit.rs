//! RateLimitPolicy token buckets, sans IO: the caller passes the clock.
//!
//! A `local` policy's bucket refills at `requestsPerSecond` and holds `burst` tokens at this
//! gateway. A `mesh` policy's rate is shared by every gateway that sees demand for the same
//! bucket: each gateway measures its demand (requests attempted per second, limited ones
//! included), tells its peers over the tunnels every [`REPORT_INTERVAL`], and refills at
//! `rate * own / (own + what the peers reported)`. The shares add up to the rate while the
//! reports are fresh; a peer that stops reporting stops counting after [`REPORT_TTL`], so a
//! lost gateway's share returns to the others. No Raft write, no extra service.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use federation::ratelimit::{RateLimit, Scope};

/// How often demand is folded and reported to the peers.
pub(crate) const REPORT_INTERVAL: Duration = Duration::from_millis(200);
/// A peer's report counts for this long.
pub(crate) const REPORT_TTL: Duration = Duration::from_secs(1);
/// Buckets unused for this long are forgotten.
const IDLE: Duration = Duration::from_secs(60);
/// Distinct buckets one gateway keeps; beyond it, new descriptor values of a policy share one
/// overflow bucket (clients choose header values: they must not choose this gateway's memory).
const MAX_BUCKETS: usize = 100_000;
/// Longest descriptor value kept in a bucket key (longer ones are cut).
const MAX_VALUE: usize = 128;

/// Entries a peer may report at once, and how long a key may be.
pub(crate) const MAX_REPORT_ENTRIES: usize = 10_000;
pub(crate) const MAX_REPORT_KEY: usize = 1024;

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    refilled: Instant,
    /// Requests attempted since the last fold.
    seen: u64,
    /// Requests attempted per second, smoothed over folds.
    demand: f64,
    mesh: bool,
    used: Instant,
}

/// What [`Limiter::take`] decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Take {
    Allowed,
    /// Over the limit: try again after this long. `limit` is the rate this gateway applies now
    /// (its share, for a mesh policy).
    Limited {
        retry_after: Duration,
        limit: f64,
    },
}

#[derive(Default)]
pub(crate) struct Limiter {
    buckets: Mutex<HashMap<String, Bucket>>,
    /// Each peer gateway's last report: when it came and its demand by bucket.
    peers: Mutex<HashMap<String, Report>>,
}

/// When a peer's report came, and its demand by bucket.
type Report = (Instant, HashMap<String, f64>);

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("buckets", &self.lock_buckets().len())
            .finish()
    }
}

impl Limiter {
    /// The bucket key of `limit` for these descriptor values (in the policy's order).
    pub fn key<'a>(limit: &RateLimit, values: impl Iterator<Item = &'a str>) -> String {
        let mut key = limit.name.clone();
        for v in values {
            key.push('\u{1f}');
            let mut end = v.len().min(MAX_VALUE);
            while !v.is_char_boundary(end) {
                end -= 1;
            }
            key.push_str(&v[..end]);
        }
        key
    }

    /// Takes one token from `key`'s bucket of `limit`.
    pub fn take(&self, key: String, limit: &RateLimit, now: Instant) -> Take {
        let mesh = limit.scope == Scope::Mesh;
        let mut buckets = self.lock_buckets();
        let key = if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(&key) {
            format!("{}\u{1f}(overflow)", limit.name)
        } else {
            key
        };
        let share = if mesh {
            let own = buckets.get(&key).map_or(0.0, |b| b.demand);
            self.share(&key, own, now)
        } else {
            1.0
        };
        let rate = f64::from(limit.requests_per_second) * share;
        let burst = (f64::from(limit.burst) * share).max(1.0);
        let bucket = buckets.entry(key).or_insert(Bucket {
            tokens: burst,
            refilled: now,
            seen: 0,
            demand: 0.0,
            mesh,
            used: now,
        });
        let elapsed = now.saturating_duration_since(bucket.refilled).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled = now;
        bucket.used = now;
        bucket.seen += 1;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Take::Allowed
        } else {
            let wait = if rate > 0.0 {
                (1.0 - bucket.tokens) / rate
            } else {
                REPORT_INTERVAL.as_secs_f64()
            };
            Take::Limited {
                retry_after: Duration::from_secs_f64(wait.min(3600.0)),
                limit: rate,
            }
        }
    }

    /// This gateway's share of a mesh bucket: its demand over everyone's. A gateway that saw
    /// no demand yet (its first requests) counts as one that sees as much as the busiest peer,
    /// so that a new caller is neither starved nor handed the whole rate.
    fn share(&self, key: &str, own: f64, now: Instant) -> f64 {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let mut others = 0.0;
        let mut busiest: f64 = 0.0;
        for (at, report) in peers.values() {
            if now.saturating_duration_since(*at) > REPORT_TTL {
                continue;
            }
            if let Some(d) = report.get(key) {
                others += d;
                busiest = busiest.max(*d);
            }
        }
        if others <= 0.0 {
            return 1.0;
        }
        let own = if own > 0.0 { own } else { busiest };
        own / (own + others)
    }

    /// Folds the demand seen since the last fold, forgets idle buckets, and returns the mesh
    /// buckets' demand to report to the peers.
    pub fn fold(&self, now: Instant, interval: Duration) -> Vec<(String, f64)> {
        let mut buckets = self.lock_buckets();
        buckets.retain(|_, b| now.saturating_duration_since(b.used) < IDLE);
        let secs = interval.as_secs_f64();
        let mut report = Vec::new();
        for (key, b) in buckets.iter_mut() {
            let rate = b.seen as f64 / secs;
            // Half the weight on the newest interval: follows a change of load within a
            // second, and one quiet interval does not drop a busy gateway's share to nothing.
            b.demand = if b.demand == 0.0 {
                rate
            } else {
                0.5 * b.demand + 0.5 * rate
            };
            b.seen = 0;
            if b.mesh && b.demand > 0.0 && report.len() < MAX_REPORT_ENTRIES {
                report.push((key.clone(), b.demand));
            }
        }
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|_, (at, _)| now.saturating_duration_since(*at) <= REPORT_TTL);
        report
    }

    /// A peer gateway's report, replacing its last.
    pub fn heard(&self, peer: String, report: HashMap<String, f64>, now: Instant) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(peer, (now, report));
    }

    fn lock_buckets(&self) -> std::sync::MutexGuard<'_, HashMap<String, Bucket>> {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use federation::model::ServiceKey;

    use super::*;

    fn limit(rps: u32, burst: u32, scope: Scope) -> RateLimit {
        RateLimit {
            name: "shop/limits".into(),
            service: ServiceKey::new("api", "shop").unwrap(),
            scope,
            requests_per_second: rps,
            burst,
            descriptors: Vec::new(),
        }
    }

    /// Offers `per_second` requests a second for `secs` seconds, folding as the gateway does;
    /// counts the allowed ones.
    fn drive(
        limiter: &Limiter,
        limit: &RateLimit,
        start: Instant,
        per_second: u32,
        secs: u32,
    ) -> u32 {
        let mut allowed = 0;
        let step = Duration::from_secs(1) / per_second;
        let mut next_fold = start + REPORT_INTERVAL;
        for i in 0..per_second * secs {
            let now = start + step * i;
            if now >= next_fold {
                limiter.fold(now, REPORT_INTERVAL);
                next_fold += REPORT_INTERVAL;
            }
            if limiter.take(limit.name.clone(), limit, now) == Take::Allowed {
                allowed += 1;
            }
        }
        allowed
    }

    #[test]
    fn a_local_bucket_lets_its_rate_and_burst_through() {
        let limiter = Limiter::default();
        let l = limit(100, 20, Scope::Local);
        let allowed = drive(&limiter, &l, Instant::now(), 400, 10);
        // 10 s at 100/s, plus the burst it starts with.
        assert!((1000..=1021).contains(&allowed), "{allowed}");
    }

    #[test]
    fn mesh_shares_follow_demand_and_add_up_to_the_rate() {
        let l = limit(100, 10, Scope::Mesh);
        let (a, b) = (Limiter::default(), Limiter::default());
        let start = Instant::now();
        let (mut allowed_a, mut allowed_b) = (0, 0);
        // Two gateways offered 150/s and 50/s, reporting to each other every interval.
        let step = Duration::from_millis(1);
        let mut next_fold = start + REPORT_INTERVAL;
        for ms in 0..20_000u32 {
            let now = start + step * ms;
            if now >= next_fold {
                let ra = a.fold(now, REPORT_INTERVAL);
                let rb = b.fold(now, REPORT_INTERVAL);
                b.heard("a".into(), ra.into_iter().collect(), now);
                a.heard("b".into(), rb.into_iter().collect(), now);
                next_fold += REPORT_INTERVAL;
            }
            // a: 3 of every 20 ms slots... 150/s; b: 50/s.
            if ms % 20 < 3 && a.take(l.name.clone(), &l, now) == Take::Allowed {
                allowed_a += 1;
            }
            if ms % 20 == 10 && b.take(l.name.clone(), &l, now) == Take::Allowed {
                allowed_b += 1;
            }
        }
        let total = allowed_a + allowed_b;
        // 20 s at 100/s together: within 5%.
        assert!((1900..=2100).contains(&total), "{allowed_a} + {allowed_b}");
        // Shares follow demand (3:1), roughly.
        assert!(allowed_a > 2 * allowed_b, "{allowed_a} vs {allowed_b}");
        // A peer that falls silent stops counting: a alone gets the whole rate again.
        let later = start + Duration::from_secs(30);
        let alone = drive(&a, &l, later, 200, 5);
        assert!((480..=520).contains(&alone), "{alone}");
    }

    #[test]
    fn keys_are_bounded() {
        let l = limit(1, 1, Scope::Local);
        let long = "x".repeat(1000);
        let key = Limiter::key(&l, [long.as_str(), "é"].into_iter());
        assert_eq!(key.len(), "shop/limits".len() + 1 + MAX_VALUE + 1 + 2);
    }
}
