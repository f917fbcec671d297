//! Checks across resources, run at apply time against what is stored: the rules one document
//! cannot break alone.
//!
//! - A subset that a route destination names (VirtualService or Route) but no subset list for
//!   that host defines (DestinationRule or DestinationPolicy) is a warning at the field, as
//!   Istio's analyzer reports it (IST0101). The documents of the same apply count, so a VS and
//!   its DR applied together are quiet.
//! - A host routed by two route tables (VirtualService or Route, with at least one route) in
//!   one namespace is a conflict: the second is refused, naming the first. Istio's sidecars pick the oldest
//!   VirtualService and ignore the rest, which makes the outcome depend on creation order; we
//!   say so at apply time instead.
//!
//! Hosts are compared as services (`reviews` in `default`, `reviews.default`,
//! `reviews.default.svc.cluster.local` and `reviews.default.mesh` are one), see
//! [`service_host`].

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{FieldError, Kind, Resource, ResourceKey, key_of};

/// The kinds whose stored resources [`cross_check`] reads.
pub const CROSS_CHECKED: &[Kind] = &[
    Kind::IstioVirtualService,
    Kind::Route,
    Kind::IstioDestinationRule,
    Kind::DestinationPolicy,
];

/// What [`cross_check`] found, each with the position of the applied document it concerns.
#[derive(Debug, Default, PartialEq)]
pub struct Findings {
    pub warnings: Vec<(usize, FieldError)>,
    /// Reasons to refuse the apply (HTTP 409).
    pub conflicts: Vec<(usize, FieldError)>,
}

/// A host as the service it names, `name.namespace`, when it names one of the mesh's forms;
/// otherwise the host unchanged. `namespace` is the referring resource's: Istio reads a short
/// name in the namespace of the rule that writes it.
pub fn service_host(host: &str, namespace: &str) -> String {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] if *name != "*" => format!("{name}.{namespace}"),
        [name, ns] | [name, ns, "mesh"] | [name, ns, _, "mesh"] => format!("{name}.{ns}"),
        [name, ns, "svc", ..] => format!("{name}.{ns}"),
        _ => host.to_string(),
    }
}

/// What [`cross_check`] needs of one stored resource: the hosts it routes and the subsets it
/// defines. Derived once per stored version (see `MeshState::stored_claims`), so that an apply
/// does not read every stored route table again.
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub key: ResourceKey,
    /// The hosts a route table claims, as services, each with its field path.
    hosts: Vec<(String, String)>,
    /// The host (as a service) whose subsets a rule defines, and their names.
    subsets: Option<(String, Vec<String>)>,
}

impl Claims {
    pub fn of(key: ResourceKey, resource: &Resource) -> Self {
        let subsets = matches!(
            key.kind,
            Kind::IstioDestinationRule | Kind::DestinationPolicy
        )
        .then(|| resource.spec.get("host").and_then(Value::as_str))
        .flatten()
        .map(|host| {
            let names = items(&resource.spec, "subsets")
                .iter()
                .filter_map(|s| s.get("name").and_then(Value::as_str))
                .map(str::to_string)
                .collect();
            (service_host(host, &key.namespace), names)
        });
        Claims {
            hosts: route_hosts(&key, resource),
            subsets,
            key,
        }
    }
}

/// Checks `applied` (validated documents, in request order) against `stored` (the stored
/// resources of the [`CROSS_CHECKED`] kinds). A stored resource that an applied one replaces
/// is left out.
pub fn cross_check(applied: &[Resource], stored: &[&Resource]) -> Findings {
    let stored: Vec<Claims> = stored
        .iter()
        .filter_map(|r| Some(Claims::of(key_of(r).ok()?, r)))
        .collect();
    cross_check_claims(applied, &stored.iter().collect::<Vec<_>>())
}

/// [`cross_check`], with the stored resources as their [`Claims`].
pub fn cross_check_claims(applied: &[Resource], stored: &[&Claims]) -> Findings {
    let applied_keys: Vec<Option<ResourceKey>> = applied.iter().map(|r| key_of(r).ok()).collect();
    let replaced: BTreeSet<&ResourceKey> = applied_keys.iter().flatten().collect();
    let kept: Vec<&Claims> = stored
        .iter()
        .copied()
        .filter(|c| !replaced.contains(&c.key))
        .collect();
    let fresh: Vec<(usize, Claims, &Resource)> = applied_keys
        .iter()
        .zip(applied)
        .enumerate()
        .filter_map(|(i, (k, r))| Some((i, Claims::of(k.clone()?, r), r)))
        .collect();

    let mut subsets: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for claims in kept.iter().copied().chain(fresh.iter().map(|(_, c, _)| c)) {
        if let Some((host, names)) = &claims.subsets {
            subsets
                .entry(host.as_str())
                .or_default()
                .extend(names.iter().map(String::as_str));
        }
    }

    let mut findings = Findings::default();
    // First claim wins: stored ones, then the request's in order.
    let mut claims: BTreeMap<(String, String), ResourceKey> = BTreeMap::new();
    for stored in &kept {
        for (_, host) in &stored.hosts {
            claims
                .entry((stored.key.namespace.clone(), host.clone()))
                .or_insert_with(|| stored.key.clone());
        }
    }
    for (i, fresh, resource) in &fresh {
        let key = &fresh.key;
        for (field, host) in &fresh.hosts {
            let claim = (key.namespace.clone(), host.clone());
            match claims.get(&claim) {
                Some(other) if other != key => findings.conflicts.push((
                    *i,
                    FieldError {
                        field: field.clone(),
                        message: format!(
                            "host {host} is already routed by {other}; one route table per host \
                             (Istio would silently use the older one): merge the two, or delete \
                             {other} first"
                        ),
                    },
                )),
                Some(_) => {}
                None => {
                    claims.insert(claim, key.clone());
                }
            }
        }
        for (field, host, subset) in subset_references(key.kind, &resource.spec) {
            let host = service_host(host, &key.namespace);
            if !subsets
                .get(host.as_str())
                .is_some_and(|s| s.contains(subset))
            {
                findings.warnings.push((
                    *i,
                    FieldError {
                        field,
                        message: format!(
                            "subset {subset:?} of {host} is defined by no DestinationRule or \
                             DestinationPolicy (Istio's IST0101); requests for it will fail"
                        ),
                    },
                ));
            }
        }
    }
    findings
}

fn items<'a>(value: &'a Value, name: &str) -> &'a [Value] {
    value
        .get(name)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// The hosts a route table claims, each with its field path, as services.
fn route_hosts(key: &ResourceKey, resource: &Resource) -> Vec<(String, String)> {
    // A route table without routes changes nothing for its hosts, so it claims none.
    if !matches!(key.kind, Kind::IstioVirtualService | Kind::Route)
        || !super::traffic::routes_something(&resource.spec)
    {
        return Vec::new();
    }
    items(&resource.spec, "hosts")
        .iter()
        .enumerate()
        .filter_map(|(i, h)| {
            let host = h.as_str()?;
            Some((
                format!("spec.hosts[{i}]"),
                service_host(host, &key.namespace),
            ))
        })
        .collect()
}

/// Every destination that names a subset: (path of `subset`, host, subset).
fn subset_references(kind: Kind, spec: &Value) -> Vec<(String, &str, &str)> {
    fn add<'a>(
        found: &mut Vec<(String, &'a str, &'a str)>,
        path: String,
        destination: Option<&'a Value>,
        host_field: &str,
    ) {
        let Some(d) = destination else { return };
        if let (Some(host), Some(subset)) = (
            d.get(host_field).and_then(Value::as_str),
            d.get("subset").and_then(Value::as_str),
        ) {
            found.push((format!("{path}.subset"), host, subset));
        }
    }
    let mut found = Vec::new();
    match kind {
        Kind::IstioVirtualService => {
            for (i, http) in items(spec, "http").iter().enumerate() {
                let at = format!("spec.http[{i}]");
                for (j, r) in items(http, "route").iter().enumerate() {
                    add(
                        &mut found,
                        format!("{at}.route[{j}].destination"),
                        r.get("destination"),
                        "host",
                    );
                }
                add(
                    &mut found,
                    format!("{at}.mirror"),
                    http.get("mirror"),
                    "host",
                );
                for (j, m) in items(http, "mirrors").iter().enumerate() {
                    add(
                        &mut found,
                        format!("{at}.mirrors[{j}].destination"),
                        m.get("destination"),
                        "host",
                    );
                }
            }
            for kind in ["tcp", "tls"] {
                for (i, route) in items(spec, kind).iter().enumerate() {
                    for (j, r) in items(route, "route").iter().enumerate() {
                        let at = format!("spec.{kind}[{i}].route[{j}].destination");
                        add(&mut found, at, r.get("destination"), "host");
                    }
                }
            }
        }
        Kind::Route => {
            for (i, http) in items(spec, "http").iter().enumerate() {
                for (j, d) in items(http, "destinations").iter().enumerate() {
                    add(
                        &mut found,
                        format!("spec.http[{i}].destinations[{j}]"),
                        Some(d),
                        "service",
                    );
                }
            }
        }
        _ => {}
    }
    found
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::resource::validate;

    fn res(doc: Value) -> Resource {
        validate(doc).unwrap_or_else(|e| panic!("{e:#?}")).resource
    }

    fn vs(name: &str, host: &str, subset: &str) -> Resource {
        res(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "VirtualService",
            "metadata": {"name": name},
            "spec": {"hosts": [host], "http": [{"route": [{"destination": {"host": host, "subset": subset}}]}]},
        }))
    }

    fn dr(host: &str, subsets: &[&str]) -> Resource {
        let subsets: Vec<Value> = subsets.iter().map(|s| json!({"name": s})).collect();
        res(json!({
            "apiVersion": "networking.istio.io/v1", "kind": "DestinationRule",
            "metadata": {"name": host.split('.').next().unwrap()},
            "spec": {"host": host, "subsets": subsets},
        }))
    }

    #[test]
    fn hosts_are_compared_as_services() {
        for host in [
            "reviews",
            "reviews.default",
            "reviews.default.svc.cluster.local",
            "reviews.default.mesh",
            "reviews.default.east.mesh",
        ] {
            assert_eq!(service_host(host, "default"), "reviews.default", "{host}");
        }
        assert_eq!(service_host("reviews", "shop"), "reviews.shop");
        assert_eq!(service_host("api.example.com", "shop"), "api.example.com");
        assert_eq!(service_host("*", "shop"), "*");
    }

    #[test]
    fn a_subset_no_rule_defines_is_a_warning_at_its_field() {
        let found = cross_check(&[vs("reviews", "reviews", "v3")], &[]);
        assert!(found.conflicts.is_empty());
        assert_eq!(found.warnings.len(), 1);
        let (doc, warning) = &found.warnings[0];
        assert_eq!(*doc, 0);
        assert_eq!(warning.field, "spec.http[0].route[0].destination.subset");
        assert!(
            warning
                .message
                .starts_with("subset \"v3\" of reviews.default is defined by no DestinationRule")
        );

        // The rule in the same apply, or stored under another spelling of the host: quiet.
        let together = cross_check(
            &[vs("reviews", "reviews", "v3"), dr("reviews", &["v3"])],
            &[],
        );
        assert_eq!(together, Findings::default());
        let stored = dr("reviews.default.svc.cluster.local", &["v1", "v3"]);
        assert_eq!(
            cross_check(&[vs("reviews", "reviews", "v3")], &[&stored]),
            Findings::default()
        );
        // A stored rule that this apply replaces no longer counts.
        let replaced = cross_check(
            &[vs("reviews", "reviews", "v3"), dr("reviews", &["v1"])],
            &[&dr("reviews", &["v3"])],
        );
        assert_eq!(replaced.warnings.len(), 1);

        let route = res(json!({
            "apiVersion": "causeway.dev/v1alpha1", "kind": "Route",
            "metadata": {"name": "echo", "namespace": "demo"},
            "spec": {"hosts": ["echo"], "http": [{"destinations": [{"service": "echo", "subset": "canary"}]}]},
        }));
        let found = cross_check(&[route], &[]);
        assert_eq!(
            found.warnings[0].1.field,
            "spec.http[0].destinations[0].subset"
        );
    }

    #[test]
    fn a_second_route_table_for_a_host_is_a_conflict() {
        let first = vs("reviews", "reviews", "v1");
        let second = vs("reviews-canary", "reviews.default.svc.cluster.local", "v1");
        let rule = dr("reviews", &["v1"]);
        let found = cross_check(std::slice::from_ref(&second), &[&first, &rule]);
        assert_eq!(found.conflicts.len(), 1, "{found:?}");
        let (doc, conflict) = &found.conflicts[0];
        assert_eq!((*doc, conflict.field.as_str()), (0, "spec.hosts[0]"));
        assert!(
            conflict.message.starts_with(
                "host reviews.default is already routed by VirtualService.networking.istio.io default/reviews;"
            ),
            "{}",
            conflict.message
        );
        // Two in one apply: the second is refused.
        let found = cross_check(&[first.clone(), second.clone(), rule.clone()], &[]);
        assert_eq!(found.conflicts[0].0, 1);
        // One without routes claims nothing.
        let mut idle = vs("idle", "reviews", "v1");
        idle.spec = json!({"hosts": ["reviews"]});
        assert!(cross_check(&[idle], &[&first, &rule]).conflicts.is_empty());
        // Re-applying the owner, or another namespace, is no conflict.
        assert!(
            cross_check(std::slice::from_ref(&first), &[&first, &rule])
                .conflicts
                .is_empty()
        );
        let mut elsewhere = second;
        elsewhere.metadata.namespace = Some("shop".into());
        assert!(cross_check(&[elsewhere], &[&first]).conflicts.is_empty());
    }
}
