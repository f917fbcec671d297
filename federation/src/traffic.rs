//! Typed traffic policy: what VirtualService, DestinationRule, the native `Route` and
//! `DestinationPolicy`, Linkerd's `ServiceProfile` and SMI's `TrafficSplit` compile to.
//!
//! Data only, no behaviour beyond pure predicates: the engines that act on it (route choice,
//! retries and their budget, outlier detection, pool limits, faults) live in the gateway's
//! `policy` module. Everything here is built once per snapshot, so the request path never
//! parses a string or reads JSON: regexes are compiled, durations typed, weights cumulative.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::model::ServiceKey;

/// Largest compiled regex program; a pattern beyond it is refused at apply time.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// The route table of the mesh: for each service, how calls to it are routed and treated.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    /// Rebuilt on every policy change and read on every request: foldhash, not SipHash.
    pub services: foldhash::HashMap<ServiceKey, Arc<ServicePolicy>>,
}

impl RouteTable {
    pub fn get(&self, service: &ServiceKey) -> Option<&Arc<ServicePolicy>> {
        self.services.get(service)
    }
}

/// Everything that applies to calls to one service (host).
#[derive(Debug, Clone, Default)]
pub struct ServicePolicy {
    /// HTTP routes in match order; the first that matches wins. Empty: one default route to
    /// the service itself.
    pub routes: Arc<Vec<HttpRoute>>,
    /// Which resource the routes came from, for logs and `apply` output
    /// (`VirtualService production/api`).
    pub routes_from: Option<String>,
    /// The destination rule for the host, if any.
    pub destination: Option<Arc<DestinationPolicy>>,
    /// Linkerd's retry budget (ServiceProfile `retryBudget`); Istio has none, so a default
    /// budget applies where this is absent (see the gateway's `policy::budget`).
    pub retry_budget: Option<RetryBudget>,
    /// Which of `routes` a request can match at all; see [`RouteIndex`].
    pub index: Arc<RouteIndex>,
}

/// The routes a request can match, found without trying each: a route whose every match
/// requires one header to have an exact value (`x-tenant: a`, `end-user: jason`) is filed
/// under that value, and only the routes filed under the request's own value, plus those
/// filed under none, are tried, in their order. With a thousand such routes, choosing one
/// costs a hash lookup instead of a thousand comparisons.
#[derive(Debug, Clone, Default)]
pub struct RouteIndex {
    /// For a header name (lower case): the routes requiring an exact value of it, by value.
    pub by_header: Vec<(String, HashMap<String, Vec<u32>>)>,
    /// Routes filed under no header: always tried.
    pub always: Vec<u32>,
}

/// Header names an index files routes under; routes keyed on more names go to `always`.
pub const MAX_INDEXED_HEADERS: usize = 8;

impl RouteIndex {
    pub fn build(routes: &[HttpRoute]) -> Self {
        let mut index = RouteIndex::default();
        for (i, route) in routes.iter().enumerate() {
            let i = i as u32;
            let live: Vec<&RequestMatch> = route.matches.iter().filter(|m| !m.never).collect();
            if route.matches.is_empty() {
                index.always.push(i);
                continue;
            }
            if live.is_empty() {
                // No match can ever hold: the route is never a candidate.
                continue;
            }
            let exact = |m: &RequestMatch, name: &str| {
                m.headers.iter().find_map(|(n, s)| match s {
                    StringMatch::Exact(v) if n == name => Some(v.clone()),
                    _ => None,
                })
            };
            let key = live[0].headers.iter().find_map(|(name, s)| {
                matches!(s, StringMatch::Exact(_))
                    .then_some(name)
                    .filter(|name| live.iter().all(|m| exact(m, name).is_some()))
            });
            let slot = key.and_then(|name| {
                if let Some(pos) = index.by_header.iter().position(|(n, _)| n == name) {
                    return Some(pos);
                }
                (index.by_header.len() < MAX_INDEXED_HEADERS).then(|| {
                    index.by_header.push((name.clone(), HashMap::new()));
                    index.by_header.len() - 1
                })
            });
            let Some(slot) = slot else {
                index.always.push(i);
                continue;
            };
            let name = index.by_header[slot].0.clone();
            for m in &live {
                if let Some(value) = exact(m, &name) {
                    let filed = index.by_header[slot].1.entry(value).or_default();
                    if filed.last() != Some(&i) {
                        filed.push(i);
                    }
                }
            }
        }
        index
    }

    /// The candidate routes for a request whose headers `header` reads, in route order,
    /// each once; `f` returns `true` to stop. Allocates nothing.
    pub fn for_each_candidate<'h>(
        &self,
        header: impl Fn(&str) -> Option<&'h str>,
        mut f: impl FnMut(u32) -> bool,
    ) {
        let mut lists: [&[u32]; MAX_INDEXED_HEADERS + 1] = [&[]; MAX_INDEXED_HEADERS + 1];
        lists[0] = &self.always;
        for (slot, (name, filed)) in self.by_header.iter().enumerate() {
            if let Some(found) = header(name).and_then(|v| filed.get(v)) {
                lists[slot + 1] = found;
            }
        }
        // A merge of sorted lists: the smallest head next, duplicates skipped.
        let mut last = None;
        loop {
            let mut best: Option<(usize, u32)> = None;
            for (l, list) in lists.iter().enumerate() {
                if let Some(&head) = list.first()
                    && best.is_none_or(|(_, b)| head < b)
                {
                    best = Some((l, head));
                }
            }
            let Some((l, head)) = best else { return };
            lists[l] = &lists[l][1..];
            if last == Some(head) {
                continue;
            }
            last = Some(head);
            if f(head) {
                return;
            }
        }
    }
}

/// One HTTP route (Istio `HTTPRoute`).
#[derive(Debug, Clone)]
pub struct HttpRoute {
    /// The route's `name`, or `http[<index>]` when it has none; sent to the destination.
    pub name: String,
    /// Any one matching is enough; empty matches everything.
    pub matches: Vec<RequestMatch>,
    pub action: RouteAction,
    /// Overall deadline of the call, retries included.
    pub timeout: Option<Duration>,
    pub retries: Option<RetryPolicy>,
    pub fault: Option<Fault>,
    pub mirrors: Vec<Mirror>,
    pub rewrite: Option<Rewrite>,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

impl HttpRoute {
    /// A route named `name` that forwards what `matches` (everything, when empty) to
    /// `destinations` by weight, with no other feature.
    pub fn forward(
        name: impl Into<String>,
        matches: Vec<RequestMatch>,
        destinations: Vec<RouteDestination>,
    ) -> Self {
        Self::with_action(
            name,
            matches,
            RouteAction::Forward(WeightedDestinations::new(destinations)),
        )
    }

    /// A route with `action` and no other feature.
    pub fn with_action(
        name: impl Into<String>,
        matches: Vec<RequestMatch>,
        action: RouteAction,
    ) -> Self {
        HttpRoute {
            name: name.into(),
            matches,
            action,
            timeout: None,
            retries: None,
            fault: None,
            mirrors: vec![],
            rewrite: None,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum RouteAction {
    /// Forward to one of these, by weight.
    Forward(WeightedDestinations),
    Redirect(Redirect),
    /// Answer at the source gateway without calling anyone.
    Direct {
        status: u16,
        body: Option<String>,
    },
}

/// Destinations with their weights as a cumulative array, for a pick by one random number.
#[derive(Debug, Clone)]
pub struct WeightedDestinations {
    pub destinations: Vec<RouteDestination>,
    /// `cumulative[i]` = sum of the weights of `destinations[..=i]`.
    pub cumulative: Vec<u32>,
}

impl WeightedDestinations {
    /// Destinations without a weight share what the others leave, as Istio's single-destination
    /// default of 100 does.
    pub fn new(destinations: Vec<RouteDestination>) -> Self {
        let mut total = 0u32;
        let cumulative = destinations
            .iter()
            .map(|d| {
                total = total.saturating_add(d.weight);
                total
            })
            .collect();
        WeightedDestinations {
            destinations,
            cumulative,
        }
    }

    pub fn total(&self) -> u32 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The destination for `roll` in `0..total()`.
    pub fn pick(&self, roll: u32) -> Option<&RouteDestination> {
        let i = self.cumulative.partition_point(|&c| c <= roll);
        self.destinations.get(i)
    }
}

impl RouteDestination {
    /// `service` (its `subset`, if any) with `weight`, on its HTTP port, no header edits.
    pub fn to(service: ServiceKey, subset: Option<String>, weight: u32) -> Self {
        RouteDestination {
            service,
            subset,
            port: None,
            weight,
            request_headers: HeaderOps::default(),
            response_headers: HeaderOps::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteDestination {
    pub service: ServiceKey,
    pub subset: Option<String>,
    /// The port to ask for; none = the service's HTTP port.
    pub port: Option<u16>,
    pub weight: u32,
    pub request_headers: HeaderOps,
    pub response_headers: HeaderOps,
}

/// Istio `HTTPMatchRequest`: all conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct RequestMatch {
    pub name: Option<String>,
    /// The match can never hold here: it names the caller's workload labels
    /// (`sourceLabels`), which the source gateway does not know, or gateways other than the
    /// mesh.
    pub never: bool,
    /// `sourceNamespace`: the namespace of the caller's workload identity; a caller without
    /// one (a plaintext client the cluster does not attribute) never matches it.
    pub source_namespace: Option<String>,
    pub uri: Option<StringMatch>,
    pub method: Option<StringMatch>,
    pub authority: Option<StringMatch>,
    pub scheme: Option<StringMatch>,
    /// Header names lower-cased.
    pub headers: Vec<(String, StringMatch)>,
    /// Headers that must not match (Istio `withoutHeaders`).
    pub without_headers: Vec<(String, StringMatch)>,
    pub query_params: Vec<(String, StringMatch)>,
    pub port: Option<u16>,
    pub ignore_uri_case: bool,
}

/// Istio `StringMatch`.
#[derive(Debug, Clone)]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    /// RE2 syntax, anchored at both ends as Envoy's `safe_regex` is.
    Regex(regex::Regex),
    /// `{}`: the value (header) is present, whatever it says.
    Present,
}

impl StringMatch {
    /// Compiles Istio's `regex` value: a full match, as Envoy applies it.
    pub fn regex(pattern: &str) -> Result<Self, String> {
        regex::RegexBuilder::new(&format!("^(?:{pattern})$"))
            .size_limit(REGEX_SIZE_LIMIT)
            .build()
            .map(StringMatch::Regex)
            .map_err(|e| format!("invalid regex {pattern:?}: {e}"))
    }

    pub fn matches(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value == s,
            StringMatch::Prefix(p) => value.starts_with(p.as_str()),
            StringMatch::Regex(r) => r.is_match(value),
            StringMatch::Present => true,
        }
    }

    /// As [`StringMatch::matches`], ignoring ASCII case (Istio `ignoreUriCase`; for regexes
    /// the value is lower-cased, as Envoy does not apply it to regexes either).
    pub fn matches_ignoring_case(&self, value: &str) -> bool {
        match self {
            StringMatch::Exact(s) => value.eq_ignore_ascii_case(s),
            StringMatch::Prefix(p) => value
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p)),
            other => other.matches(value),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderOps {
    /// Lower-cased names.
    pub set: Vec<(String, String)>,
    pub add: Vec<(String, String)>,
    pub remove: Vec<String>,
}

impl HeaderOps {
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rewrite {
    /// Replaces the matched prefix of the path (or the whole path on an exact or regex match).
    pub uri: Option<String>,
    pub authority: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redirect {
    pub uri: Option<String>,
    pub authority: Option<String>,
    pub scheme: Option<String>,
    pub port: Option<u16>,
    /// 301 unless the resource says otherwise.
    pub status: u16,
}

/// When a failed attempt is tried again (Envoy's `retry_on` conditions that Istio passes on).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn {
    /// Any 5xx response, and resets and connect failures (Envoy: `5xx` includes those).
    pub server_error: bool,
    /// 502, 503, 504.
    pub gateway_error: bool,
    /// The upstream reset the stream or connection, or did not answer.
    pub reset: bool,
    pub connect_failure: bool,
    /// The peer refused the stream before acting on it (our verdict refusals, h2 REFUSED_STREAM).
    pub refused_stream: bool,
    /// 409.
    pub retriable_4xx: bool,
    /// The codes in [`RetryPolicy::retriable_status_codes`].
    pub retriable_status_codes: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (Istio `attempts`).
    pub attempts: u32,
    pub per_try_timeout: Option<Duration>,
    pub retry_on: RetryOn,
    pub retriable_status_codes: Vec<u16>,
    /// Whether a retry may go to another cluster than the failed attempt (Istio
    /// `retryRemoteLocalities`; Causeway's clusters are its localities).
    pub retry_remote_localities: bool,
    /// Envoy's default: 25 ms base, ten times that at most, fully jittered.
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

impl RetryPolicy {
    pub const DEFAULT_BACKOFF_BASE: Duration = Duration::from_millis(25);
}

/// Linkerd's retry budget: retries may add at most `ratio` of the requests of the last
/// `ttl`, plus `min_per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryBudget {
    pub ratio: f64,
    pub min_per_second: u32,
    pub ttl: Duration,
}

impl Default for RetryBudget {
    /// Linkerd's defaults (20% + 10/s over 10 s), applied to Istio routes too so retries cannot
    /// multiply an outage.
    fn default() -> Self {
        RetryBudget {
            ratio: 0.2,
            min_per_second: 10,
            ttl: Duration::from_secs(10),
        }
    }
}

/// Istio `HTTPFaultInjection`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub delay: Option<FaultDelay>,
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultDelay {
    pub delay: Duration,
    /// 0–100.
    pub percent: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct FaultAbort {
    pub status: u16,
    /// 0–100.
    pub percent: f64,
}

/// A copy of the request, sent and forgotten.
#[derive(Debug, Clone, PartialEq)]
pub struct Mirror {
    pub service: ServiceKey,
    pub subset: Option<String>,
    pub port: Option<u16>,
    /// 0–100; Istio's default is 100.
    pub percent: f64,
}

/// DestinationRule (or native `DestinationPolicy`) for one host.
#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// `DestinationRule production/api`.
    pub from: String,
    pub traffic: TrafficPolicy,
    pub subsets: Vec<Subset>,
}

impl DestinationPolicy {
    pub fn subset(&self, name: &str) -> Option<&Subset> {
        self.subsets.iter().find(|s| s.name == name)
    }

    /// The policy for calls to `subset` (the subset's own, which already holds the top-level
    /// settings it does not override), or the top-level one.
    pub fn traffic_for(&self, subset: Option<&str>) -> &TrafficPolicy {
        subset
            .and_then(|name| self.subset(name))
            .map_or(&self.traffic, |s| &s.traffic)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Subset {
    pub name: String,
    /// Endpoint labels that must all match.
    pub labels: BTreeMap<String, String>,
    /// Merged over the rule's top-level policy, field by field, as Istio merges them.
    pub traffic: TrafficPolicy,
}

impl Subset {
    pub fn selects(&self, labels: &crate::model::Labels) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v.as_str()))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrafficPolicy {
    pub load_balancer: LoadBalancer,
    pub connection_pool: ConnectionPool,
    pub outlier_detection: Option<OutlierDetection>,
    pub locality: Option<LocalityLb>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum LoadBalancer {
    #[default]
    RoundRobin,
    LeastRequest,
    Random,
    ConsistentHash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// Lower-cased header name.
    Header(String),
    Cookie {
        name: String,
        ttl: Option<Duration>,
    },
    SourceIp,
    QueryParam(String),
}

/// Istio `ConnectionPoolSettings`; none = unlimited (Envoy's defaults are 2^32-1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectionPool {
    pub max_connections: Option<u32>,
    pub connect_timeout: Option<Duration>,
    pub max_pending_requests: Option<u32>,
    pub max_requests: Option<u32>,
    pub max_requests_per_connection: Option<u32>,
    pub max_retries: Option<u32>,
    pub idle_timeout: Option<Duration>,
}

/// Istio `OutlierDetection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx (and, as Envoy counts them, locally originated failures); none = off.
    pub consecutive_5xx: Option<u32>,
    /// Consecutive 502/503/504 and connection failures; none = off.
    pub consecutive_gateway_errors: Option<u32>,
    pub interval: Duration,
    /// Ejection time = base × the number of times the host was ejected.
    pub base_ejection_time: Duration,
    pub max_ejection_percent: u32,
    /// Below this share of healthy hosts, ejection is off (panic mode).
    pub min_health_percent: u32,
}

impl Default for OutlierDetection {
    /// Istio's defaults.
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: Some(5),
            consecutive_gateway_errors: None,
            interval: Duration::from_secs(10),
            base_ejection_time: Duration::from_secs(30),
            max_ejection_percent: 10,
            min_health_percent: 0,
        }
    }
}

/// Istio `LocalityLoadBalancerSetting`, over Causeway's cluster localities (`region/zone`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalityLb {
    /// `from` → `to` region failover pairs.
    pub failover: Vec<(String, String)>,
    /// Label keys whose equality with the caller's orders failover priority.
    pub failover_priority: Vec<String>,
    /// `from` locality → weights by `to` locality.
    pub distribute: Vec<(String, Vec<(String, u32)>)>,
    pub enabled: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Labels;

    fn dest(name: &str, weight: u32) -> RouteDestination {
        RouteDestination::to(
            ServiceKey::new("api", "prod").unwrap(),
            Some(name.into()),
            weight,
        )
    }

    #[test]
    fn weighted_pick_follows_the_cumulative_weights() {
        let w = WeightedDestinations::new(vec![dest("a", 90), dest("b", 0), dest("c", 10)]);
        assert_eq!(w.total(), 100);
        let pick = |roll| w.pick(roll).unwrap().subset.clone().unwrap();
        assert_eq!(pick(0), "a");
        assert_eq!(pick(89), "a");
        // A zero weight is never picked.
        assert_eq!(pick(90), "c");
        assert_eq!(pick(99), "c");
        assert!(w.pick(100).is_none());
    }

    #[test]
    fn string_matches_follow_istio() {
        let re = StringMatch::regex("/api/v[0-9]+").unwrap();
        assert!(re.matches("/api/v2"));
        // Anchored: a regex must match the whole value, as Envoy's safe_regex does.
        assert!(!re.matches("/x/api/v2"));
        assert!(!re.matches("/api/v2/users"));
        assert!(StringMatch::Prefix("/api".into()).matches("/api/x"));
        assert!(!StringMatch::Exact("GET".into()).matches("get"));
        assert!(StringMatch::Prefix("/API".into()).matches_ignoring_case("/api/x"));
        assert!(StringMatch::regex("(").is_err());
    }

    fn route(name: &str, matches: Vec<RequestMatch>) -> HttpRoute {
        HttpRoute::forward(name, matches, vec![])
    }

    fn header(name: &str, value: &str) -> RequestMatch {
        RequestMatch {
            headers: vec![(name.into(), StringMatch::Exact(value.into()))],
            ..RequestMatch::default()
        }
    }

    #[test]
    fn the_index_offers_only_routes_a_request_can_match_in_order() {
        let routes = vec![
            route("tenant-a", vec![header("x-tenant", "a")]),
            route(
                "prefix",
                vec![RequestMatch {
                    uri: Some(StringMatch::Prefix("/v2".into())),
                    ..RequestMatch::default()
                }],
            ),
            // Either of two values.
            route(
                "tenant-bc",
                vec![header("x-tenant", "b"), header("x-tenant", "c")],
            ),
            // Never matches: a caller's labels are unknown.
            route(
                "never",
                vec![RequestMatch {
                    never: true,
                    ..RequestMatch::default()
                }],
            ),
            route("user", vec![header("end-user", "jason")]),
            route("default", vec![]),
        ];
        let index = RouteIndex::build(&routes);
        let candidates = |headers: &[(&str, &str)]| {
            let mut out = Vec::new();
            index.for_each_candidate(
                |name| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| *v),
                |i| {
                    out.push(routes[i as usize].name.as_str());
                    false
                },
            );
            out
        };
        assert_eq!(candidates(&[]), ["prefix", "default"]);
        assert_eq!(
            candidates(&[("x-tenant", "a")]),
            ["tenant-a", "prefix", "default"]
        );
        assert_eq!(
            candidates(&[("x-tenant", "c"), ("end-user", "jason")]),
            ["prefix", "tenant-bc", "user", "default"]
        );
        assert_eq!(candidates(&[("x-tenant", "z")]), ["prefix", "default"]);
    }

    #[test]
    fn subsets_select_by_every_label() {
        let subset = Subset {
            name: "v2".into(),
            labels: [("version".to_string(), "v2".to_string())].into(),
            traffic: TrafficPolicy::default(),
        };
        let labels = |pairs: &[(&str, &str)]| pairs.iter().copied().collect::<Labels>();
        assert!(subset.selects(&labels(&[("version", "v2")])));
        assert!(subset.selects(&labels(&[("app", "reviews"), ("version", "v2")])));
        assert!(!subset.selects(&labels(&[("version", "v1")])));
        // The last value of a key given twice wins, as in a map.
        assert!(subset.selects(&labels(&[("version", "v1"), ("version", "v2")])));
        assert!(!subset.selects(&Labels::EMPTY));
    }
}
