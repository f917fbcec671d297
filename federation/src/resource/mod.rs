//! The mesh's resources: what operators apply, get and delete through the REST API.
//!
//! Every resource has the Kubernetes shape — `apiVersion`, `kind`, `metadata`, `spec`, `status`
//! — and is kept as JSON exactly as the user wrote it (Istio kinds included), so `get` returns
//! what was applied. Validation ([`validate`]) walks the JSON against a schema per kind and
//! reports every problem with its field path; the compiler ([`crate::mesh`]) reads the typed
//! parts it needs.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod check;
pub mod depth;
mod istio;
mod linkerd;
mod names;
mod native;
mod parse;
#[cfg(test)]
mod proptests;
mod references;
mod schema;
mod security;
mod smi;
#[cfg(test)]
mod tests;
mod traffic;

pub use check::{Checked, DEFAULT_NAMESPACE, Namespacing, key_of, validate, validate_in};
pub use parse::parse_documents;
pub use references::{
    CROSS_CHECKED, Claims, Findings, cross_check, cross_check_claims, service_host,
};
pub use schema::{NOT_ENFORCED, parse_duration};
pub use smi::parse_quantity;
pub use traffic::build_regex;

/// The `apiVersion` of Causeway's own kinds.
pub const NATIVE_GROUP: &str = "causeway.dev";
pub const NATIVE_API_VERSION: &str = "causeway.dev/v1alpha1";

/// Every kind the mesh stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Kind {
    Cluster,
    Service,
    ServiceExport,
    Route,
    DestinationPolicy,
    AuthorizationPolicy,
    PeerAuthentication,
    RateLimitPolicy,
    /// `networking.istio.io` VirtualService.
    IstioVirtualService,
    /// `networking.istio.io` DestinationRule.
    IstioDestinationRule,
    /// `security.istio.io` AuthorizationPolicy.
    IstioAuthorizationPolicy,
    /// `security.istio.io` PeerAuthentication.
    IstioPeerAuthentication,
    /// `linkerd.io` ServiceProfile.
    LinkerdServiceProfile,
    /// `split.smi-spec.io` TrafficSplit.
    SmiTrafficSplit,
}

/// Where a kind's names are unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One per mesh; no namespace (`Cluster`).
    Mesh,
    /// Unique per namespace.
    Namespaced,
    /// Unique per namespace *and* cluster: `metadata.cluster` names the cluster that runs it
    /// (`Service`, `ServiceExport`: the same service exists in several clusters).
    ClusterLocal,
}

/// How a kind is spelled on the wire and in URLs.
#[derive(Debug)]
pub struct KindInfo {
    pub kind: Kind,
    /// The `kind` field, e.g. `VirtualService`.
    pub name: &'static str,
    /// The API group, e.g. `networking.istio.io`.
    pub group: &'static str,
    /// Accepted versions, newest first (`apiVersion` = `group/version`).
    pub versions: &'static [&'static str],
    /// The URL segment and CLI name: lowercase plural, unique (`virtualservices`).
    pub plural: &'static str,
    /// Other names the CLI accepts (singular, short names like `vs`).
    pub aliases: &'static [&'static str],
    pub scope: Scope,
}

const ISTIO_NETWORKING_VERSIONS: &[&str] = &["v1", "v1beta1", "v1alpha3"];
const ISTIO_SECURITY_VERSIONS: &[&str] = &["v1", "v1beta1"];
const NATIVE_VERSIONS: &[&str] = &["v1alpha1"];
const LINKERD_VERSIONS: &[&str] = &["v1alpha2", "v1alpha1"];
const SMI_SPLIT_VERSIONS: &[&str] = &["v1alpha4", "v1alpha3", "v1alpha2", "v1alpha1"];

static KINDS: &[KindInfo] = &[
    KindInfo {
        kind: Kind::Cluster,
        name: "Cluster",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "clusters",
        aliases: &["cluster"],
        scope: Scope::Mesh,
    },
    KindInfo {
        kind: Kind::Service,
        name: "Service",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "services",
        aliases: &["service", "svc"],
        scope: Scope::ClusterLocal,
    },
    KindInfo {
        kind: Kind::ServiceExport,
        name: "ServiceExport",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "serviceexports",
        aliases: &["serviceexport", "export", "exports"],
        scope: Scope::ClusterLocal,
    },
    KindInfo {
        kind: Kind::Route,
        name: "Route",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "routes",
        aliases: &["route"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::DestinationPolicy,
        name: "DestinationPolicy",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "destinationpolicies",
        aliases: &["destinationpolicy"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::AuthorizationPolicy,
        name: "AuthorizationPolicy",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "authorizationpolicies",
        aliases: &["authorizationpolicy"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::PeerAuthentication,
        name: "PeerAuthentication",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "peerauthentications",
        aliases: &["peerauthentication"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::RateLimitPolicy,
        name: "RateLimitPolicy",
        group: NATIVE_GROUP,
        versions: NATIVE_VERSIONS,
        plural: "ratelimitpolicies",
        aliases: &["ratelimitpolicy"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::IstioVirtualService,
        name: "VirtualService",
        group: "networking.istio.io",
        versions: ISTIO_NETWORKING_VERSIONS,
        plural: "virtualservices",
        aliases: &["virtualservice", "vs"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::IstioDestinationRule,
        name: "DestinationRule",
        group: "networking.istio.io",
        versions: ISTIO_NETWORKING_VERSIONS,
        plural: "destinationrules",
        aliases: &["destinationrule", "dr"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::IstioAuthorizationPolicy,
        name: "AuthorizationPolicy",
        group: "security.istio.io",
        versions: ISTIO_SECURITY_VERSIONS,
        plural: "authorizationpolicies.security.istio.io",
        aliases: &["authorizationpolicy.security.istio.io"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::IstioPeerAuthentication,
        name: "PeerAuthentication",
        group: "security.istio.io",
        versions: ISTIO_SECURITY_VERSIONS,
        plural: "peerauthentications.security.istio.io",
        aliases: &["peerauthentication.security.istio.io", "pa"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::LinkerdServiceProfile,
        name: "ServiceProfile",
        group: "linkerd.io",
        versions: LINKERD_VERSIONS,
        plural: "serviceprofiles",
        aliases: &["serviceprofile", "sp"],
        scope: Scope::Namespaced,
    },
    KindInfo {
        kind: Kind::SmiTrafficSplit,
        name: "TrafficSplit",
        group: "split.smi-spec.io",
        versions: SMI_SPLIT_VERSIONS,
        plural: "trafficsplits",
        aliases: &["trafficsplit", "ts"],
        scope: Scope::Namespaced,
    },
];

impl Kind {
    pub fn info(self) -> &'static KindInfo {
        KINDS
            .iter()
            .find(|k| k.kind == self)
            .expect("every kind has an entry in KINDS")
    }

    pub fn all() -> impl Iterator<Item = &'static KindInfo> {
        KINDS.iter()
    }

    /// The kind an `apiVersion` + `kind` pair names, if we know it (any accepted version).
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        let (group, version) = api_version.split_once('/')?;
        KINDS
            .iter()
            .find(|k| k.group == group && k.name == kind && k.versions.contains(&version))
            .map(|k| k.kind)
    }

    /// The kind a URL segment names (its plural).
    pub fn from_plural(plural: &str) -> Option<Kind> {
        KINDS.iter().find(|k| k.plural == plural).map(|k| k.kind)
    }

    /// What a user typed on the command line: plural, alias or kind name, any case.
    pub fn lookup(name: &str) -> Option<Kind> {
        let lower = name.to_ascii_lowercase();
        KINDS
            .iter()
            .find(|k| k.plural == lower || k.aliases.contains(&lower.as_str()))
            .or_else(|| {
                // A bare kind name prefers the native kind when Istio has one of the same name.
                KINDS.iter().find(|k| k.name.eq_ignore_ascii_case(name))
            })
            .map(|k| k.kind)
    }

    pub fn scope(self) -> Scope {
        self.info().scope
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let info = self.info();
        if info.group == NATIVE_GROUP {
            f.write_str(info.name)
        } else {
            write!(f, "{}.{}", info.name, info.group)
        }
    }
}

/// `metadata`: who the resource is and the server's bookkeeping.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    /// Required for namespaced and cluster-local kinds, absent for `Cluster`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The cluster that runs a cluster-local resource (`Service`, `ServiceExport`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// The Raft index of the write that last changed it, as a decimal string (as Kubernetes
    /// spells it). On a write: the version the writer last saw (409 if it moved on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    /// RFC 3339, set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// RFC 3339, set by the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_timestamp: Option<String>,
}

/// One resource, as stored and returned. `spec` keeps exactly what the user wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Resource {
    pub api_version: String,
    pub kind: String,
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Where a resource lives in the store: unique per kind, namespace, cluster and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ResourceKey {
    pub kind: Kind,
    /// Empty for mesh-scoped kinds.
    pub namespace: String,
    /// Empty unless the kind is cluster-local.
    pub cluster: String,
    pub name: String,
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ", self.kind)?;
        if !self.namespace.is_empty() {
            write!(f, "{}/", self.namespace)?;
        }
        f.write_str(&self.name)?;
        if !self.cluster.is_empty() {
            write!(f, " in cluster {}", self.cluster)?;
        }
        Ok(())
    }
}

/// One problem with a document, at a field path like `spec.http[0].route[1].weight`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    /// Dotted path from the document's root; empty for the document as a whole.
    pub field: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}
