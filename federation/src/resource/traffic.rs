//! Rules of the traffic kinds that a schema cannot say: weights that sum to 100, which HTTP
//! actions combine, faults with something to inject, regexes that compile, unique subsets.
//!
//! The Istio rules follow Istio's own validation (`pkg/config/validation/validation.go` and
//! `virtualservice.go`: `ValidateVirtualService`, `validateHTTPRoute`,
//! `validateHTTPRouteConflict`, `ValidateHTTPRetry`, `ValidateDestinationRule`), so what Istio
//! refuses we refuse, with the field path added. Where we are stricter, the rule says why.
//! These run after the schema walk on the same document, so a value of the wrong type is
//! already reported: here it is skipped, never reported twice.

use std::collections::HashMap;

use serde_json::Value;

use super::schema::{Report, child};

/// Envoy's default RE2 program-size limit is about this; the `regex` crate's compiled size
/// is a different measure, so this is a generous bound that still stops pathological input.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Istio approximates Envoy's RE2 program limit by length: longer regexes are refused.
const REGEX_MAX_LEN: usize = 1024;

/// What Istio caps a direct response body at (`validateHTTPDirectResponse`).
const DIRECT_RESPONSE_MAX: usize = 1024 * 1024;

/// Envoy's `x-envoy-retry-on` and `x-envoy-retry-grpc-on` conditions, as Istio accepts them.
const RETRY_ON: &[&str] = &[
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "retriable-4xx",
    "refused-stream",
    "retriable-status-codes",
    "retriable-headers",
    "envoy-ratelimited",
    "http3-post-connect-failure",
    "cancelled",
    "deadline-exceeded",
    "internal",
    "resource-exhausted",
    "unavailable",
];

/// Builds a route regex the one way the mesh does: RE2 syntax, bounded in size and length.
/// The compiler uses it too, so a pattern accepted here always builds there.
pub fn build_regex(pattern: &str) -> Result<regex::Regex, String> {
    if pattern.is_empty() {
        return Err("a regex must not be empty".into());
    }
    if pattern.len() > REGEX_MAX_LEN {
        return Err(format!(
            "the regex is {} bytes long; Istio allows at most {REGEX_MAX_LEN}",
            pattern.len()
        ));
    }
    regex::RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let reason = e.to_string();
            let last = reason.lines().last().unwrap_or_default().trim();
            format!("{pattern:?} is not a valid RE2 regex: {last}")
        })
}

fn items<'a>(value: &'a Value, name: &str) -> &'a [Value] {
    value
        .get(name)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn text<'a>(value: &'a Value, name: &str) -> Option<&'a str> {
    value.get(name).and_then(Value::as_str)
}

fn at(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

// ---- VirtualService -------------------------------------------------------------------------

pub(crate) fn virtual_service(spec: &Value, report: &mut Report) {
    match spec.get("hosts") {
        None => report.error(
            "spec.hosts",
            "required field is missing: name the hosts this VirtualService routes (Istio reads \
             one without hosts as a delegate, which Causeway does not support)",
        ),
        Some(Value::Array(hosts)) if hosts.is_empty() => {
            report.error("spec.hosts", "must name at least one host");
        }
        _ => {}
    }
    let gateways = items(spec, "gateways");
    let for_mesh = gateways.is_empty() || gateways.iter().any(|g| g == "mesh");
    let hosts: Vec<&str> = items(spec, "hosts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        if *host == "*" && for_mesh {
            report.error(
                at("spec.hosts", i),
                "the wildcard host * is not allowed for a VirtualService that applies to the mesh",
            );
        }
        if let Some(j) = hosts[..i].iter().position(|h| hosts_overlap(h, host)) {
            report.error(
                at("spec.hosts", i),
                format!("{host:?} overlaps spec.hosts[{j}] ({:?})", hosts[j]),
            );
        }
    }
    // Istio refuses this; we only warn, since a VirtualService that routes nothing claims no
    // host (see `references`) and changes nothing, and stored documents of this shape exist.
    if !routes_something(spec) {
        report.warning(
            "spec",
            "routes nothing: give `http`, `tcp` or `tls` routes (Istio refuses a VirtualService \
             without them)",
        );
    }
    for (i, route) in items(spec, "http").iter().enumerate() {
        http_route(route, &at("spec.http", i), report);
    }
    for kind in ["tcp", "tls"] {
        for (i, route) in items(spec, kind).iter().enumerate() {
            let path = child(&at(&child("spec", kind), i), "route");
            weights(items(route, "route"), &path, "weight", report);
            for (j, d) in items(route, "route").iter().enumerate() {
                destination(
                    d.get("destination"),
                    &child(&at(&path, j), "destination"),
                    report,
                );
            }
        }
    }
}

/// Whether a VirtualService (or Route) has any route: only then does it claim its hosts.
pub(crate) fn routes_something(spec: &Value) -> bool {
    ["http", "tcp", "tls"]
        .iter()
        .any(|k| !items(spec, k).is_empty())
}

/// Two hosts one VirtualService cannot both claim: equal, or one wildcard covering the other
/// (Istio's `host.Name.Matches`).
pub(crate) fn hosts_overlap(a: &str, b: &str) -> bool {
    let covers = |wild: &str, other: &str| {
        wild.strip_prefix('*')
            .is_some_and(|suffix| other.ends_with(suffix))
    };
    a == b || covers(a, b) || covers(b, a)
}

fn http_route(route: &Value, path: &str, report: &mut Report) {
    let has = |name: &str| route.get(name).is_some();
    let routes = !items(route, "route").is_empty();
    // Istio's `validateHTTPRouteConflict`: one action, and the options that go with it.
    let (action, excluded): (&str, &[&str]) = if has("delegate") {
        ("delegate", &["route", "redirect", "directResponse"])
    } else if has("redirect") {
        ("redirect", &["route", "fault", "rewrite", "directResponse"])
    } else if has("directResponse") {
        ("directResponse", &["route", "fault", "rewrite"])
    } else {
        if !routes {
            report.error(
                path,
                "one of `route` (with at least one destination), `redirect`, `directResponse` \
                 or `delegate` is required",
            );
        }
        ("route", &[])
    };
    for other in excluded {
        let present = if *other == "route" {
            routes
        } else {
            has(other)
        };
        if present {
            report.error(
                child(path, other),
                format!("cannot be combined with `{action}` in one HTTP route"),
            );
        }
    }

    for (i, m) in items(route, "match").iter().enumerate() {
        http_match(m, &at(&child(path, "match"), i), report);
    }
    let route_path = child(path, "route");
    weights(items(route, "route"), &route_path, "weight", report);
    for (i, d) in items(route, "route").iter().enumerate() {
        destination(
            d.get("destination"),
            &child(&at(&route_path, i), "destination"),
            report,
        );
    }
    if let Some(redirect) = route.get("redirect") {
        http_redirect(
            redirect,
            items(route, "match"),
            &child(path, "redirect"),
            report,
        );
    }
    if let Some(rewrite) = route.get("rewrite") {
        http_rewrite(rewrite, &child(path, "rewrite"), report);
    }
    if let Some(body) = route.pointer("/directResponse/body") {
        let size = match (text(body, "string"), text(body, "bytes")) {
            (Some(s), _) => s.len(),
            // Base64: four characters carry three bytes.
            (None, Some(b)) => b.len() / 4 * 3,
            (None, None) => 0,
        };
        if size > DIRECT_RESPONSE_MAX {
            report.error(
                format!("{path}.directResponse.body"),
                format!("is {size} bytes; a direct response body must be under 1 MiB"),
            );
        }
    }
    if let Some(fault) = route.get("fault") {
        http_fault(fault, &child(path, "fault"), report);
    }
    if let Some(retries) = route.get("retries") {
        http_retries(retries, &child(path, "retries"), report);
    }
    destination(route.get("mirror"), &child(path, "mirror"), report);
    for (i, mirror) in items(route, "mirrors").iter().enumerate() {
        let at = at(&child(path, "mirrors"), i);
        destination(
            mirror.get("destination"),
            &child(&at, "destination"),
            report,
        );
    }
    if let Some(cors) = route.get("corsPolicy") {
        let origins = child(&child(path, "corsPolicy"), "allowOrigins");
        for (i, origin) in items(cors, "allowOrigins").iter().enumerate() {
            string_match(origin, &at(&origins, i), false, report);
        }
    }
}

fn http_match(m: &Value, path: &str, report: &mut Report) {
    for name in ["uri", "scheme", "method", "authority"] {
        if let Some(sm) = m.get(name) {
            // Envoy takes an empty uri prefix (match all) but no other empty prefix.
            string_match(sm, &child(path, name), name == "uri", report);
        }
    }
    for map in ["headers", "withoutHeaders", "queryParams"] {
        let Some(entries) = m.get(map).and_then(Value::as_object) else {
            continue;
        };
        for (name, sm) in entries {
            // In withoutHeaders, `regex: "*"` is Istio's spelling of "present", not a regex.
            if map == "withoutHeaders" && text(sm, "regex") == Some("*") {
                continue;
            }
            string_match(sm, &child(&child(path, map), name), false, report);
        }
    }
}

/// Istio's `StringMatch`: a prefix that says something (except for uris) and a regex that
/// compiles.
pub(crate) fn string_match(sm: &Value, path: &str, empty_prefix: bool, report: &mut Report) {
    if text(sm, "prefix") == Some("") && !empty_prefix {
        report.error(child(path, "prefix"), "must not be empty");
    }
    if let Some(re) = text(sm, "regex")
        && let Err(reason) = build_regex(re)
    {
        report.error(child(path, "regex"), reason);
    }
}

/// Destination weights: with several destinations, or any weight written, they must sum to
/// 100. Istio itself only refuses a sum of 0 and lets Envoy scale the rest; we are stricter
/// because a split that does not add up is nearly always a typo in a canary step.
fn weights(destinations: &[Value], path: &str, name: &str, report: &mut Report) {
    let given: Vec<&Value> = destinations.iter().filter_map(|d| d.get(name)).collect();
    if destinations.len() < 2 && given.is_empty() {
        return;
    }
    let given: Vec<i64> = given.iter().filter_map(|w| w.as_i64()).collect();
    // A weight of the wrong type or out of range is already reported where it is.
    if given.len()
        != destinations
            .iter()
            .filter(|d| d.get(name).is_some())
            .count()
        || given.iter().any(|w| !(0..=100).contains(w))
    {
        return;
    }
    let sum: i64 = given.iter().sum();
    if sum != 100 {
        let message = if destinations.len() == 1 {
            format!(
                "a single destination takes all traffic: its weight is {sum}; set it to 100 or remove it"
            )
        } else {
            format!("weights sum to {sum}, not 100")
        };
        report.error(path, message);
    }
}

fn destination(destination: Option<&Value>, path: &str, report: &mut Report) {
    if destination.and_then(|d| text(d, "host")) == Some("*") {
        report.error(child(path, "host"), "must name a host, not the wildcard *");
    }
}

fn http_redirect(redirect: &Value, matches: &[Value], path: &str, report: &mut Report) {
    if redirect.get("prefixRewrite").is_some() {
        for (i, m) in matches.iter().enumerate() {
            if m.get("uri").is_some_and(|uri| uri.get("prefix").is_none()) {
                report.error(
                    child(path, "prefixRewrite"),
                    format!(
                        "needs every uri match to be a prefix match, and match[{i}].uri is not"
                    ),
                );
            }
        }
    }
    let targets = [
        "uri",
        "prefixRewrite",
        "authority",
        "port",
        "derivePort",
        "scheme",
    ];
    if !targets.iter().any(|t| redirect.get(t).is_some()) {
        report.error(
            path,
            "must change something: give `uri`, `prefixRewrite`, `authority`, `port`, \
             `derivePort` or `scheme`",
        );
    }
}

fn http_rewrite(rewrite: &Value, path: &str, report: &mut Report) {
    if !["uri", "uriRegexRewrite", "authority"]
        .iter()
        .any(|t| rewrite.get(t).is_some())
    {
        report.error(
            path,
            "must change something: give `uri`, `uriRegexRewrite` or `authority`",
        );
    }
    if let Some(re) = rewrite
        .pointer("/uriRegexRewrite/match")
        .and_then(Value::as_str)
        && let Err(reason) = build_regex(re)
    {
        report.error(format!("{path}.uriRegexRewrite.match"), reason);
    }
}

fn http_fault(fault: &Value, path: &str, report: &mut Report) {
    if fault.get("delay").is_none() && fault.get("abort").is_none() {
        report.error(path, "a fault needs a `delay`, an `abort` or both");
    }
    for kind in ["delay", "abort"] {
        if let Some(value) = fault
            .get(kind)
            .and_then(|k| k.pointer("/percentage/value"))
            .and_then(Value::as_f64)
            && value > 0.0
            && value < 0.0001
        {
            report.error(
                format!("{path}.{kind}.percentage.value"),
                format!("{value} is neither 0 nor between 0.0001 and 100"),
            );
        }
    }
    if fault.pointer("/delay/exponentialDelay").is_some() {
        report.error(
            format!("{path}.delay.exponentialDelay"),
            "is not supported (Istio refuses it too); use fixedDelay",
        );
    }
    if fault.pointer("/abort/http2Error").is_some() {
        report.error(
            format!("{path}.abort.http2Error"),
            "is not supported (Istio refuses it too); use httpStatus or grpcStatus",
        );
    }
}

fn http_retries(retries: &Value, path: &str, report: &mut Report) {
    // An absent `attempts` is 0 to Istio: retries off.
    let attempts = retries.get("attempts").and_then(Value::as_i64).unwrap_or(0);
    let tuned: Vec<&str> = ["perTryTimeout", "retryOn", "retryRemoteLocalities"]
        .into_iter()
        .filter(|k| retries.get(k).is_some())
        .collect();
    if attempts == 0 && !tuned.is_empty() {
        report.error(
            child(path, "attempts"),
            format!(
                "is 0 (retries off) but the policy sets {}; give attempts of 1 or more",
                tuned.join(", ")
            ),
        );
    }
    if let Some(conditions) = text(retries, "retryOn") {
        retry_on(conditions, &child(path, "retryOn"), report);
    }
}

/// `retryOn`: comma-separated Envoy conditions or HTTP status codes.
pub(crate) fn retry_on(conditions: &str, path: &str, report: &mut Report) {
    for condition in conditions.split(',') {
        let status = condition
            .parse::<u16>()
            .is_ok_and(|code| (100..=599).contains(&code));
        if !status && !RETRY_ON.contains(&condition) {
            report.error(
                path,
                format!(
                    "{condition:?} is not a retry condition; expected an HTTP status code or one of {}",
                    RETRY_ON.join(", ")
                ),
            );
        }
    }
}

// ---- DestinationRule ------------------------------------------------------------------------

pub(crate) fn destination_rule(spec: &Value, report: &mut Report) {
    unique_subsets(spec, report);
    let policies = std::iter::once(("spec.trafficPolicy".to_string(), spec.get("trafficPolicy")))
        .chain(items(spec, "subsets").iter().enumerate().map(|(i, s)| {
            (
                format!("spec.subsets[{i}].trafficPolicy"),
                s.get("trafficPolicy"),
            )
        }));
    for (path, policy) in policies {
        let Some(policy) = policy else { continue };
        if let Some(mode) = policy.pointer("/tls/mode").and_then(Value::as_str)
            && mode != "ISTIO_MUTUAL"
        {
            report.warning(
                child(&child(&path, "tls"), "mode"),
                format!(
                    "{mode} is not applied: traffic between clusters is always Causeway's \
                     mutual TLS (ISTIO_MUTUAL)"
                ),
            );
        }
        for (i, port) in items(policy, "portLevelSettings").iter().enumerate() {
            let settings = ["loadBalancer", "connectionPool", "outlierDetection", "tls"];
            if !settings.iter().any(|s| port.get(s).is_some()) {
                report.error(
                    at(&child(&path, "portLevelSettings"), i),
                    "a port's traffic policy must set at least one of `loadBalancer`, \
                     `connectionPool`, `outlierDetection` or `tls`",
                );
            }
        }
    }
}

/// Subset names are unique within a DestinationRule or DestinationPolicy.
fn unique_subsets(spec: &Value, report: &mut Report) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, subset) in items(spec, "subsets").iter().enumerate() {
        let Some(name) = text(subset, "name") else {
            continue;
        };
        if let Some(first) = seen.insert(name, i) {
            report.error(
                format!("spec.subsets[{i}].name"),
                format!("subset {name:?} is also defined by spec.subsets[{first}]"),
            );
        }
    }
}

// ---- Causeway's Route and DestinationPolicy -------------------------------------------------

pub(crate) fn route(spec: &Value, report: &mut Report) {
    let hosts: Vec<&str> = items(spec, "hosts")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for (i, host) in hosts.iter().enumerate() {
        if let Some(j) = hosts[..i].iter().position(|h| hosts_overlap(h, host)) {
            report.error(
                at("spec.hosts", i),
                format!("{host:?} overlaps spec.hosts[{j}] ({:?})", hosts[j]),
            );
        }
    }
    for (i, http) in items(spec, "http").iter().enumerate() {
        let path = at("spec.http", i);
        weights(
            items(http, "destinations"),
            &child(&path, "destinations"),
            "weight",
            report,
        );
        for (j, m) in items(http, "match").iter().enumerate() {
            let at = at(&child(&path, "match"), j);
            for name in ["uri", "method"] {
                if let Some(sm) = m.get(name) {
                    string_match(sm, &child(&at, name), name == "uri", report);
                }
            }
            if let Some(headers) = m.get("headers").and_then(Value::as_object) {
                for (name, sm) in headers {
                    string_match(sm, &child(&child(&at, "headers"), name), false, report);
                }
            }
        }
        if let Some(retries) = http.get("retries") {
            http_retries(retries, &child(&path, "retries"), report);
        }
    }
}

pub(crate) fn destination_policy(spec: &Value, report: &mut Report) {
    unique_subsets(spec, report);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors(check: fn(&Value, &mut Report), spec: Value) -> Vec<String> {
        let mut report = Report::default();
        check(&spec, &mut report);
        report.errors.iter().map(ToString::to_string).collect()
    }

    fn vs(http: Value) -> Value {
        json!({"hosts": ["reviews"], "http": [http]})
    }

    fn to(host: &str, subset: &str, weight: i64) -> Value {
        json!({"destination": {"host": host, "subset": subset}, "weight": weight})
    }

    #[test]
    fn a_virtual_service_names_its_hosts() {
        let missing = errors(
            virtual_service,
            json!({"http": [{"route": [to("a", "v1", 100)]}]}),
        );
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("spec.hosts: required field is missing"));
        assert_eq!(
            errors(
                virtual_service,
                json!({"hosts": [], "http": [{"route": [to("a", "v1", 100)]}]})
            ),
            ["spec.hosts: must name at least one host"]
        );
        assert_eq!(
            errors(
                virtual_service,
                json!({"hosts": ["*"], "tcp": [{"route": [to("a", "v1", 100)]}]})
            ),
            [
                "spec.hosts[0]: the wildcard host * is not allowed for a VirtualService that applies to the mesh"
            ]
        );
        assert_eq!(
            errors(
                virtual_service,
                json!({"hosts": ["*.shop.svc", "web.shop.svc"], "http": [{"route": [to("a", "v1", 100)]}]})
            ),
            ["spec.hosts[1]: \"web.shop.svc\" overlaps spec.hosts[0] (\"*.shop.svc\")"]
        );
        let mut report = Report::default();
        virtual_service(&json!({"hosts": ["a"]}), &mut report);
        assert!(report.errors.is_empty());
        assert!(report.warnings[0].message.starts_with("routes nothing"));
        assert!(
            errors(
                virtual_service,
                vs(json!({"route": [to("reviews", "v1", 100)]}))
            )
            .is_empty()
        );
    }

    #[test]
    fn weights_must_sum_to_100() {
        let split = vs(json!({"route": [to("reviews", "v1", 70), to("reviews", "v2", 20)]}));
        assert_eq!(
            errors(virtual_service, split),
            ["spec.http[0].route: weights sum to 90, not 100"]
        );
        let unweighted =
            vs(json!({"route": [{"destination": {"host": "a"}}, {"destination": {"host": "b"}}]}));
        assert_eq!(
            errors(virtual_service, unweighted),
            ["spec.http[0].route: weights sum to 0, not 100"]
        );
        let single = vs(json!({"route": [to("reviews", "v1", 50)]}));
        assert!(
            errors(virtual_service, single)[0]
                .starts_with("spec.http[0].route: a single destination")
        );
        assert!(
            errors(
                virtual_service,
                vs(json!({"route": [{"destination": {"host": "a"}}]}))
            )
            .is_empty()
        );
        assert!(
            errors(
                virtual_service,
                vs(json!({"route": [to("a", "v1", 90), to("a", "v2", 10)]}))
            )
            .is_empty()
        );
        let tcp =
            json!({"hosts": ["db"], "tcp": [{"route": [to("db", "v1", 60), to("db", "v2", 60)]}]});
        assert_eq!(
            errors(virtual_service, tcp),
            ["spec.tcp[0].route: weights sum to 120, not 100"]
        );
    }

    #[test]
    fn an_http_route_takes_one_action() {
        let both = vs(json!({"route": [to("a", "v1", 100)], "redirect": {"uri": "/x"}}));
        assert_eq!(
            errors(virtual_service, both),
            ["spec.http[0].route: cannot be combined with `redirect` in one HTTP route"]
        );
        let fault =
            vs(json!({"directResponse": {"status": 503}, "fault": {"abort": {"httpStatus": 500}}}));
        assert_eq!(
            errors(virtual_service, fault),
            ["spec.http[0].fault: cannot be combined with `directResponse` in one HTTP route"]
        );
        let none = vs(json!({"route": []}));
        assert!(errors(virtual_service, none)[0].starts_with("spec.http[0]: one of `route`"));
        // An empty route beside a redirect is no route (Istio counts destinations).
        assert!(
            errors(
                virtual_service,
                vs(json!({"route": [], "redirect": {"uri": "/x"}}))
            )
            .is_empty()
        );
        assert!(
            errors(
                virtual_service,
                vs(json!({"directResponse": {"status": 503, "body": {"string": "down"}}}))
            )
            .is_empty()
        );
        assert_eq!(
            errors(
                virtual_service,
                vs(json!({"redirect": {"redirectCode": 301}}))
            ),
            [
                "spec.http[0].redirect: must change something: give `uri`, `prefixRewrite`, `authority`, `port`, `derivePort` or `scheme`"
            ]
        );
        let prefix =
            vs(json!({"match": [{"uri": {"exact": "/a"}}], "redirect": {"prefixRewrite": "/b"}}));
        assert!(
            errors(virtual_service, prefix)[0]
                .starts_with("spec.http[0].redirect.prefixRewrite: needs every uri match")
        );
        let body = vs(
            json!({"directResponse": {"status": 200, "body": {"string": "x".repeat(DIRECT_RESPONSE_MAX + 1)}}}),
        );
        assert!(
            errors(virtual_service, body)[0]
                .starts_with("spec.http[0].directResponse.body: is 1048577 bytes")
        );
    }

    #[test]
    fn faults_retries_and_rewrites_say_something() {
        let empty = vs(json!({"route": [to("a", "v1", 100)], "fault": {}}));
        assert_eq!(
            errors(virtual_service, empty),
            ["spec.http[0].fault: a fault needs a `delay`, an `abort` or both"]
        );
        let tiny = vs(
            json!({"route": [to("a", "v1", 100)], "fault": {"abort": {"httpStatus": 500, "percentage": {"value": 0.00001}}}}),
        );
        assert_eq!(
            errors(virtual_service, tiny),
            [
                "spec.http[0].fault.abort.percentage.value: 0.00001 is neither 0 nor between 0.0001 and 100"
            ]
        );
        let off = vs(
            json!({"route": [to("a", "v1", 100)], "retries": {"attempts": 0, "perTryTimeout": "1s"}}),
        );
        assert_eq!(
            errors(virtual_service, off),
            [
                "spec.http[0].retries.attempts: is 0 (retries off) but the policy sets perTryTimeout; give attempts of 1 or more"
            ]
        );
        let on = vs(
            json!({"route": [to("a", "v1", 100)], "retries": {"attempts": 3, "retryOn": "5xx,503,reset,gateway-errors"}}),
        );
        let found = errors(virtual_service, on);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].starts_with(
            "spec.http[0].retries.retryOn: \"gateway-errors\" is not a retry condition"
        ));
        let rewrite = vs(json!({"route": [to("a", "v1", 100)], "rewrite": {}}));
        assert_eq!(
            errors(virtual_service, rewrite),
            [
                "spec.http[0].rewrite: must change something: give `uri`, `uriRegexRewrite` or `authority`"
            ]
        );
        let ok = vs(
            json!({"route": [to("a", "v1", 100)], "retries": {"attempts": 2, "retryOn": "connect-failure,refused-stream,503"}, "fault": {"delay": {"fixedDelay": "5s"}}}),
        );
        assert!(errors(virtual_service, ok).is_empty());
    }

    #[test]
    fn regexes_must_compile() {
        let bad = vs(json!({
            "match": [{"uri": {"regex": "/api/(v1"}, "headers": {"x-user": {"regex": ""}}, "method": {"prefix": ""}}],
            "route": [to("a", "v1", 100)],
            "rewrite": {"uriRegexRewrite": {"match": "[", "rewrite": "/"}}
        }));
        let found = errors(virtual_service, bad);
        let fields: Vec<&str> = found
            .iter()
            .map(|e| e.split(": ").next().unwrap())
            .collect();
        assert_eq!(
            fields,
            [
                "spec.http[0].match[0].uri.regex",
                "spec.http[0].match[0].method.prefix",
                "spec.http[0].match[0].headers.x-user.regex",
                "spec.http[0].rewrite.uriRegexRewrite.match",
            ],
            "{found:?}"
        );
        assert!(found[0].contains("not a valid RE2 regex"), "{found:?}");
        // Back-references are not RE2, and a huge repetition exceeds the size limit.
        assert!(build_regex(r"(a)\1").is_err());
        assert!(build_regex("a{1000}{1000}").is_err());
        assert!(build_regex(&"a".repeat(REGEX_MAX_LEN + 1)).is_err());
        let good = vs(json!({
            "match": [{"uri": {"regex": "^/api/v[0-9]+/.*"}, "withoutHeaders": {"x-debug": {"regex": "*"}}}],
            "route": [to("a", "v1", 100)]
        }));
        assert!(errors(virtual_service, good).is_empty());
    }

    #[test]
    fn subsets_are_unique() {
        let dr =
            json!({"host": "reviews", "subsets": [{"name": "v1"}, {"name": "v2"}, {"name": "v1"}]});
        assert_eq!(
            errors(destination_rule, dr),
            ["spec.subsets[2].name: subset \"v1\" is also defined by spec.subsets[0]"]
        );
        let port = json!({"host": "reviews", "trafficPolicy": {"portLevelSettings": [{"port": {"number": 80}}]}});
        assert!(
            errors(destination_rule, port)[0]
                .starts_with("spec.trafficPolicy.portLevelSettings[0]: a port's traffic policy")
        );
        assert!(
            errors(
                destination_rule,
                json!({"host": "r", "subsets": [{"name": "v1"}, {"name": "v2"}]})
            )
            .is_empty()
        );
        let dp = json!({"host": "echo", "subsets": [{"name": "a"}, {"name": "a"}]});
        assert_eq!(errors(destination_policy, dp).len(), 1);
    }

    #[test]
    fn native_routes_follow_the_same_rules() {
        let route_spec = json!({"hosts": ["echo"], "http": [{
            "match": [{"uri": {"regex": "("}}],
            "destinations": [{"service": "echo", "subset": "a", "weight": 50}, {"service": "echo", "subset": "b", "weight": 40}],
            "retries": {"attempts": 0, "retryOn": "5xx"}
        }]});
        assert_eq!(
            errors(route, route_spec)
                .iter()
                .map(|e| e.split(": ").next().unwrap().to_string())
                .collect::<Vec<_>>(),
            [
                "spec.http[0].destinations",
                "spec.http[0].match[0].uri.regex",
                "spec.http[0].retries.attempts"
            ]
        );
        let ok = json!({"hosts": ["echo"], "http": [{"destinations": [{"service": "echo", "weight": 80}, {"service": "echo2", "weight": 20}]}]});
        assert!(errors(route, ok).is_empty());
    }
}
