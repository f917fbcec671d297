//! Linkerd's `ServiceProfile` (`linkerd.io/v1alpha2`): per-route retries and timeouts, and a
//! retry budget, for the service its name (an FQDN such as `web.shop.svc.cluster.local`) names.
//!
//! Field names follow Linkerd's CRD so profiles written for Linkerd apply unchanged. Request
//! and response matches nest (`all`, `any`, `not`), hence the shapes are statics that refer to
//! themselves.

use serde_json::Value;

use super::istio::{BOOL, DURATION, HOST, STR};
use super::schema::{Report, Shape, child, field, list, non_empty_list, obj, required};
use super::traffic::build_regex;

/// `RequestMatch`: a method, a path regex, or a combination of other matches.
static REQUEST_MATCH: Shape = obj(&[
    field("all", list(&REQUEST_MATCH)),
    field("any", list(&REQUEST_MATCH)),
    // A route whose condition negates is not applied (see `mesh::routes`).
    field("not", Shape::Ref(&REQUEST_MATCH)).not_enforced(),
    field("method", STR),
    field("pathRegex", STR),
]);

const STATUS: Shape = Shape::Int { min: 100, max: 599 };

/// `ResponseMatch`: a status range, or a combination of other matches.
static RESPONSE_MATCH: Shape = obj(&[
    field("all", list(&RESPONSE_MATCH)),
    field("any", list(&RESPONSE_MATCH)),
    field("not", Shape::Ref(&RESPONSE_MATCH)),
    field("status", obj(&[field("min", STATUS), field("max", STATUS)])),
]);

static RESPONSE_CLASS: Shape = obj(&[
    required("condition", Shape::Ref(&RESPONSE_MATCH)),
    field("isFailure", BOOL),
]);

static ROUTE: Shape = obj(&[
    required("name", STR),
    required("condition", Shape::Ref(&REQUEST_MATCH)),
    // Causeway reads Linkerd's default class (a 5xx is a failure) for retries.
    field("responseClasses", list(&RESPONSE_CLASS)).not_enforced(),
    field("isRetryable", BOOL),
    field("timeout", DURATION),
]);

const RETRY_BUDGET: Shape = obj(&[
    required(
        "retryRatio",
        Shape::Num {
            min: 0.0,
            max: f64::MAX,
        },
    ),
    required(
        "minRetriesPerSecond",
        Shape::Int {
            min: 0,
            max: u32::MAX as i64,
        },
    ),
    required("ttl", DURATION),
]);

/// `dstOverrides` weights are Kubernetes quantities, as TrafficSplit v1alpha1 writes them.
const WEIGHTED_DST: Shape = obj(&[
    required("authority", HOST),
    required("weight", super::smi::WEIGHT),
]);

pub(crate) static SERVICE_PROFILE: Shape = obj(&[
    field("routes", list(&ROUTE)),
    field("retryBudget", RETRY_BUDGET),
    field("dstOverrides", non_empty_list(&WEIGHTED_DST)).not_enforced(),
    field("opaquePorts", list(&super::istio::PORT)).not_enforced(),
]);

/// Linkerd finds a profile by the FQDN of its service, so a bare name would never apply.
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.contains('.') {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a service FQDN; a ServiceProfile is named by its service, such as \
             \"{name}.<namespace>.svc.cluster.local\""
        ))
    }
}

/// What the schema cannot say: regexes compile, matches match something, ranges are ordered.
pub(crate) fn service_profile(spec: &Value, report: &mut Report) {
    let routes = spec.get("routes").and_then(Value::as_array);
    for (i, route) in routes.into_iter().flatten().enumerate() {
        let path = format!("spec.routes[{i}]");
        if let Some(condition) = route.get("condition") {
            request_match(condition, &child(&path, "condition"), report);
        }
        let classes = route.get("responseClasses").and_then(Value::as_array);
        for (j, class) in classes.into_iter().flatten().enumerate() {
            if let Some(condition) = class.get("condition") {
                let at = format!("{path}.responseClasses[{j}].condition");
                response_match(condition, &at, report);
            }
        }
    }
}

const REQUEST_FIELDS: &[&str] = &["all", "any", "not", "method", "pathRegex"];

fn request_match(m: &Value, path: &str, report: &mut Report) {
    if !REQUEST_FIELDS.iter().any(|f| m.get(f).is_some()) {
        report.error(
            path,
            "a request match needs one of `all`, `any`, `not`, `method` or `pathRegex`",
        );
    }
    // Linkerd anchors the regex at both ends; compiling it bare finds the same errors.
    if let Some(re) = m.get("pathRegex").and_then(Value::as_str)
        && let Err(reason) = build_regex(re)
    {
        report.error(child(path, "pathRegex"), reason);
    }
    nested(m, path, report, request_match);
}

fn response_match(m: &Value, path: &str, report: &mut Report) {
    if !["all", "any", "not", "status"]
        .iter()
        .any(|f| m.get(f).is_some())
    {
        report.error(
            path,
            "a response match needs one of `all`, `any`, `not` or `status`",
        );
    }
    if let Some(status) = m.get("status") {
        let bound = |k: &str| status.get(k).and_then(Value::as_i64);
        if let (Some(min), Some(max)) = (bound("min"), bound("max"))
            && min > max
        {
            report.error(
                child(path, "status"),
                format!("min {min} is above max {max}"),
            );
        }
    }
    nested(m, path, report, response_match);
}

fn nested(m: &Value, path: &str, report: &mut Report, check: fn(&Value, &str, &mut Report)) {
    for kind in ["all", "any"] {
        let each = m.get(kind).and_then(Value::as_array);
        for (i, inner) in each.into_iter().flatten().enumerate() {
            check(inner, &format!("{}[{i}]", child(path, kind)), report);
        }
    }
    if let Some(inner) = m.get("not") {
        check(inner, &child(path, "not"), report);
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::schema::walk;

    fn report(spec: Value) -> Report {
        let mut report = Report::default();
        walk(&SERVICE_PROFILE, &spec, "spec", true, &mut report);
        service_profile(&spec, &mut report);
        report
    }

    #[test]
    fn linkerd_profiles_validate() {
        let spec = json!({
            "routes": [{
                "name": "GET /books/{id}",
                "condition": {"method": "GET", "pathRegex": "/books/[^/]*", "not": {"any": [{"method": "HEAD"}]}},
                "responseClasses": [{"condition": {"status": {"min": 500, "max": 599}}, "isFailure": true}],
                "isRetryable": true,
                "timeout": "300ms"
            }],
            "retryBudget": {"retryRatio": 0.2, "minRetriesPerSecond": 10, "ttl": "10s"}
        });
        let ok = report(spec);
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
        let fields: Vec<&str> = ok.warnings.iter().map(|w| w.field.as_str()).collect();
        // The routes and the budget take effect; a negated condition and response classes
        // do not.
        assert_eq!(
            fields,
            [
                "spec.routes[0].condition.not",
                "spec.routes[0].responseClasses"
            ]
        );

        let bad = report(json!({
            "routes": [{
                "name": "r",
                "condition": {"all": [{"pathRegex": "/a/(b"}, {}]},
                "responseClasses": [{"condition": {"status": {"min": 599, "max": 500}}}],
                "timeout": "soon"
            }],
            "retryBudget": {"retryRatio": 0.2, "ttl": "10s"}
        }));
        let fields: Vec<&str> = bad.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                "spec.routes[0].timeout",
                "spec.retryBudget.minRetriesPerSecond",
                "spec.routes[0].condition.all[0].pathRegex",
                "spec.routes[0].condition.all[1]",
                "spec.routes[0].responseClasses[0].condition.status",
            ],
            "{:#?}",
            bad.errors
        );
        assert!(check_name("web").is_err());
        assert!(check_name("web.shop.svc.cluster.local").is_ok());
    }
}
