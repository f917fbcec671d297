//! Follows the mesh: turns each [`MeshSnapshot`] into the routing [`Snapshot`] and keeps one
//! tunnel connector per gateway of each peer cluster.
//!
//! ```text
//!  watch<MeshSnapshot> ──► plan(): own services, peers (trust domain, gateway addresses),
//!                          declared exports, other clusters by trust domain
//!                     ──► apply(): next routing Snapshot, live tunnels kept ──► outbound,
//!                                                                  inbound, DNS, TCP listeners
//!                     ──► connectors started for new peer gateways, stopped (tunnel closed)
//!                         for gateways that left, with their cluster or alone
//!
//!  PeerView west ── slot 10.1.0.1:15443, connector 7, tunnel ──┐  one target "west";
//!                └─ slot 10.1.0.2:15443, connector 8, tunnel ──┘  streams take turns
//! ```
//!
//! Connectors publish into the routing snapshot themselves (tunnel up or down, fetched
//! catalog); both sides go through `send_modify`, so neither overwrites the other. A connector
//! publishes only into the gateway slot that still carries its number: a replaced connector
//! that is still winding down cannot resurrect its tunnel in its successor's slot.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use federation::identity::TrustDomain;
use federation::mesh::MeshSnapshot;
use federation::model::{ClusterName, LocalService, ServiceKey};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::Peer;
use crate::catalog::{Exports, GatewaySlot, PeerView, Policy, Snapshot};
use crate::drain;
use crate::guard::Guard;
use crate::metrics::PeerLabels;
use crate::tunnel::{self, Dialer};

/// What one mesh snapshot asks of the data plane.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub local: Arc<BTreeMap<ServiceKey, Arc<LocalService>>>,
    pub peers: BTreeMap<ClusterName, PlannedPeer>,
    pub clusters_by_domain: BTreeMap<TrustDomain, ClusterName>,
    pub policy: Arc<Policy>,
    pub guard: Arc<Guard>,
}

#[derive(Debug)]
pub(crate) struct PlannedPeer {
    pub trust_domain: TrustDomain,
    /// Never empty (a cluster without a gateway address cannot be dialled and is no peer), no
    /// address twice; each gets a tunnel.
    pub gateways: Vec<SocketAddr>,
    pub declared: Option<Arc<Exports>>,
}

/// Reads what the data plane of cluster `own` needs from `mesh`. What `previous` already
/// holds and `mesh` did not change (this cluster's services, the policy read from the
/// services and routes) is shared, not rebuilt: with thousands of services most writes
/// change neither.
pub(crate) fn plan(mesh: &MeshSnapshot, own: &ClusterName, previous: Option<&Snapshot>) -> Plan {
    let services = mesh
        .services
        .get(own)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let local = match previous {
        Some(prev)
            if prev.local.len() == services.len()
                && prev
                    .local
                    .values()
                    .zip(services)
                    .all(|(a, b)| Arc::ptr_eq(a, b)) =>
        {
            prev.local.clone()
        }
        _ => Arc::new(
            services
                .iter()
                .map(|s| (s.key.clone(), s.clone()))
                .collect(),
        ),
    };
    let localities: BTreeMap<ClusterName, String> = mesh
        .clusters
        .iter()
        .filter_map(|(name, c)| Some((name.clone(), c.locality.clone()?)))
        .collect();
    let policy = match previous {
        Some(prev)
            if prev.policy.localities == localities
                && prev.policy.read_from(&mesh.routes, &mesh.services) =>
        {
            prev.policy.clone()
        }
        _ => Arc::new(
            Policy::new(mesh.routes.clone(), &mesh.services, own).with_localities(localities),
        ),
    };
    // Rebuilt only when security policy, this cluster's services or the clusters changed.
    let guard = match previous {
        Some(prev) if Arc::ptr_eq(&prev.local, &local) && prev.guard.same_mesh(mesh) => {
            prev.guard.clone()
        }
        _ => Arc::new(Guard::new(mesh, own, &local)),
    };
    let mut plan = Plan {
        local,
        policy,
        guard,
        ..Plan::default()
    };
    for (name, cluster) in &mesh.clusters {
        if name == own {
            continue;
        }
        let trust_domain = match TrustDomain::parse(&cluster.trust_domain) {
            Ok(td) => td,
            Err(e) => {
                tracing::error!(cluster = %name, error = %e, "cluster has an invalid trust domain; not peering with it");
                continue;
            }
        };
        if let Some(other) = plan.clusters_by_domain.get(&trust_domain) {
            tracing::error!(cluster = %name, %other, %trust_domain, "two clusters claim one trust domain; ignoring the second");
            continue;
        }
        plan.clusters_by_domain
            .insert(trust_domain.clone(), name.clone());
        let mut gateways = Vec::with_capacity(cluster.gateways.len());
        for addr in &cluster.gateways {
            if !gateways.contains(addr) {
                gateways.push(*addr);
            }
        }
        if gateways.is_empty() {
            continue;
        }
        plan.peers.insert(
            name.clone(),
            PlannedPeer {
                trust_domain,
                gateways,
                declared: mesh.exports.get(name).cloned(),
            },
        );
    }
    plan
}

/// What changed between two routing snapshots, for the caller to act on.
#[derive(Default)]
pub(crate) struct Changes {
    /// Connectors to start, with the number their gateway slot carries.
    pub start: Vec<(Peer, u64)>,
    /// Connectors to stop.
    pub stop: Vec<Stop>,
    /// Tunnels to close, with why.
    pub close: Vec<(quinn::Connection, &'static [u8])>,
}

/// A connector to stop, and the gateway it dialled.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Stop {
    pub connector: u64,
    pub cluster: ClusterName,
    pub address: SocketAddr,
    /// The gateway is no longer dialled at all (it or its cluster left the mesh); otherwise a
    /// new connector dials it again (its cluster changed trust domain).
    pub gone: bool,
}

/// The routing snapshot `plan` asks for, keeping `current`'s tunnels to every gateway that is
/// still one of its cluster's. `next_connector` numbers new connectors.
pub(crate) fn apply(
    current: &Snapshot,
    plan: &Plan,
    next_connector: &mut u64,
) -> (Snapshot, Changes) {
    let mut changes = Changes::default();
    let stop = |changes: &mut Changes,
                cluster: &ClusterName,
                slot: &GatewaySlot,
                gone: bool,
                why: &'static [u8]| {
        changes.stop.push(Stop {
            connector: slot.connector,
            cluster: cluster.clone(),
            address: slot.address,
            gone,
        });
        if let Some(tunnel) = &slot.tunnel {
            changes.close.push((tunnel.conn.clone(), why));
        }
    };
    let mut peers = BTreeMap::new();
    for (cluster, planned) in &plan.peers {
        let old = current.peers.get(cluster);
        let kept = old.filter(|view| view.trust_domain == planned.trust_domain);
        match (old, kept) {
            (Some(old), None) => {
                for slot in &old.gateways {
                    let gone = !planned.gateways.contains(&slot.address);
                    stop(
                        &mut changes,
                        cluster,
                        slot,
                        gone,
                        b"peer trust domain changed",
                    );
                }
            }
            (_, Some(kept)) => {
                for slot in &kept.gateways {
                    if !planned.gateways.contains(&slot.address) {
                        stop(&mut changes, cluster, slot, true, b"peer gateway left");
                    }
                }
            }
            (None, None) => {}
        }
        let gateways = planned
            .gateways
            .iter()
            .map(|&address| {
                let live =
                    kept.and_then(|view| view.gateways.iter().find(|g| g.address == address));
                if let Some(slot) = live {
                    return slot.clone();
                }
                *next_connector += 1;
                let peer = Peer {
                    cluster: cluster.clone(),
                    trust_domain: planned.trust_domain.clone(),
                    address,
                };
                changes.start.push((peer, *next_connector));
                GatewaySlot {
                    address,
                    connector: *next_connector,
                    tunnel: None,
                }
            })
            .collect();
        let view = PeerView {
            trust_domain: planned.trust_domain.clone(),
            gateways,
            turn: kept.map(|view| view.turn.clone()).unwrap_or_default(),
            declared: planned.declared.clone(),
            fetched: kept.map(|view| view.fetched.clone()).unwrap_or_default(),
        };
        peers.insert(cluster.clone(), view);
    }
    for (cluster, old) in &current.peers {
        if !plan.peers.contains_key(cluster) {
            for slot in &old.gateways {
                stop(&mut changes, cluster, slot, true, b"peer left the mesh");
            }
        }
    }
    let next = Snapshot {
        local_cluster: current.local_cluster.clone(),
        local: plan.local.clone(),
        peers,
        clusters_by_domain: plan.clusters_by_domain.clone(),
        policy: plan.policy.clone(),
        guard: plan.guard.clone(),
    };
    (next, changes)
}

/// Owns the connectors: one task per peer gateway, in a set that aborts them all when dropped.
pub(crate) struct Follower {
    pub own: ClusterName,
    pub dialer: Arc<Dialer>,
    connectors: JoinSet<()>,
    /// By connector number.
    running: BTreeMap<u64, AbortHandle>,
    next_connector: u64,
    version: Option<u64>,
}

impl Follower {
    pub fn new(own: ClusterName, dialer: Arc<Dialer>) -> Self {
        Self {
            own,
            dialer,
            connectors: JoinSet::new(),
            running: BTreeMap::new(),
            next_connector: 0,
            version: None,
        }
    }

    /// Brings the routing snapshot and the connectors in line with `mesh`.
    pub fn follow(&mut self, mesh: &MeshSnapshot, drain: &drain::Watch) {
        let current = self.dialer.snapshot.borrow().clone();
        let plan = plan(mesh, &self.own, Some(&current));
        let mut changes = Changes::default();
        self.dialer.snapshot.send_modify(|snapshot| {
            let (next, found) = apply(snapshot, &plan, &mut self.next_connector);
            *snapshot = Arc::new(next);
            changes = found;
        });
        for stop in changes.stop {
            if let Some(task) = self.running.remove(&stop.connector) {
                task.abort();
            }
            let labels = PeerLabels {
                peer_cluster: stop.cluster.to_string(),
                peer_gateway: stop.address.to_string(),
            };
            if stop.gone {
                self.dialer.metrics.tunnel_up.remove(&labels);
                tracing::info!(peer = %stop.cluster, addr = %stop.address, "peer gateway left the mesh; tunnel closed");
            } else {
                self.dialer.metrics.tunnel_up.get_or_create(&labels).set(0);
            }
        }
        for (conn, reason) in changes.close {
            conn.close(0u32.into(), reason);
        }
        for (peer, number) in changes.start {
            tracing::info!(peer = %peer.cluster, addr = %peer.address, "following peer gateway");
            let task = self.connectors.spawn(tunnel::run_connector(
                self.dialer.clone(),
                peer.clone(),
                number,
                drain.clone(),
            ));
            self.running.insert(number, task);
        }
        if self.version != Some(mesh.version) {
            tracing::debug!(
                version = mesh.version,
                connectors = self.running.len(),
                "data plane follows mesh snapshot"
            );
            self.version = Some(mesh.version);
        }
    }

    /// Follows every later snapshot until draining starts or the sender is gone.
    pub async fn run(mut self, mut mesh: watch::Receiver<Arc<MeshSnapshot>>, drain: drain::Watch) {
        loop {
            tokio::select! {
                _ = drain.signaled() => return,
                changed = mesh.changed() => if changed.is_err() { break },
                // Reap connectors that returned, so the set does not grow with churn.
                Some(_) = self.connectors.join_next() => continue,
            }
            let current = mesh.borrow_and_update().clone();
            self.follow(&current, &drain);
        }
        // No more changes can come: keep the tunnels we have until draining starts.
        drain.signaled().await;
    }
}

#[cfg(test)]
mod tests {
    use federation::mesh::ClusterView;
    use federation::model::{Protocol, ServicePort};

    use super::*;

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn cluster(n: &str, gateways: &[u16]) -> (ClusterName, ClusterView) {
        let view = ClusterView {
            name: name(n),
            trust_domain: format!("{n}.mesh"),
            trust_bundle: Vec::new(),
            gateways: gateways.iter().copied().map(addr).collect(),
            locality: None,
        };
        (name(n), view)
    }

    fn service(key: &str, port: u16, export: bool) -> LocalService {
        LocalService {
            endpoint_labels: Default::default(),
            endpoint_accounts: Default::default(),
            key: key.parse().unwrap(),
            ports: vec![ServicePort {
                port,
                protocol: Protocol::Http,
            }],
            endpoints: vec![addr(9)],
            export,
        }
    }

    fn initial() -> Snapshot {
        Snapshot {
            local_cluster: Some(name("east")),
            ..Snapshot::default()
        }
    }

    #[test]
    fn a_plan_shares_what_the_mesh_did_not_change() {
        let mut mesh = MeshSnapshot::default();
        mesh.clusters
            .extend([cluster("east", &[1]), cluster("west", &[2])]);
        mesh.services
            .insert(name("east"), vec![Arc::new(service("web.demo", 80, false))]);
        let mut number = 0;
        let (first, _) = apply(&initial(), &plan(&mesh, &name("east"), None), &mut number);
        // The same services and routes (a write elsewhere): the same map, the same policy.
        mesh.version += 1;
        let again = plan(&mesh, &name("east"), Some(&first));
        assert!(Arc::ptr_eq(&again.local, &first.local));
        assert!(Arc::ptr_eq(&again.policy, &first.policy));
        // A service changed: both are read anew.
        mesh.services
            .insert(name("east"), vec![Arc::new(service("web.demo", 81, false))]);
        let changed = plan(&mesh, &name("east"), Some(&first));
        assert!(!Arc::ptr_eq(&changed.local, &first.local));
        assert!(!Arc::ptr_eq(&changed.policy, &first.policy));
        assert_eq!(
            changed.local[&"web.demo".parse().unwrap()].ports[0].port,
            81
        );
    }

    #[test]
    fn plan_takes_own_services_and_every_other_dialable_cluster() {
        let mut mesh = MeshSnapshot::default();
        mesh.clusters.extend([
            cluster("east", &[1]),
            cluster("west", &[2, 3]),
            cluster("north", &[]),
        ]);
        mesh.services
            .insert(name("east"), vec![Arc::new(service("web.demo", 80, false))]);
        mesh.services
            .insert(name("west"), vec![Arc::new(service("api.demo", 81, true))]);
        mesh.exports.insert(
            name("west"),
            Arc::new(
                [(
                    "api.demo".parse().unwrap(),
                    vec![ServicePort {
                        port: 81,
                        protocol: Protocol::Http,
                    }],
                )]
                .into(),
            ),
        );
        let plan = plan(&mesh, &name("east"), None);
        assert_eq!(
            plan.local
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["web.demo"]
        );
        assert_eq!(plan.peers.keys().collect::<Vec<_>>(), [&name("west")]);
        let west = &plan.peers[&name("west")];
        assert_eq!(west.gateways, [addr(2), addr(3)]);
        assert_eq!(west.declared.as_ref().unwrap().len(), 1);
        // North has no gateway to dial, but its gateways may still dial us.
        let domains: Vec<_> = plan
            .clusters_by_domain
            .iter()
            .map(|(td, c)| format!("{td}={c}"))
            .collect();
        assert_eq!(domains, ["north.mesh=north", "west.mesh=west"]);
    }

    /// Connector numbers of `cluster`'s gateway slots, by address port.
    fn slots(snapshot: &Snapshot, cluster: &str) -> Vec<(u16, u64)> {
        snapshot.peers[&name(cluster)]
            .gateways
            .iter()
            .map(|g| (g.address.port(), g.connector))
            .collect()
    }

    fn stopped(connector: u64, port: u16, gone: bool) -> Stop {
        Stop {
            connector,
            cluster: name("west"),
            address: addr(port),
            gone,
        }
    }

    #[test]
    fn apply_starts_keeps_and_stops_connectors() {
        let mut number = 0;
        let mut mesh = MeshSnapshot::default();
        mesh.clusters
            .extend([cluster("east", &[1]), cluster("west", &[2])]);
        let (first, changes) = apply(&initial(), &plan(&mesh, &name("east"), None), &mut number);
        assert_eq!(changes.start.len(), 1);
        assert_eq!(changes.start[0].0.address, addr(2));
        assert!(changes.stop.is_empty());
        assert_eq!(slots(&first, "west"), [(2, 1)]);
        assert_eq!(first.local_cluster, Some(name("east")));

        // A second gateway and declared exports: the first gateway's connector (and its
        // tunnel) stays, the second gets its own, and the declared exports win over fetched
        // ones.
        mesh.clusters.extend([cluster("west", &[3, 2])]);
        mesh.exports.insert(
            name("west"),
            Arc::new([("api.demo".parse().unwrap(), vec![])].into()),
        );
        let mut current = first.clone();
        current
            .peers
            .get_mut(&name("west"))
            .unwrap()
            .fetched
            .insert("old.demo".parse().unwrap(), vec![]);
        let (second, changes) = apply(&current, &plan(&mesh, &name("east"), None), &mut number);
        assert!(changes.stop.is_empty());
        assert_eq!(changes.start.len(), 1);
        assert_eq!(
            (changes.start[0].0.address, changes.start[0].1),
            (addr(3), 2)
        );
        assert_eq!(slots(&second, "west"), [(3, 2), (2, 1)]);
        let west = &second.peers[&name("west")];
        assert!(Arc::ptr_eq(&west.turn, &first.peers[&name("west")].turn));
        assert_eq!(
            west.exports()
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["api.demo"]
        );

        // The first gateway leaves its cluster: only its connector stops; the other keeps its
        // slot, and a gateway listed twice is dialled once.
        mesh.clusters.extend([cluster("west", &[3, 3])]);
        let (third, changes) = apply(&second, &plan(&mesh, &name("east"), None), &mut number);
        assert_eq!(changes.stop, [stopped(1, 2, true)]);
        assert!(changes.start.is_empty());
        assert_eq!(slots(&third, "west"), [(3, 2)]);

        // A new trust domain: every connector dials anew, and the fetched catalog is dropped.
        mesh.clusters.get_mut(&name("west")).unwrap().trust_domain = "west2.mesh".into();
        let (fourth, changes) = apply(&third, &plan(&mesh, &name("east"), None), &mut number);
        assert_eq!(changes.stop, [stopped(2, 3, false)]);
        assert_eq!(changes.start.len(), 1);
        assert_eq!(slots(&fourth, "west"), [(3, 3)]);
        assert!(fourth.peers[&name("west")].fetched.is_empty());

        // Back to the first trust domain, with two gateways; then west leaves: every
        // connector of its stops.
        mesh.clusters.extend([cluster("west", &[3, 4])]);
        let (fifth, _) = apply(&fourth, &plan(&mesh, &name("east"), None), &mut number);
        assert_eq!(slots(&fifth, "west"), [(3, 4), (4, 5)]);
        mesh.clusters.remove(&name("west"));
        let (sixth, changes) = apply(&fifth, &plan(&mesh, &name("east"), None), &mut number);
        assert_eq!(changes.stop, [stopped(4, 3, true), stopped(5, 4, true)]);
        assert!(changes.start.is_empty());
        assert!(sixth.peers.is_empty() && sixth.clusters_by_domain.is_empty());
    }
}
