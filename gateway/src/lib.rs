//! Causeway's data plane: QUIC tunnels between gateways, the outbound listeners local clients
//! call, the tunnel inbound that reaches local endpoints, and DNS for the mesh zone.
//!
//! ```text
//!  local client --HTTP by Host / TCP port--> outbound --QUIC stream + preamble--> peer inbound --> endpoint
//!                         DNS: <svc>.<ns>[.<cluster>].mesh -> outbound address
//! ```
//!
//! The data plane never waits on the control plane: it routes on an immutable [`Snapshot`]
//! swapped in through a `watch` channel, and takes its certificate the same way. The mesh
//! itself (clusters, their gateways, services, exports) arrives as a [`MeshSnapshot`] through
//! another `watch`; `follow` turns each one into the routing snapshot and starts or stops
//! tunnels, so clusters and services come and go without restarts. Trust bundles are read
//! from a shared [`TrustStore`] on every handshake; its owner keeps it in step with the mesh.
//!
//! [`Snapshot`]: catalog::Snapshot
#![forbid(unsafe_code)]

mod catalog;
pub mod dns;
pub mod drain;
mod early;
mod endpoints;
mod follow;
mod forward;
mod guard;
mod http;
mod inbound;
mod listen;
mod long_line;
pub mod metrics;
mod mirror;
mod outbound;
pub(crate) mod policy;
mod pool;
pub mod preamble;
mod quota;
#[doc(hidden)]
pub mod routing; // public for benches/policy.rs only
mod spin;
mod tunnel;
mod workload;

/// The QUIC application close code of a gateway that shuts down. It closes its endpoint only
/// after every accepted stream finished, so a peer may replay a request that got no verdict.
pub(crate) const SHUTDOWN_CLOSE_CODE: u32 = 0;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use federation::identity::{IdentityError, Svid, TrustDomain, TrustStore};
use federation::mesh::MeshSnapshot;
use federation::model::ClusterName;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use inbound::{SOURCE_CLUSTER_HEADER, SOURCE_PRINCIPAL_HEADER};
pub use listen::ClientLimits;
pub use tunnel::{ask_switch, hand_next_ca, probe};

/// What this gateway does when another gateway of its cluster hands over the cluster's next CA
/// or asks it to switch to it (a CA rotation; the binary's `rotation.rs` implements it).
pub trait CaHandoff: Send + Sync + std::fmt::Debug {
    /// Keeps the next CA (certificate and key, PEM) beside the current one.
    fn accept_next(&self, certificate_pem: &str, key_pem: &str) -> Result<(), String>;
    /// Switches issuance to the next CA; answers the latest expiry of what the old one signed
    /// here.
    fn switch(&self) -> Result<std::time::SystemTime, String>;
}

use crate::catalog::Snapshot;
use crate::follow::Follower;
use crate::metrics::Metrics;

/// A rate-limit demand report's size limit: 10,000 keys of up to 1 KiB would be more, but a
/// report that large means a peer with runaway descriptor values; it is refused whole.
const QUOTA_REPORT_MAX_BYTES: usize = 1 << 20;

/// DNS-over-TCP connections open at once (clients mostly use UDP; TCP is for truncated
/// answers, which the mesh zone's small answers rarely need).
const DNS_TCP_MAX_CONNECTIONS: usize = 512;

/// Tunnel tuning, from the `[tunnel]` config section.
#[derive(Debug, Clone)]
pub struct TunnelSettings {
    pub keep_alive: Duration,
    pub idle_timeout: Duration,
    /// Bounds a handshake, and each step of opening a stream (preamble in, verdict back).
    pub connect_timeout: Duration,
    pub reconnect_backoff_max: Duration,
    pub max_streams: u32,
    pub max_preamble_bytes: u16,
}

/// One gateway of a peer cluster, dialled and kept connected by one connector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peer {
    pub cluster: ClusterName,
    pub trust_domain: TrustDomain,
    pub address: SocketAddr,
}

/// What the data plane is, as opposed to what the mesh is (that comes as [`MeshSnapshot`]s).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This gateway's cluster: its services are served locally, the others' through tunnels.
    pub cluster: ClusterName,
    pub tunnel_addr: SocketAddr,
    pub outbound_addr: SocketAddr,
    pub dns_addr: SocketAddr,
    pub tunnel: TunnelSettings,
    pub drain_timeout: Duration,
    /// How long the data plane keeps polling instead of sleeping while an answer from a peer
    /// gateway or a local endpoint is awaited (see `spin`); zero sleeps at once.
    pub busy_poll: Duration,
    /// Limits on local clients' connections (outbound listener, TCP service ports).
    pub clients: ClientLimits,
    /// Where workloads of this cluster call over mutual TLS with their SVID (15008); none:
    /// not served.
    pub workload_addr: Option<SocketAddr>,
    /// Attribute a plaintext client to the workload registered at its source address (the
    /// cluster trusts its node network, as ztunnel does).
    pub attribute_by_address: bool,
    /// The mesh's root namespace (mesh-wide PeerAuthentication and AuthorizationPolicy).
    pub root_namespace: String,
    /// Takes the cluster's next CA from another gateway of the cluster during a rotation;
    /// none: such hand-overs are refused.
    pub ca_handoff: Option<Arc<dyn CaHandoff>>,
}

/// The tunnel to one gateway of a peer cluster, for status reports (a cluster with several
/// gateways has one each).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelStatus {
    pub cluster: ClusterName,
    /// The peer gateway dialled.
    pub address: SocketAddr,
    /// Established, with the peer's catalog read.
    pub up: bool,
}

/// Where the data plane is listening; with port 0 in the config these are the real ports.
#[derive(Debug, Clone, Copy)]
pub struct BoundAddrs {
    pub tunnel: SocketAddr,
    pub outbound: SocketAddr,
    pub dns_udp: SocketAddr,
    pub dns_tcp: SocketAddr,
    /// The workload mTLS listener, where one is configured.
    pub workload: Option<SocketAddr>,
}

/// Why the data plane could not start or a tunnel operation failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A listener could not bind its address.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A setting the data plane cannot use.
    #[error("invalid setting: {0}")]
    Config(String),
    /// The certificate or trust bundles could not form a TLS config.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// rustls refused the TLS config for QUIC.
    #[error("TLS config unusable for QUIC: {0}")]
    Tls(String),
    /// A tunnel could not be dialled or used.
    #[error("tunnel: {0}")]
    Tunnel(String),
    /// A frame on a tunnel stream could not be read or written.
    #[error("tunnel stream: {0}")]
    Frame(#[from] preamble::FrameError),
    /// The peer refused a stream.
    #[error("refused by peer ({}): {}", .0.as_label(), .1)]
    Refused(preamble::VerdictCode, String),
}

/// A running data plane. Drop it only after [`Gateway::shutdown`].
pub struct Gateway {
    addrs: BoundAddrs,
    endpoint: quinn::Endpoint,
    server_identity: tunnel::ServerIdentity,
    trigger: drain::Trigger,
    tasks: JoinSet<()>,
    drain_timeout: Duration,
    dns_stop: tokio::sync::oneshot::Sender<()>,
    tunnels: watch::Receiver<Vec<TunnelStatus>>,
}

impl Gateway {
    /// Binds every listener, then starts serving. Must run inside the data plane's runtime.
    ///
    /// Peers, services and exports follow `mesh` from here on (its current value included);
    /// `trust` is read on every tunnel handshake, and its owner keeps it in step with `mesh`
    /// (updated before a snapshot naming a new cluster is sent, so the first dial succeeds).
    pub async fn start(
        settings: Settings,
        svid: watch::Receiver<Arc<Svid>>,
        trust: TrustStore,
        mut mesh: watch::Receiver<Arc<MeshSnapshot>>,
        metrics: Metrics,
    ) -> Result<Self, GatewayError> {
        let transport = tunnel::transport(&settings.tunnel)?;
        let server_config = tunnel::server_config(&svid.borrow(), &trust, &transport)?;
        let socket = std::net::UdpSocket::bind(settings.tunnel_addr).map_err(|source| {
            GatewayError::Bind {
                what: "tunnel (UDP)",
                addr: settings.tunnel_addr,
                source,
            }
        })?;
        // quinn enables GSO/GRO on this socket where the kernel offers them.
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(server_config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| GatewayError::Bind {
            what: "tunnel (UDP)",
            addr: settings.tunnel_addr,
            source,
        })?;
        let tunnel_addr = endpoint.local_addr().map_err(|source| GatewayError::Bind {
            what: "tunnel (UDP)",
            addr: settings.tunnel_addr,
            source,
        })?;
        let outbound_listener = bind_tcp("outbound", settings.outbound_addr).await?;
        let outbound_addr = local_addr("outbound", &outbound_listener, settings.outbound_addr)?;
        if settings.clients.max_connections == 0 {
            return Err(GatewayError::Config(
                "max_client_connections must be at least 1".into(),
            ));
        }
        let max_clients = listen::fd_bounded(
            settings.clients.max_connections,
            DNS_TCP_MAX_CONNECTIONS,
            listen::open_files_limit(),
        );
        if max_clients < settings.clients.max_connections {
            tracing::warn!(
                configured = settings.clients.max_connections,
                using = max_clients,
                fd_limit = listen::open_files_limit(),
                "max_client_connections leaves too few file descriptors for the rest of the gateway (raise ulimit -n); lowered"
            );
        }
        let slots = listen::Slots::new(max_clients);
        let outbound_listener = listen::Listener::new(
            outbound_listener,
            listen::Kind::OutboundHttp,
            slots.clone(),
            metrics.clone(),
        );
        let dns_udp = tokio::net::UdpSocket::bind(settings.dns_addr)
            .await
            .map_err(|source| GatewayError::Bind {
                what: "DNS (UDP)",
                addr: settings.dns_addr,
                source,
            })?;
        let dns_udp_addr = dns_udp.local_addr().map_err(|source| GatewayError::Bind {
            what: "DNS (UDP)",
            addr: settings.dns_addr,
            source,
        })?;
        // With port 0, DNS gets one port number for UDP and TCP where the OS allows it.
        let dns_tcp_want = SocketAddr::new(settings.dns_addr.ip(), dns_udp_addr.port());
        let dns_tcp = match bind_tcp("DNS (TCP)", dns_tcp_want).await {
            Ok(l) => l,
            Err(_) if settings.dns_addr.port() == 0 => {
                bind_tcp("DNS (TCP)", settings.dns_addr).await?
            }
            Err(e) => return Err(e),
        };
        let dns_tcp_addr = local_addr("DNS (TCP)", &dns_tcp, settings.dns_addr)?;
        // DNS over TCP has its own budget: a flood of DNS clients must not take the outbound
        // listener's slots, nor the other way round.
        let dns_tcp = listen::Listener::new(
            dns_tcp,
            listen::Kind::DnsTcp,
            listen::Slots::new(DNS_TCP_MAX_CONNECTIONS),
            metrics.clone(),
        );

        // Empty until the follower below reads the mesh, before anything serves.
        let snapshot = Snapshot {
            local_cluster: Some(settings.cluster.clone()),
            ..Snapshot::default()
        };
        let (snapshot_tx, snapshot_rx) = watch::channel(Arc::new(snapshot));
        let (trigger, drain) = drain::channel();
        let mut tasks = JoinSet::new();

        let spinner = spin::Spinner::new(settings.busy_poll);
        tasks.spawn(spinner.clone().run());
        let endpoints = pool::Pool::new(settings.tunnel.connect_timeout, spinner.clone());
        // Traffic policy state of both sides, kept across snapshots (`policy::state`).
        let policy_state = Arc::new(policy::state::PolicyState::new());
        let inbound = Arc::new(inbound::Inbound {
            cluster: settings.cluster.clone(),
            pool: endpoints.clone(),
            preamble_timeout: settings.tunnel.connect_timeout,
            snapshot: snapshot_rx.clone(),
            max_preamble_bytes: usize::from(settings.tunnel.max_preamble_bytes),
            max_quota_bytes: QUOTA_REPORT_MAX_BYTES,
            metrics: metrics.clone(),
            next_endpoint: AtomicUsize::new(0),
            policy: policy_state.clone(),
            root_namespace: settings.root_namespace.clone(),
            denials: listen::Throttled::new(|s| tracing::info!("streams and requests denied: {s}")),
            own_domain: svid.borrow().id().trust_domain().clone(),
            own_id: svid.borrow().id().clone(),
            ca_handoff: settings.ca_handoff.clone(),
        });
        tasks.spawn(inbound::accept_loop(
            endpoint.clone(),
            inbound,
            drain.clone(),
        ));
        let server_identity = tunnel::ServerIdentity::new(endpoint.clone());
        tasks.spawn(tunnel::rotate_server_identity(
            server_identity.clone(),
            svid.clone(),
            trust.clone(),
            transport.clone(),
            drain.clone(),
        ));

        let workload_tls = match settings.workload_addr {
            Some(_) => Some(Arc::new(workload::Tls::new(svid.clone(), trust.clone())?)),
            None => None,
        };
        let dialer = Arc::new(tunnel::Dialer {
            endpoint: endpoint.clone(),
            svid: svid.clone(),
            trust,
            transport,
            settings: settings.tunnel.clone(),
            snapshot: snapshot_tx,
            metrics: metrics.clone(),
        });
        let siblings = Arc::new(quota::Siblings {
            own: settings.cluster.clone(),
            own_tunnel: tunnel_addr,
            mesh: mesh.clone(),
            dialer: dialer.clone(),
            conns: Arc::default(),
        });
        let mut follower = Follower::new(settings.cluster.clone(), dialer);
        let first = mesh.borrow_and_update().clone();
        follower.follow(&first, &drain);
        tasks.spawn(follower.run(mesh, drain.clone()));

        let own_domain = svid.borrow().id().trust_domain().clone();
        let outbound = Arc::new(outbound::Outbound {
            cluster: settings.cluster.clone(),
            pool: endpoints,
            spinner,
            verdict_timeout: settings.tunnel.connect_timeout,
            stall_hold: settings.tunnel.idle_timeout,
            snapshot: snapshot_rx.clone(),
            svid,
            metrics,
            next_target: AtomicUsize::new(0),
            next_endpoint: AtomicUsize::new(0),
            limits: settings.clients,
            slots,
            policy: policy_state,
            mirrors: Arc::new(tokio::sync::Semaphore::new(mirror::MAX_MIRRORS_IN_FLIGHT)),
            attribute_by_address: settings.attribute_by_address,
        });
        tasks.spawn(quota::run(
            snapshot_rx.clone(),
            outbound.policy.clone(),
            outbound.svid.clone(),
            settings.tunnel.connect_timeout,
            siblings,
            drain.signal(),
        ));
        tasks.spawn(forward::forget_departed(
            outbound.policy.clone(),
            snapshot_rx.clone(),
            drain.clone(),
        ));
        tasks.spawn(outbound::serve_http(
            outbound_listener,
            outbound.clone(),
            drain.clone(),
        ));
        let workload_addr = match (settings.workload_addr, workload_tls) {
            (Some(addr), Some(tls)) => {
                let listener = bind_tcp("workload (mTLS)", addr).await?;
                let bound = local_addr("workload (mTLS)", &listener, addr)?;
                let listener = listen::Listener::new(
                    listener,
                    listen::Kind::Workload,
                    outbound.slots.clone(),
                    outbound.metrics.clone(),
                );
                tasks.spawn(workload::serve(
                    listener,
                    tls,
                    own_domain,
                    outbound.clone(),
                    settings.tunnel.connect_timeout,
                    drain.clone(),
                ));
                Some(bound)
            }
            _ => None,
        };
        tasks.spawn(outbound::run_tcp_listeners(
            outbound,
            outbound_addr.ip(),
            drain.clone(),
        ));

        let (tunnels_tx, tunnels) = watch::channel(tunnel_status(&snapshot_rx.borrow()));
        tasks.spawn(publish_tunnels(
            snapshot_rx.clone(),
            tunnels_tx,
            drain.signal(),
        ));
        let (dns_tx, dns_rx) = watch::channel(
            snapshot_rx
                .borrow()
                .dns_table(outbound_addr.ip(), outbound_addr.port()),
        );
        tasks.spawn(publish_dns(
            snapshot_rx,
            dns_tx,
            outbound_addr,
            drain.clone(),
        ));
        let (dns_stop, dns_stopped) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn(async move {
            let stopped = async move {
                let _ = dns_stopped.await;
            };
            if let Err(e) = dns::serve(dns_udp, dns_tcp, dns_rx, stopped).await {
                tracing::error!(error = %e, "DNS server failed");
            }
        });
        drop(drain);

        let addrs = BoundAddrs {
            tunnel: tunnel_addr,
            outbound: outbound_addr,
            dns_udp: dns_udp_addr,
            dns_tcp: dns_tcp_addr,
            workload: workload_addr,
        };
        Ok(Self {
            addrs,
            endpoint,
            server_identity,
            trigger,
            tasks,
            drain_timeout: settings.drain_timeout,
            dns_stop,
            tunnels,
        })
    }

    pub fn addrs(&self) -> BoundAddrs {
        self.addrs
    }

    /// Every peer's tunnel, by cluster name; changes as tunnels come up and go down and as
    /// peers join and leave. Stays readable (last state) after shutdown.
    pub fn tunnels(&self) -> watch::Receiver<Vec<TunnelStatus>> {
        self.tunnels.clone()
    }

    /// Stops accepting, lets in-flight streams and requests finish until the drain deadline,
    /// then closes the QUIC endpoint (peers see an explicit close, not a timeout).
    pub async fn shutdown(self) {
        let Self {
            endpoint,
            server_identity,
            trigger,
            mut tasks,
            drain_timeout,
            dns_stop,
            ..
        } = self;
        // New tunnel handshakes are refused from here on, even if a rotation is under way.
        server_identity.close();
        let _ = dns_stop.send(());
        match tokio::time::timeout(drain_timeout, trigger.drain()).await {
            Ok(()) => tracing::info!("drained: every in-flight stream finished"),
            Err(_) => tracing::warn!(
                ?drain_timeout,
                "drain deadline passed; closing the remaining streams"
            ),
        }
        endpoint.close(SHUTDOWN_CLOSE_CODE.into(), b"gateway shutting down");
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
) -> Result<tokio::net::TcpListener, GatewayError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| GatewayError::Bind { what, addr, source })
}

fn local_addr(
    what: &'static str,
    l: &tokio::net::TcpListener,
    addr: SocketAddr,
) -> Result<SocketAddr, GatewayError> {
    l.local_addr()
        .map_err(|source| GatewayError::Bind { what, addr, source })
}

/// Rebuilds the DNS table whenever the routing snapshot changes.
async fn publish_dns(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    dns: watch::Sender<dns::DnsTable>,
    outbound: SocketAddr,
    drain: drain::Watch,
) {
    let mut last: Option<Arc<Snapshot>> = None;
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let snapshot = snapshots.borrow_and_update().clone();
        // Most writes change no service or export (policy, tokens, ...): nothing to rebuild.
        if last.as_ref().is_some_and(|l| l.same_catalog(&snapshot)) {
            continue;
        }
        let table = snapshot.dns_table(outbound.ip(), outbound.port());
        last = Some(snapshot);
        dns.send_if_modified(|current| {
            let changed = *current != table;
            *current = table;
            changed
        });
    }
}

fn tunnel_status(snapshot: &Snapshot) -> Vec<TunnelStatus> {
    snapshot
        .peers
        .iter()
        .flat_map(|(cluster, view)| {
            view.gateways.iter().map(|slot| TunnelStatus {
                cluster: cluster.clone(),
                address: slot.address,
                up: slot.live().is_some(),
            })
        })
        .collect()
}

/// Republishes the tunnels' state whenever the routing snapshot changes. Holds no drain watch:
/// status must not delay a drain.
async fn publish_tunnels(
    mut snapshots: watch::Receiver<Arc<Snapshot>>,
    tunnels: watch::Sender<Vec<TunnelStatus>>,
    drain: drain::Signal,
) {
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            changed = snapshots.changed() => if changed.is_err() { return },
        }
        let status = tunnel_status(&snapshots.borrow_and_update());
        tunnels.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }
}
