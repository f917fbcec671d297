//! Schemas of Causeway's own kinds (`causeway.dev/v1alpha1`).
//!
//! `Cluster`, `Service` and `ServiceExport` drive the data plane today and carry no warnings.
//! The policy kinds are accepted and stored ahead of the data plane: each feature warns where
//! it starts, as the Istio kinds do.

use std::net::SocketAddr;

use super::istio::{
    DURATION, HOST, LABELS, MILLIS, NON_NEGATIVE, PORT, SELECTOR, STR, STRING_MATCH, STRINGS,
    SUBSET_NAME, WEIGHT, non_empty,
};
use super::schema::{Key, Shape, field, list, map, non_empty_list, obj, required};
use crate::identity::{IdentityError, TrustBundles, TrustDomain};

const SOCKET_ADDR: Shape = Shape::Text {
    what: "an address such as \"10.0.0.1:4433\"",
    check: check_socket_addr,
};

fn check_socket_addr(s: &str) -> Result<(), String> {
    match s.parse::<SocketAddr>() {
        Ok(addr) if addr.port() != 0 => Ok(()),
        Ok(_) => Err(format!("{s:?} needs a port other than 0")),
        Err(_) => Err(format!(
            "{s:?} is not an ip:port address such as \"10.0.0.1:4433\" or \"[fd00::1]:4433\""
        )),
    }
}

const DNS_LABEL: Shape = Shape::Text {
    what: "a DNS label",
    check: super::names::check_label,
};

const DNS_SUBDOMAIN: Shape = Shape::Text {
    what: "a Kubernetes service account name (a DNS subdomain)",
    check: super::names::check_subdomain,
};

const TRUST_DOMAIN: Shape = Shape::Text {
    what: "a trust domain such as \"east.mesh\"",
    check: check_trust_domain,
};

fn check_trust_domain(s: &str) -> Result<(), String> {
    TrustDomain::parse(s).map(drop).map_err(|e| e.to_string())
}

const TRUST_BUNDLE: Shape = Shape::Text {
    what: "PEM text with one or more CERTIFICATE blocks",
    check: check_trust_bundle,
};

/// The same rule the gateway applies when it loads a peer's bundle, so a bundle accepted
/// here never fails there.
fn check_trust_bundle(pem: &str) -> Result<(), String> {
    let td = TrustDomain::parse("bundle.check").map_err(|e| e.to_string())?;
    match TrustBundles::new().insert_pem(td, pem) {
        Ok(()) => Ok(()),
        Err(IdentityError::InvalidBundle { reason, .. }) => Err(reason),
        Err(other) => Err(other.to_string()),
    }
}

// ---- Cluster --------------------------------------------------------------------------------

const GATEWAY: Shape = obj(&[
    required("name", DNS_LABEL),
    required("tunnelAddress", SOCKET_ADDR),
    field("raftAddress", SOCKET_ADDR),
    field("adminAddress", SOCKET_ADDR),
]);

pub(crate) const CLUSTER: Shape = obj(&[
    required("trustDomain", TRUST_DOMAIN),
    required("trustBundle", TRUST_BUNDLE),
    field("gateways", list(&GATEWAY)),
    field("locality", obj(&[field("region", STR), field("zone", STR)])),
]);

// ---- Service, ServiceExport -----------------------------------------------------------------

const SERVICE_PORT: Shape = obj(&[
    required("port", PORT),
    required("protocol", Shape::Enum(&["http", "tcp"])),
    field("name", DNS_LABEL),
    field("targetPort", PORT),
]);

/// An endpoint: `"ip:port"`, or `{address: "ip:port", labels: {version: v2}, serviceAccount:
/// web}` so that subsets (DestinationRule, DestinationPolicy) and PeerAuthentication and
/// AuthorizationPolicy selectors can select it by label, and a cluster that trusts its node
/// network can tell who calls from its address.
const ENDPOINT: Shape = Shape::Either(&[
    SOCKET_ADDR,
    obj(&[
        required("address", SOCKET_ADDR),
        field("labels", LABELS),
        field("serviceAccount", DNS_SUBDOMAIN),
    ]),
]);

pub(crate) const SERVICE: Shape = obj(&[
    required("ports", non_empty_list(&SERVICE_PORT)),
    field("endpoints", list(&ENDPOINT)),
]);

pub(crate) const SERVICE_EXPORT: Shape = obj(&[]);

// ---- Route ----------------------------------------------------------------------------------

const SERVICE_NAME: Shape = Shape::Text {
    what: "a service name",
    check: non_empty,
};

const ROUTE_MATCH: Shape = obj(&[
    field("headers", map(&STRING_MATCH)),
    field("uri", STRING_MATCH),
    field("method", STRING_MATCH),
]);

const ROUTE_DESTINATION: Shape = obj(&[
    required("service", SERVICE_NAME),
    field("subset", SUBSET_NAME),
    field("weight", WEIGHT),
]);

const ROUTE_RETRIES: Shape = obj(&[
    required("attempts", NON_NEGATIVE),
    field("perTryTimeout", MILLIS),
    field("retryOn", STR),
]);

const ROUTE_HTTP: Shape = obj(&[
    field("match", list(&ROUTE_MATCH)),
    required("destinations", non_empty_list(&ROUTE_DESTINATION)),
    field("timeout", DURATION),
    field("retries", ROUTE_RETRIES),
]);

pub(crate) const ROUTE: Shape = obj(&[
    required("hosts", non_empty_list(&HOST)),
    required("http", list(&ROUTE_HTTP)),
]);

// ---- DestinationPolicy ----------------------------------------------------------------------

pub(crate) const DESTINATION_POLICY: Shape = obj(&[
    required("host", HOST),
    field(
        "subsets",
        list(&obj(&[
            required("name", DNS_LABEL),
            field("labels", LABELS),
        ])),
    ),
    field(
        "outlierDetection",
        obj(&[
            field("consecutive5xxErrors", NON_NEGATIVE),
            field("interval", DURATION),
            field("baseEjectionTime", DURATION),
            field("maxEjectionPercent", Shape::Int { min: 0, max: 100 }),
        ]),
    ),
    field(
        "connectionPool",
        obj(&[
            field("maxConnections", NON_NEGATIVE),
            field("maxPendingRequests", NON_NEGATIVE),
        ]),
    ),
]);

// ---- AuthorizationPolicy, PeerAuthentication ------------------------------------------------

const AUTHZ_RULE: Shape = obj(&[
    field(
        "from",
        list(&obj(&[
            field("principals", STRINGS),
            field("notPrincipals", STRINGS),
            field("namespaces", STRINGS),
            field("notNamespaces", STRINGS),
            field("clusters", STRINGS),
            field("notClusters", STRINGS),
            field("ipBlocks", STRINGS),
            field("notIpBlocks", STRINGS),
        ])),
    ),
    field(
        "to",
        list(&obj(&[
            field("hosts", STRINGS),
            field("notHosts", STRINGS),
            field("methods", STRINGS),
            field("notMethods", STRINGS),
            field("paths", STRINGS),
            field("notPaths", STRINGS),
            field("ports", list(&PORT)),
            field("notPorts", list(&PORT)),
        ])),
    ),
]);

/// The native twin of Istio's AuthorizationPolicy: the same evaluation, with `from` and `to`
/// holding the source and operation directly, ports as numbers, and `from.clusters` naming
/// calling clusters.
pub(crate) const AUTHORIZATION_POLICY: Shape = obj(&[
    field("selector", SELECTOR),
    field("action", Shape::Enum(&["ALLOW", "DENY", "AUDIT"])),
    field("rules", list(&AUTHZ_RULE)),
]);

const MTLS_MODE: Shape = obj(&[required(
    "mode",
    Shape::Enum(&["STRICT", "PERMISSIVE", "DISABLE"]),
)]);

/// The native twin of Istio's PeerAuthentication; ports are keys of `portLevelMtls`.
pub(crate) const PEER_AUTHENTICATION: Shape = obj(&[
    field("selector", SELECTOR),
    required("mtls", MTLS_MODE),
    field(
        "portLevelMtls",
        Shape::Map {
            key: Key::Port,
            value: &MTLS_MODE,
        },
    ),
]);

// ---- RateLimitPolicy ------------------------------------------------------------------------

pub(crate) const RATE_LIMIT_POLICY: Shape = obj(&[
    required("targetRef", obj(&[required("service", SERVICE_NAME)])),
    required(
        "requestsPerSecond",
        Shape::Int {
            min: 1,
            max: u32::MAX as i64,
        },
    ),
    field(
        "burst",
        Shape::Int {
            min: 0,
            max: u32::MAX as i64,
        },
    ),
    field("scope", Shape::Enum(&["local", "mesh"])),
    field("descriptors", list(&DESCRIPTOR)),
]);

/// `path`, `principal`, `sourceCluster`, `remoteAddress` or `header:<name>`.
const DESCRIPTOR: Shape = Shape::Text {
    what: "a descriptor (path, principal, sourceCluster, remoteAddress or header:<name>)",
    check: check_descriptor,
};

fn check_descriptor(s: &str) -> Result<(), String> {
    crate::ratelimit::Descriptor::parse(s).map(drop)
}
