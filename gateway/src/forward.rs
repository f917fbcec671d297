//! Client-side traffic policy at the source gateway, where Istio's caller-side proxy acts:
//! once a route chose a destination, this drives the attempts.
//!
//! ```text
//!  request ─► pool limit (UO) ─► attempt 1 ─► cluster A ── 5xx? retriable? budget? ─► backoff
//!                                   │             (refused or unreachable through each of
//!                                   │              A's gateways: next cluster, not a retry:
//!                                   │              nothing was acted on)
//!                                   └─ per-try timeout ─► attempt 2 ─► cluster B ...
//!  the whole call bounded by the route's timeout (UT); outlier detection sees every answer
//! ```
//!
//! The decisions are the sans-IO engines' (`policy`); this module only feeds them and acts.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use federation::model::{ClusterName, Protocol, ServiceKey};
use federation::traffic::{
    ConnectionPool, LoadBalancer, LocalityLb, Mirror, OutlierDetection, RetryBudget, RetryPolicy,
};

use crate::catalog::{NoRoute, Snapshot, Target, TargetKind};
use crate::early::Replayable;
use crate::http::{self, Body, StatusCode};
use crate::metrics::{PolicyLabels, Reporter};
use crate::outbound::{Early, Outbound, Upstream, open, send_early};
use crate::policy::outlier::Outcome;
use crate::policy::retry::{self, Failure};
use crate::policy::{Random, ThreadRandom, lb, locality};
use crate::preamble::{Caller, RouteChoice};

/// Envoy's response flags that the source gateway sets, as Istio's `response_flags` label.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Flags(u16);

impl Flags {
    pub const NO_ROUTE: Flags = Flags(1);
    pub const OVERFLOW: Flags = Flags(1 << 1);
    pub const NO_HEALTHY_UPSTREAM: Flags = Flags(1 << 2);
    pub const CONNECT_FAILURE: Flags = Flags(1 << 3);
    pub const RETRY_LIMIT: Flags = Flags(1 << 4);
    pub const TIMEOUT: Flags = Flags(1 << 5);
    pub const DELAY_INJECTED: Flags = Flags(1 << 6);
    pub const FAULT_INJECTED: Flags = Flags(1 << 7);
    pub const RESET: Flags = Flags(1 << 8);
    pub const NO_CLUSTER: Flags = Flags(1 << 9);
    pub const DIRECT_RESPONSE: Flags = Flags(1 << 10);
    pub const RATE_LIMITED: Flags = Flags(1 << 11);

    const NAMES: [(Flags, &'static str); 12] = [
        (Flags::NO_ROUTE, "NR"),
        (Flags::OVERFLOW, "UO"),
        (Flags::NO_HEALTHY_UPSTREAM, "UH"),
        (Flags::CONNECT_FAILURE, "UF"),
        (Flags::RETRY_LIMIT, "URX"),
        (Flags::TIMEOUT, "UT"),
        (Flags::DELAY_INJECTED, "DI"),
        (Flags::FAULT_INJECTED, "FI"),
        (Flags::RESET, "UR"),
        (Flags::NO_CLUSTER, "NC"),
        (Flags::DIRECT_RESPONSE, "DR"),
        (Flags::RATE_LIMITED, "RL"),
    ];

    pub fn set(&mut self, flag: Flags) {
        self.0 |= flag.0;
    }

    pub fn label(self) -> String {
        let names: Vec<&str> = Self::NAMES
            .iter()
            .filter(|(f, _)| self.0 & f.0 != 0)
            .map(|(_, n)| *n)
            .collect();
        if names.is_empty() {
            "-".into()
        } else {
            names.join(",")
        }
    }
}

/// How long a mirrored copy may take before it is abandoned.
pub(crate) const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

/// What the route decided for one call.
pub(crate) struct Call {
    pub service: ServiceKey,
    pub subset: Option<String>,
    pub port: Option<u16>,
    pub only_cluster: Option<ClusterName>,
    pub route: Option<String>,
    pub retries: Option<RetryPolicy>,
    pub budget: RetryBudget,
    pub pool: ConnectionPool,
    pub outlier: Option<OutlierDetection>,
    pub lb: LoadBalancer,
    /// Locality preference between clusters (on only with outlier detection, as in Istio).
    pub locality: Option<LocalityLb>,
    /// The request's consistent-hash key, when the destination rule hashes.
    pub hash: Option<u64>,
    pub traceparent: Option<String>,
    /// When the caller stops waiting (route timeout or the client's header); travels in the
    /// preamble.
    pub deadline: Option<SystemTime>,
    /// Who is calling, as this gateway vouches in the preamble.
    pub caller: Caller,
}

impl Call {
    /// A TCP connection to `service` on `port`: no route, no L7 policy.
    pub fn tcp(service: &ServiceKey, port: u16, caller: Caller) -> Self {
        Call {
            caller,
            service: service.clone(),
            subset: None,
            port: Some(port),
            only_cluster: None,
            route: None,
            retries: None,
            budget: RetryBudget::default(),
            pool: ConnectionPool::default(),
            outlier: None,
            lb: LoadBalancer::RoundRobin,
            locality: None,
            hash: None,
            traceparent: None,
            deadline: None,
        }
    }

    /// A mirrored copy: no retries, bounded by its own short deadline so a slow shadow
    /// releases its slot.
    pub fn mirror(mirror: &Mirror, caller: Caller) -> Self {
        Call {
            subset: mirror.subset.clone(),
            port: mirror.port,
            deadline: Some(SystemTime::now() + MIRROR_TIMEOUT),
            ..Call::tcp(&mirror.service, 0, caller)
        }
    }

    /// The key of the state kept for this destination across snapshots.
    pub fn state_key(&self) -> String {
        match &self.subset {
            Some(subset) => format!("{}/{subset}", self.service),
            None => self.service.to_string(),
        }
    }

    fn budget_key(&self) -> String {
        format!("{}#{}", self.service, self.route.as_deref().unwrap_or(""))
    }

    fn labels(&self, reason: &'static str) -> PolicyLabels {
        PolicyLabels {
            reporter: Reporter::Source,
            service: self.service.to_string(),
            destination_subset: self.subset.clone().unwrap_or_default(),
            reason,
        }
    }
}

/// A request not yet sent: replayable (buffered), or streaming (sent once, verdict first).
pub(crate) enum Pending {
    Replayable(Replayable),
    Streaming(Option<http::Request<Body>>),
}

impl Pending {
    fn take(&mut self) -> Option<http::Request<Body>> {
        match self {
            Pending::Replayable(r) => Some(r.request()),
            Pending::Streaming(req) => req.take(),
        }
    }
}

/// How a call ended: the response, the cluster that gave it (or `unknown`), and the flags.
pub(crate) struct Ended {
    pub response: http::Response<Body>,
    pub cluster: String,
    pub flags: Flags,
}

/// The clusters (and this cluster's endpoints) that may serve `call`.
pub(crate) fn targets(
    outbound: &Outbound,
    snapshot: &Snapshot,
    call: &Call,
) -> Result<Vec<Target>, (StatusCode, Flags, String)> {
    let found = snapshot
        .targets(
            &call.service,
            Protocol::Http,
            call.port,
            call.only_cluster.as_ref(),
        )
        .map_err(|e| {
            let (status, flags) = match e {
                NoRoute::Unknown { .. } => (StatusCode::NOT_FOUND, Flags::NO_CLUSTER),
                NoRoute::NoPort { .. } => (StatusCode::BAD_REQUEST, Flags::NO_CLUSTER),
                NoRoute::Unreachable { .. } => {
                    (StatusCode::SERVICE_UNAVAILABLE, Flags::NO_HEALTHY_UPSTREAM)
                }
            };
            (status, flags, e.to_string())
        })?;
    let Some(subset) = &call.subset else {
        return Ok(found);
    };
    let Some(view) = snapshot.policy.subset(&call.service, subset) else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::NO_CLUSTER,
            format!(
                "subset {subset:?} of {} is defined by no DestinationRule",
                call.service
            ),
        ));
    };
    let own = &outbound.cluster;
    let in_subset: Vec<Target> = found
        .into_iter()
        .filter_map(|t| match &t.kind {
            TargetKind::Local(_) => view.local.as_ref().map(|svc| Target {
                kind: TargetKind::Local(svc.clone()),
                port: t.port,
            }),
            TargetKind::Remote { cluster, .. } => view.clusters.contains(cluster).then_some(t),
        })
        .collect();
    if in_subset.is_empty() {
        let _ = own;
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            Flags::NO_HEALTHY_UPSTREAM,
            format!(
                "no reachable cluster has endpoints of subset {subset:?} of {}",
                call.service
            ),
        ));
    }
    Ok(in_subset)
}

/// Drops the policy state of routes and destinations that left the route table, and of
/// clusters that left the mesh, whenever the snapshot changes (issue: state outlives a
/// snapshot, but not the thing it is about).
pub(crate) async fn forget_departed(
    state: Arc<crate::policy::state::PolicyState>,
    mut snapshots: tokio::sync::watch::Receiver<Arc<Snapshot>>,
    drain: crate::drain::Watch,
) {
    let mut last: Option<Arc<Snapshot>> = None;
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let snapshot = snapshots.borrow_and_update().clone();
        // Only what left the catalog or the route table is forgotten; a write that changed
        // neither (most do not) leaves nothing to drop.
        if last.as_ref().is_some_and(|l| {
            l.same_catalog(&snapshot) && Arc::ptr_eq(&l.policy.routes, &snapshot.policy.routes)
        }) {
            continue;
        }
        forget(&state, &snapshot);
        last = Some(snapshot);
    }
}

/// The service a state key is about: keys are `<service>` then `/<subset>`, `#<route>`,
/// `@<cluster>` or `!<endpoint>` parts.
fn service_of(key: &str) -> &str {
    key.split(['/', '#', '@', '!']).next().unwrap_or(key)
}

fn forget(state: &crate::policy::state::PolicyState, snapshot: &Snapshot) {
    // Each state key is looked up in the snapshot: the state holds a few keys, the snapshot
    // may hold tens of thousands of services, and this runs on every change of the route
    // table.
    let service = |key: &str| service_of(key).parse::<ServiceKey>().ok();
    state.retain_where(|key| {
        service(key).is_some_and(|service| {
            snapshot.policy.routes.services.contains_key(&service)
                || snapshot.local.contains_key(&service)
                || snapshot
                    .peers
                    .values()
                    .any(|peer| peer.exports().contains_key(&service))
        })
    });
    // Hosts that left: clusters for the source's detectors, endpoints for the destination's.
    let mut clusters: std::collections::HashSet<String> =
        snapshot.peers.keys().map(|c| c.to_string()).collect();
    if let Some(own) = &snapshot.local_cluster {
        clusters.insert(own.to_string());
    }
    state.each_detector(|key, detector| {
        if key.ends_with("!endpoints") {
            let endpoints: std::collections::HashSet<String> = service(key)
                .and_then(|service| snapshot.local.get(&service))
                .into_iter()
                .flat_map(|svc| svc.endpoints.iter().map(ToString::to_string))
                .collect();
            detector.retain(|host| endpoints.contains(host));
        } else {
            detector.retain(|host| clusters.contains(host));
        }
    });
}

/// One attempt's end, as the retry policy reads it.
enum Tried {
    Answered(http::Response<Body>),
    /// Refused or unreachable through every gateway of the cluster before anything was acted
    /// on: the next cluster may try, and it is not a retry.
    NotStarted(String, Failure),
    /// Started and then failed (reset, or no answer within the per-try timeout).
    Failed(String, Failure),
}

/// Runs `call` with `request`, retrying and failing over as the policy says.
pub(crate) async fn forward(
    outbound: &Arc<Outbound>,
    snapshot: &Snapshot,
    call: &Call,
    mut request: Pending,
    mut flags: Flags,
) -> Ended {
    let targets = match targets(outbound, snapshot, call) {
        Ok(t) => t,
        Err((status, flag, why)) => {
            flags.set(flag);
            return Ended {
                response: http::error_response(status, &why),
                cluster: "unknown".into(),
                flags,
            };
        }
    };
    let state = &outbound.policy;
    let key = call.state_key();
    let limits = state.limits(&key);
    let _permit = match limits.try_request(&call.pool) {
        Ok(permit) => permit,
        Err(overflow) => {
            flags.set(Flags::OVERFLOW);
            outbound
                .metrics
                .overflows
                .get_or_create(&call.labels(overflow.as_reason()))
                .inc();
            return Ended {
                response: overflowed(&call.service, overflow.as_reason()),
                cluster: "unknown".into(),
                flags,
            };
        }
    };
    let budget_key = call.budget_key();
    state.with_budget(&budget_key, call.budget, |b| b.deposit(Instant::now()));

    let retries = match &request {
        Pending::Replayable(_) => call.retries.as_ref(),
        // A streamed body cannot be sent twice.
        Pending::Streaming(_) => None,
    };
    let max_attempts = 1 + retries.map_or(0, |r| r.attempts);
    let start = outbound.next_target.fetch_add(1, Ordering::Relaxed);
    let mut attempt = 1u32;
    let mut last_cluster: Option<String> = None;
    let mut errors: Vec<String> = Vec::new();
    loop {
        // A retry tries another cluster first, where the policy lets it.
        let failed = last_cluster
            .as_deref()
            .filter(|_| retries.is_some_and(|r| r.retry_remote_localities));
        let order = order_targets(
            outbound,
            snapshot,
            call,
            &key,
            &targets,
            start + attempt as usize - 1,
            failed,
        );
        let mut outcome = None;
        for target in order {
            let dest = target.cluster(&outbound.cluster).to_string();
            let choice = RouteChoice {
                subset: call.subset.clone(),
                route: call.route.clone(),
                attempt,
                hash: call.hash,
            };
            // Requests in flight per cluster, for LEAST_REQUEST.
            let _in_flight = state
                .limits(&format!("{key}@{dest}"))
                .try_request(&ConnectionPool::default())
                .ok();
            let per_try = retries.and_then(|r| r.per_try_timeout);
            let tried = try_once(outbound, target, call, &mut request, choice, per_try).await;
            match tried {
                Tried::NotStarted(e, failure) => {
                    // Unreachable or refusing (no endpoint up there): a gateway error to
                    // outlier detection either way, as Envoy counts connect failures.
                    observe(
                        outbound,
                        call,
                        &key,
                        &dest,
                        targets.len(),
                        Outcome::LocalFailure,
                    );
                    if matches!(failure, Failure::ConnectFailure) {
                        flags.set(Flags::CONNECT_FAILURE);
                    }
                    errors.push(format!("{dest}: {e}"));
                    continue;
                }
                other => {
                    outcome = Some((dest, other));
                    break;
                }
            }
        }
        let Some((dest, tried)) = outcome else {
            // Every cluster refused or was unreachable: nothing was acted on anywhere.
            flags.set(Flags::NO_HEALTHY_UPSTREAM);
            return Ended {
                response: http::error_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &format!(
                        "no cluster serving {} accepted the request ({})",
                        call.service,
                        errors.join("; ")
                    ),
                ),
                cluster: "unknown".into(),
                flags,
            };
        };
        let (failure, response) = match tried {
            Tried::Answered(resp) => {
                let status = resp.status().as_u16();
                observe(
                    outbound,
                    call,
                    &key,
                    &dest,
                    targets.len(),
                    Outcome::Status(status),
                );
                (Failure::Status(status), Ok(resp))
            }
            Tried::Failed(e, failure) => {
                observe(
                    outbound,
                    call,
                    &key,
                    &dest,
                    targets.len(),
                    Outcome::LocalFailure,
                );
                (failure, Err(e))
            }
            Tried::NotStarted(..) => unreachable!("handled in the loop above"),
        };
        let retriable = retries.is_some_and(|r| retry::is_retriable(r, &failure));
        if retriable && attempt < max_attempts {
            let allowed =
                state.with_budget(&budget_key, call.budget, |b| b.try_withdraw(Instant::now()));
            let permit = if allowed {
                limits.try_retry(&call.pool).ok()
            } else {
                None
            };
            if let (Some(_retry_permit), Some(policy)) = (permit, retries) {
                outbound
                    .metrics
                    .retries
                    .get_or_create(&call.labels("retry"))
                    .inc();
                let pause = retry::backoff(policy, attempt, &mut ThreadRandom);
                tracing::debug!(service = %call.service, cluster = %dest, attempt, ?failure, ?pause, "retrying");
                tokio::time::sleep(pause).await;
                attempt += 1;
                last_cluster = Some(dest);
                continue;
            }
            let reason = if allowed {
                "retry_overflow"
            } else {
                "budget_exhausted"
            };
            outbound
                .metrics
                .retries
                .get_or_create(&call.labels(reason))
                .inc();
        }
        if retriable {
            flags.set(Flags::RETRY_LIMIT);
        }
        let response = match response {
            Ok(resp) => resp,
            Err(e) => {
                let (status, flag, what) = match failure {
                    Failure::PerTryTimeout => (
                        StatusCode::GATEWAY_TIMEOUT,
                        Flags::TIMEOUT,
                        "upstream request timeout",
                    ),
                    _ => (StatusCode::BAD_GATEWAY, Flags::RESET, "upstream reset"),
                };
                flags.set(flag);
                http::error_response(status, &format!("{what}: {} in {dest}: {e}", call.service))
            }
        };
        return Ended {
            response,
            cluster: dest,
            flags,
        };
    }
}

/// The targets in the order to try them for one attempt: round-robin from `start`, clusters
/// that outlier detection ejected left out (unless too few would remain), and on a retry the
/// cluster that just failed moved last when the policy lets a retry go elsewhere.
fn order_targets<'t>(
    outbound: &Outbound,
    snapshot: &Snapshot,
    call: &Call,
    key: &str,
    targets: &'t [Target],
    start: usize,
    failed: Option<&str>,
) -> Vec<&'t Target> {
    let n = targets.len();
    let mut order: Vec<&Target> = (0..n).map(|i| &targets[(start + i) % n]).collect();
    if let Some(cfg) = &call.outlier {
        let names: Vec<String> = order
            .iter()
            .map(|t| t.cluster(&outbound.cluster).to_string())
            .collect();
        let healthy: Vec<bool> = outbound.policy.with_detector(key, |d| {
            let kept = d.healthy(cfg, &names, Instant::now());
            names.iter().map(|n| kept.contains(&n)).collect()
        });
        order = order
            .into_iter()
            .zip(healthy)
            .filter(|(_, healthy)| *healthy)
            .map(|(t, _)| t)
            .collect();
    }
    // Locality: the closest clusters first (stable, so the rotation holds within a level);
    // the load balancer then picks among the closest.
    let localities = &snapshot.policy.localities;
    let own = localities.get(&outbound.cluster).map(String::as_str);
    let locality_of = |t: &Target| {
        localities
            .get(t.cluster(&outbound.cluster))
            .map(String::as_str)
    };
    let mut closest = order.len();
    let cfg = call.locality.as_ref();
    let by_labels = cfg.is_some_and(|c| !c.failover_priority.is_empty());
    if call.outlier.is_some() && (own.is_some() || by_labels) && cfg.is_none_or(|l| l.enabled) {
        let drawn = own.and_then(|own| locality::distribute(cfg?, own, &mut ThreadRandom));
        let here = locality::Place {
            cluster: outbound.cluster.as_str(),
            locality: own,
        };
        let rank = |t: &Target| match drawn {
            Some(pattern) => u16::from(!locality::in_pattern(pattern, locality_of(t))),
            None => {
                let there = locality::Place {
                    cluster: t.cluster(&outbound.cluster).as_str(),
                    locality: locality_of(t),
                };
                locality::rank(&here, &there, cfg)
            }
        };
        order.sort_by_key(|t| rank(t));
        let best = order.first().map(|t| rank(t));
        closest = order.iter().take_while(|t| Some(rank(t)) == best).count();
    }
    // The load balancer picks the first cluster; the others stay in rotation behind it as
    // failover. Round robin is the rotation itself.
    if call.lb != LoadBalancer::RoundRobin {
        let hosts: Vec<ClusterHost> = order[..closest]
            .iter()
            .map(|t| {
                let name = t.cluster(&outbound.cluster).as_str();
                ClusterHost {
                    id: lb::fnv1a(name.as_bytes()),
                    in_flight: outbound.policy.limits(&format!("{key}@{name}")).in_flight(),
                }
            })
            .collect();
        if let Some(first) = lb::pick(
            &call.lb,
            &hosts,
            call.hash,
            &outbound.next_target,
            &mut ThreadRandom,
        ) {
            order[..closest].rotate_left(first);
        }
    }
    if let Some(failed) = failed
        && let Some(i) = order
            .iter()
            .position(|t| t.cluster(&outbound.cluster).as_str() == failed)
    {
        let t = order.remove(i);
        order.push(t);
    }
    order
}

/// A cluster as the load balancer sees it.
struct ClusterHost {
    id: u64,
    in_flight: u32,
}

impl lb::Candidate for ClusterHost {
    fn id(&self) -> u64 {
        self.id
    }
    fn in_flight(&self) -> u32 {
        self.in_flight
    }
}

/// Tells outlier detection how `cluster` answered; counts an ejection.
fn observe(
    outbound: &Outbound,
    call: &Call,
    key: &str,
    cluster: &str,
    hosts: usize,
    outcome: Outcome,
) {
    let Some(cfg) = &call.outlier else { return };
    let ejected = outbound.policy.with_detector(key, |d| {
        d.record(cfg, &cluster.to_string(), outcome, hosts, Instant::now())
    });
    if ejected {
        tracing::info!(service = %call.service, subset = call.subset.as_deref().unwrap_or(""), %cluster, "outlier detection ejected a cluster");
        outbound
            .metrics
            .ejections
            .get_or_create(&call.labels("cluster"))
            .inc();
    }
}

async fn try_once(
    outbound: &Arc<Outbound>,
    target: &Target,
    call: &Call,
    request: &mut Pending,
    choice: RouteChoice,
    per_try: Option<Duration>,
) -> Tried {
    let once = async {
        match (&target.kind, &mut *request) {
            (TargetKind::Remote { gateways, .. }, Pending::Replayable(r)) => {
                match send_early(outbound, gateways, target, call, r, choice).await {
                    Early::Answered(resp) => Tried::Answered(resp),
                    Early::TryNext(e, connect) => Tried::NotStarted(
                        e,
                        if connect {
                            Failure::ConnectFailure
                        } else {
                            Failure::Refused
                        },
                    ),
                    Early::Failed(e) => Tried::Failed(e, Failure::Reset),
                }
            }
            (_, pending) => {
                let io = match open(outbound, target, call, choice).await {
                    Ok(io) => io,
                    Err(e) => {
                        let failure = if e.is_refusal() {
                            Failure::Refused
                        } else {
                            Failure::ConnectFailure
                        };
                        return Tried::NotStarted(e.to_string(), failure);
                    }
                };
                let Some(req) = pending.take() else {
                    return Tried::NotStarted(
                        "the request was already sent".into(),
                        Failure::Refused,
                    );
                };
                let sent = match io {
                    Upstream::Pooled(conn) => outbound
                        .pool
                        .send(conn, req)
                        .await
                        .map_err(|e| e.to_string()),
                    Upstream::Stream(io) => {
                        let _awaiting = outbound.spinner.awaiting();
                        http::send(io, req)
                            .await
                            .map(|r| r.map(http::boxed))
                            .map_err(|e| e.to_string())
                    }
                };
                match sent {
                    Ok(resp) => Tried::Answered(resp),
                    Err(e) => Tried::Failed(e, Failure::Reset),
                }
            }
        }
    };
    match per_try {
        Some(limit) => tokio::time::timeout(limit, once).await.unwrap_or_else(|_| {
            Tried::Failed(
                format!("no response within the per-try timeout of {limit:?}"),
                Failure::PerTryTimeout,
            )
        }),
        None => once.await,
    }
}

/// Envoy's answer to a circuit-breaker overflow: 503 at once, marked as overloaded.
fn overflowed(service: &ServiceKey, limit: &str) -> http::Response<Body> {
    let mut resp = http::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("upstream connection pool of {service} is full ({limit} limit reached)"),
    );
    resp.headers_mut().insert(
        "x-envoy-overloaded",
        ::http::HeaderValue::from_static("true"),
    );
    resp
}

/// Rolls a percentage (0–100) with `rng`.
pub(crate) fn roll(percent: f64, rng: &mut impl Random) -> bool {
    percent >= 100.0 || (percent > 0.0 && rng.unit() * 100.0 < percent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_keys_name_their_service_first() {
        for key in [
            "api.prod",
            "api.prod/v2",
            "api.prod#http[0]",
            "api.prod/v2@west",
            "api.prod/v2!10.0.0.1:80",
            "api.prod!endpoints",
        ] {
            assert_eq!(service_of(key), "api.prod", "{key}");
        }
    }

    #[test]
    fn flags_read_as_envoy_writes_them() {
        assert_eq!(Flags::default().label(), "-");
        let mut f = Flags::default();
        f.set(Flags::DELAY_INJECTED);
        f.set(Flags::FAULT_INJECTED);
        assert_eq!(f.label(), "DI,FI");
        let mut f = Flags::default();
        f.set(Flags::RETRY_LIMIT);
        assert_eq!(f.label(), "URX");
    }
}
