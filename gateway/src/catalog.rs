//! What the data plane routes by: local services, peers, their tunnels and their exports.
//!
//! The [`Snapshot`] is immutable and published through a `watch` channel; a request clones the
//! `Arc` once and routes on it, so a change is one pointer swap and in-flight requests finish on
//! the snapshot they started with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use federation::identity::TrustDomain;
use federation::model::{ClusterName, LocalService, Protocol, ServiceKey, ServicePort};
use federation::traffic::RouteTable;

use crate::Peer;
use crate::dns::{DnsService, DnsTable};

/// What a cluster exports: ports by service.
pub(crate) type Exports = BTreeMap<ServiceKey, Vec<ServicePort>>;

#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    pub local_cluster: Option<ClusterName>,
    pub local: BTreeMap<ServiceKey, Arc<LocalService>>,
    pub peers: BTreeMap<ClusterName, PeerView>,
    /// Every other cluster of the mesh, by trust domain: whose gateways may open tunnels here.
    pub clusters_by_domain: BTreeMap<TrustDomain, ClusterName>,
    /// Compiled traffic policy and where each subset lives.
    pub policy: Arc<Policy>,
}

/// The traffic policy of one mesh snapshot, as the data plane reads it.
#[derive(Default, Debug)]
pub(crate) struct Policy {
    pub routes: Arc<RouteTable>,
    /// For each (service, subset) some DestinationRule defines: the clusters with at least one
    /// endpoint in it, and this cluster's endpoints in it.
    pub subsets: HashMap<(ServiceKey, String), SubsetView>,
    /// Each cluster's locality (`region` or `region/zone`), where its Cluster resource says.
    pub localities: BTreeMap<ClusterName, String>,
}

#[derive(Default, Debug)]
pub(crate) struct SubsetView {
    pub clusters: BTreeSet<ClusterName>,
    pub local: Option<Arc<LocalService>>,
}

impl Policy {
    /// Reads the mesh's subsets: which cluster runs endpoints of which subset. Endpoints
    /// never leave their cluster, but their labels are in the replicated catalog, so every
    /// gateway knows where a subset lives.
    pub fn new(
        routes: Arc<RouteTable>,
        services: &BTreeMap<ClusterName, Vec<Arc<LocalService>>>,
        own: &ClusterName,
    ) -> Self {
        let mut subsets: HashMap<(ServiceKey, String), SubsetView> = HashMap::new();
        for (cluster, services) in services {
            for svc in services {
                let Some(rule) = routes.get(&svc.key).and_then(|p| p.destination.as_ref()) else {
                    continue;
                };
                for subset in &rule.subsets {
                    let view = subsets
                        .entry((svc.key.clone(), subset.name.clone()))
                        .or_default();
                    let members = svc.subset(|labels| subset.selects(labels));
                    if members.endpoints.is_empty() {
                        continue;
                    }
                    view.clusters.insert(cluster.clone());
                    if cluster == own {
                        view.local = Some(Arc::new(members));
                    }
                }
            }
        }
        Policy {
            routes,
            subsets,
            localities: BTreeMap::new(),
        }
    }

    pub fn with_localities(mut self, localities: BTreeMap<ClusterName, String>) -> Self {
        self.localities = localities;
        self
    }

    pub fn subset(&self, service: &ServiceKey, subset: &str) -> Option<&SubsetView> {
        self.subsets.get(&(service.clone(), subset.to_string()))
    }
}

#[derive(Clone)]
pub(crate) struct PeerView {
    /// The gateway dialled, and by which connector (see `follow`): a connector that was
    /// replaced must not publish into its successor's view.
    pub peer: Peer,
    pub connector: u64,
    /// The live tunnel, if any. Exports stay known while it is down so that callers learn *why*
    /// a service is unreachable instead of that it does not exist.
    pub conn: Option<quinn::Connection>,
    /// What the mesh state says the peer exports; authoritative when present.
    pub declared: Option<Exports>,
    /// What the peer's own catalog said when its tunnel came up; used when the mesh state
    /// says nothing about the peer's exports (peers from static config).
    pub fetched: Exports,
}

impl PeerView {
    pub fn exports(&self) -> &Exports {
        self.declared.as_ref().unwrap_or(&self.fetched)
    }

    /// Whether the tunnel is up right now.
    pub fn is_up(&self) -> bool {
        self.conn
            .as_ref()
            .is_some_and(|c| c.close_reason().is_none())
    }
}

/// Where one request or connection may go, and the port to ask for there (clusters may
/// export the same service on different port numbers).
#[derive(Clone)]
pub(crate) struct Target {
    pub kind: TargetKind,
    pub port: ServicePort,
}

#[derive(Clone)]
pub(crate) enum TargetKind {
    Local(Arc<LocalService>),
    Remote {
        cluster: ClusterName,
        conn: quinn::Connection,
    },
}

impl Target {
    pub fn cluster<'a>(&'a self, local: &'a ClusterName) -> &'a ClusterName {
        match &self.kind {
            TargetKind::Local(_) => local,
            TargetKind::Remote { cluster, .. } => cluster,
        }
    }
}

/// Why nothing can serve a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NoRoute {
    /// No cluster runs or exports the service.
    #[error("no cluster exports service {service}{}", cluster.as_ref().map(|c| format!(" in cluster {c}")).unwrap_or_default())]
    Unknown {
        service: ServiceKey,
        cluster: Option<ClusterName>,
    },
    /// The service exists but has no port of that protocol.
    #[error("service {service} has no {protocol} port")]
    NoPort {
        service: ServiceKey,
        protocol: Protocol,
    },
    /// Clusters export it, but none of their tunnels is up.
    #[error("no cluster exporting {service} is reachable: tunnels to {} are down", down.join(", "))]
    Unreachable {
        service: ServiceKey,
        down: Vec<String>,
    },
}

impl Snapshot {
    /// Every reachable target for `service`.
    ///
    /// `port` picks a port by number; otherwise each cluster's first port of `protocol`.
    pub fn targets(
        &self,
        service: &ServiceKey,
        protocol: Protocol,
        port: Option<u16>,
        only_cluster: Option<&ClusterName>,
    ) -> Result<Vec<Target>, NoRoute> {
        let pick = |ports: &[ServicePort]| {
            ports
                .iter()
                .copied()
                .find(|p| p.protocol == protocol && port.is_none_or(|n| n == p.port))
        };
        let wants = |c: &ClusterName| only_cluster.is_none_or(|o| o == c);
        let mut known = false;
        let mut has_port = false;
        let mut targets = Vec::new();
        let mut down = Vec::new();

        if let (Some(local_cluster), Some(svc)) = (&self.local_cluster, self.local.get(service))
            && wants(local_cluster)
        {
            known = true;
            if let Some(port) = pick(&svc.ports) {
                has_port = true;
                targets.push(Target {
                    kind: TargetKind::Local(svc.clone()),
                    port,
                });
            }
        }
        for (cluster, peer) in &self.peers {
            let Some(ports) = peer.exports().get(service) else {
                continue;
            };
            if !wants(cluster) {
                continue;
            }
            known = true;
            let Some(port) = pick(ports) else { continue };
            has_port = true;
            match &peer.conn {
                Some(conn) if conn.close_reason().is_none() => targets.push(Target {
                    kind: TargetKind::Remote {
                        cluster: cluster.clone(),
                        conn: conn.clone(),
                    },
                    port,
                }),
                _ => down.push(cluster.to_string()),
            }
        }
        if !known {
            return Err(NoRoute::Unknown {
                service: service.clone(),
                cluster: only_cluster.cloned(),
            });
        }
        if !has_port {
            return Err(NoRoute::NoPort {
                service: service.clone(),
                protocol,
            });
        }
        if targets.is_empty() {
            return Err(NoRoute::Unreachable {
                service: service.clone(),
                down,
            });
        }
        Ok(targets)
    }

    /// Every service a local client may call, with the clusters offering it and its ports.
    fn services(&self) -> BTreeMap<ServiceKey, (BTreeSet<ClusterName>, BTreeSet<ServicePort>)> {
        let mut out: BTreeMap<_, (BTreeSet<_>, BTreeSet<_>)> = BTreeMap::new();
        if let Some(local_cluster) = &self.local_cluster {
            for (key, svc) in &self.local {
                let entry = out.entry(key.clone()).or_default();
                entry.0.insert(local_cluster.clone());
                entry.1.extend(svc.ports.iter().copied());
            }
        }
        for (cluster, peer) in &self.peers {
            for (key, ports) in peer.exports() {
                let entry = out.entry(key.clone()).or_default();
                entry.0.insert(cluster.clone());
                entry.1.extend(ports.iter().copied());
            }
        }
        out
    }

    /// TCP ports the outbound address must listen on, one per (service, port).
    ///
    /// Local services claim their ports first, so a peer's export can never take a port away
    /// from a local service; among peers, the first service (by name) to claim a port keeps it.
    /// The losers are returned so the caller can report them.
    pub fn tcp_ports(&self) -> (BTreeMap<u16, ServiceKey>, Vec<(ServiceKey, u16)>) {
        let mut ports = BTreeMap::new();
        let mut clashes = Vec::new();
        let local = self
            .local
            .iter()
            .map(|(key, svc)| (key, svc.ports.as_slice()));
        let remote = self.peers.values().flat_map(|p| {
            p.exports()
                .iter()
                .map(|(key, ports)| (key, ports.as_slice()))
        });
        for (key, svc_ports) in local.chain(remote) {
            for p in svc_ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
                match ports.get(&p.port) {
                    Some(owner) if owner != key => clashes.push((key.clone(), p.port)),
                    Some(_) => {}
                    None => {
                        ports.insert(p.port, key.clone());
                    }
                }
            }
        }
        clashes.sort();
        clashes.dedup();
        (ports, clashes)
    }

    /// What DNS answers: every service points at the outbound listener.
    pub fn dns_table(&self, outbound: IpAddr, outbound_port: u16) -> DnsTable {
        let (v4, v6) = match outbound {
            IpAddr::V4(v4) => (Some(v4), None),
            IpAddr::V6(v6) => (None, Some(v6)),
        };
        let services = self
            .services()
            .into_iter()
            .map(|(key, (clusters, ports))| {
                let mut srv_ports: Vec<u16> = ports
                    .iter()
                    .map(|p| match p.protocol {
                        Protocol::Http => outbound_port,
                        Protocol::Tcp => p.port,
                    })
                    .collect();
                srv_ports.dedup();
                (
                    key,
                    DnsService {
                        clusters,
                        srv_ports,
                    },
                )
            })
            .collect();
        DnsTable { v4, v6, services }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    fn svc(key: &str, ports: &[(u16, Protocol)]) -> LocalService {
        LocalService {
            endpoint_labels: Default::default(),
            key: key.parse().unwrap(),
            ports: ports
                .iter()
                .map(|&(port, protocol)| ServicePort { port, protocol })
                .collect(),
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 1))],
            export: true,
        }
    }

    fn snapshot(local: &[LocalService], peers: &[(&str, &[LocalService])]) -> Snapshot {
        Snapshot {
            local_cluster: Some(ClusterName::new("east").unwrap()),
            local: local
                .iter()
                .map(|s| (s.key.clone(), Arc::new(s.clone())))
                .collect(),
            peers: peers
                .iter()
                .map(|(name, exports)| {
                    let exports = exports
                        .iter()
                        .map(|s| (s.key.clone(), s.ports.clone()))
                        .collect();
                    let cluster = ClusterName::new(name).unwrap();
                    let view = PeerView {
                        peer: Peer {
                            cluster: cluster.clone(),
                            trust_domain: TrustDomain::parse(name).unwrap(),
                            address: SocketAddr::from(([127, 0, 0, 1], 1)),
                        },
                        connector: 0,
                        conn: None,
                        declared: None,
                        fetched: exports,
                    };
                    (cluster, view)
                })
                .collect(),
            policy: Arc::default(),
            clusters_by_domain: BTreeMap::new(),
        }
    }

    #[test]
    fn local_services_keep_their_tcp_ports_against_peer_exports() {
        let db = svc("db.demo", &[(5432, Protocol::Tcp)]);
        // Sorts before db.demo: without the local-first rule it would win port 5432.
        let evil = svc("a.evil", &[(5432, Protocol::Tcp), (6000, Protocol::Tcp)]);
        let snap = snapshot(&[db], &[("west", &[evil])]);
        let (ports, clashes) = snap.tcp_ports();
        assert_eq!(ports[&5432].to_string(), "db.demo");
        assert_eq!(ports[&6000].to_string(), "a.evil");
        assert_eq!(clashes, [("a.evil".parse().unwrap(), 5432)]);
    }

    #[test]
    fn each_cluster_is_asked_for_its_own_port_and_down_tunnels_explain_themselves() {
        let local = svc("web.demo", &[(8080, Protocol::Http)]);
        let remote = svc("web.demo", &[(80, Protocol::Http)]);
        let snap = snapshot(&[local], &[("west", std::slice::from_ref(&remote))]);
        let targets = snap
            .targets(&"web.demo".parse().unwrap(), Protocol::Http, None, None)
            .unwrap();
        assert_eq!(targets.len(), 1, "west's tunnel is down");
        assert_eq!(targets[0].port.port, 8080);

        let west = ClusterName::new("west").unwrap();
        let err = snap
            .targets(
                &"web.demo".parse().unwrap(),
                Protocol::Http,
                None,
                Some(&west),
            )
            .err()
            .unwrap();
        assert_eq!(
            err.to_string(),
            "no cluster exporting web.demo is reachable: tunnels to west are down"
        );
        let err = snap
            .targets(&"web.demo".parse().unwrap(), Protocol::Tcp, None, None)
            .err()
            .unwrap();
        assert!(matches!(err, NoRoute::NoPort { .. }));
        let err = snap
            .targets(&"x.demo".parse().unwrap(), Protocol::Http, None, None)
            .err()
            .unwrap();
        assert!(matches!(err, NoRoute::Unknown { .. }));
    }
}
