//! The mesh model shared by the config, the data plane and (later) the replicated store.
//!
//! Names are validated once, here, so every other crate handles typed values only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Why a name in the mesh model was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModelError {
    /// A name is not a DNS label (RFC 1123: 1-63 of `a-z`, `0-9`, `-`, not starting or ending in `-`).
    #[error(
        "{what} {value:?} is not a DNS label (1-63 lowercase letters, digits or '-', starting and ending alphanumeric)"
    )]
    NotDnsLabel { what: &'static str, value: String },
    /// A service key is not `name.namespace`.
    #[error("service {0:?} is not of the form <name>.<namespace>")]
    BadServiceKey(String),
    /// A protocol name is not one we proxy.
    #[error("protocol {0:?} is not supported (expected \"http\" or \"tcp\")")]
    BadProtocol(String),
}

/// Checks an RFC 1123 label: what Kubernetes accepts for names and namespaces.
pub fn check_dns_label(what: &'static str, value: &str) -> Result<(), ModelError> {
    let ok = !value.is_empty()
        && value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !value.starts_with('-')
        && !value.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(ModelError::NotDnsLabel {
            what,
            value: value.to_string(),
        })
    }
}

/// A cluster's name: a DNS label, because it appears in `<svc>.<ns>.<cluster>.mesh`.
///
/// Shared, not copied, when cloned: every service, export and DNS entry of a cluster names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(Arc<str>);

impl ClusterName {
    pub fn new(value: &str) -> Result<Self, ModelError> {
        check_dns_label("cluster name", value)?;
        Ok(Self(value.into()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClusterName {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(&value)
    }
}

impl From<ClusterName> for String {
    fn from(value: ClusterName) -> Self {
        value.0.to_string()
    }
}

impl FromStr for ClusterName {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl fmt::Display for ClusterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `name.namespace`: the same service in every cluster (namespace sameness).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceKey {
    name: String,
    namespace: String,
}

impl ServiceKey {
    pub fn new(name: &str, namespace: &str) -> Result<Self, ModelError> {
        check_dns_label("service name", name)?;
        check_dns_label("namespace", namespace)?;
        Ok(Self {
            name: name.to_string(),
            namespace: namespace.to_string(),
        })
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

impl FromStr for ServiceKey {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('.') {
            Some((name, ns)) if !ns.contains('.') => Self::new(name, ns),
            _ => Err(ModelError::BadServiceKey(s.to_string())),
        }
    }
}

impl TryFrom<String> for ServiceKey {
    type Error = ModelError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<ServiceKey> for String {
    fn from(value: ServiceKey) -> Self {
        value.to_string()
    }
}

impl fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// How the gateway proxies a port: HTTP/1.1 routed by `Host`, or opaque TCP bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Http,
    Tcp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Tcp => "tcp",
        }
    }
}

impl FromStr for Protocol {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "http" => Ok(Protocol::Http),
            "tcp" => Ok(Protocol::Tcp),
            other => Err(ModelError::BadProtocol(other.to_string())),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
}

/// One endpoint's labels (`version: v2`), sorted by key.
///
/// A sorted vector rather than a map: an endpoint has a handful of labels, a gateway may
/// hold tens of thousands of endpoints, and a map's nodes cost hundreds of bytes each.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "BTreeMap<String, String>", into = "BTreeMap<String, String>")]
pub struct Labels(Vec<(Box<str>, Box<str>)>);

impl Labels {
    pub const EMPTY: Labels = Labels(Vec::new());

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (&**k, &**v))
    }
}

/// The last value of a key given twice wins, as in a map.
impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Labels {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(pairs: I) -> Self {
        pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect::<BTreeMap<String, String>>()
            .into()
    }
}

impl From<BTreeMap<String, String>> for Labels {
    fn from(map: BTreeMap<String, String>) -> Self {
        Labels(map.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }
}

impl From<Labels> for BTreeMap<String, String> {
    fn from(labels: Labels) -> Self {
        labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }
}

/// A service as one cluster runs it: its ports and its local endpoints.
///
/// Endpoints never leave their cluster; other clusters see only the exported name and ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalService {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<SocketAddr>,
    /// Labels of the endpoints that have any (`version: v2`), which DestinationRule subsets
    /// select on; sorted by address, one entry per address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_labels: Vec<(SocketAddr, Labels)>,
    /// The Kubernetes service account each endpoint that names one runs as (`serviceAccount`),
    /// sorted by address: what a cluster that trusts its node network attributes a plaintext
    /// caller from that address to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoint_accounts: Vec<(SocketAddr, Box<str>)>,
    /// Whether other clusters may reach it (exported) or only local clients.
    pub export: bool,
}

impl LocalService {
    pub fn port(&self, port: u16) -> Option<ServicePort> {
        self.ports.iter().copied().find(|p| p.port == port)
    }

    /// The labels of endpoint `addr` (empty if it has none).
    pub fn labels_of(&self, addr: &SocketAddr) -> &Labels {
        static NONE: Labels = Labels::EMPTY;
        self.endpoint_labels
            .binary_search_by(|(a, _)| a.cmp(addr))
            .map_or(&NONE, |i| &self.endpoint_labels[i].1)
    }

    /// The same service with only the endpoints whose labels `selects` accepts: a subset.
    pub fn subset(&self, selects: impl Fn(&Labels) -> bool) -> LocalService {
        let endpoints: Vec<SocketAddr> = self
            .endpoints
            .iter()
            .filter(|a| selects(self.labels_of(a)))
            .copied()
            .collect();
        LocalService {
            endpoint_labels: self
                .endpoint_labels
                .iter()
                .filter(|(a, _)| endpoints.contains(a))
                .map(|(a, l)| (*a, l.clone()))
                .collect(),
            endpoints,
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_look_up_by_key_and_serialize_as_a_map() {
        let labels: Labels = [("version", "v2"), ("app", "api"), ("version", "v3")]
            .into_iter()
            .collect();
        assert_eq!(labels.get("version"), Some("v3"));
        assert_eq!(labels.get("app"), Some("api"));
        assert_eq!(labels.get("zone"), None);
        assert_eq!(
            labels.iter().collect::<Vec<_>>(),
            [("app", "api"), ("version", "v3")]
        );
        let json = serde_json::to_value(&labels).unwrap();
        assert_eq!(json, serde_json::json!({"app": "api", "version": "v3"}));
        assert_eq!(serde_json::from_value::<Labels>(json).unwrap(), labels);
    }

    #[test]
    fn service_keys_parse_strictly() {
        let key: ServiceKey = "echo.demo".parse().unwrap();
        assert_eq!((key.name(), key.namespace()), ("echo", "demo"));
        for bad in [
            "echo",
            "echo.demo.x",
            "Echo.demo",
            "-e.demo",
            "echo.",
            ".demo",
            "",
        ] {
            assert!(bad.parse::<ServiceKey>().is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn cluster_names_are_dns_labels() {
        assert!(ClusterName::new("east-1").is_ok());
        for bad in ["East", "a.b", "-a", "a-", "", &"a".repeat(64)] {
            assert!(ClusterName::new(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn protocols_parse() {
        assert_eq!("http".parse::<Protocol>().unwrap(), Protocol::Http);
        assert!("udp".parse::<Protocol>().is_err());
    }
}
