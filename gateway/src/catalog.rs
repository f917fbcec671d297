//! What the data plane routes by: local services, peers, their tunnels and their exports.
//!
//! The [`Snapshot`] is immutable and published through a `watch` channel; a request clones the
//! `Arc` once and routes on it, so a change is one pointer swap and in-flight requests finish on
//! the snapshot they started with.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use federation::identity::TrustDomain;
use federation::model::{ClusterName, LocalService, Protocol, ServiceKey, ServicePort};
use federation::traffic::RouteTable;

use tokio::time::Instant;

use crate::dns::{DnsService, DnsTable};

/// What a cluster exports: ports by service.
pub(crate) type Exports = BTreeMap<ServiceKey, Vec<ServicePort>>;

#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    pub local_cluster: Option<ClusterName>,
    /// This cluster's services; shared between snapshots while none of them changed.
    pub local: Arc<BTreeMap<ServiceKey, Arc<LocalService>>>,
    pub peers: BTreeMap<ClusterName, PeerView>,
    /// Every other cluster of the mesh, by trust domain: whose gateways may open tunnels here.
    pub clusters_by_domain: BTreeMap<TrustDomain, ClusterName>,
    /// Compiled traffic policy and where each subset lives.
    pub policy: Arc<Policy>,
    /// Security policy and who runs where (source-address attribution).
    pub guard: Arc<crate::guard::Guard>,
}

/// The traffic policy of one mesh snapshot, as the data plane reads it.
#[derive(Default, Debug)]
pub(crate) struct Policy {
    pub routes: Arc<RouteTable>,
    /// For each (service, subset) some DestinationRule defines: the clusters with at least one
    /// endpoint in it, and this cluster's endpoints in it.
    pub subsets: HashMap<(ServiceKey, String), SubsetView>,
    /// The services the subsets were read from (kept alive so that comparing them by
    /// identity is sound): a snapshot with the same ones and the same routes reuses this.
    inputs: Vec<Arc<LocalService>>,
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
            inputs: services.values().flatten().cloned().collect(),
            localities: BTreeMap::new(),
        }
    }

    /// Whether this policy was read from exactly `routes` and `services` (by identity).
    pub fn read_from(
        &self,
        routes: &Arc<RouteTable>,
        services: &BTreeMap<ClusterName, Vec<Arc<LocalService>>>,
    ) -> bool {
        Arc::ptr_eq(&self.routes, routes)
            && self.inputs.len() == services.values().map(Vec::len).sum::<usize>()
            && self
                .inputs
                .iter()
                .zip(services.values().flatten())
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    pub fn with_localities(mut self, localities: BTreeMap<ClusterName, String>) -> Self {
        self.localities = localities;
        self
    }

    pub fn subset(&self, service: &ServiceKey, subset: &str) -> Option<&SubsetView> {
        self.subsets.get(&(service.clone(), subset.to_string()))
    }
}

/// A peer cluster as the data plane sees it: a tunnel slot per gateway, and its exports.
#[derive(Clone)]
pub(crate) struct PeerView {
    pub trust_domain: TrustDomain,
    /// One slot per gateway address of the cluster, in the order its Cluster resource lists
    /// them. Never empty.
    pub gateways: Vec<GatewaySlot>,
    /// Where the next stream to this cluster starts its round over the gateways. The views
    /// that replace one another while the cluster stays share it, so a snapshot swap does not
    /// restart the rotation.
    pub turn: Arc<AtomicUsize>,
    /// What the mesh state says the peer exports; authoritative when present.
    pub declared: Option<Arc<Exports>>,
    /// What the peer's own catalog said when a tunnel came up; used when the mesh state says
    /// nothing about the peer's exports (peers from static config). Exports stay known while
    /// every tunnel is down so that callers learn *why* a service is unreachable instead of
    /// that it does not exist.
    pub fetched: Exports,
}

/// One gateway of a peer cluster, and the tunnel to it.
#[derive(Clone)]
pub(crate) struct GatewaySlot {
    pub address: SocketAddr,
    /// The connector dialling it (see `follow`): a connector that was replaced must not
    /// publish into its successor's slot.
    pub connector: u64,
    /// The tunnel, once established with the peer's catalog read.
    pub tunnel: Option<Tunnel>,
}

impl GatewaySlot {
    /// The tunnel, if it is up right now.
    pub fn live(&self) -> Option<&Tunnel> {
        self.tunnel.as_ref().filter(|t| t.is_open())
    }
}

/// An established tunnel to one gateway of a peer cluster.
#[derive(Clone)]
pub(crate) struct Tunnel {
    pub address: SocketAddr,
    pub conn: quinn::Connection,
    /// Until when this tunnel goes last in its cluster's rotation: a stream on it got no
    /// verdict in time, as when the peer died and QUIC has not noticed yet (that takes the
    /// idle timeout). Cleared by the next verdict it brings.
    stalled_until: Arc<Mutex<Option<Instant>>>,
}

impl Tunnel {
    pub fn new(address: SocketAddr, conn: quinn::Connection) -> Self {
        Self {
            address,
            conn,
            stalled_until: Arc::default(),
        }
    }

    pub fn is_open(&self) -> bool {
        self.conn.close_reason().is_none()
    }

    fn is_stalled(&self, now: Instant) -> bool {
        self.stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some_and(|until| now < until)
    }

    /// A stream on this tunnel got no verdict in time: try the cluster's other gateways first
    /// for `hold`.
    pub fn stalled(&self, now: Instant, hold: Duration) {
        *self
            .stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(now + hold);
    }

    /// A verdict came back on this tunnel: it takes its turn again.
    pub fn answered(&self) {
        let mut until = self
            .stalled_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if until.is_some() {
            *until = None;
        }
    }
}

impl PeerView {
    pub fn exports(&self) -> &Exports {
        self.declared.as_deref().unwrap_or(&self.fetched)
    }

    /// The tunnels that are up, for one target; `None` when none is.
    fn reachable(&self) -> Option<Gateways> {
        let tunnels: Vec<Tunnel> = self
            .gateways
            .iter()
            .filter_map(GatewaySlot::live)
            .cloned()
            .collect();
        (!tunnels.is_empty()).then(|| Gateways {
            tunnels,
            turn: self.turn.clone(),
        })
    }
}

/// The live tunnels to one peer cluster's gateways; a stream goes through one of them.
#[derive(Clone)]
pub(crate) struct Gateways {
    /// Never empty.
    pub tunnels: Vec<Tunnel>,
    turn: Arc<AtomicUsize>,
}

impl Gateways {
    /// The tunnels in the order one stream tries them: round-robin over the cluster's
    /// gateways, so streams spread over them, with stalled tunnels moved last (stable, so the
    /// rotation holds among the others). The next is only tried when the stream could not
    /// start on the one before (see `forward`).
    pub fn in_turn(&self, now: Instant) -> Vec<&Tunnel> {
        let n = self.tunnels.len();
        let start = if n > 1 {
            self.turn.fetch_add(1, Ordering::Relaxed)
        } else {
            0
        };
        let stalled: Vec<bool> = self.tunnels.iter().map(|t| t.is_stalled(now)).collect();
        turn_order(start, &stalled)
            .into_iter()
            .map(|i| &self.tunnels[i])
            .collect()
    }
}

/// Indexes `0..stalled.len()` rotated to begin at `start`, the stalled ones moved last.
fn turn_order(start: usize, stalled: &[bool]) -> Vec<usize> {
    let n = stalled.len();
    let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
    order.sort_by_key(|&i| stalled[i]);
    order
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
    /// A peer cluster, through whichever of its gateways' tunnels are up.
    Remote {
        cluster: ClusterName,
        gateways: Gateways,
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
    /// Clusters export it, but none of their gateways' tunnels is up.
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
            // One target per cluster, however many gateways it has: policy, outlier
            // detection and locality act on clusters; the gateways share its streams.
            match peer.reachable() {
                Some(gateways) => targets.push(Target {
                    kind: TargetKind::Remote {
                        cluster: cluster.clone(),
                        gateways,
                    },
                    port,
                }),
                None => down.push(cluster.to_string()),
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

    /// Whether `other` offers the same services with the same ports as `self` (compared by
    /// identity where the compiler shared them, so the check costs pointer comparisons):
    /// when it does, what is derived from them (DNS, TCP listeners) need not be rebuilt.
    pub fn same_catalog(&self, other: &Snapshot) -> bool {
        let local_same = Arc::ptr_eq(&self.local, &other.local)
            || self.local.len() == other.local.len()
                && self
                    .local
                    .iter()
                    .zip(other.local.iter())
                    .all(|((a, x), (b, y))| a == b && Arc::ptr_eq(x, y));
        let peers_same = self.peers.len() == other.peers.len()
            && self.peers.iter().zip(&other.peers).all(|((a, x), (b, y))| {
                a == b
                    && match (&x.declared, &y.declared) {
                        (Some(p), Some(q)) => Arc::ptr_eq(p, q),
                        (None, None) => x.fetched == y.fetched,
                        _ => false,
                    }
            });
        local_same && peers_same
    }

    /// Every service a local client may call, with the clusters offering it and its ports.
    fn services(&self) -> BTreeMap<ServiceKey, (BTreeSet<ClusterName>, BTreeSet<ServicePort>)> {
        let mut out: BTreeMap<_, (BTreeSet<_>, BTreeSet<_>)> = BTreeMap::new();
        if let Some(local_cluster) = &self.local_cluster {
            for (key, svc) in self.local.iter() {
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
                        clusters: clusters.into_iter().collect(),
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

    fn svc(key: &str, ports: &[(u16, Protocol)]) -> LocalService {
        LocalService {
            endpoint_labels: Default::default(),
            endpoint_accounts: Default::default(),
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
            local: Arc::new(
                local
                    .iter()
                    .map(|s| (s.key.clone(), Arc::new(s.clone())))
                    .collect(),
            ),
            peers: peers
                .iter()
                .map(|(name, exports)| {
                    let exports = exports
                        .iter()
                        .map(|s| (s.key.clone(), s.ports.clone()))
                        .collect();
                    let cluster = ClusterName::new(name).unwrap();
                    let view = PeerView {
                        trust_domain: TrustDomain::parse(name).unwrap(),
                        gateways: vec![GatewaySlot {
                            address: SocketAddr::from(([127, 0, 0, 1], 1)),
                            connector: 0,
                            tunnel: None,
                        }],
                        turn: Arc::default(),
                        declared: None,
                        fetched: exports,
                    };
                    (cluster, view)
                })
                .collect(),
            policy: Arc::default(),
            guard: Arc::default(),
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

    #[test]
    fn streams_take_turns_over_gateways_and_stalled_tunnels_go_last() {
        assert_eq!(turn_order(0, &[false, false]), [0, 1]);
        assert_eq!(turn_order(1, &[false, false]), [1, 0]);
        assert_eq!(turn_order(5, &[false, false, false]), [2, 0, 1]);
        // A stalled gateway is still tried, after the others, whose rotation holds.
        assert_eq!(turn_order(0, &[true, false, false]), [1, 2, 0]);
        assert_eq!(turn_order(1, &[true, false, false]), [1, 2, 0]);
        assert_eq!(turn_order(2, &[true, false, false]), [2, 1, 0]);
        assert_eq!(turn_order(0, &[true, true]), [0, 1]);
    }

    #[test]
    fn a_cluster_is_down_only_when_every_gateway_is() {
        let remote = svc("web.demo", &[(80, Protocol::Http)]);
        let mut snap = snapshot(&[], &[("west", std::slice::from_ref(&remote))]);
        let west = ClusterName::new("west").unwrap();
        let view = snap.peers.get_mut(&west).unwrap();
        view.gateways.push(GatewaySlot {
            address: SocketAddr::from(([127, 0, 0, 2], 1)),
            connector: 1,
            tunnel: None,
        });
        assert!(view.reachable().is_none());
        let err = snap
            .targets(&"web.demo".parse().unwrap(), Protocol::Http, None, None)
            .err()
            .unwrap();
        assert_eq!(
            err,
            NoRoute::Unreachable {
                service: "web.demo".parse().unwrap(),
                down: vec!["west".into()],
            },
            "one entry per cluster, not per gateway"
        );
    }
}
