//! Validation of one document: the Kubernetes envelope (`apiVersion`, `kind`, `metadata`),
//! then the spec against its kind's schema.
//!
//! Every problem is reported, each at its field path, so one answer fixes a document. What
//! the server owns is accepted and dropped: `status` and metadata's timestamps (with a
//! warning, since the writer may think they matter), `uid`, `generation` and `managedFields`
//! (silently: `kubectl get -o yaml` output carries them and re-applying it should just work).

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use super::schema::{NOT_ENFORCED, Report, Shape, StrRule, child, found, unknown_field, walk};
use super::security;
use super::{
    FieldError, Kind, KindInfo, NATIVE_GROUP, ObjectMeta, Resource, ResourceKey, Scope, istio,
    linkerd, names, native, smi, traffic,
};

/// A document that passed validation, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// Spec exactly as written; metadata without server fields; no status.
    pub resource: Resource,
    pub key: ResourceKey,
    /// Accepted but worth telling the writer: fields not enforced yet, server fields ignored.
    pub warnings: Vec<FieldError>,
}

const TOP_FIELDS: &[&str] = &["apiVersion", "kind", "metadata", "spec", "status"];

const METADATA_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "cluster",
    "labels",
    "annotations",
    "resourceVersion",
    "creationTimestamp",
    "updateTimestamp",
    "uid",
    "generation",
    "managedFields",
];

/// The namespace a namespaced document without `metadata.namespace` gets when nothing else
/// names one, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Where documents without `metadata.namespace` go, as kubectl decides it: `-n`, else the
/// CLI context's namespace, else [`DEFAULT_NAMESPACE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespacing<'a> {
    /// Given to a namespaced document that names none. Must be a DNS label (the caller checks).
    pub namespace: &'a str,
    /// The request named it (`-n`, `?namespace=`): a document naming another namespace is
    /// refused, as kubectl refuses it. A context's namespace or the default only fills in.
    pub enforce: bool,
}

impl Default for Namespacing<'_> {
    fn default() -> Self {
        Self {
            namespace: DEFAULT_NAMESPACE,
            enforce: false,
        }
    }
}

/// Validates one document completely; every error with its dotted field path. A namespaced
/// document without a namespace goes to [`DEFAULT_NAMESPACE`].
pub fn validate(doc: Value) -> Result<Checked, Vec<FieldError>> {
    validate_in(doc, Namespacing::default())
}

/// [`validate`], with the request's namespace rules.
pub fn validate_in(doc: Value, namespacing: Namespacing<'_>) -> Result<Checked, Vec<FieldError>> {
    let Value::Object(top) = doc else {
        return Err(vec![FieldError {
            field: String::new(),
            message: format!(
                "a document must be an object with apiVersion, kind, metadata and spec, found {}",
                found(&doc)
            ),
        }]);
    };
    let mut report = Report::default();
    for name in top.keys() {
        if !TOP_FIELDS.contains(&name.as_str()) {
            report.error(
                child("", name),
                unknown_field(name, TOP_FIELDS.iter().copied()),
            );
        }
    }
    let api_version = required_string(&top, "", "apiVersion", &mut report);
    let kind_name = required_string(&top, "", "kind", &mut report);
    let kind = match (&api_version, &kind_name) {
        (Some(api_version), Some(kind_name)) => match resolve_kind(api_version, kind_name) {
            Ok(kind) => Some(kind),
            Err(e) => {
                report.errors.push(e);
                None
            }
        },
        _ => None,
    };
    let metadata = check_metadata(top.get("metadata"), kind, namespacing, &mut report);
    match top.get("spec") {
        None => report.error(
            "spec",
            "required field is missing (write `spec: {}` if empty)",
        ),
        Some(spec) => check_spec(kind, spec, &mut report),
    }
    if top.contains_key("status") {
        report.warning("status", "status is set by the server; ignored");
    }

    if !report.errors.is_empty() {
        return Err(report.errors);
    }
    let (Some(api_version), Some(kind_name), Some(metadata)) = (api_version, kind_name, metadata)
    else {
        // Unreachable: each missing piece was reported as an error above.
        return Err(vec![FieldError {
            field: String::new(),
            message: "document is incomplete".into(),
        }]);
    };
    let spec = top
        .get("spec")
        .cloned()
        .unwrap_or_else(|| Value::Object(Map::new()));
    let resource = Resource {
        api_version,
        kind: kind_name,
        metadata,
        spec,
        status: None,
    };
    let key = key_of(&resource).map_err(|e| vec![e])?;
    Ok(Checked {
        resource,
        key,
        warnings: report.warnings,
    })
}

/// Where a resource is stored: its kind (from `apiVersion` + `kind`) and the scope's rules
/// for namespace and cluster. Checks presence, not spelling: [`validate`] does that.
pub fn key_of(resource: &Resource) -> Result<ResourceKey, FieldError> {
    let kind = resolve_kind(&resource.api_version, &resource.kind)?;
    let meta = &resource.metadata;
    let missing = |field: &str, why: String| FieldError {
        field: field.into(),
        message: format!("required field is missing: {why}"),
    };
    let forbidden = |field: &str, why: String| FieldError {
        field: field.into(),
        message: why,
    };
    if meta.name.is_empty() {
        return Err(missing("metadata.name", "every resource has a name".into()));
    }
    let namespace = meta.namespace.as_deref().filter(|ns| !ns.is_empty());
    let cluster = meta.cluster.as_deref().filter(|c| !c.is_empty());
    let name = kind.info().name;
    let (namespace, cluster) = match kind.scope() {
        Scope::Mesh => {
            if namespace.is_some() {
                return Err(forbidden("metadata.namespace", mesh_scoped(name)));
            }
            if cluster.is_some() {
                return Err(forbidden("metadata.cluster", not_cluster_local(name)));
            }
            ("", "")
        }
        Scope::Namespaced => {
            let namespace =
                namespace.ok_or_else(|| missing("metadata.namespace", namespaced(name)))?;
            if cluster.is_some() {
                return Err(forbidden("metadata.cluster", not_cluster_local(name)));
            }
            (namespace, "")
        }
        Scope::ClusterLocal => (
            namespace.ok_or_else(|| missing("metadata.namespace", namespaced(name)))?,
            cluster.ok_or_else(|| missing("metadata.cluster", cluster_local(name)))?,
        ),
    };
    Ok(ResourceKey {
        kind,
        namespace: namespace.into(),
        cluster: cluster.into(),
        name: meta.name.clone(),
    })
}

fn mesh_scoped(kind: &str) -> String {
    format!("{kind} is mesh-wide and takes no namespace; remove metadata.namespace")
}

fn not_cluster_local(kind: &str) -> String {
    format!("only Service and ServiceExport take metadata.cluster; {kind} applies to every cluster")
}

fn namespaced(kind: &str) -> String {
    format!("a {kind} lives in a namespace")
}

fn cluster_local(kind: &str) -> String {
    format!("a {kind} names the cluster that runs it")
}

/// The kind `apiVersion` + `kind` name, or an error listing what is accepted.
fn resolve_kind(api_version: &str, kind: &str) -> Result<Kind, FieldError> {
    let candidates: Vec<&KindInfo> = Kind::all().filter(|k| k.name == kind).collect();
    if kind == "EnvoyFilter" {
        return Err(FieldError {
            field: "kind".into(),
            message: "EnvoyFilter patches Envoy's own configuration, and Causeway's gateways run \
                      no Envoy; for rate limits write a RateLimitPolicy (causeway.dev/v1alpha1, \
                      see examples/causeway/rate-limits.yaml)"
                .into(),
        });
    }
    if candidates.is_empty() {
        let hint = Kind::all()
            .find(|k| k.name.eq_ignore_ascii_case(kind))
            .map(|k| format!(" (did you mean {:?}?)", k.name))
            .unwrap_or_default();
        return Err(FieldError {
            field: "kind".into(),
            message: format!(
                "unknown kind {kind:?}{hint}; accepted kinds: {}",
                accepted_kinds()
            ),
        });
    }
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    let versions = |k: &KindInfo| -> Vec<String> {
        k.versions
            .iter()
            .map(|v| format!("{}/{v}", k.group))
            .collect()
    };
    match candidates.iter().find(|k| k.group == group) {
        Some(info) if info.versions.contains(&version) => Ok(info.kind),
        Some(info) => Err(FieldError {
            field: "apiVersion".into(),
            message: format!(
                "{api_version:?} does not serve {kind}; accepted versions: {}",
                versions(info).join(", ")
            ),
        }),
        None => Err(FieldError {
            field: "apiVersion".into(),
            message: format!(
                "{kind} is not served by {api_version:?}; accepted: {}",
                candidates
                    .iter()
                    .flat_map(|k| versions(k))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// "Cluster, Service, ... (causeway.dev/v1alpha1); VirtualService, ... (networking.istio.io/v1, ...)".
fn accepted_kinds() -> String {
    let mut groups: Vec<(&str, &[&str], Vec<&str>)> = Vec::new();
    for info in Kind::all() {
        match groups.iter_mut().find(|(g, _, _)| *g == info.group) {
            Some((_, _, names)) => names.push(info.name),
            None => groups.push((info.group, info.versions, vec![info.name])),
        }
    }
    groups
        .iter()
        .map(|(group, versions, names)| {
            let versions: Vec<String> = versions.iter().map(|v| format!("{group}/{v}")).collect();
            format!("{} ({})", names.join(", "), versions.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// A top-level or metadata string field that must be present.
fn required_string(
    map: &Map<String, Value>,
    parent: &str,
    name: &str,
    report: &mut Report,
) -> Option<String> {
    let at = child(parent, name);
    match map.get(name) {
        None => {
            report.error(at, "required field is missing");
            None
        }
        Some(Value::String(s)) if s.is_empty() => {
            report.error(at, "must not be empty");
            None
        }
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => {
            report.error(at, format!("expected a string, found {}", found(other)));
            None
        }
    }
}

fn optional_string(
    map: &Map<String, Value>,
    parent: &str,
    name: &str,
    report: &mut Report,
) -> Option<String> {
    match map.get(name)? {
        Value::String(s) => Some(s.clone()),
        other => {
            report.error(
                child(parent, name),
                format!("expected a string, found {}", found(other)),
            );
            None
        }
    }
}

/// Checks `metadata` and returns it cleaned of server fields. `kind` is `None` when it could
/// not be resolved; scope rules are then skipped (the kind error says enough).
fn check_metadata(
    value: Option<&Value>,
    kind: Option<Kind>,
    namespacing: Namespacing<'_>,
    report: &mut Report,
) -> Option<ObjectMeta> {
    let Some(value) = value else {
        report.error("metadata", "required field is missing");
        return None;
    };
    let Some(map) = value.as_object() else {
        report.error(
            "metadata",
            format!("expected an object, found {}", found(value)),
        );
        return None;
    };
    for name in map.keys() {
        if !METADATA_FIELDS.contains(&name.as_str()) {
            report.error(
                child("metadata", name),
                unknown_field(name, METADATA_FIELDS.iter().copied()),
            );
        }
    }
    let info = kind.map(Kind::info);
    let name = required_string(map, "metadata", "name", report);
    if let Some(name) = &name {
        let native = info.is_some_and(|i| i.group == NATIVE_GROUP);
        let checked = if native {
            names::check_label(name)
        } else {
            names::check_subdomain(name)
        }
        .and_then(|()| match kind {
            Some(Kind::LinkerdServiceProfile) => linkerd::check_name(name),
            _ => Ok(()),
        });
        if let Err(reason) = checked {
            report.error("metadata.name", reason);
        }
    }

    let namespace = namespace(map, info, namespacing, report);
    let cluster = scoped_name(map, "cluster", info, report);
    let labels = string_map(map, "labels", report, Some(names::check_label_value));
    let annotations = string_map(map, "annotations", report, None);

    let resource_version = optional_string(map, "metadata", "resourceVersion", report);
    if let Some(version) = &resource_version
        && (version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()))
    {
        report.error(
            "metadata.resourceVersion",
            format!("{version:?} is not a resource version (a decimal number as a string, such as \"42\")"),
        );
    }
    for server_set in ["creationTimestamp", "updateTimestamp"] {
        if map.get(server_set).is_some_and(|v| !v.is_null()) {
            report.warning(child("metadata", server_set), "set by the server; ignored");
        }
    }

    Some(ObjectMeta {
        name: name?,
        namespace,
        cluster,
        labels,
        annotations,
        resource_version,
        creation_timestamp: None,
        update_timestamp: None,
    })
}

/// `metadata.namespace`: as [`scoped_name`], but a namespaced document without one gets the
/// request's, and one naming another than an enforced request namespace is refused.
fn namespace(
    map: &Map<String, Value>,
    info: Option<&KindInfo>,
    namespacing: Namespacing<'_>,
    report: &mut Report,
) -> Option<String> {
    let namespaced = info.is_some_and(|i| i.scope != Scope::Mesh);
    match map.get("namespace") {
        None if namespaced => Some(namespacing.namespace.to_string()),
        Some(Value::String(given)) if namespacing.enforce && given != namespacing.namespace => {
            report.error(
                "metadata.namespace",
                format!(
                    "the document's namespace {given:?} does not match the request's namespace \
                     {:?} (-n or ?namespace=); remove metadata.namespace or make them agree",
                    namespacing.namespace
                ),
            );
            None
        }
        _ => scoped_name(map, "namespace", info, report),
    }
}

/// `metadata.namespace` or `metadata.cluster`: a DNS label, required or forbidden by scope.
fn scoped_name(
    map: &Map<String, Value>,
    field: &str,
    info: Option<&KindInfo>,
    report: &mut Report,
) -> Option<String> {
    let at = child("metadata", field);
    let wanted = info.map(|info| match (info.scope, field) {
        (Scope::Mesh, "namespace") => Err(mesh_scoped(info.name)),
        (Scope::Mesh | Scope::Namespaced, _) if field == "cluster" => {
            Err(not_cluster_local(info.name))
        }
        (Scope::ClusterLocal, "cluster") => Ok(cluster_local(info.name)),
        _ => Ok(namespaced(info.name)),
    });
    match (map.get(field), wanted) {
        (None, Some(Ok(why))) => {
            report.error(at, format!("required field is missing: {why}"));
            None
        }
        (None, _) => None,
        (Some(_), Some(Err(why))) => {
            report.error(at, why);
            None
        }
        (Some(Value::String(s)), _) => match names::check_label(s) {
            Ok(()) => Some(s.clone()),
            Err(reason) => {
                report.error(at, reason);
                None
            }
        },
        (Some(other), _) => {
            report.error(at, format!("expected a string, found {}", found(other)));
            None
        }
    }
}

/// `labels` / `annotations`: string keys (Kubernetes qualified names) to string values.
fn string_map(
    map: &Map<String, Value>,
    field: &str,
    report: &mut Report,
    check_value: Option<StrRule>,
) -> BTreeMap<String, String> {
    let at = child("metadata", field);
    let mut out = BTreeMap::new();
    let Some(value) = map.get(field) else {
        return out;
    };
    let Some(entries) = value.as_object() else {
        report.error(
            at,
            format!("expected a map of strings, found {}", found(value)),
        );
        return out;
    };
    for (key, value) in entries {
        let entry = child(&at, key);
        if let Err(reason) = names::check_qualified_name(key) {
            report.error(&entry, format!("key {reason}"));
        }
        match value {
            Value::String(s) => {
                if let Some(Err(reason)) = check_value.map(|check| check(s)) {
                    report.error(&entry, reason);
                }
                out.insert(key.clone(), s.clone());
            }
            other => report.error(&entry, format!("expected a string, found {}", found(other))),
        }
    }
    out
}

/// The spec's schema and whether the data plane enforces the kind at all.
fn schema(kind: Kind) -> (&'static Shape, bool) {
    match kind {
        Kind::Cluster => (&native::CLUSTER, true),
        Kind::Service => (&native::SERVICE, true),
        Kind::ServiceExport => (&native::SERVICE_EXPORT, true),
        Kind::Route => (&native::ROUTE, true),
        Kind::DestinationPolicy => (&native::DESTINATION_POLICY, true),
        Kind::AuthorizationPolicy => (&native::AUTHORIZATION_POLICY, true),
        Kind::PeerAuthentication => (&native::PEER_AUTHENTICATION, true),
        Kind::RateLimitPolicy => (&native::RATE_LIMIT_POLICY, true),
        Kind::IstioVirtualService => (&istio::VIRTUAL_SERVICE, true),
        Kind::IstioDestinationRule => (&istio::DESTINATION_RULE, true),
        Kind::IstioAuthorizationPolicy => (&istio::AUTHORIZATION_POLICY, true),
        Kind::IstioPeerAuthentication => (&istio::PEER_AUTHENTICATION, true),
        Kind::LinkerdServiceProfile => (&linkerd::SERVICE_PROFILE, true),
        Kind::SmiTrafficSplit => (&smi::TRAFFIC_SPLIT, true),
    }
}

fn check_spec(kind: Option<Kind>, spec: &Value, report: &mut Report) {
    let Some(kind) = kind else {
        if !spec.is_object() {
            report.error("spec", format!("expected an object, found {}", found(spec)));
        }
        return;
    };
    let (shape, enforced) = schema(kind);
    let warnings_before = report.warnings.len();
    walk(shape, spec, "spec", true, report);
    // Rules across fields, which a shape cannot say.
    match kind {
        Kind::IstioVirtualService => traffic::virtual_service(spec, report),
        Kind::IstioDestinationRule => traffic::destination_rule(spec, report),
        Kind::Route => traffic::route(spec, report),
        Kind::DestinationPolicy => traffic::destination_policy(spec, report),
        Kind::LinkerdServiceProfile => linkerd::service_profile(spec, report),
        Kind::SmiTrafficSplit => smi::traffic_split(spec, report),
        Kind::IstioAuthorizationPolicy => {
            check_custom_action(spec, report);
            security::authorization_policy(spec, report, false);
        }
        Kind::AuthorizationPolicy => security::authorization_policy(spec, report, true),
        Kind::IstioPeerAuthentication | Kind::PeerAuthentication => {
            security::peer_authentication(spec, report)
        }
        _ => {}
    }
    // A kind nothing enforces must not look enforced just because its spec is empty: an
    // Istio `AuthorizationPolicy` with `spec: {}` means "deny all" to Istio.
    if !enforced && spec.is_object() && report.warnings.len() == warnings_before {
        report.warning("spec", format!("{}: {NOT_ENFORCED}", kind));
    }
}

/// Istio: `action: CUSTOM` delegates to the named `provider`, and only it takes one. Causeway
/// calls no external authorizer, so it refuses CUSTOM outright rather than store a policy that
/// could never be enforced as written (`authz::Policy::compile` refuses it too).
fn check_custom_action(spec: &Value, report: &mut Report) {
    let custom = spec.get("action").and_then(Value::as_str) == Some("CUSTOM");
    if custom {
        report.error(
            "spec.action",
            "CUSTOM delegates to an external authorizer (spec.provider), which Causeway does not \
             call; write the rules as ALLOW, DENY or AUDIT policies",
        );
    } else if spec.get("provider").is_some() {
        report.error("spec.provider", "only allowed when action is CUSTOM");
    }
}
