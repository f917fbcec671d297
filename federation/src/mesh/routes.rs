//! Compiles the traffic policy kinds into the typed [`RouteTable`]: Istio's VirtualService and
//! DestinationRule as written, Causeway's own `Route` and `DestinationPolicy`, Linkerd's
//! `ServiceProfile` (routes with `isRetryable` and `timeout`, `retryBudget`) and SMI's
//! `TrafficSplit` (a weighted split of an apex service over backend services).
//!
//! Lenient like the rest of the compiler: resources were validated before they were committed,
//! so a part that does not compile here is skipped with a warning instead of taking the table
//! down. Where two resources claim one host, the older one (by creation time, then namespace
//! and name) wins, as Istio's sidecars do; the apply path refuses the second in one namespace.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::MeshState;
use super::StoredResource;
use super::compile::CacheMaps;
use crate::model::ServiceKey;
use crate::resource::{Kind, Resource, ResourceKey};
use crate::resource::{parse_duration, parse_quantity};
use crate::traffic::{
    ConnectionPool, DestinationPolicy, Fault, FaultAbort, FaultDelay, HashOn, HeaderOps, HttpRoute,
    LoadBalancer, LocalityLb, Mirror, OutlierDetection, Redirect, RequestMatch, RetryBudget,
    RetryOn, RetryPolicy, Rewrite, RouteAction, RouteDestination, RouteIndex, RouteTable,
    StringMatch, Subset, TrafficPolicy, WeightedDestinations,
};

/// The service a host of a resource in `namespace` names, as Istio resolves short names:
/// `reviews` is `reviews.<namespace>`; `reviews.prod`, `reviews.prod.svc.cluster.local`,
/// `reviews.prod.svc`, `reviews.prod.mesh` and `reviews.prod.<cluster>.mesh` are
/// `reviews.prod`. Wildcards and names outside the mesh resolve to nothing.
pub fn resolve_host(host: &str, namespace: &str) -> Option<ServiceKey> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let labels: Vec<&str> = host.split('.').collect();
    let (name, ns) = match labels.as_slice() {
        [name] => (*name, namespace),
        [name, ns]
        | [name, ns, "svc"]
        | [name, ns, "mesh"]
        | [name, ns, "svc", "cluster", "local"]
        | [name, ns, _, "mesh"] => (*name, *ns),
        _ => return None,
    };
    ServiceKey::new(name, ns).ok()
}

/// Routes and destination rules of every service, from the state's policy resources.
/// Routes of one resource, compiled once per version of it.
struct Compiled {
    routes: Arc<Vec<HttpRoute>>,
    index: Arc<RouteIndex>,
}

impl Compiled {
    fn new(routes: Vec<HttpRoute>) -> Self {
        Compiled {
            index: Arc::new(RouteIndex::build(&routes)),
            routes: Arc::new(routes),
        }
    }
}

/// Routes and destination rules of every service, from the state's policy resources. A
/// resource whose version `cache` has seen is not compiled again.
pub(crate) fn compile(state: &MeshState, cache: &mut CacheMaps) -> Arc<RouteTable> {
    if cache.policy_clean
        && let Some(table) = &cache.table
    {
        // No policy resource written since the table was built.
        return table.clone();
    }
    let mut routes: foldhash::HashMap<ServiceKey, (Arc<Claim>, Arc<Compiled>)> =
        foldhash::HashMap::default();
    let mut rules: foldhash::HashMap<ServiceKey, (Arc<Claim>, Arc<DestinationPolicy>)> =
        foldhash::HashMap::default();
    let mut live = foldhash::HashSet::default();

    let mut budgets: foldhash::HashMap<ServiceKey, RetryBudget> = foldhash::HashMap::default();
    let route_kinds = [
        Kind::IstioVirtualService,
        Kind::Route,
        Kind::SmiTrafficSplit,
        Kind::LinkerdServiceProfile,
    ];
    for (kind, ns, key, stored) in claims(state, &route_kinds, &mut live) {
        // Parsed and compiled only when the resource changed since the last compile.
        let table = cache.route_entry(key, stored, |resource| route_table(kind, ns, resource));
        if let Some((service, budget)) = &table.budget {
            budgets.insert(service.clone(), *budget);
        }
        if table.compiled.routes.is_empty() && kind == Kind::LinkerdServiceProfile {
            continue;
        }
        for service in &table.services {
            let compiled = Arc::clone(&table.compiled);
            claim_host(&mut routes, service.clone(), &table.claim, || compiled);
        }
    }
    let rule_kinds = [Kind::IstioDestinationRule, Kind::DestinationPolicy];
    for (_, ns, key, stored) in claims(state, &rule_kinds, &mut live) {
        let rule = cache.route_entry(key, stored, |resource| {
            let claim = Arc::new(Claim::of(resource));
            let host = resource.spec.get("host").and_then(Value::as_str);
            (
                host.and_then(|h| resolve_host(h, ns)),
                Arc::new(destination_policy(&resource.spec, claim.from.clone())),
                claim,
            )
        });
        if let (Some(service), policy, claim) = rule.as_ref() {
            claim_host(&mut rules, service.clone(), claim, || Arc::clone(policy));
        }
    }
    let before = cache.routes.len();
    cache.routes.retain(|key, _| live.contains(key));
    if cache.routes.len() != before {
        cache.fresh = true;
    }
    // Nothing compiled anew and nothing gone: the table is the one built last time.
    if !cache.fresh
        && let Some(table) = &cache.table
    {
        let table = table.clone();
        cache.policy_clean = true;
        return table;
    }

    let mut table = RouteTable::default();
    for (key, (claim, compiled)) in routes {
        let entry = table.services.entry(key).or_default();
        let policy = Arc::make_mut(entry);
        policy.index = compiled.index.clone();
        policy.routes = compiled.routes.clone();
        policy.routes_from = Some(claim.from.clone());
    }
    for (key, (_, rule)) in rules {
        let entry = table.services.entry(key).or_default();
        Arc::make_mut(entry).destination = Some(rule);
    }
    for (key, budget) in budgets {
        let entry = table.services.entry(key).or_default();
        Arc::make_mut(entry).retry_budget = Some(budget);
    }
    let table = Arc::new(table);
    cache.table = Some(table.clone());
    cache.fresh = false;
    cache.policy_clean = true;
    table
}

/// A stored policy resource with its kind and namespace.
type Claimed<'s> = (Kind, &'s str, &'s ResourceKey, &'s Arc<StoredResource>);

/// The namespaced resources of `kinds`, from their metadata alone; their keys go into `live`
/// (what the compile cache keeps).
fn claims<'s>(
    state: &'s MeshState,
    kinds: &[Kind],
    live: &mut foldhash::HashSet<&'s ResourceKey>,
) -> Vec<Claimed<'s>> {
    let mut out = Vec::new();
    for &kind in kinds {
        for (key, stored) in state.entries(kind) {
            let Some(ns) = stored.metadata().namespace.as_deref() else {
                continue;
            };
            live.insert(key);
            out.push((kind, ns, key, stored));
        }
    }
    out
}

/// What one route-table resource gives the services whose hosts it names; kept per stored
/// resource, so that a compile does no work for the ones that did not change.
struct RouteTableOf {
    claim: Arc<Claim>,
    /// The services its hosts name (none for a VirtualService bound to other gateways only).
    services: Vec<ServiceKey>,
    compiled: Arc<Compiled>,
    /// A ServiceProfile's retry budget, for its one service.
    budget: Option<(ServiceKey, RetryBudget)>,
}

fn route_table(kind: Kind, ns: &str, resource: &Resource) -> RouteTableOf {
    let claim = Arc::new(Claim::of(resource));
    let from = claim.from.as_str();
    let spec = &resource.spec;
    let mut budget = None;
    let hosts: Vec<String> = match kind {
        Kind::SmiTrafficSplit => spec
            .get("service")
            .and_then(Value::as_str)
            .map(str::to_string)
            .into_iter()
            .collect(),
        Kind::LinkerdServiceProfile => {
            // A profile is named by the FQDN of its service.
            budget = spec.get("retryBudget").and_then(retry_budget);
            vec![resource.metadata.name.clone()]
        }
        Kind::IstioVirtualService if !binds_mesh(spec.get("gateways")) => {
            tracing::debug!(
                from,
                "VirtualService bound to other gateways only; nothing to do here"
            );
            Vec::new()
        }
        _ => strings(spec.get("hosts")).map(str::to_string).collect(),
    };
    let compiled = Compiled::new(match kind {
        Kind::Route => native_routes(spec, ns),
        Kind::SmiTrafficSplit => traffic_split(spec, ns).into_iter().collect(),
        Kind::LinkerdServiceProfile => profile_routes(spec, resource.metadata.name.as_str(), ns),
        _ => istio_routes(spec, ns),
    });
    let services: Vec<ServiceKey> = hosts
        .iter()
        .filter_map(|host| {
            let service = resolve_host(host, ns);
            if service.is_none() {
                tracing::debug!(
                    host,
                    from,
                    "host names no mesh service; its routes are not compiled"
                );
            }
            service
        })
        .collect();
    RouteTableOf {
        budget: budget.and_then(|b| Some((services.first()?.clone(), b))),
        services,
        compiled: Arc::new(compiled),
        claim,
    }
}

/// Who claims a host, ordered so that the oldest claim wins.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Claim {
    created: String,
    from: String,
}

impl Claim {
    fn of(resource: &Resource) -> Self {
        let meta = &resource.metadata;
        Claim {
            created: meta.creation_timestamp.clone().unwrap_or_default(),
            from: format!(
                "{} {}/{}",
                resource.kind,
                meta.namespace.as_deref().unwrap_or_default(),
                meta.name
            ),
        }
    }
}

fn claim_host<T>(
    table: &mut foldhash::HashMap<ServiceKey, (Arc<Claim>, T)>,
    key: ServiceKey,
    claim: &Arc<Claim>,
    value: impl FnOnce() -> T,
) {
    match table.get(&key) {
        Some((held, _)) if held <= claim => {
            tracing::warn!(service = %key, kept = %held.from, ignored = %claim.from, "two resources claim one host; the older one applies");
        }
        Some((held, _)) => {
            tracing::warn!(service = %key, kept = %claim.from, ignored = %held.from, "two resources claim one host; the older one applies");
            table.insert(key, (Arc::clone(claim), value()));
        }
        None => {
            table.insert(key, (Arc::clone(claim), value()));
        }
    }
}

fn strings(value: Option<&Value>) -> impl Iterator<Item = &str> {
    value
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter_map(Value::as_str)
}

fn items(value: Option<&Value>) -> &[Value] {
    value
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn duration(value: Option<&Value>) -> Option<Duration> {
    parse_duration(value?.as_str()?).ok()
}

fn uint(value: Option<&Value>) -> Option<u32> {
    value?.as_u64().and_then(|n| u32::try_from(n).ok())
}

fn text(value: Option<&Value>) -> Option<String> {
    value?.as_str().map(str::to_string)
}

// ---- VirtualService --------------------------------------------------------------------------

fn istio_routes(spec: &Value, ns: &str) -> Vec<HttpRoute> {
    items(spec.get("http"))
        .iter()
        .enumerate()
        .filter_map(|(i, http)| {
            let route = istio_route(http, i, ns);
            if route.is_none() {
                tracing::warn!(
                    index = i,
                    "an HTTP route that names no destination, redirect or direct response; skipped"
                );
            }
            route
        })
        .collect()
}

fn istio_route(http: &Value, index: usize, ns: &str) -> Option<HttpRoute> {
    let action = if let Some(redirect) = http.get("redirect") {
        RouteAction::Redirect(Redirect {
            uri: text(redirect.get("uri")),
            authority: text(redirect.get("authority")),
            scheme: text(redirect.get("scheme")),
            port: uint(redirect.get("port")).and_then(|p| u16::try_from(p).ok()),
            status: uint(redirect.get("redirectCode"))
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(301),
        })
    } else if let Some(direct) = http.get("directResponse") {
        RouteAction::Direct {
            status: uint(direct.get("status"))
                .and_then(|c| u16::try_from(c).ok())
                .unwrap_or(200),
            body: direct
                .get("body")
                .and_then(|b| text(b.get("string")).or_else(|| text(b.get("bytes")))),
        }
    } else {
        let destinations: Vec<RouteDestination> = items(http.get("route"))
            .iter()
            .filter_map(|d| istio_destination(d, ns))
            .collect();
        if destinations.is_empty() {
            return None;
        }
        RouteAction::Forward(weighted(destinations))
    };
    let (request_headers, response_headers) = header_ops(http.get("headers"));
    Some(HttpRoute {
        name: text(http.get("name")).unwrap_or_else(|| format!("http[{index}]")),
        matches: items(http.get("match")).iter().map(istio_match).collect(),
        action,
        timeout: duration(http.get("timeout")).filter(|d| !d.is_zero()),
        retries: http.get("retries").and_then(istio_retries),
        fault: http.get("fault").and_then(istio_fault),
        mirrors: mirrors(http, ns),
        rewrite: http.get("rewrite").map(|r| Rewrite {
            uri: text(r.get("uri")),
            authority: text(r.get("authority")),
        }),
        request_headers,
        response_headers,
    })
}

/// A lone destination without a weight takes all; several share 100 as written.
fn weighted(mut destinations: Vec<RouteDestination>) -> WeightedDestinations {
    if destinations.len() == 1 && destinations[0].weight == 0 {
        destinations[0].weight = 100;
    }
    WeightedDestinations::new(destinations)
}

fn istio_destination(route: &Value, ns: &str) -> Option<RouteDestination> {
    let destination = route.get("destination")?;
    let service = resolve_host(destination.get("host")?.as_str()?, ns)?;
    let (request_headers, response_headers) = header_ops(route.get("headers"));
    Some(RouteDestination {
        service,
        subset: text(destination.get("subset")),
        port: destination
            .get("port")
            .and_then(|p| uint(p.get("number")))
            .and_then(|p| u16::try_from(p).ok()),
        weight: uint(route.get("weight")).unwrap_or(0),
        request_headers,
        response_headers,
    })
}

/// Whether a `gateways` list (absent = only the mesh) includes Istio's reserved `mesh`, which
/// Causeway's gateways are.
fn binds_mesh(gateways: Option<&Value>) -> bool {
    match gateways.and_then(Value::as_array) {
        None => true,
        Some(list) if list.is_empty() => true,
        Some(list) => list.iter().any(|g| g.as_str() == Some("mesh")),
    }
}

fn istio_match(m: &Value) -> RequestMatch {
    // The caller's workload labels are not known to the source gateway: a match on them never
    // holds, which is how Istio treats a caller that lacks them. Its namespace is known when
    // its identity is (see `source_namespace`).
    let caller_unknown = m.get("sourceLabels").is_some();
    let never = caller_unknown || !binds_mesh(m.get("gateways"));
    RequestMatch {
        never,
        source_namespace: text(m.get("sourceNamespace")),
        name: text(m.get("name")),
        uri: m.get("uri").and_then(string_match),
        method: m.get("method").and_then(string_match),
        authority: m.get("authority").and_then(string_match),
        scheme: m.get("scheme").and_then(string_match),
        headers: string_matches(m.get("headers"), true),
        without_headers: string_matches(m.get("withoutHeaders"), true),
        query_params: string_matches(m.get("queryParams"), false),
        port: uint(m.get("port")).and_then(|p| u16::try_from(p).ok()),
        ignore_uri_case: m
            .get("ignoreUriCase")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    }
}

/// Istio `StringMatch`; `{}` means "present".
fn string_match(m: &Value) -> Option<StringMatch> {
    if let Some(s) = m.get("exact").and_then(Value::as_str) {
        return Some(StringMatch::Exact(s.to_string()));
    }
    if let Some(s) = m.get("prefix").and_then(Value::as_str) {
        return Some(StringMatch::Prefix(s.to_string()));
    }
    if let Some(s) = m.get("regex").and_then(Value::as_str) {
        return match StringMatch::regex(s) {
            Ok(re) => Some(re),
            Err(e) => {
                tracing::warn!(error = %e, "a match regex does not compile; the match never holds");
                // Never matching is the safe reading: a route must not catch what it did not
                // ask for.
                StringMatch::regex("[^\\s\\S]").ok()
            }
        };
    }
    m.is_object().then_some(StringMatch::Present)
}

fn string_matches(value: Option<&Value>, lowercase: bool) -> Vec<(String, StringMatch)> {
    value
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .filter_map(|(name, m)| {
            let name = if lowercase {
                name.to_ascii_lowercase()
            } else {
                name.clone()
            };
            Some((name, string_match(m)?))
        })
        .collect()
}

fn header_ops(headers: Option<&Value>) -> (HeaderOps, HeaderOps) {
    let ops = |v: Option<&Value>| {
        let Some(v) = v else {
            return HeaderOps::default();
        };
        let pairs = |field: &str| -> Vec<(String, String)> {
            v.get(field)
                .and_then(Value::as_object)
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.to_ascii_lowercase(), v.as_str()?.to_string())))
                .collect()
        };
        HeaderOps {
            set: pairs("set"),
            add: pairs("add"),
            remove: strings(v.get("remove"))
                .map(str::to_ascii_lowercase)
                .collect(),
        }
    };
    let Some(headers) = headers else {
        return Default::default();
    };
    (ops(headers.get("request")), ops(headers.get("response")))
}

fn istio_retries(r: &Value) -> Option<RetryPolicy> {
    let attempts = uint(r.get("attempts")).unwrap_or(0);
    if attempts == 0 {
        return None;
    }
    // Istio's default retryOn when none is given.
    let retry_on = r
        .get("retryOn")
        .and_then(Value::as_str)
        .unwrap_or("connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes");
    let (retry_on, codes) = match parse_retry_on(retry_on) {
        Ok(parsed) => parsed,
        Err(e) => {
            tracing::warn!(error = %e, "retryOn does not parse; retries use connect-failure only");
            (
                RetryOn {
                    connect_failure: true,
                    ..RetryOn::default()
                },
                vec![],
            )
        }
    };
    // Istio's `backoff` is the base interval of Envoy's jittered exponential back-off.
    let backoff = duration(r.get("backoff"))
        .filter(|d| !d.is_zero())
        .unwrap_or(RetryPolicy::DEFAULT_BACKOFF_BASE);
    Some(RetryPolicy {
        attempts,
        per_try_timeout: duration(r.get("perTryTimeout")).filter(|d| !d.is_zero()),
        retry_on,
        retriable_status_codes: codes,
        retry_remote_localities: r
            .get("retryRemoteLocalities")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        backoff_base: backoff,
        backoff_max: backoff * 10,
    })
}

/// gRPC conditions Istio accepts in `retryOn`. They act on the `grpc-status` of a response,
/// which Causeway's HTTP/1 path does not read, so they are accepted and have no effect.
const GRPC_CONDITIONS: [&str; 5] = [
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Parses Istio's `retryOn`: a comma-separated list of Envoy conditions (`5xx`,
/// `gateway-error`, `reset`, `connect-failure`, `refused-stream`, `retriable-4xx`,
/// `retriable-status-codes`) and bare status codes, which Istio turns into
/// `retriable-status-codes` with those codes (`"503,5xx"`). The gRPC conditions (`cancelled`,
/// `deadline-exceeded`, `internal`, `resource-exhausted`, `unavailable`) are accepted and
/// ignored, as they only apply to gRPC. Blank items are skipped, as Envoy skips them.
/// Anything else is refused, naming the word, as Istio's validation refuses it; codes must
/// be HTTP statuses (100–599).
pub fn parse_retry_on(s: &str) -> Result<(RetryOn, Vec<u16>), String> {
    let mut on = RetryOn::default();
    let mut codes: Vec<u16> = Vec::new();
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        match word {
            "5xx" => on.server_error = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => on.retriable_status_codes = true,
            w if GRPC_CONDITIONS.contains(&w) => {}
            w if w.bytes().all(|b| b.is_ascii_digit()) => {
                let code = w
                    .parse::<u16>()
                    .ok()
                    .filter(|c| (100..=599).contains(c))
                    .ok_or_else(|| format!("retryOn: {w:?} is not an HTTP status code"))?;
                on.retriable_status_codes = true;
                if !codes.contains(&code) {
                    codes.push(code);
                }
            }
            w => {
                return Err(format!(
                    "retryOn: unknown condition {w:?} (known: 5xx, gateway-error, reset, \
                     connect-failure, refused-stream, retriable-4xx, retriable-status-codes, \
                     status codes, and the gRPC conditions {})",
                    GRPC_CONDITIONS.join(", ")
                ));
            }
        }
    }
    Ok((on, codes))
}

fn percent(value: Option<&Value>) -> Option<f64> {
    value?.get("value")?.as_f64()
}

fn istio_fault(f: &Value) -> Option<Fault> {
    let delay = f.get("delay").and_then(|d| {
        Some(FaultDelay {
            delay: duration(d.get("fixedDelay"))?,
            // Istio's deprecated integer `percent` still appears in older YAML.
            percent: percent(d.get("percentage"))
                .or_else(|| d.get("percent")?.as_f64())
                .unwrap_or(100.0),
        })
    });
    let abort = f.get("abort").and_then(|a| {
        Some(FaultAbort {
            status: uint(a.get("httpStatus")).and_then(|c| u16::try_from(c).ok())?,
            percent: percent(a.get("percentage")).unwrap_or(100.0),
        })
    });
    (delay.is_some() || abort.is_some()).then_some(Fault { delay, abort })
}

fn mirrors(http: &Value, ns: &str) -> Vec<Mirror> {
    let one = |destination: &Value, pct: Option<f64>| {
        Some(Mirror {
            service: resolve_host(destination.get("host")?.as_str()?, ns)?,
            subset: text(destination.get("subset")),
            port: destination
                .get("port")
                .and_then(|p| uint(p.get("number")))
                .and_then(|p| u16::try_from(p).ok()),
            percent: pct.unwrap_or(100.0),
        })
    };
    if let Some(mirror) = http.get("mirror") {
        let pct =
            percent(http.get("mirrorPercentage")).or_else(|| http.get("mirrorPercent")?.as_f64());
        return one(mirror, pct).into_iter().collect();
    }
    items(http.get("mirrors"))
        .iter()
        .filter_map(|m| one(m.get("destination")?, percent(m.get("percentage"))))
        .collect()
}

// ---- DestinationRule -------------------------------------------------------------------------

fn destination_policy(spec: &Value, from: String) -> DestinationPolicy {
    let traffic = traffic_policy(spec.get("trafficPolicy"), &TrafficPolicy::default());
    let subsets = items(spec.get("subsets"))
        .iter()
        .filter_map(|s| {
            Some(Subset {
                name: s.get("name")?.as_str()?.to_string(),
                labels: s
                    .get("labels")
                    .and_then(Value::as_object)
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<BTreeMap<_, _>>(),
                traffic: traffic_policy(s.get("trafficPolicy"), &traffic),
            })
        })
        .collect();
    // The native kind keeps outlier detection and the pool at the top of its spec.
    let traffic = if spec.get("trafficPolicy").is_none()
        && (spec.get("outlierDetection").is_some() || spec.get("connectionPool").is_some())
    {
        TrafficPolicy {
            outlier_detection: spec.get("outlierDetection").map(outlier_detection),
            connection_pool: spec
                .get("connectionPool")
                .map(native_pool)
                .unwrap_or_default(),
            ..TrafficPolicy::default()
        }
    } else {
        traffic
    };
    DestinationPolicy {
        from,
        traffic,
        subsets,
    }
}

/// `policy` over `base`: a field the policy sets replaces the base's whole field, as Istio
/// merges a subset's policy over its rule's.
fn traffic_policy(policy: Option<&Value>, base: &TrafficPolicy) -> TrafficPolicy {
    let Some(p) = policy else {
        return base.clone();
    };
    TrafficPolicy {
        load_balancer: p
            .get("loadBalancer")
            .map(load_balancer)
            .unwrap_or_else(|| base.load_balancer.clone()),
        connection_pool: p
            .get("connectionPool")
            .map(connection_pool)
            .unwrap_or_else(|| base.connection_pool.clone()),
        outlier_detection: p
            .get("outlierDetection")
            .map(outlier_detection)
            .or_else(|| base.outlier_detection.clone()),
        locality: p
            .get("loadBalancer")
            .and_then(|lb| lb.get("localityLbSetting"))
            .map(locality_lb)
            .or_else(|| base.locality.clone()),
    }
}

fn load_balancer(lb: &Value) -> LoadBalancer {
    if let Some(hash) = lb.get("consistentHash") {
        let on = if let Some(h) = hash.get("httpHeaderName").and_then(Value::as_str) {
            HashOn::Header(h.to_ascii_lowercase())
        } else if let Some(c) = hash.get("httpCookie") {
            HashOn::Cookie {
                name: text(c.get("name")).unwrap_or_default(),
                ttl: duration(c.get("ttl")),
            }
        } else if hash.get("useSourceIp").and_then(Value::as_bool) == Some(true) {
            HashOn::SourceIp
        } else if let Some(q) = hash.get("httpQueryParameterName").and_then(Value::as_str) {
            HashOn::QueryParam(q.to_string())
        } else {
            return LoadBalancer::RoundRobin;
        };
        return LoadBalancer::ConsistentHash(on);
    }
    match lb.get("simple").and_then(Value::as_str) {
        Some("LEAST_REQUEST" | "LEAST_CONN") => LoadBalancer::LeastRequest,
        Some("RANDOM") => LoadBalancer::Random,
        _ => LoadBalancer::RoundRobin,
    }
}

fn connection_pool(pool: &Value) -> ConnectionPool {
    let tcp = pool.get("tcp");
    let http = pool.get("http");
    let tcp_field = |f: &str| tcp.and_then(|t| t.get(f));
    let http_field = |f: &str| http.and_then(|h| h.get(f));
    ConnectionPool {
        max_connections: uint(tcp_field("maxConnections")),
        connect_timeout: duration(tcp_field("connectTimeout")),
        max_pending_requests: uint(http_field("http1MaxPendingRequests")),
        max_requests: uint(http_field("http2MaxRequests")),
        max_requests_per_connection: uint(http_field("maxRequestsPerConnection")),
        max_retries: uint(http_field("maxRetries")),
        idle_timeout: duration(http_field("idleTimeout")),
    }
}

fn native_pool(pool: &Value) -> ConnectionPool {
    ConnectionPool {
        max_connections: uint(pool.get("maxConnections")),
        max_pending_requests: uint(pool.get("maxPendingRequests")),
        ..ConnectionPool::default()
    }
}

fn outlier_detection(o: &Value) -> OutlierDetection {
    let defaults = OutlierDetection::default();
    OutlierDetection {
        // Istio's deprecated `consecutiveErrors` meant gateway errors.
        consecutive_5xx: match o.get("consecutive5xxErrors") {
            Some(v) => uint(Some(v)).filter(|&n| n > 0),
            None => defaults.consecutive_5xx,
        },
        consecutive_gateway_errors: uint(o.get("consecutiveGatewayErrors"))
            .or_else(|| uint(o.get("consecutiveErrors")))
            .filter(|&n| n > 0),
        interval: duration(o.get("interval")).unwrap_or(defaults.interval),
        base_ejection_time: duration(o.get("baseEjectionTime"))
            .unwrap_or(defaults.base_ejection_time),
        max_ejection_percent: uint(o.get("maxEjectionPercent"))
            .unwrap_or(defaults.max_ejection_percent),
        min_health_percent: uint(o.get("minHealthPercent")).unwrap_or(defaults.min_health_percent),
    }
}

fn locality_lb(l: &Value) -> LocalityLb {
    LocalityLb {
        failover: items(l.get("failover"))
            .iter()
            .filter_map(|f| Some((text(f.get("from"))?, text(f.get("to"))?)))
            .collect(),
        failover_priority: strings(l.get("failoverPriority"))
            .map(str::to_string)
            .collect(),
        distribute: items(l.get("distribute"))
            .iter()
            .filter_map(|d| {
                let to = d
                    .get("to")?
                    .as_object()?
                    .iter()
                    .filter_map(|(k, v)| Some((k.clone(), uint(Some(v))?)))
                    .collect();
                Some((text(d.get("from"))?, to))
            })
            .collect(),
        enabled: l.get("enabled").and_then(Value::as_bool).unwrap_or(true),
    }
}

// ---- Linkerd ServiceProfile, SMI TrafficSplit -------------------------------------------------

/// Linkerd retries a retryable route as long as its budget allows; Causeway also caps the
/// attempts of one request, so a budget that is generous at low traffic cannot hold a request
/// for long.
const PROFILE_MAX_RETRIES: u32 = 3;

/// A profile's routes, each forwarding to the service itself (a profile says how calls are
/// treated, not where they go), then a catch-all default route, as Linkerd treats requests
/// that match no route. Empty when no route says anything to enforce.
fn profile_routes(spec: &Value, host: &str, ns: &str) -> Vec<HttpRoute> {
    let Some(service) = resolve_host(host, ns) else {
        return vec![];
    };
    let to_self = || vec![RouteDestination::to(service.clone(), None, 100)];
    let mut routes: Vec<HttpRoute> = items(spec.get("routes"))
        .iter()
        .filter_map(|route| {
            let matches = profile_condition(route.get("condition")?)?;
            let retryable = route.get("isRetryable").and_then(Value::as_bool) == Some(true);
            Some(HttpRoute {
                timeout: duration(route.get("timeout")).filter(|d| !d.is_zero()),
                // Linkerd's default response class: a 5xx is a failure, and a failure of a
                // retryable route is retried.
                retries: retryable.then(|| RetryPolicy {
                    attempts: PROFILE_MAX_RETRIES,
                    per_try_timeout: None,
                    retry_on: RetryOn {
                        server_error: true,
                        ..RetryOn::default()
                    },
                    retriable_status_codes: vec![],
                    retry_remote_localities: true,
                    backoff_base: RetryPolicy::DEFAULT_BACKOFF_BASE,
                    backoff_max: RetryPolicy::DEFAULT_BACKOFF_BASE * 10,
                }),
                ..HttpRoute::forward(
                    text(route.get("name")).unwrap_or_default(),
                    matches,
                    to_self(),
                )
            })
        })
        .collect();
    if routes.is_empty() {
        return routes;
    }
    routes.push(HttpRoute::forward("default", vec![], to_self()));
    routes
}

/// A profile's request condition as Istio-style matches (any one holds): `method` and
/// `pathRegex` (anchored, as Linkerd anchors it), `all` of those, `any` of those. `not` has no
/// such reading; a route that uses it is skipped with a warning (it never matches).
fn profile_condition(condition: &Value) -> Option<Vec<RequestMatch>> {
    let simple = |c: &Value| -> Option<RequestMatch> {
        if c.get("not").is_some() || c.get("any").is_some() {
            return None;
        }
        let mut m = RequestMatch {
            method: text(c.get("method")).map(StringMatch::Exact),
            uri: match c.get("pathRegex").and_then(Value::as_str) {
                Some(re) => Some(StringMatch::regex(re).ok()?),
                None => None,
            },
            ..RequestMatch::default()
        };
        for part in items(c.get("all")) {
            let inner = simple_all(part)?;
            m.method = m.method.or(inner.method);
            m.uri = m.uri.or(inner.uri);
        }
        Some(m)
    };
    let matches = if let Some(any) = condition.get("any").and_then(Value::as_array) {
        any.iter().map(simple).collect::<Option<Vec<_>>>()
    } else {
        simple(condition).map(|m| vec![m])
    };
    if matches.is_none() {
        tracing::warn!(
            "a ServiceProfile route condition uses `not` or nests `any`; the route is not enforced"
        );
    }
    matches
}

/// One member of `all`: a method or a path regex.
fn simple_all(c: &Value) -> Option<RequestMatch> {
    if c.get("not").is_some() || c.get("any").is_some() || c.get("all").is_some() {
        return None;
    }
    Some(RequestMatch {
        method: text(c.get("method")).map(StringMatch::Exact),
        uri: match c.get("pathRegex").and_then(Value::as_str) {
            Some(re) => Some(StringMatch::regex(re).ok()?),
            None => None,
        },
        ..RequestMatch::default()
    })
}

fn retry_budget(b: &Value) -> Option<RetryBudget> {
    Some(RetryBudget {
        ratio: b.get("retryRatio")?.as_f64()?,
        min_per_second: uint(b.get("minRetriesPerSecond"))?,
        ttl: duration(b.get("ttl"))?,
    })
}

/// An SMI split: one route over the backends, weights as written (quantities in
/// thousandths, so `"500m"` and `"1"` keep their ratio).
fn traffic_split(spec: &Value, ns: &str) -> Option<HttpRoute> {
    let weight_of = |w: &Value| -> Option<u32> {
        match w {
            Value::Number(n) => n.as_u64().map(|n| n.saturating_mul(1000)),
            Value::String(q) => parse_quantity(q).ok().map(|q| (q * 1000.0).round() as u64),
            _ => None,
        }
        .and_then(|w| u32::try_from(w).ok())
    };
    let destinations: Vec<RouteDestination> = items(spec.get("backends"))
        .iter()
        .filter_map(|b| {
            Some(RouteDestination::to(
                resolve_host(b.get("service")?.as_str()?, ns)?,
                None,
                weight_of(b.get("weight")?)?,
            ))
        })
        .collect();
    if destinations.is_empty() {
        return None;
    }
    Some(HttpRoute::forward("split", vec![], destinations))
}

// ---- native Route ----------------------------------------------------------------------------

fn native_routes(spec: &Value, ns: &str) -> Vec<HttpRoute> {
    items(spec.get("http"))
        .iter()
        .enumerate()
        .filter_map(|(i, http)| {
            let destinations: Vec<RouteDestination> = items(http.get("destinations"))
                .iter()
                .filter_map(|d| {
                    Some(RouteDestination::to(
                        resolve_host(d.get("service")?.as_str()?, ns)?,
                        text(d.get("subset")),
                        uint(d.get("weight")).unwrap_or(0),
                    ))
                })
                .collect();
            if destinations.is_empty() {
                return None;
            }
            Some(HttpRoute {
                timeout: duration(http.get("timeout")).filter(|d| !d.is_zero()),
                retries: http.get("retries").and_then(istio_retries),
                ..HttpRoute::with_action(
                    text(http.get("name")).unwrap_or_else(|| format!("http[{i}]")),
                    items(http.get("match")).iter().map(istio_match).collect(),
                    RouteAction::Forward(weighted(destinations)),
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::mesh::state::tests::{apply, bootstrapped, res};

    fn key(s: &str) -> ServiceKey {
        s.parse().unwrap()
    }

    #[test]
    fn short_hosts_resolve_as_istio_resolves_them() {
        let cases = [
            ("reviews", "default", Some("reviews.default")),
            ("reviews.prod", "default", Some("reviews.prod")),
            ("reviews.prod.svc.cluster.local", "x", Some("reviews.prod")),
            ("reviews.prod.mesh", "x", Some("reviews.prod")),
            ("reviews.prod.west.mesh", "x", Some("reviews.prod")),
            ("*.prod.svc.cluster.local", "x", None),
            ("www.example.com", "x", None),
        ];
        for (host, ns, want) in cases {
            assert_eq!(resolve_host(host, ns), want.map(key), "{host} in {ns}");
        }
    }

    fn vs(ns: &str, name: &str, spec: Value) -> Resource {
        res(
            "networking.istio.io/v1beta1",
            "VirtualService",
            Some(ns),
            None,
            name,
            spec,
        )
    }

    #[test]
    fn virtual_services_and_rules_compile_to_typed_routes() {
        let mut state = bootstrapped();
        let canary = vs(
            "production",
            "split",
            json!({"hosts": ["api"], "http": [
                {"name": "hdr", "match": [{"headers": {"X-Beta": {"exact": "true"}}, "uri": {"regex": "/v[0-9]+/.*"}}],
                 "route": [{"destination": {"host": "api", "subset": "beta"}}],
                 "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,503"},
                 "timeout": "10s"},
                {"route": [
                    {"destination": {"host": "api", "subset": "stable"}, "weight": 90},
                    {"destination": {"host": "api.production.svc.cluster.local", "subset": "canary"}, "weight": 10}],
                 "fault": {"abort": {"percentage": {"value": 5}, "httpStatus": 500}},
                 "mirror": {"host": "api-shadow"}, "mirrorPercentage": {"value": 10.0}},
            ]}),
        );
        let rule = res(
            "networking.istio.io/v1beta1",
            "DestinationRule",
            Some("production"),
            None,
            "api",
            json!({"host": "api", "trafficPolicy": {
                    "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s"},
                    "connectionPool": {"tcp": {"maxConnections": 100}, "http": {"http1MaxPendingRequests": 10}}},
                   "subsets": [
                    {"name": "stable", "labels": {"version": "stable"}},
                    {"name": "canary", "labels": {"version": "canary"},
                     "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}]}),
        );
        apply(&mut state, 10, vec![canary, rule], vec![]);
        let table = compile(&state, &mut CacheMaps::default());
        let policy = table.get(&key("api.production")).expect("api has a policy");
        assert_eq!(
            policy.routes_from.as_deref(),
            Some("VirtualService production/split")
        );
        let [hdr, split] = policy.routes.as_slice() else {
            panic!("two routes, got {}", policy.routes.len())
        };
        assert_eq!(hdr.name, "hdr");
        assert_eq!(hdr.matches[0].headers[0].0, "x-beta");
        assert!(hdr.matches[0].uri.as_ref().unwrap().matches("/v2/users"));
        let retries = hdr.retries.as_ref().unwrap();
        assert_eq!(retries.attempts, 3);
        assert_eq!(retries.per_try_timeout, Some(Duration::from_secs(2)));
        assert!(retries.retry_on.server_error && retries.retry_on.retriable_status_codes);
        assert_eq!(retries.retriable_status_codes, [503]);
        assert_eq!(hdr.timeout, Some(Duration::from_secs(10)));
        assert_eq!(split.name, "http[1]");
        let RouteAction::Forward(w) = &split.action else {
            panic!("a forward")
        };
        assert_eq!(w.total(), 100);
        assert_eq!(w.pick(95).unwrap().subset.as_deref(), Some("canary"));
        assert_eq!(w.pick(95).unwrap().service, key("api.production"));
        assert_eq!(
            split.fault.as_ref().unwrap().abort.as_ref().unwrap().status,
            500
        );
        assert_eq!(split.mirrors[0].service, key("api-shadow.production"));
        assert_eq!(split.mirrors[0].percent, 10.0);

        let rule = policy.destination.as_ref().expect("a destination rule");
        let canary = rule.traffic_for(Some("canary"));
        assert_eq!(canary.load_balancer, LoadBalancer::LeastRequest);
        // The subset keeps the rule's settings it does not override.
        assert_eq!(canary.connection_pool.max_connections, Some(100));
        assert_eq!(
            canary.outlier_detection.as_ref().unwrap().consecutive_5xx,
            Some(5)
        );
        assert_eq!(
            rule.traffic_for(None).load_balancer,
            LoadBalancer::RoundRobin
        );
        assert_eq!(rule.subset("stable").unwrap().labels["version"], "stable");
    }

    #[test]
    fn a_write_recompiles_only_what_it_changed() {
        let mut state = bootstrapped();
        let route = |host: &str, subset: &str| {
            vs(
                "prod",
                host,
                json!({"hosts": [host], "http": [{"route": [{"destination": {"host": host, "subset": subset}}]}]}),
            )
        };
        apply(
            &mut state,
            10,
            vec![route("a", "v1"), route("b", "v1")],
            vec![],
        );
        let first = state.compile();
        apply(&mut state, 11, vec![route("b", "v2")], vec![]);
        let second = state.compile();
        let routes = |snap: &crate::mesh::MeshSnapshot, host: &str| {
            snap.routes
                .get(&key(&format!("{host}.prod")))
                .unwrap()
                .routes
                .clone()
        };
        // `a` did not change: the very same compiled routes.
        assert!(Arc::ptr_eq(&routes(&first, "a"), &routes(&second, "a")));
        assert!(!Arc::ptr_eq(&routes(&first, "b"), &routes(&second, "b")));
        let RouteAction::Forward(w) = &routes(&second, "b")[0].action else {
            panic!("a forward")
        };
        assert_eq!(w.destinations[0].subset.as_deref(), Some("v2"));
        // A write that touches no policy hands on the very same table.
        let svc = res(
            crate::resource::NATIVE_API_VERSION,
            "Service",
            Some("prod"),
            Some("east"),
            "a",
            json!({"ports": [{"port": 80, "protocol": "http"}]}),
        );
        apply(&mut state, 12, vec![svc], vec![]);
        let third = state.compile();
        assert!(Arc::ptr_eq(&second.routes, &third.routes));
        // A restored state compiles afresh and to the same table.
        let mut restored = crate::mesh::MeshState::new();
        restored.restore(&state.snapshot()).unwrap();
        assert_eq!(restored.compile().routes.services.len(), 2);
    }

    #[test]
    fn the_older_of_two_claims_on_a_host_wins() {
        let mut state = bootstrapped();
        let first = vs(
            "a",
            "first",
            json!({"hosts": ["api.shared"], "http": [{"route": [{"destination": {"host": "one.shared"}}]}]}),
        );
        apply(&mut state, 10, vec![first], vec![]);
        let second = vs(
            "b",
            "second",
            json!({"hosts": ["api.shared"], "http": [{"route": [{"destination": {"host": "two.shared"}}]}]}),
        );
        apply(&mut state, 11, vec![second], vec![]);
        let table = compile(&state, &mut CacheMaps::default());
        let policy = table.get(&key("api.shared")).unwrap();
        assert_eq!(
            policy.routes_from.as_deref(),
            Some("VirtualService a/first")
        );
    }

    #[test]
    fn service_profiles_and_traffic_splits_compile() {
        let mut state = bootstrapped();
        let profile = res(
            "linkerd.io/v1alpha2",
            "ServiceProfile",
            Some("shop"),
            None,
            "web.shop.svc.cluster.local",
            json!({"routes": [
                {"name": "GET /books", "condition": {"method": "GET", "pathRegex": "/books/[^/]*"},
                 "isRetryable": true, "timeout": "300ms"},
                {"name": "any", "condition": {"any": [{"method": "PUT"}, {"method": "DELETE"}]}}],
                   "retryBudget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"}}),
        );
        let split = res(
            "split.smi-spec.io/v1alpha1",
            "TrafficSplit",
            Some("shop"),
            None,
            "cart-split",
            json!({"service": "cart", "backends": [
                {"service": "cart-v1", "weight": "500m"}, {"service": "cart-v2", "weight": "1500m"}]}),
        );
        apply(&mut state, 10, vec![profile, split], vec![]);
        let table = compile(&state, &mut CacheMaps::default());
        let web = table.get(&key("web.shop")).expect("the profile's service");
        assert_eq!(web.retry_budget.unwrap().min_per_second, 10);
        let names: Vec<_> = web.routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["GET /books", "any", "default"]);
        let books = &web.routes[0];
        assert!(books.retries.as_ref().unwrap().retry_on.server_error);
        assert_eq!(books.timeout, Some(Duration::from_millis(300)));
        assert!(books.matches[0].uri.as_ref().unwrap().matches("/books/7"));
        assert!(!books.matches[0].uri.as_ref().unwrap().matches("/books/7/x"));
        assert_eq!(web.routes[1].matches.len(), 2);

        let cart = table.get(&key("cart.shop")).expect("the split's apex");
        let RouteAction::Forward(w) = &cart.routes[0].action else {
            panic!("a forward")
        };
        assert_eq!(w.total(), 2000);
        assert_eq!(w.pick(499).unwrap().service, key("cart-v1.shop"));
        assert_eq!(w.pick(500).unwrap().service, key("cart-v2.shop"));
    }

    #[test]
    fn retry_on_reads_envoy_conditions_and_bare_codes() {
        let (on, codes) =
            parse_retry_on("gateway-error, connect-failure,503,retriable-4xx").unwrap();
        assert!(on.gateway_error && on.connect_failure && on.retriable_4xx);
        assert!(on.retriable_status_codes && !on.server_error);
        assert_eq!(codes, [503]);
        let err = parse_retry_on("5xx,sometimes").unwrap_err();
        assert!(err.contains("sometimes"), "{err}");
    }
}
