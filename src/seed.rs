//! The mesh as the config file describes it, and the feed that carries mesh snapshots (seeded
//! from the file, later compiled from the replicated store) to the data plane.
//!
//! ```text
//!  Config ── from_config ──► MeshSnapshot ── MeshFeed::publish ──► TrustStore (bundles first)
//!                                                              └─► watch<MeshSnapshot> ──► gateway
//! ```
//!
//! The file knows this cluster's services and, of each `[[peers]]` entry, its trust domain,
//! CA and gateway address, but not what the peer exports: the seed records no exports for
//! peers, and the data plane then routes on the catalog each peer sends over its tunnel.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use federation::identity::{IdentityError, TrustBundles, TrustDomain, TrustStore};
use federation::mesh::{ClusterView, MeshSnapshot};
use federation::model::ClusterName;
use rustls::pki_types::CertificateDer;
use tokio::sync::watch;

use crate::config::Config;

/// The snapshot the config describes: this cluster (trust domain, CA root `own_root`, gateway
/// at `tunnel`) with its services and exports, and each configured peer with its CA (read from
/// its bundle file) and gateway address.
pub fn from_config(
    config: &Config,
    own_root: CertificateDer<'static>,
    tunnel: SocketAddr,
) -> Result<MeshSnapshot, IdentityError> {
    let own_domain = TrustDomain::parse(&config.trust_domain)?;
    let mut snapshot = MeshSnapshot::default();
    snapshot.clusters.insert(
        config.cluster.clone(),
        ClusterView {
            name: config.cluster.clone(),
            trust_domain: own_domain.to_string(),
            trust_bundle: vec![own_root.to_vec()],
            gateways: vec![tunnel],
            locality: None,
        },
    );
    for peer in &config.peers {
        let td = TrustDomain::parse(&peer.trust_domain)?;
        // Loading checks that the file holds usable CA certificates, naming it if not.
        let mut bundles = TrustBundles::new();
        bundles.load_pem_file(td.clone(), &peer.trust_bundle)?;
        let roots = bundles.roots(&td).unwrap_or_default();
        snapshot.clusters.insert(
            peer.cluster.clone(),
            ClusterView {
                name: peer.cluster.clone(),
                trust_domain: td.to_string(),
                trust_bundle: roots.iter().map(|r| r.to_vec()).collect(),
                gateways: vec![peer.address],
                locality: None,
            },
        );
    }
    let exports = config
        .services
        .iter()
        .filter(|s| s.export)
        .map(|s| (s.key.clone(), s.ports.clone()))
        .collect();
    snapshot.services.insert(
        config.cluster.clone(),
        config.services.iter().cloned().map(Arc::new).collect(),
    );
    snapshot
        .exports
        .insert(config.cluster.clone(), Arc::new(exports));
    Ok(snapshot)
}

/// `snapshot` with what a join answer says: every cluster with its CA and the tunnel addresses
/// of its gateways, so this gateway trusts and reaches the others before its own copy of the
/// state has caught up. Clusters whose bundle does not parse are left out (and logged).
pub fn with_join_answer(
    mut snapshot: MeshSnapshot,
    joined: &api::client::JoinResponse,
) -> MeshSnapshot {
    for cluster in &joined.clusters {
        let parsed = TrustDomain::parse(&cluster.trust_domain).and_then(|td| {
            let mut bundles = TrustBundles::new();
            bundles.insert_pem(td.clone(), &cluster.trust_bundle)?;
            Ok(bundles
                .roots(&td)
                .unwrap_or_default()
                .iter()
                .map(|c| c.to_vec())
                .collect::<Vec<_>>())
        });
        let trust_bundle = match parsed {
            Ok(roots) => roots,
            Err(e) => {
                tracing::warn!(cluster = %cluster.name, error = %e, "trust bundle in the join answer unusable; left out");
                continue;
            }
        };
        let gateways = joined
            .members
            .iter()
            .filter(|m| m.cluster == cluster.name)
            .map(|m| m.tunnel)
            .collect();
        snapshot.clusters.insert(
            cluster.name.clone(),
            ClusterView {
                name: cluster.name.clone(),
                trust_domain: cluster.trust_domain.clone(),
                trust_bundle,
                gateways,
                locality: None,
            },
        );
    }
    snapshot
}

/// `snapshot` with `cluster`'s gateway at `tunnel` (the address bound, when the config said
/// port 0).
pub fn with_tunnel(
    mut snapshot: MeshSnapshot,
    cluster: &ClusterName,
    tunnel: SocketAddr,
) -> MeshSnapshot {
    if let Some(own) = snapshot.clusters.get_mut(cluster) {
        own.gateways = vec![tunnel];
    }
    snapshot
}

/// Every cluster's CA roots, by trust domain, plus `always` (roots trusted whatever the mesh
/// says, e.g. this cluster's own CA before the store knows the cluster). A cluster with an
/// invalid trust domain is skipped: the data plane does not peer with it either.
pub fn trust_bundles(snapshot: &MeshSnapshot, always: &TrustBundles) -> TrustBundles {
    let mut roots: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>> = BTreeMap::new();
    for cluster in snapshot.clusters.values() {
        match TrustDomain::parse(&cluster.trust_domain) {
            Ok(td) => roots.entry(td).or_default().extend(
                cluster
                    .trust_bundle
                    .iter()
                    .map(|der| CertificateDer::from(der.clone())),
            ),
            Err(e) => {
                tracing::error!(cluster = %cluster.name, error = %e, "cluster has an invalid trust domain; not trusting it")
            }
        }
    }
    for td in always.domains() {
        roots
            .entry(td.clone())
            .or_default()
            .extend(always.roots(td).unwrap_or_default().iter().cloned());
    }
    let mut bundles = TrustBundles::new();
    for (td, mut certs) in roots {
        certs.sort_by(|a, b| a.as_ref().cmp(b.as_ref()));
        certs.dedup();
        bundles.insert(td, certs);
    }
    bundles
}

/// Where mesh snapshots enter the data plane, with the trust bundles that go with them.
#[derive(Clone)]
pub struct MeshFeed {
    pub mesh: watch::Sender<Arc<MeshSnapshot>>,
    /// Read by every tunnel and Raft handshake.
    pub trust: TrustStore,
    /// Trusted whatever a snapshot says: this cluster's own CA (replaced when it rotates).
    always: Arc<std::sync::RwLock<TrustBundles>>,
}

impl MeshFeed {
    pub fn new(snapshot: MeshSnapshot, always: TrustBundles) -> Self {
        let trust = TrustStore::new(trust_bundles(&snapshot, &always));
        let (mesh, _) = watch::channel(Arc::new(snapshot));
        Self {
            mesh,
            trust,
            always: Arc::new(std::sync::RwLock::new(always)),
        }
    }

    /// Trusts `always` whatever a snapshot says from now on (this cluster's CA switched), and
    /// puts the current snapshot in force again with it.
    pub fn set_always(&self, always: TrustBundles) {
        *self.always.write().unwrap_or_else(|e| e.into_inner()) = always;
        let current = (**self.mesh.borrow()).clone();
        self.publish(current);
    }

    /// Puts `snapshot` in force: first its trust bundles, so that a tunnel to a cluster that
    /// just joined is trusted by the time the data plane dials it; then the snapshot itself.
    pub fn publish(&self, snapshot: MeshSnapshot) {
        let always = self
            .always
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        self.trust.replace(trust_bundles(&snapshot, &always));
        self.mesh.send_replace(Arc::new(snapshot));
    }
}

#[cfg(test)]
mod tests {
    use federation::identity::CertificateAuthority;
    use federation::model::{LocalService, Protocol, ServicePort};

    use super::*;
    use crate::config::{Overrides, PeerConfig};

    fn defaults() -> Config {
        Config::from_toml_str(
            "",
            std::path::Path::new("/nonexistent"),
            &Overrides::default(),
        )
        .unwrap()
    }

    fn service(key: &str, export: bool) -> LocalService {
        LocalService {
            endpoint_labels: Default::default(),
            endpoint_accounts: Default::default(),
            key: key.parse().unwrap(),
            ports: vec![ServicePort {
                port: 8080,
                protocol: Protocol::Http,
            }],
            endpoints: vec![SocketAddr::from(([127, 0, 0, 1], 9000))],
            export,
        }
    }

    #[test]
    fn config_becomes_own_cluster_peers_services_and_exports() {
        let dir = tempfile::tempdir().unwrap();
        let td = |s: &str| TrustDomain::parse(s).unwrap();
        let east = CertificateAuthority::load_or_create(&dir.path().join("east"), &td("east.mesh"))
            .unwrap();
        let west = CertificateAuthority::load_or_create(&dir.path().join("west"), &td("west.mesh"))
            .unwrap();
        let bundle = dir.path().join("west.pem");
        std::fs::write(&bundle, west.bundle_pem()).unwrap();

        let mut config = defaults();
        config.cluster = ClusterName::new("east").unwrap();
        config.trust_domain = "east.mesh".into();
        config.services = vec![service("web.demo", true), service("db.demo", false)];
        let west_addr = SocketAddr::from(([127, 0, 0, 2], 15008));
        config.peers = vec![PeerConfig {
            cluster: ClusterName::new("west").unwrap(),
            trust_domain: "west.mesh".into(),
            address: west_addr,
            trust_bundle: bundle,
        }];
        let tunnel = SocketAddr::from(([127, 0, 0, 1], 15008));
        let snapshot = from_config(&config, east.root_der(), tunnel).unwrap();

        let east_name = ClusterName::new("east").unwrap();
        let west_name = ClusterName::new("west").unwrap();
        let own = &snapshot.clusters[&east_name];
        assert_eq!(own.trust_domain, "east.mesh");
        assert_eq!(own.gateways, [tunnel]);
        assert_eq!(own.trust_bundle, [east.root_der().to_vec()]);
        let peer = &snapshot.clusters[&west_name];
        assert_eq!(peer.gateways, [west_addr]);
        assert_eq!(peer.trust_bundle, [west.root_der().to_vec()]);
        assert_eq!(snapshot.services[&east_name].len(), 2);
        let exported: Vec<_> = snapshot.exports[&east_name]
            .keys()
            .map(ToString::to_string)
            .collect();
        assert_eq!(exported, ["web.demo"]);
        // The file does not know what peers export: their catalogs will say.
        assert!(!snapshot.exports.contains_key(&west_name));
        assert!(!snapshot.services.contains_key(&west_name));

        let bound = SocketAddr::from(([127, 0, 0, 1], 40000));
        let moved = with_tunnel(snapshot.clone(), &east_name, bound);
        assert_eq!(moved.clusters[&east_name].gateways, [bound]);

        // Trust follows the snapshot; the own CA stays trusted even if a snapshot forgets it.
        let mut always = TrustBundles::new();
        always.insert(td("east.mesh"), vec![east.root_der()]);
        let feed = MeshFeed::new(snapshot.clone(), always);
        let trusted = feed.trust.current();
        assert_eq!(trusted.roots(&td("east.mesh")).unwrap(), [east.root_der()]);
        assert_eq!(trusted.roots(&td("west.mesh")).unwrap(), [west.root_der()]);
        let mut without = snapshot;
        without.clusters.clear();
        let mut rx = feed.mesh.subscribe();
        feed.publish(without);
        assert!(rx.has_changed().unwrap());
        assert!(rx.borrow_and_update().clusters.is_empty());
        let trusted = feed.trust.current();
        assert!(trusted.roots(&td("west.mesh")).is_none());
        assert_eq!(trusted.roots(&td("east.mesh")).unwrap(), [east.root_der()]);
    }

    #[test]
    fn unreadable_peer_bundles_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = defaults();
        config.peers = vec![PeerConfig {
            cluster: ClusterName::new("west").unwrap(),
            trust_domain: "west.mesh".into(),
            address: SocketAddr::from(([127, 0, 0, 2], 15008)),
            trust_bundle: dir.path().join("missing.pem"),
        }];
        let root = CertificateDer::from(vec![1, 2, 3]);
        let err = from_config(&config, root, SocketAddr::from(([127, 0, 0, 1], 1))).unwrap_err();
        assert!(err.to_string().contains("missing.pem"), "{err}");
    }
}
