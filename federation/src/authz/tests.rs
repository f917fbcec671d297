use std::net::IpAddr;

use serde_json::json;

use super::*;

fn policy(name: &str, spec: serde_json::Value) -> Policy {
    let resource: Resource = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": name, "namespace": "production"},
        "spec": spec,
    }))
    .unwrap();
    Policy::compile(&resource).unwrap()
}

fn http<'a>(principal: Option<&'a str>, method: &'a str, path: &'a str) -> Request<'a> {
    Request {
        principal,
        source_ip: Some("10.1.2.3".parse().unwrap()),
        port: 8080,
        http: Some(Http {
            host: "api.production",
            method,
            path,
            headers: vec![("x-team", "payments")],
        }),
        ..Request::default()
    }
}

const FRONTEND: &str = "spiffe://east.mesh/ns/production/sa/frontend";
const MONITOR: &str = "spiffe://east.mesh/ns/monitoring/sa/prometheus";
const LOCAL: &[&str] = &["east.mesh"];

/// The policies of `examples/istio/authorization-policies.yaml`, as published.
fn examples() -> Vec<Policy> {
    let text = include_str!("../../../examples/istio/authorization-policies.yaml");
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| {
            let resource: Resource = serde::Deserialize::deserialize(doc).unwrap();
            Policy::compile(&resource).unwrap()
        })
        .collect()
}

#[test]
fn the_examples_deny_by_default_and_allow_what_they_name() {
    let all = examples();
    let api_workload = [("app", "api")];
    let applying: Vec<&Policy> = all.iter().filter(|p| p.selects(&api_workload)).collect();
    // deny-all (no selector), allow-frontend-to-api (app: api), allow-prometheus-scrape.
    assert_eq!(applying.len(), 3, "{applying:?}");
    let decide = |req: &Request<'_>| decide(&applying, req, LOCAL);

    let allowed = decide(&http(Some(FRONTEND), "GET", "/api/v1/items"));
    assert!(allowed.allowed);
    assert_eq!(
        allowed.policy.as_deref(),
        Some("production/allow-frontend-to-api")
    );
    // Another method, a path outside the prefix, a path that leaves it through `..`.
    for (method, path) in [
        ("DELETE", "/api/v1/items"),
        ("GET", "/admin"),
        ("GET", "/api/v1/../../admin"),
    ] {
        let d = decide(&http(Some(FRONTEND), method, path));
        assert!(!d.allowed, "{method} {path}");
        assert_eq!(d.policy, None);
    }
    // Istio's `cluster.local` names this mesh's own trust domains, and only them.
    assert!(
        !decide(&http(
            Some("spiffe://other.mesh/ns/production/sa/frontend"),
            "GET",
            "/api/v1/x"
        ))
        .allowed
    );
    // Anonymous callers match no principal.
    assert!(!decide(&http(None, "GET", "/api/v1/items")).allowed);
    // Monitoring may scrape, by namespace.
    assert!(decide(&http(Some(MONITOR), "GET", "/metrics?x=1")).allowed);
    assert!(!decide(&http(Some(MONITOR), "POST", "/metrics")).allowed);
}

#[test]
fn deny_comes_before_allow_and_audit_never_decides() {
    let allow_all = policy("allow-all", json!({"rules": [{}]}));
    let deny_admin = policy(
        "deny-admin",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
    );
    let audit = policy(
        "audit-posts",
        json!({"action": "AUDIT", "rules": [{"to": [{"operation": {"methods": ["POST"]}}]}]}),
    );
    let set = [&allow_all, &deny_admin, &audit];
    let d = decide(&set, &http(None, "POST", "/admin/users"), LOCAL);
    assert_eq!(
        d,
        Decision {
            allowed: false,
            policy: Some("production/deny-admin".into()),
            audited: vec!["production/audit-posts".into()],
        }
    );
    let d = decide(&set, &http(None, "POST", "/items"), LOCAL);
    assert!(d.allowed);
    assert_eq!(d.audited, ["production/audit-posts"]);
    // No ALLOW policy: allowed unless denied. An ALLOW without rules: nothing is allowed.
    assert!(decide(&[&deny_admin], &http(None, "GET", "/items"), LOCAL).allowed);
    assert!(decide(&[&audit], &http(None, "GET", "/items"), LOCAL).allowed);
    let nothing = policy("deny-all", json!({}));
    assert!(!decide(&[&nothing], &http(None, "GET", "/"), LOCAL).allowed);
    // A DENY without rules denies nothing.
    let empty_deny = policy("empty-deny", json!({"action": "DENY"}));
    assert!(decide(&[&empty_deny], &http(None, "GET", "/"), LOCAL).allowed);
}

#[test]
fn fields_match_as_istio_matches_them() {
    let allow = |rule: serde_json::Value| policy("p", json!({"rules": [rule]}));
    let check =
        |rule: serde_json::Value, req: &Request<'_>| decide(&[&allow(rule)], req, LOCAL).allowed;
    let get = http(Some(FRONTEND), "GET", "/v1/items/7");
    // Prefix, suffix, `*` and the not-forms.
    assert!(check(
        json!({"to": [{"operation": {"paths": ["/v1/*"]}}]}),
        &get
    ));
    assert!(check(
        json!({"to": [{"operation": {"paths": ["*/7"]}}]}),
        &get
    ));
    assert!(!check(
        json!({"to": [{"operation": {"notPaths": ["/v1/*"]}}]}),
        &get
    ));
    assert!(check(
        json!({"from": [{"source": {"principals": ["*"]}}]}),
        &get
    ));
    assert!(!check(
        json!({"from": [{"source": {"principals": ["*"]}}]}),
        &http(None, "GET", "/")
    ));
    assert!(check(
        json!({"from": [{"source": {"notPrincipals": ["cluster.local/ns/production/sa/api"]}}]}),
        &get
    ));
    // A `spiffe://` principal is read as the same name, not silently matched against nothing.
    assert!(check(
        json!({"from": [{"source": {"principals": ["spiffe://east.mesh/ns/production/sa/frontend"]}}]}),
        &get
    ));
    assert!(check(
        json!({"from": [{"source": {"namespaces": ["prod*"]}}]}),
        &get
    ));
    assert!(!check(
        json!({"from": [{"source": {"notNamespaces": ["production"]}}]}),
        &get
    ));
    // Hosts without case, ports, source addresses and blocks.
    assert!(check(
        json!({"to": [{"operation": {"hosts": ["API.production"]}}]}),
        &get
    ));
    assert!(check(
        json!({"to": [{"operation": {"ports": ["8080"]}}]}),
        &get
    ));
    assert!(!check(
        json!({"to": [{"operation": {"ports": ["9090"]}}]}),
        &get
    ));
    assert!(check(
        json!({"from": [{"source": {"ipBlocks": ["10.0.0.0/8"]}}]}),
        &get
    ));
    assert!(check(
        json!({"from": [{"source": {"ipBlocks": ["10.1.2.3"]}}]}),
        &get
    ));
    assert!(!check(
        json!({"from": [{"source": {"notIpBlocks": ["10.1.0.0/16"]}}]}),
        &get
    ));
    // Every part of a rule must hold; any source or operation within a part.
    let rule = json!({
        "from": [{"source": {"namespaces": ["monitoring"]}}, {"source": {"namespaces": ["production"]}}],
        "to": [{"operation": {"methods": ["GET"]}}],
        "when": [{"key": "request.headers[X-Team]", "values": ["pay*"]},
                 {"key": "source.namespace", "notValues": ["kube-system"]}],
    });
    assert!(check(rule.clone(), &get));
    assert!(!check(rule, &http(Some(FRONTEND), "PUT", "/")));
    // A condition Causeway cannot read never holds.
    assert!(!check(
        json!({"when": [{"key": "request.auth.claims[iss]", "values": ["x"]}]}),
        &get
    ));
}

#[test]
fn tcp_traffic_never_gets_more_than_the_policy_meant() {
    let tcp = Request {
        principal: Some(FRONTEND),
        source_ip: Some(IpAddr::from([10, 1, 2, 3])),
        port: 5432,
        ..Request::default()
    };
    // An ALLOW rule with an HTTP-only field matches nothing for TCP...
    let allow_get = policy(
        "a",
        json!({"rules": [{"to": [{"operation": {"ports": ["5432"], "methods": ["GET"]}}]}]}),
    );
    assert!(!decide(&[&allow_get], &tcp, LOCAL).allowed);
    let allow_port = policy(
        "b",
        json!({"rules": [{"to": [{"operation": {"ports": ["5432"]}}]}]}),
    );
    assert!(decide(&[&allow_port], &tcp, LOCAL).allowed);
    // ...and a DENY rule leaves its HTTP-only fields out, so it denies more.
    let deny_get = policy(
        "c",
        json!({"action": "DENY", "rules": [{"to": [{"operation": {"methods": ["GET"]}}],
                                             "when": [{"key": "request.headers[x]", "values": ["y"]}]}]}),
    );
    assert!(!decide(&[&deny_get], &tcp, LOCAL).allowed);
}

#[test]
fn custom_is_refused_with_a_reason() {
    let resource: Resource = serde_json::from_value(json!({
        "apiVersion": "security.istio.io/v1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ext", "namespace": "production"},
        "spec": {"action": "CUSTOM", "provider": {"name": "opa"}, "rules": [{}]},
    }))
    .unwrap();
    let err = Policy::compile(&resource).unwrap_err();
    assert!(err.contains("CUSTOM"), "{err}");
}

#[test]
fn paths_are_normalized_before_matching() {
    for (raw, normal) in [
        ("/a/b", "/a/b"),
        ("/a/./b", "/a/b"),
        ("/a/../b", "/b"),
        ("/../../b", "/b"),
        ("/a/b/..", "/a/"),
        ("/a/b?x=/../c", "/a/b"),
        ("/", "/"),
    ] {
        assert_eq!(normalize_path(raw), normal, "{raw}");
    }
}

mod fuzz {
    //! Property tests (the `cargo test` half of fuzzing): principals, paths and descriptors
    //! from arbitrary input are matched, normalized and parsed by the rules, never with a panic.

    use proptest::prelude::*;

    use super::super::{normalize_path, principal_matches, string_matches};
    use crate::ratelimit::Descriptor;

    /// Istio's string match, written out the long way.
    fn reference(pattern: &str, value: &str) -> bool {
        if pattern == "*" {
            !value.is_empty()
        } else if let Some(p) = pattern.strip_suffix('*') {
            value.starts_with(p)
        } else if let Some(s) = pattern.strip_prefix('*') {
            value.ends_with(s)
        } else {
            pattern == value
        }
    }

    proptest! {
        #[test]
        fn string_patterns_match_as_istio_says(pattern in ".{0,12}", value in ".{0,12}") {
            prop_assert_eq!(string_matches(&pattern, &value), reference(&pattern, &value));
            // Every non-empty value matches itself exactly, and `*`.
            if !value.is_empty() && !value.contains('*') {
                prop_assert!(string_matches(&value, &value));
                prop_assert!(string_matches("*", &value));
            }
        }

        #[test]
        fn principals_match_only_their_own_trust_domains(
            ns in "[a-z]{1,8}", sa in "[a-z]{1,8}", td in "[a-z]{1,6}\\.mesh", other in "[a-z]{1,6}\\.org",
        ) {
            let principal = format!("{td}/ns/{ns}/sa/{sa}");
            let local = [td.as_str()];
            let with_scheme = format!("spiffe://{principal}");
            let aliased = format!("cluster.local/ns/{ns}/sa/{sa}");
            let prefix = format!("cluster.local/ns/{ns}/*");
            let foreign = format!("{other}/ns/{ns}/sa/{sa}");
            // As written, with or without spiffe://, and through cluster.local.
            prop_assert!(principal_matches(&principal, &principal, &local));
            prop_assert!(principal_matches(&with_scheme, &principal, &local));
            prop_assert!(principal_matches(&aliased, &principal, &local));
            prop_assert!(principal_matches(&prefix, &principal, &local));
            // cluster.local never stands for a domain that is not local; another domain's
            // principal never matches.
            prop_assert!(!principal_matches(&aliased, &foreign, &local));
            prop_assert!(!principal_matches(&principal, &foreign, &local));
        }

        #[test]
        fn arbitrary_principals_never_panic(pattern in "\\PC{0,40}", value in "\\PC{0,40}") {
            let _ = principal_matches(&pattern, &value, &["east.mesh"]);
        }

        #[test]
        fn normalized_paths_are_rooted_dot_free_and_stable(path in "(/|\\.|\\.\\.|[a-z]|\\?|%2e){0,24}") {
            let once = normalize_path(&path);
            prop_assert!(once.starts_with('/'), "{once}");
            prop_assert!(!once.contains('?'), "{once}");
            for segment in once.split('/') {
                prop_assert!(segment != "." && segment != "..", "{path} -> {once}");
            }
            prop_assert_eq!(normalize_path(&once), once.clone());
        }

        #[test]
        fn descriptors_parse_or_are_refused_with_a_reason(s in "\\PC{0,40}") {
            match Descriptor::parse(&s) {
                Ok(Descriptor::Header(name)) => {
                    prop_assert_eq!(name.clone(), name.to_ascii_lowercase());
                    prop_assert!(!name.is_empty() && !name.contains(' ') && !name.contains(':'));
                }
                Ok(_) => prop_assert!(["path", "principal", "sourceCluster", "remoteAddress"].contains(&s.as_str())),
                Err(why) => prop_assert!(why.contains("is not a descriptor")),
            }
        }
    }
}
