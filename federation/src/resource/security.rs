//! Rules of the security kinds that a schema cannot say, following Istio's own validation
//! (`pkg/config/validation`: `ValidateAuthorizationPolicy`, `validateAuthorizationPolicyRules`,
//! `ValidatePeerAuthentication`), so that what Istio refuses we refuse, with the field path.
//! Where Causeway refuses what Istio accepts (a `when` key it cannot read, `targetRef`), the
//! message says why: a policy that silently matched nothing would grant or deny the wrong thing.

use std::net::IpAddr;

use serde_json::Value;

use super::schema::{Report, child};

/// `when` keys the destination gateway reads. `request.auth.*` are known and hold no value
/// (Causeway verifies no JWT: a request never carries claims), as for Istio without a
/// RequestAuthentication.
const WHEN_KEYS: &[&str] = &[
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
];

/// Fields whose values are `*`-patterns (exact, `prefix*`, `*suffix`, `*`).
const PATTERN_FIELDS: &[&str] = &[
    "principals",
    "notPrincipals",
    "requestPrincipals",
    "notRequestPrincipals",
    "namespaces",
    "notNamespaces",
    "hosts",
    "notHosts",
    "methods",
    "notMethods",
    "paths",
    "notPaths",
    "clusters",
    "notClusters",
];

const IP_FIELDS: &[&str] = &[
    "ipBlocks",
    "notIpBlocks",
    "remoteIpBlocks",
    "notRemoteIpBlocks",
];

/// `AuthorizationPolicy`, Istio's and the native one (`native`: `from` and `to` entries are
/// the source and the operation themselves).
pub(crate) fn authorization_policy(spec: &Value, report: &mut Report, native: bool) {
    for field in ["targetRef", "targetRefs"] {
        if spec.get(field).is_some() {
            report.error(
                child("spec", field),
                "attaches the policy to a Kubernetes Gateway or Service (ambient waypoints), \
                 which Causeway does not have; select the workloads with spec.selector",
            );
        }
    }
    let action = spec
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or("ALLOW");
    let rules = spec.get("rules").and_then(Value::as_array);
    if action == "DENY" && rules.is_none_or(|r| r.is_empty()) {
        // Istio: "a DENY policy must have at least one rule"; an empty one would deny nothing
        // while looking like it denies everything.
        report.error("spec.rules", "a DENY policy needs at least one rule");
    }
    for (i, rule) in rules.into_iter().flatten().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in items(rule.get("from")).iter().enumerate() {
            let at = format!("{at}.from[{j}]");
            match from.get("source") {
                _ if native => fields(from, &at, report),
                Some(source) => fields(source, &format!("{at}.source"), report),
                None => report.error(at, "a from entry needs a source"),
            }
        }
        for (j, to) in items(rule.get("to")).iter().enumerate() {
            let at = format!("{at}.to[{j}]");
            match to.get("operation") {
                _ if native => fields(to, &at, report),
                Some(op) => fields(op, &format!("{at}.operation"), report),
                None => report.error(at, "a to entry needs an operation"),
            }
        }
        for (j, when) in items(rule.get("when")).iter().enumerate() {
            condition(when, &format!("{at}.when[{j}]"), report);
        }
    }
}

fn items(v: Option<&Value>) -> &[Value] {
    v.and_then(Value::as_array).map_or(&[], Vec::as_slice)
}

/// The values of a source or operation: patterns well formed, IP blocks parse, and no empty
/// source or operation (Istio refuses one: it would match everything by accident).
fn fields(obj: &Value, at: &str, report: &mut Report) {
    let Some(map) = obj.as_object() else { return };
    if map
        .values()
        .all(|v| v.as_array().is_some_and(|a| a.is_empty()))
    {
        report.error(at, "names nothing: give at least one field with values");
    }
    for (name, values) in map {
        let path = child(at, name);
        for (k, value) in items(Some(values)).iter().enumerate() {
            let Some(s) = value.as_str() else { continue };
            let path = format!("{path}[{k}]");
            if PATTERN_FIELDS.contains(&name.as_str()) {
                pattern(s, &path, report);
            }
            if IP_FIELDS.contains(&name.as_str())
                && let Err(why) = ip_block(s)
            {
                report.error(path.clone(), why);
            }
            if (name == "paths" || name == "notPaths") && !s.starts_with('/') && !s.starts_with('*')
            {
                report.error(
                    path,
                    format!("{s:?} is not a path: it must start with / or *"),
                );
            }
        }
    }
}

/// Istio's patterns: `*` only as the whole value, the first or the last character.
fn pattern(s: &str, at: &str, report: &mut Report) {
    if s.is_empty() {
        report.error(at, "empty value: it would match nothing");
        return;
    }
    let inner = s.strip_prefix('*').unwrap_or(s);
    let inner = inner.strip_suffix('*').unwrap_or(inner);
    if inner.contains('*') || (s.starts_with('*') && s.ends_with('*') && s.len() > 1) {
        report.error(
            at,
            format!("{s:?}: `*` may only stand alone, start the value or end it"),
        );
    }
}

/// One address or a CIDR block.
pub(crate) fn ip_block(s: &str) -> Result<(), String> {
    let (addr, bits) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    if let Some(bits) = bits {
        match bits.parse::<u32>() {
            Ok(n) if n <= max => {}
            _ => return Err(format!("{s:?}: prefix length must be 0-{max}")),
        }
    }
    Ok(())
}

fn condition(when: &Value, at: &str, report: &mut Report) {
    let Some(key) = when.get("key").and_then(Value::as_str) else {
        return;
    };
    let known = WHEN_KEYS.contains(&key)
        || key
            .strip_prefix("request.headers[")
            .is_some_and(|h| h.len() > 1 && h.ends_with(']'))
        || key
            .strip_prefix("request.auth.claims[")
            .is_some_and(|c| c.len() > 1 && c.ends_with(']'));
    if !known {
        let why = if key == "connection.sni" || key.starts_with("experimental.") {
            format!("{key:?} is an Envoy attribute Causeway's gateways do not have")
        } else {
            format!("{key:?} is not a condition key Istio defines")
        };
        report.error(
            child(at, "key"),
            format!(
                "{why}; the keys read are request.headers[<name>], {}",
                WHEN_KEYS.join(", ")
            ),
        );
    }
    let values = items(when.get("values"));
    let not = items(when.get("notValues"));
    if values.is_empty() && not.is_empty() {
        report.error(at, "a condition needs values or notValues");
    }
    for (name, list) in [("values", values), ("notValues", not)] {
        for (k, v) in list.iter().enumerate() {
            let Some(s) = v.as_str() else { continue };
            let path = format!("{}[{k}]", child(at, name));
            match key {
                "source.ip" | "remote.ip" | "destination.ip" => {
                    if let Err(why) = ip_block(s) {
                        report.error(path, why);
                    }
                }
                "destination.port" => {
                    if s.parse::<u16>().map_or(true, |p| p == 0) {
                        report.error(path, format!("{s:?} is not a port number 1-65535"));
                    }
                }
                _ => pattern(s, &path, report),
            }
        }
    }
}

/// `PeerAuthentication`: port-level modes need a selector (ports are a workload's), as Istio
/// requires.
pub(crate) fn peer_authentication(spec: &Value, report: &mut Report) {
    let ports = spec
        .get("portLevelMtls")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty());
    let selector = spec
        .pointer("/selector/matchLabels")
        .and_then(Value::as_object)
        .is_some_and(|m| !m.is_empty());
    if ports && !selector {
        report.error(
            "spec.portLevelMtls",
            "port-level modes apply to a workload's ports: they need spec.selector.matchLabels",
        );
    }
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

    #[test]
    fn authorization_policies_istio_refuses_are_refused_by_field() {
        let cases = [
            (json!({"action": "DENY"}), "spec.rules"),
            (
                json!({"rules": [{"from": [{"source": {"principals": ["a*b"]}}]}]}),
                "spec.rules[0].from[0].source.principals[0]",
            ),
            (
                json!({"rules": [{"from": [{"source": {"ipBlocks": ["10.0.0.0/33"]}}]}]}),
                "spec.rules[0].from[0].source.ipBlocks[0]",
            ),
            (
                json!({"rules": [{"to": [{"operation": {"paths": ["api"]}}]}]}),
                "spec.rules[0].to[0].operation.paths[0]",
            ),
            (
                json!({"rules": [{"when": [{"key": "connection.sni", "values": ["x"]}]}]}),
                "spec.rules[0].when[0].key",
            ),
            (
                json!({"rules": [{"when": [{"key": "source.ip"}]}]}),
                "spec.rules[0].when[0]",
            ),
            (
                json!({"rules": [{"when": [{"key": "destination.port", "values": ["http"]}]}]}),
                "spec.rules[0].when[0].values[0]",
            ),
            (
                json!({"rules": [{"to": [{"operation": {}}]}]}),
                "spec.rules[0].to[0].operation",
            ),
            (
                json!({"targetRef": {"kind": "Gateway", "name": "x"}}),
                "spec.targetRef",
            ),
        ];
        for (spec, field) in cases {
            let errors = errors(|s, r| authorization_policy(s, r, false), spec.clone());
            assert!(
                errors.iter().any(|e| e.starts_with(&format!("{field}: "))),
                "{spec} should be refused at {field}: {errors:?}"
            );
        }
        let fine = json!({"action": "ALLOW", "rules": [{
            "from": [{"source": {"principals": ["cluster.local/ns/x/sa/*"], "ipBlocks": ["10.0.0.0/8", "::1"]}}],
            "to": [{"operation": {"paths": ["/api/*", "*/health"], "methods": ["GET"]}}],
            "when": [{"key": "request.headers[x-team]", "values": ["pay*"]},
                     {"key": "destination.port", "values": ["8080"]}]
        }]});
        assert_eq!(
            errors(|s, r| authorization_policy(s, r, false), fine),
            Vec::<String>::new()
        );
    }

    #[test]
    fn port_level_modes_need_a_selector() {
        let spec =
            json!({"mtls": {"mode": "STRICT"}, "portLevelMtls": {"8080": {"mode": "DISABLE"}}});
        assert_eq!(
            errors(peer_authentication, spec),
            vec![
                "spec.portLevelMtls: port-level modes apply to a workload's ports: they need spec.selector.matchLabels"
                    .to_string()
            ]
        );
    }
}
