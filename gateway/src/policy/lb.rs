//! Load balancing among candidates (endpoints at the destination gateway, clusters or their
//! gateways at the source): Istio's `loadBalancer` settings.
//!
//! - `ROUND_ROBIN`: a shared counter, one step per pick (Envoy's round robin with equal
//!   weights).
//! - `RANDOM`: one uniform draw.
//! - `LEAST_REQUEST`: Envoy's default "power of two choices" (`choice_count` 2): two
//!   candidates drawn at random, with replacement, the one with fewer requests in flight wins,
//!   the first on a tie (`LeastRequestLoadBalancer::unweightedHostPick`). tower's
//!   `balance::p2c` does the same but owns the services and is poll-driven, so it does not fit
//!   a pure pick over a slice.
//! - `consistentHash`: rendezvous (highest random weight) hashing: each candidate scores
//!   `mix(hash, candidate id)` and the best wins. Like Envoy's ring hash and Maglev, a key
//!   sticks to its candidate while the set is unchanged, and when a candidate leaves only the
//!   keys it held move (about 1/n); it needs no table to rebuild, and n is small here. A
//!   request without a hash key (header, cookie or parameter absent) gets a random
//!   candidate, as Envoy's ring hash uses a random value then.
//!
//! Hash keys ([`hash_key`]) use 64-bit FNV-1a, fixed here, so every gateway maps a key to the
//! same candidate (std's `DefaultHasher` may differ between builds and processes). Envoy
//! hashes with xxHash; the exact function does not matter, agreement between gateways does.
//! The cookie's `ttl` (Envoy generates the cookie when absent) is not implemented here: a
//! request without the cookie is balanced at random.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use federation::traffic::{HashOn, LoadBalancer};

use super::Random;

/// What a balancer needs to know of a candidate.
pub(crate) trait Candidate {
    /// A stable id (the same on every gateway and across snapshots) for consistent hashing.
    fn id(&self) -> u64;
    /// Requests in flight to it, for `LEAST_REQUEST`.
    fn in_flight(&self) -> u32;
}

/// The round-robin position of one destination; shared by the requests to it.
#[derive(Debug, Default)]
pub(crate) struct RoundRobin(pub(crate) AtomicUsize);

impl RoundRobin {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(&self) -> &AtomicUsize {
        &self.0
    }
}

/// Picks the index of the candidate to use; `None` when there are none. `hash` is the
/// request's [`hash_key`] (used by consistent hashing only), `rr` the destination's
/// round-robin position.
pub(crate) fn pick(
    lb: &LoadBalancer,
    candidates: &[impl Candidate],
    hash: Option<u64>,
    rr: &AtomicUsize,
    rng: &mut impl Random,
) -> Option<usize> {
    let n = candidates.len();
    if n == 0 {
        return None;
    }
    if n == 1 {
        return Some(0);
    }
    Some(match lb {
        LoadBalancer::RoundRobin => rr.fetch_add(1, Ordering::Relaxed) % n,
        LoadBalancer::Random => index_below(rng, n),
        LoadBalancer::LeastRequest => {
            let first = index_below(rng, n);
            let second = index_below(rng, n);
            if candidates[second].in_flight() < candidates[first].in_flight() {
                second
            } else {
                first
            }
        }
        LoadBalancer::ConsistentHash(_) => match hash {
            Some(h) => rendezvous(h, candidates),
            None => index_below(rng, n),
        },
    })
}

fn index_below(rng: &mut impl Random, n: usize) -> usize {
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    (rng.below(n32) as usize).min(n - 1)
}

/// The candidate with the highest score for `hash`; ties (astronomically rare) go to the
/// higher id, so the order of `candidates` never matters.
fn rendezvous(hash: u64, candidates: &[impl Candidate]) -> usize {
    let mut best = 0;
    let mut best_key = (0u64, 0u64);
    for (i, c) in candidates.iter().enumerate() {
        let id = c.id();
        let key = (score(hash, id), id);
        if i == 0 || key > best_key {
            best = i;
            best_key = key;
        }
    }
    best
}

/// A well-mixed 64-bit score of (key, candidate); the finaliser of SplitMix64 applied to a
/// combination of both, so that FNV's weak low bits do not leak into the choice.
fn score(hash: u64, id: u64) -> u64 {
    mix(hash ^ mix(id ^ 0x9e37_79b9_7f4a_7c15))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 64-bit FNV-1a: stable across processes, builds and platforms.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(FNV_PRIME)
    })
}

/// The request's consistent-hash key under `on`, or `None` when the request lacks what it
/// names. The accessors return the value of a header (lower-case name), a cookie and a query
/// parameter by name; see [`cookie_value`] and [`query_value`]. A source IP hashes its
/// octets.
pub(crate) fn hash_key<'r>(
    on: &HashOn,
    header: impl Fn(&str) -> Option<&'r str>,
    cookie: impl Fn(&str) -> Option<&'r str>,
    query: impl Fn(&str) -> Option<&'r str>,
    source_ip: Option<IpAddr>,
) -> Option<u64> {
    match on {
        HashOn::Header(name) => header(name).map(|v| fnv1a(v.as_bytes())),
        HashOn::Cookie { name, .. } => cookie(name).map(|v| fnv1a(v.as_bytes())),
        HashOn::QueryParam(name) => query(name).map(|v| fnv1a(v.as_bytes())),
        HashOn::SourceIp => source_ip.map(|ip| match ip {
            IpAddr::V4(v4) => fnv1a(&v4.octets()),
            IpAddr::V6(v6) => fnv1a(&v6.octets()),
        }),
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`), as sent, without decoding.
pub(crate) fn cookie_value<'h>(cookie_header: &'h str, name: &str) -> Option<&'h str> {
    cookie_header.split(';').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k.trim() == name).then(|| v.trim().trim_matches('"'))
    })
}

/// The value of parameter `name` in a query string (`a=1&b=2`, no leading `?`), as sent,
/// without percent-decoding; a bare `name` has the empty value. The first occurrence wins.
pub(crate) fn query_value<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v)
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::super::testing::{Scripted, Seeded};
    use super::*;

    #[derive(Debug, Clone, Copy)]
    struct C {
        id: u64,
        in_flight: u32,
    }

    impl Candidate for C {
        fn id(&self) -> u64 {
            self.id
        }
        fn in_flight(&self) -> u32 {
            self.in_flight
        }
    }

    fn cands(ids: &[u64]) -> Vec<C> {
        ids.iter().map(|&id| C { id, in_flight: 0 }).collect()
    }

    fn hashed() -> LoadBalancer {
        LoadBalancer::ConsistentHash(HashOn::Header("x-user".into()))
    }

    #[test]
    fn nothing_to_pick_from() {
        let rr = AtomicUsize::new(0);
        let none: [C; 0] = [];
        let mut rng = Scripted::new(&[]);
        for lb in [
            LoadBalancer::RoundRobin,
            LoadBalancer::Random,
            LoadBalancer::LeastRequest,
            hashed(),
        ] {
            assert_eq!(pick(&lb, &none, Some(1), &rr, &mut rng), None);
            // One candidate: no draw needed.
            assert_eq!(pick(&lb, &cands(&[7]), None, &rr, &mut rng), Some(0));
        }
    }

    #[test]
    fn round_robin_cycles_through_every_candidate() {
        let rr = RoundRobin::new();
        let c = cands(&[1, 2, 3]);
        let mut rng = Scripted::new(&[]);
        let picks: Vec<_> = (0..7)
            .map(|_| pick(&LoadBalancer::RoundRobin, &c, None, rr.counter(), &mut rng).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2, 0]);
        // The position is shared: a set that shrinks still gets a valid index.
        let two = cands(&[1, 2]);
        assert!(
            pick(
                &LoadBalancer::RoundRobin,
                &two,
                None,
                rr.counter(),
                &mut rng
            )
            .unwrap()
                < 2
        );
    }

    #[test]
    fn random_follows_the_draw() {
        let rr = AtomicUsize::new(0);
        let c = cands(&[1, 2, 3, 4]);
        let mut rng = Scripted::new(&[0.0, 0.3, 0.99]);
        let picks: Vec<_> = (0..3)
            .map(|_| pick(&LoadBalancer::Random, &c, None, &rr, &mut rng).unwrap())
            .collect();
        assert_eq!(picks, [0, 1, 3]);
    }

    #[test]
    fn least_request_takes_the_less_loaded_of_two_draws() {
        let rr = AtomicUsize::new(0);
        let c = vec![
            C {
                id: 1,
                in_flight: 5,
            },
            C {
                id: 2,
                in_flight: 1,
            },
            C {
                id: 3,
                in_flight: 9,
            },
            C {
                id: 4,
                in_flight: 1,
            },
        ];
        // Draws pick indices (0, 2): 0 has fewer.
        let mut rng = Scripted::new(&[0.0, 0.5, 0.5, 0.25, 0.25, 0.75, 0.6, 0.6]);
        let lr = LoadBalancer::LeastRequest;
        assert_eq!(pick(&lr, &c, None, &rr, &mut rng), Some(0));
        // (2, 1): 1 has fewer.
        assert_eq!(pick(&lr, &c, None, &rr, &mut rng), Some(1));
        // (1, 3): a tie keeps the first draw.
        assert_eq!(pick(&lr, &c, None, &rr, &mut rng), Some(1));
        // (2, 2): with replacement, the same one twice.
        assert_eq!(pick(&lr, &c, None, &rr, &mut rng), Some(2));
        // Over many picks the busiest is rarely chosen (only when drawn twice: 1/16).
        let mut rng = Seeded::new(3);
        let busiest = (0..4000)
            .filter(|_| pick(&lr, &c, None, &rr, &mut rng) == Some(2))
            .count();
        assert!((150..350).contains(&busiest), "{busiest}");
    }

    #[test]
    fn consistent_hash_is_sticky_and_order_independent() {
        let rr = AtomicUsize::new(0);
        let c = cands(&[11, 22, 33, 44, 55]);
        let mut reversed = c.clone();
        reversed.reverse();
        let mut rng = Scripted::new(&[]);
        for key in 0..500u64 {
            let h = fnv1a(&key.to_be_bytes());
            let a = pick(&hashed(), &c, Some(h), &rr, &mut rng).unwrap();
            let b = pick(&hashed(), &c, Some(h), &rr, &mut rng).unwrap();
            assert_eq!(a, b);
            let r = pick(&hashed(), &reversed, Some(h), &rr, &mut rng).unwrap();
            assert_eq!(c[a].id, reversed[r].id);
        }
    }

    #[test]
    fn consistent_hash_spreads_keys_and_moves_only_those_of_a_leaving_candidate() {
        let rr = AtomicUsize::new(0);
        let ids = [11, 22, 33, 44, 55];
        let all = cands(&ids);
        let without_33 = cands(&[11, 22, 44, 55]);
        let mut rng = Scripted::new(&[]);
        let keys = 10_000u64;
        let mut load: HashMap<u64, u64> = HashMap::new();
        let mut moved = 0;
        for key in 0..keys {
            let h = fnv1a(format!("user-{key}").as_bytes());
            let before = all[pick(&hashed(), &all, Some(h), &rr, &mut rng).unwrap()].id;
            let after =
                without_33[pick(&hashed(), &without_33, Some(h), &rr, &mut rng).unwrap()].id;
            *load.entry(before).or_default() += 1;
            if before != 33 {
                // Keys of the candidates that stayed do not move.
                assert_eq!(before, after, "key {key} moved");
            } else {
                moved += 1;
            }
        }
        // Each candidate holds about a fifth of the keys, so about a fifth move.
        for id in ids {
            let share = load[&id] as f64 / keys as f64;
            assert!((share - 0.2).abs() < 0.02, "{id}: {share}");
        }
        assert_eq!(moved, load[&33]);
    }

    #[test]
    fn consistent_hash_without_a_key_picks_at_random() {
        let rr = AtomicUsize::new(0);
        let c = cands(&[1, 2, 3, 4]);
        let mut rng = Scripted::new(&[0.8]);
        assert_eq!(pick(&hashed(), &c, None, &rr, &mut rng), Some(3));
    }

    fn nothing<'r>(_: &str) -> Option<&'r str> {
        None
    }

    #[test]
    fn hash_keys_read_what_the_policy_names() {
        let headers = |name: &str| (name == "x-user").then_some("alice");
        let cookies = |name: &str| cookie_value("a=1; session=\"s-42\"; b=2", name);
        let query = |name: &str| query_value("q=rust&user=bob&flag", name);
        let ip = Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)));

        let header = HashOn::Header("x-user".into());
        assert_eq!(
            hash_key(&header, headers, nothing, nothing, ip),
            Some(fnv1a(b"alice"))
        );
        assert_eq!(hash_key(&header, nothing, cookies, query, ip), None);
        let cookie = HashOn::Cookie {
            name: "session".into(),
            ttl: None,
        };
        assert_eq!(
            hash_key(&cookie, headers, cookies, query, ip),
            Some(fnv1a(b"s-42"))
        );
        let param = HashOn::QueryParam("user".into());
        assert_eq!(
            hash_key(&param, headers, cookies, query, ip),
            Some(fnv1a(b"bob"))
        );
        let flag = HashOn::QueryParam("flag".into());
        assert_eq!(
            hash_key(&flag, headers, cookies, query, ip),
            Some(fnv1a(b""))
        );
        assert_eq!(
            hash_key(&HashOn::SourceIp, headers, cookies, query, ip),
            Some(fnv1a(&[10, 0, 0, 7]))
        );
        assert_eq!(
            hash_key(&HashOn::SourceIp, headers, cookies, query, None),
            None
        );
        let v6 = Some(IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert!(hash_key(&HashOn::SourceIp, headers, cookies, query, v6).is_some());
        // Values borrowed from a request outlive the accessor's argument.
        let request_headers: HashMap<String, String> =
            [("x-user".to_string(), "carol".to_string())].into();
        let from_map = |name: &str| request_headers.get(name).map(String::as_str);
        assert_eq!(
            hash_key(&header, from_map, nothing, nothing, None),
            Some(fnv1a(b"carol"))
        );
    }

    #[test]
    fn fnv1a_is_the_published_function() {
        // Reference values of 64-bit FNV-1a.
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn cookie_and_query_parsing() {
        assert_eq!(cookie_value("a=1;b=2", "b"), Some("2"));
        assert_eq!(cookie_value("a=1; b", "b"), None);
        assert_eq!(cookie_value("", "a"), None);
        assert_eq!(cookie_value("ab=1; a=2", "a"), Some("2"));
        assert_eq!(query_value("a=1&a=2", "a"), Some("1"));
        assert_eq!(query_value("ab=1", "a"), None);
        assert_eq!(query_value("", "a"), None);
        assert_eq!(query_value("x=a=b", "x"), Some("a=b"));
    }
}
