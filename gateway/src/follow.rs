//! Follows the mesh: turns each [`MeshSnapshot`] into the routing [`Snapshot`] and keeps one
//! tunnel connector per peer cluster.
//!
//! ```text
//!  watch<MeshSnapshot> ──► plan(): own services, peers (trust domain, gateway addresses),
//!                          declared exports, other clusters by trust domain
//!                     ──► apply(): next routing Snapshot, live tunnels kept ──► outbound,
//!                                                                  inbound, DNS, TCP listeners
//!                     ──► connectors started for new peers, stopped (tunnel closed) for peers
//!                         that left or whose dialled gateway is gone
//! ```
//!
//! Connectors publish into the routing snapshot themselves (tunnel up or down, fetched
//! catalog); both sides go through `send_modify`, so neither overwrites the other. A connector
//! publishes only into the view that still carries its number: a replaced connector that is
//! still winding down cannot resurrect its tunnel in its successor's view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use federation::identity::TrustDomain;
use federation::mesh::MeshSnapshot;
use federation::model::{ClusterName, LocalService, ServiceKey};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::Peer;
use crate::catalog::{Exports, PeerView, Policy, Snapshot};
use crate::drain;
use crate::metrics::PeerLabels;
use crate::tunnel::{self, Dialer};

/// What one mesh snapshot asks of the data plane.
#[derive(Debug, Default)]
pub(crate) struct Plan {
    pub local: BTreeMap<ServiceKey, Arc<LocalService>>,
    pub peers: BTreeMap<ClusterName, PlannedPeer>,
    pub clusters_by_domain: BTreeMap<TrustDomain, ClusterName>,
    pub policy: Arc<Policy>,
}

#[derive(Debug)]
pub(crate) struct PlannedPeer {
    pub trust_domain: TrustDomain,
    /// Never empty: a cluster without a gateway address cannot be dialled and is no peer.
    pub gateways: Vec<SocketAddr>,
    pub declared: Option<Exports>,
}

/// Reads what the data plane of cluster `own` needs from `mesh`.
pub(crate) fn plan(mesh: &MeshSnapshot, own: &ClusterName) -> Plan {
    let mut plan = Plan {
        local: mesh
            .services
            .get(own)
            .into_iter()
            .flatten()
            .map(|s| (s.key.clone(), s.clone()))
            .collect(),
        policy: Arc::new(
            Policy::new(mesh.routes.clone(), &mesh.services, own).with_localities(
                mesh.clusters
                    .iter()
                    .filter_map(|(name, c)| Some((name.clone(), c.locality.clone()?)))
                    .collect(),
            ),
        ),
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
        if cluster.gateways.is_empty() {
            continue;
        }
        plan.peers.insert(
            name.clone(),
            PlannedPeer {
                trust_domain,
                gateways: cluster.gateways.clone(),
                declared: mesh.exports.get(name).cloned(),
            },
        );
    }
    plan
}

/// What changed between two routing snapshots, for the caller to act on.
#[derive(Default)]
pub(crate) struct Changes {
    /// Connectors to start, with the number their view carries.
    pub start: Vec<(Peer, u64)>,
    /// Peers whose connector must stop: they left the mesh (`true`), or their dialled gateway
    /// is gone (`false`, a new connector starts).
    pub stop: Vec<(ClusterName, bool)>,
    /// Tunnels to close, with why.
    pub close: Vec<(quinn::Connection, &'static [u8])>,
}

/// The routing snapshot `plan` asks for, keeping `current`'s tunnels to peers whose dialled
/// gateway is still one of theirs. `next_connector` numbers new connectors.
pub(crate) fn apply(
    current: &Snapshot,
    plan: &Plan,
    next_connector: &mut u64,
) -> (Snapshot, Changes) {
    let mut changes = Changes::default();
    let mut peers = BTreeMap::new();
    for (cluster, planned) in &plan.peers {
        let kept = current.peers.get(cluster).filter(|view| {
            view.peer.trust_domain == planned.trust_domain
                && planned.gateways.contains(&view.peer.address)
        });
        let view = match kept {
            Some(view) => PeerView {
                declared: planned.declared.clone(),
                ..view.clone()
            },
            None => {
                if let Some(old) = current.peers.get(cluster) {
                    changes.stop.push((cluster.clone(), false));
                    if let Some(conn) = &old.conn {
                        changes.close.push((conn.clone(), b"peer gateway moved"));
                    }
                }
                // Several gateways: the first is dialled; the others are failover to come.
                let peer = Peer {
                    cluster: cluster.clone(),
                    trust_domain: planned.trust_domain.clone(),
                    address: planned.gateways[0],
                };
                *next_connector += 1;
                changes.start.push((peer.clone(), *next_connector));
                PeerView {
                    peer,
                    connector: *next_connector,
                    conn: None,
                    declared: planned.declared.clone(),
                    fetched: Exports::new(),
                }
            }
        };
        peers.insert(cluster.clone(), view);
    }
    for (cluster, old) in &current.peers {
        if !plan.peers.contains_key(cluster) {
            changes.stop.push((cluster.clone(), true));
            if let Some(conn) = &old.conn {
                changes.close.push((conn.clone(), b"peer left the mesh"));
            }
        }
    }
    let next = Snapshot {
        local_cluster: current.local_cluster.clone(),
        local: plan.local.clone(),
        peers,
        clusters_by_domain: plan.clusters_by_domain.clone(),
        policy: plan.policy.clone(),
    };
    (next, changes)
}

/// Owns the connectors: one task per peer, in a set that aborts them all when dropped.
pub(crate) struct Follower {
    pub own: ClusterName,
    pub dialer: Arc<Dialer>,
    connectors: JoinSet<()>,
    running: BTreeMap<ClusterName, AbortHandle>,
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
        let plan = plan(mesh, &self.own);
        let mut changes = Changes::default();
        self.dialer.snapshot.send_modify(|snapshot| {
            let (next, found) = apply(snapshot, &plan, &mut self.next_connector);
            *snapshot = Arc::new(next);
            changes = found;
        });
        for (cluster, left) in changes.stop {
            if let Some(task) = self.running.remove(&cluster) {
                task.abort();
            }
            let labels = PeerLabels {
                peer_cluster: cluster.to_string(),
            };
            if left {
                self.dialer.metrics.tunnel_up.remove(&labels);
                tracing::info!(peer = %cluster, "peer left the mesh; tunnel closed");
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
            self.running.insert(peer.cluster, task);
        }
        if self.version != Some(mesh.version) {
            tracing::debug!(
                version = mesh.version,
                peers = self.running.len(),
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
            [(
                "api.demo".parse().unwrap(),
                vec![ServicePort {
                    port: 81,
                    protocol: Protocol::Http,
                }],
            )]
            .into(),
        );
        let plan = plan(&mesh, &name("east"));
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

    #[test]
    fn apply_starts_keeps_moves_and_stops_connectors() {
        let mut number = 0;
        let mut mesh = MeshSnapshot::default();
        mesh.clusters
            .extend([cluster("east", &[1]), cluster("west", &[2])]);
        let (first, changes) = apply(&initial(), &plan(&mesh, &name("east")), &mut number);
        assert_eq!(changes.start.len(), 1);
        assert_eq!(changes.start[0].0.address, addr(2));
        assert!(changes.stop.is_empty());
        assert_eq!(first.peers[&name("west")].connector, 1);
        assert_eq!(first.local_cluster, Some(name("east")));

        // A second gateway and declared exports: the dialled gateway is still there, so the
        // connector (and its tunnel) stays, and the declared exports win over fetched ones.
        mesh.clusters.extend([cluster("west", &[3, 2])]);
        mesh.exports
            .insert(name("west"), [("api.demo".parse().unwrap(), vec![])].into());
        let mut current = first.clone();
        current
            .peers
            .get_mut(&name("west"))
            .unwrap()
            .fetched
            .insert("old.demo".parse().unwrap(), vec![]);
        let (second, changes) = apply(&current, &plan(&mesh, &name("east")), &mut number);
        assert!(changes.start.is_empty() && changes.stop.is_empty());
        let west = &second.peers[&name("west")];
        assert_eq!(west.connector, 1);
        assert_eq!(
            west.exports()
                .keys()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["api.demo"]
        );

        // The dialled gateway is gone: a new connector dials the first remaining one.
        mesh.clusters.extend([cluster("west", &[3])]);
        let (third, changes) = apply(&second, &plan(&mesh, &name("east")), &mut number);
        assert_eq!(changes.stop, [(name("west"), false)]);
        assert_eq!(changes.start[0].0.address, addr(3));
        assert_eq!(third.peers[&name("west")].connector, 2);

        // West leaves.
        mesh.clusters.remove(&name("west"));
        let (fourth, changes) = apply(&third, &plan(&mesh, &name("east")), &mut number);
        assert_eq!(changes.stop, [(name("west"), true)]);
        assert!(changes.start.is_empty());
        assert!(fourth.peers.is_empty() && fourth.clusters_by_domain.is_empty());
    }
}
