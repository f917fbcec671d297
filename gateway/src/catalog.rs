//! What the data plane routes by: local services, peers, their tunnels and their exports.
//!
//! The [`Snapshot`] is immutable and published through a `watch` channel; a request clones the
//! `Arc` once and routes on it, so a change is one pointer swap and in-flight requests finish on
//! the snapshot they started with.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;

use federation::model::{ClusterName, LocalService, Protocol, ServiceKey, ServicePort};

use crate::dns::{DnsService, DnsTable};

#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    pub local_cluster: Option<ClusterName>,
    pub local: BTreeMap<ServiceKey, LocalService>,
    pub peers: BTreeMap<ClusterName, PeerView>,
}

#[derive(Clone)]
pub(crate) struct PeerView {
    /// The live tunnel, if any. Exports stay known while it is down so that callers learn *why*
    /// a service is unreachable instead of that it does not exist.
    pub conn: Option<quinn::Connection>,
    pub exports: BTreeMap<ServiceKey, Vec<ServicePort>>,
}

/// Where one request or connection may go.
#[derive(Clone)]
pub(crate) enum Target {
    Local(Arc<LocalService>),
    Remote {
        cluster: ClusterName,
        conn: quinn::Connection,
    },
}

impl Target {
    pub fn cluster<'a>(&'a self, local: &'a ClusterName) -> &'a ClusterName {
        match self {
            Target::Local(_) => local,
            Target::Remote { cluster, .. } => cluster,
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
    /// Every reachable target for `service`, and the port to ask for.
    ///
    /// `port` picks a port by number; otherwise the first port of `protocol` is used.
    pub fn targets(
        &self,
        service: &ServiceKey,
        protocol: Protocol,
        port: Option<u16>,
        only_cluster: Option<&ClusterName>,
    ) -> Result<(ServicePort, Vec<Target>), NoRoute> {
        let pick = |ports: &[ServicePort]| {
            ports
                .iter()
                .copied()
                .find(|p| p.protocol == protocol && port.is_none_or(|n| n == p.port))
        };
        let mut chosen = None;
        let mut known = false;
        let mut targets = Vec::new();
        let mut down = Vec::new();
        let wants = |c: &ClusterName| only_cluster.is_none_or(|o| o == c);

        if let (Some(local_cluster), Some(svc)) = (&self.local_cluster, self.local.get(service))
            && wants(local_cluster)
        {
            known = true;
            if let Some(p) = pick(&svc.ports) {
                chosen = Some(p);
                targets.push(Target::Local(Arc::new(svc.clone())));
            }
        }
        for (cluster, peer) in &self.peers {
            let Some(ports) = peer.exports.get(service) else {
                continue;
            };
            if !wants(cluster) {
                continue;
            }
            known = true;
            let Some(p) = pick(ports) else { continue };
            chosen.get_or_insert(p);
            match &peer.conn {
                Some(conn) if conn.close_reason().is_none() => targets.push(Target::Remote {
                    cluster: cluster.clone(),
                    conn: conn.clone(),
                }),
                _ => down.push(cluster.to_string()),
            }
        }
        match chosen {
            None if !known => Err(NoRoute::Unknown {
                service: service.clone(),
                cluster: only_cluster.cloned(),
            }),
            None => Err(NoRoute::NoPort {
                service: service.clone(),
                protocol,
            }),
            Some(_) if targets.is_empty() => Err(NoRoute::Unreachable {
                service: service.clone(),
                down,
            }),
            Some(p) => Ok((p, targets)),
        }
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
            for (key, ports) in &peer.exports {
                let entry = out.entry(key.clone()).or_default();
                entry.0.insert(cluster.clone());
                entry.1.extend(ports.iter().copied());
            }
        }
        out
    }

    /// TCP ports the outbound address must listen on, one per (service, port). The first
    /// service to claim a port number keeps it; the others are reported to the caller.
    pub fn tcp_ports(&self) -> (BTreeMap<u16, ServiceKey>, Vec<(ServiceKey, u16)>) {
        let mut ports = BTreeMap::new();
        let mut clashes = Vec::new();
        for (key, (_, svc_ports)) in self.services() {
            for p in svc_ports.iter().filter(|p| p.protocol == Protocol::Tcp) {
                match ports.get(&p.port) {
                    Some(owner) if owner != &key => clashes.push((key.clone(), p.port)),
                    _ => {
                        ports.insert(p.port, key.clone());
                    }
                }
            }
        }
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
