//! SMI's `TrafficSplit` (`split.smi-spec.io`, v1alpha1 to v1alpha4): a root service whose
//! traffic is shared between backend services by relative weight.
//!
//! v1alpha1 writes weights as Kubernetes quantities (`500m`, `1`), later versions as integers;
//! every version takes both, since operators copy examples across versions.

use serde_json::Value;

use super::istio::{HOST, STR};
use super::schema::{Report, Shape, field, list, non_empty_list, obj, required};

/// A weight: a non-negative integer, or a quantity string.
pub(crate) const WEIGHT: Shape = Shape::Either(&[
    Shape::Int {
        min: 0,
        max: u32::MAX as i64,
    },
    Shape::Text {
        what: "a quantity such as \"500m\" or \"1\"",
        check: check_quantity,
    },
]);

fn check_quantity(s: &str) -> Result<(), String> {
    parse_quantity(s).map(drop)
}

const BACKEND: Shape = obj(&[required("service", HOST), required("weight", WEIGHT)]);

/// v1alpha3+: `matches` names HTTPRouteGroups (or TCPRoutes) that limit the split.
const MATCH: Shape = obj(&[
    required("kind", STR),
    required("name", STR),
    field("apiGroup", STR),
]);

pub(crate) const TRAFFIC_SPLIT: Shape = obj(&[
    required("service", HOST),
    required("backends", non_empty_list(&BACKEND)),
    field("matches", list(&MATCH)).not_enforced(),
]);

/// A Kubernetes quantity as a plain number: `500m` is 0.5, `2k` is 2000, `1Ki` is 1024.
/// Weights are relative, so what matters is that every form reads as its value.
pub fn parse_quantity(text: &str) -> Result<f64, String> {
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let scale = match suffix {
        "" => 1.0,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{text:?} is not a quantity such as \"500m\", \"1\" or \"2k\""
            ));
        }
    };
    if number.is_empty() || number.matches('.').count() > 1 || number == "." {
        return Err(format!(
            "{text:?} is not a quantity such as \"500m\", \"1\" or \"2k\""
        ));
    }
    number
        .parse::<f64>()
        .map(|n| n * scale)
        .map_err(|_| format!("{text:?} is not a quantity such as \"500m\", \"1\" or \"2k\""))
}

/// A weight's value, either form.
fn weight(value: &Value) -> Option<f64> {
    match value {
        Value::String(s) => parse_quantity(s).ok(),
        other => other.as_f64(),
    }
}

/// What the schema cannot say: some backend gets traffic, and each backend appears once.
pub(crate) fn traffic_split(spec: &Value, report: &mut Report) {
    let backends = spec
        .get("backends")
        .and_then(Value::as_array)
        .map_or(&[][..], Vec::as_slice);
    let weights: Vec<f64> = backends
        .iter()
        .filter_map(|b| b.get("weight").and_then(weight))
        .collect();
    if !backends.is_empty() && weights.len() == backends.len() && weights.iter().sum::<f64>() <= 0.0
    {
        report.error(
            "spec.backends",
            "weights sum to 0: no backend would get traffic",
        );
    }
    for (i, backend) in backends.iter().enumerate() {
        let service = backend.get("service").and_then(Value::as_str);
        if let Some(first) = backends[..i]
            .iter()
            .position(|b| service.is_some() && b.get("service").and_then(Value::as_str) == service)
        {
            report.error(
                format!("spec.backends[{i}].service"),
                format!("is also spec.backends[{first}]; give each backend once"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::schema::walk;

    fn errors(spec: Value) -> Vec<String> {
        let mut report = Report::default();
        walk(&TRAFFIC_SPLIT, &spec, "spec", true, &mut report);
        traffic_split(&spec, &mut report);
        report.errors.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn quantities_read_as_numbers() {
        assert_eq!(parse_quantity("500m").unwrap(), 0.5);
        assert_eq!(parse_quantity("1").unwrap(), 1.0);
        assert_eq!(parse_quantity("2k").unwrap(), 2000.0);
        assert_eq!(parse_quantity("1.5").unwrap(), 1.5);
        for bad in ["", "m", "-1", "1x", "1..2", "five"] {
            assert!(parse_quantity(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn traffic_splits_take_both_weight_forms() {
        let v1alpha1 = json!({"service": "web", "backends": [{"service": "web-v1", "weight": "500m"}, {"service": "web-v2", "weight": "500m"}]});
        assert!(errors(v1alpha1).is_empty());
        let v1alpha4 = json!({"service": "web", "backends": [{"service": "web-v1", "weight": 90}, {"service": "web-v2", "weight": 10}]});
        assert!(errors(v1alpha4).is_empty());
        assert_eq!(
            errors(json!({"service": "web", "backends": [{"service": "a", "weight": "lots"}]})),
            [
                "spec.backends[0].weight: \"lots\" is not a quantity such as \"500m\", \"1\" or \"2k\""
            ]
        );
        assert_eq!(
            errors(
                json!({"service": "web", "backends": [{"service": "a", "weight": 0}, {"service": "a", "weight": "0m"}]})
            ),
            [
                "spec.backends: weights sum to 0: no backend would get traffic",
                "spec.backends[1].service: is also spec.backends[0]; give each backend once"
            ]
        );
        assert_eq!(
            errors(json!({"service": "web", "backends": [{"service": "a", "weight": true}]})),
            [
                "spec.backends[0].weight: expected an integer or a quantity such as \"500m\" or \"1\", found true (a boolean; quote it to make it a string)"
            ]
        );
    }
}
