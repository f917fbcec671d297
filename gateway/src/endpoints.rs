//! Endpoint choice at the destination gateway, where Istio's server-side proxy picks a host:
//! the subset's endpoints, minus those outlier detection ejected, ordered by the destination
//! rule's load balancer (the first is the pick, the rest are failover if it refuses to
//! connect).
//!
//! The state (ejections, requests in flight per endpoint) is the gateway's `PolicyState`,
//! keyed `<service>[/<subset>]!<endpoint>` so that it outlives snapshots and is dropped with
//! the endpoint.

use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::time::Instant;

use federation::model::LocalService;
use federation::traffic::{ConnectionPool, LoadBalancer, OutlierDetection};

use crate::catalog::Snapshot;
use crate::metrics::{Metrics, PolicyLabels, Reporter};
use crate::policy::outlier::Outcome;
use crate::policy::state::PolicyState;
use crate::policy::{ThreadRandom, lb};

/// The endpoints to try, in order, and what outlier detection needs to hear back.
pub(crate) struct Choice {
    pub order: Vec<SocketAddr>,
    /// State key of the destination (`<service>[/<subset>]`).
    pub key: String,
    pub subset: String,
    pub outlier: Option<OutlierDetection>,
    pub hosts: usize,
    /// The rule's connection pool: connect timeout and reuse of endpoint connections.
    pub pool: ConnectionPool,
}

struct Endpoint {
    id: u64,
    in_flight: u32,
}

impl lb::Candidate for Endpoint {
    fn id(&self) -> u64 {
        self.id
    }
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

/// Orders `svc`'s endpoints (already the subset's) for one request.
pub(crate) fn choose(
    snapshot: &Snapshot,
    state: &PolicyState,
    svc: &LocalService,
    subset: Option<&str>,
    hash: Option<u64>,
    rr: &AtomicUsize,
) -> Choice {
    let traffic = snapshot
        .policy
        .routes
        .get(&svc.key)
        .and_then(|p| p.destination.as_ref())
        .map(|rule| rule.traffic_for(subset).clone())
        .unwrap_or_default();
    let key = match subset {
        Some(s) => format!("{}/{s}", svc.key),
        None => svc.key.to_string(),
    };
    let mut order = svc.endpoints.clone();
    if let Some(cfg) = &traffic.outlier_detection {
        let names: Vec<String> = order.iter().map(ToString::to_string).collect();
        let keep: Vec<bool> = state.with_detector(&endpoint_key(&key), |d| {
            let healthy = d.healthy(cfg, &names, Instant::now());
            names.iter().map(|n| healthy.contains(&n)).collect()
        });
        order = order
            .into_iter()
            .zip(keep)
            .filter(|(_, k)| *k)
            .map(|(a, _)| a)
            .collect();
    }
    let candidates: Vec<Endpoint> = order
        .iter()
        .map(|addr| Endpoint {
            id: lb::fnv1a(addr.to_string().as_bytes()),
            in_flight: match traffic.load_balancer {
                LoadBalancer::LeastRequest => state.limits(&format!("{key}!{addr}")).in_flight(),
                _ => 0,
            },
        })
        .collect();
    if let Some(first) = lb::pick(
        &traffic.load_balancer,
        &candidates,
        hash,
        rr,
        &mut ThreadRandom,
    ) {
        order.rotate_left(first);
    }
    Choice {
        hosts: svc.endpoints.len(),
        order,
        key,
        subset: subset.unwrap_or("").to_string(),
        outlier: traffic.outlier_detection,
        pool: traffic.connection_pool,
    }
}

/// The detector of a destination's endpoints; apart from the source gateway's detector of
/// clusters for the same destination.
fn endpoint_key(key: &str) -> String {
    format!("{key}!endpoints")
}

impl Choice {
    /// Counts a request in flight to `addr` until the guard drops (for LEAST_REQUEST).
    pub fn in_flight(
        &self,
        state: &PolicyState,
        addr: SocketAddr,
    ) -> Option<crate::policy::limits::Permit> {
        state
            .limits(&format!("{}!{addr}", self.key))
            .try_request(&ConnectionPool::default())
            .ok()
    }

    /// Tells outlier detection how endpoint `addr` answered; counts an ejection.
    pub fn observe(
        &self,
        state: &PolicyState,
        metrics: &Metrics,
        service: &str,
        addr: SocketAddr,
        outcome: Outcome,
    ) {
        let Some(cfg) = &self.outlier else { return };
        let ejected = state.with_detector(&endpoint_key(&self.key), |d| {
            d.record(cfg, &addr.to_string(), outcome, self.hosts, Instant::now())
        });
        if ejected {
            tracing::info!(%service, subset = %self.subset, endpoint = %addr, "outlier detection ejected an endpoint");
            metrics
                .ejections
                .get_or_create(&PolicyLabels {
                    reporter: Reporter::Destination,
                    service: service.to_string(),
                    destination_subset: self.subset.clone(),
                    reason: "endpoint",
                })
                .inc();
        }
    }
}
