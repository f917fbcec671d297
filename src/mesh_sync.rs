//! Carries what the store applies to the parts that act on it.
//!
//! ```text
//!  SharedMesh (applies entries) ── compiled MeshSnapshot ──► follow()
//!        ├─► merge with the config's seed ─► MeshFeed::publish ─► trust bundles, then data plane
//!        └─► members' Raft addresses ─► PeerTable ─► GrpcTransport (dial) + Raft server (accept)
//! ```
//!
//! The config file's peers and services stay a seed under the replicated state: the store's
//! clusters, services and exports win where both name the same thing.

use std::sync::Arc;

use api::raft::{GrpcTransport, PeerTable};
use federation::identity::SpiffeId;
use federation::mesh::MeshSnapshot;
use tokio::sync::watch;

use crate::seed::MeshFeed;

/// `compiled` laid over `seed`: the store's clusters replace the seed's of the same name; this
/// cluster's services are the seed's plus the store's (the store's win by name); exports per
/// cluster likewise; the route table and the security policy are the store's.
pub fn merge(seed: &MeshSnapshot, compiled: &MeshSnapshot) -> MeshSnapshot {
    let mut out = seed.clone();
    out.version = compiled.version;
    for (name, cluster) in &compiled.clusters {
        out.clusters.insert(name.clone(), cluster.clone());
    }
    for (cluster, services) in &compiled.services {
        let Some(merged) = out.services.get_mut(cluster) else {
            // The seed names no service of this cluster (every cluster but this one, and
            // this one when its services come from the store): shared as compiled.
            out.services.insert(cluster.clone(), services.clone());
            continue;
        };
        // Linear, not a search per service: with thousands of services this runs on every
        // applied write.
        let stored: std::collections::HashSet<&federation::model::ServiceKey> =
            services.iter().map(|s| &s.key).collect();
        merged.retain(|s| !stored.contains(&s.key));
        merged.extend(services.iter().cloned());
    }
    for (cluster, exports) in &compiled.exports {
        match out.exports.get_mut(cluster) {
            // The seed names exports of this cluster too: the store's win by name.
            Some(seeded) => {
                let merged = Arc::make_mut(seeded);
                for (key, ports) in exports.iter() {
                    merged.insert(key.clone(), ports.clone());
                }
            }
            // Shared as compiled: no copy of thousands of entries on every write.
            None => {
                out.exports.insert(cluster.clone(), exports.clone());
            }
        }
    }
    out.members = compiled.members.clone();
    // Traffic and security policy live only in the store.
    out.routes = compiled.routes.clone();
    out.security = compiled.security.clone();
    out
}

/// The Raft peers: the fixed ones (this node, `[store]` members, those a join answer named)
/// plus every member the state records. A member whose SPIFFE ID does not parse, or that
/// clashes with another, is left out and logged: the rest still talk.
pub fn peer_table(fixed: &[(u64, SpiffeId, String)], snapshot: &MeshSnapshot) -> PeerTable {
    let mut table = PeerTable::new();
    for (id, spiffe, addr) in fixed {
        if let Err(e) = table.insert(*id, spiffe.clone(), addr) {
            tracing::warn!(node = id, error = %e, "raft peer left out");
        }
    }
    for member in &snapshot.members {
        if fixed.iter().any(|(id, _, _)| *id == member.node_id) {
            continue;
        }
        let spiffe = match SpiffeId::parse(&member.spiffe_id) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(node = member.node_id, error = %e, "member's SPIFFE ID unusable");
                continue;
            }
        };
        if let Err(e) = table.insert(member.node_id, spiffe, &member.raft.to_string()) {
            tracing::warn!(node = member.node_id, error = %e, "raft peer left out");
        }
    }
    table
}

/// Follows the compiled snapshots until the state machine goes away: publishes each, merged
/// with the seed, to the data plane, and keeps the Raft peers in line with the members.
pub async fn follow(
    mut compiled: watch::Receiver<Arc<MeshSnapshot>>,
    seed: MeshSnapshot,
    feed: MeshFeed,
    fixed_peers: Vec<(u64, SpiffeId, String)>,
    transport: Arc<GrpcTransport>,
    peers: watch::Sender<PeerTable>,
) {
    loop {
        let snapshot = compiled.borrow_and_update().clone();
        feed.publish(merge(&seed, &snapshot));
        let table = peer_table(&fixed_peers, &snapshot);
        transport.set_peers(&table);
        peers.send_if_modified(|current| {
            let changed = *current != table;
            if changed {
                *current = table;
            }
            changed
        });
        if compiled.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use federation::mesh::{ClusterView, Member};
    use federation::model::{ClusterName, LocalService, Protocol, ServicePort};

    fn cluster(name: &str, gateway: &str) -> (ClusterName, ClusterView) {
        let name = ClusterName::new(name).unwrap();
        (
            name.clone(),
            ClusterView {
                name,
                trust_domain: "x.mesh".into(),
                trust_bundle: vec![],
                gateways: vec![gateway.parse().unwrap()],
                locality: None,
            },
        )
    }

    fn service(key: &str, port: u16) -> LocalService {
        LocalService {
            endpoint_labels: Default::default(),
            endpoint_accounts: Default::default(),
            key: key.parse().unwrap(),
            ports: vec![ServicePort {
                port,
                protocol: Protocol::Http,
            }],
            endpoints: vec![],
            export: true,
        }
    }

    #[test]
    fn the_store_wins_over_the_seed_and_keeps_what_only_the_seed_has() {
        let east = ClusterName::new("east").unwrap();
        let mut seed = MeshSnapshot::default();
        seed.clusters.extend([
            cluster("east", "127.0.0.1:1"),
            cluster("west", "127.0.0.2:1"),
        ]);
        seed.services.insert(
            east.clone(),
            vec![
                Arc::new(service("a.demo", 80)),
                Arc::new(service("b.demo", 80)),
            ],
        );
        let mut compiled = MeshSnapshot {
            version: 7,
            ..MeshSnapshot::default()
        };
        compiled.clusters.extend([
            cluster("west", "127.0.0.9:1"),
            cluster("edge", "127.0.0.3:1"),
        ]);
        compiled
            .services
            .insert(east.clone(), vec![Arc::new(service("b.demo", 8080))]);
        let merged = merge(&seed, &compiled);
        assert_eq!(merged.version, 7);
        assert_eq!(merged.clusters.len(), 3);
        assert_eq!(
            merged.clusters[&ClusterName::new("west").unwrap()].gateways,
            vec!["127.0.0.9:1".parse().unwrap()]
        );
        let services = &merged.services[&east];
        assert_eq!(services.len(), 2);
        let b = services
            .iter()
            .find(|s| s.key.to_string() == "b.demo")
            .unwrap();
        assert_eq!(b.ports[0].port, 8080);
        // Policy comes from the store alone, shared as compiled.
        assert!(Arc::ptr_eq(&merged.routes, &compiled.routes));
        assert!(Arc::ptr_eq(&merged.security, &compiled.security));
    }

    #[test]
    fn members_join_the_fixed_peers_and_bad_ones_are_left_out() {
        let own = SpiffeId::parse("spiffe://east.mesh/gateway/east-1").unwrap();
        let fixed = vec![(1, own, "127.0.0.1:15012".to_string())];
        let member = |id: u64, spiffe: &str| Member {
            node_id: id,
            cluster: ClusterName::new("west").unwrap(),
            name: "west-1".into(),
            spiffe_id: spiffe.into(),
            tunnel: "127.0.0.2:15443".parse().unwrap(),
            raft: "127.0.0.2:15012".parse().unwrap(),
            admin: "127.0.0.2:15000".parse().unwrap(),
        };
        let snapshot = MeshSnapshot {
            members: vec![
                member(1, "spiffe://east.mesh/gateway/east-1"),
                member(2, "spiffe://west.mesh/gateway/west-1"),
                member(3, "not a spiffe id"),
            ],
            ..MeshSnapshot::default()
        };
        let table = peer_table(&fixed, &snapshot);
        let mut ids: Vec<u64> = table.iter().map(|(id, _)| id).collect();
        ids.sort();
        assert_eq!(ids, vec![1, 2]);
    }
}
