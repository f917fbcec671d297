//! The mesh model shared by the config, the data plane and (later) the replicated store.
//!
//! Names are validated once, here, so every other crate handles typed values only.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

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
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClusterName(String);

impl ClusterName {
    pub fn new(value: &str) -> Result<Self, ModelError> {
        check_dns_label("cluster name", value)?;
        Ok(Self(value.to_string()))
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
        value.0
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

/// A service as one cluster runs it: its ports and its local endpoints.
///
/// Endpoints never leave their cluster; other clusters see only the exported name and ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalService {
    pub key: ServiceKey,
    pub ports: Vec<ServicePort>,
    pub endpoints: Vec<SocketAddr>,
    /// Labels of the endpoints that have any (`version: v2`), which DestinationRule subsets
    /// select on.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub endpoint_labels: BTreeMap<SocketAddr, BTreeMap<String, String>>,
    /// Whether other clusters may reach it (exported) or only local clients.
    pub export: bool,
}

impl LocalService {
    pub fn port(&self, port: u16) -> Option<ServicePort> {
        self.ports.iter().copied().find(|p| p.port == port)
    }

    /// The labels of endpoint `addr` (empty if it has none).
    pub fn labels_of(&self, addr: &SocketAddr) -> &BTreeMap<String, String> {
        static NONE: BTreeMap<String, String> = BTreeMap::new();
        self.endpoint_labels.get(addr).unwrap_or(&NONE)
    }

    /// The same service with only the endpoints whose labels `selects` accepts: a subset.
    pub fn subset(&self, selects: impl Fn(&BTreeMap<String, String>) -> bool) -> LocalService {
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
