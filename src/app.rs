//! The composition root: turns a [`Config`] into running parts and returns where they listen.
//!
//! ```text
//!  control runtime (caller's)            data plane runtime (own thread)
//!   admin API  /metrics /readyz            gateway: tunnels, outbound, inbound, DNS
//!   identity owner --watch<Svid>-------->  (reads the newest SVID on every handshake)
//!   store (optional, `[store]`):
//!     raft node task (sled at <data_dir>/raft, MeshLog)
//!     raft gRPC server (listen.raft, mTLS) ──► node inbox
//!     GrpcTransport ──► other members' listen.raft
//!     status watcher: logs leader changes, releases the "store" readiness blocker
//! ```
//!
//! Every port is bound before `build` returns, so with port 0 the caller learns the real
//! addresses from [`Bound`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use api::raft::{ClientTls, GrpcTransport, PeerTable};
use federation::identity::{Svid, TrustBundles, TrustDomain};
use gateway::{BoundAddrs, Gateway};
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::config::{Config, StoreSettings};
use crate::identity::IdentityOwner;
use crate::replicated::MeshLog;

/// How long a leader that is shutting down waits for a voter to take over before it stops anyway.
const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Raft server may take to finish its calls in flight at shutdown.
const RAFT_SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the status watcher asks the node where it stands.
const STORE_STATUS_INTERVAL: Duration = Duration::from_millis(100);

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The trust domain, gateway name or a peer's trust domain is not a valid identity.
    #[error("identity: {0}")]
    Identity(#[from] federation::identity::IdentityError),
    /// The data plane could not start (usually a port already in use).
    #[error("data plane: {0}")]
    Gateway(#[from] gateway::GatewayError),
    /// The admin listener could not bind.
    #[error("cannot listen on admin {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The data plane thread or runtime could not start.
    #[error("cannot start the data plane: {0}")]
    Runtime(std::io::Error),
    /// The Raft listener could not bind.
    #[error("cannot listen on raft {addr}: {source}")]
    RaftBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The Raft log in the data dir could not be opened, or the node could not start on it.
    #[error("store: {0}")]
    Store(#[from] store::StoreError),
    /// A store member cannot be a Raft peer (e.g. two members share a SPIFFE ID).
    #[error("raft transport: {0}")]
    RaftTransport(#[from] api::raft::RaftTransportError),
}

/// A running gateway: its bound addresses and the means to stop it.
pub struct Bound {
    pub admin: SocketAddr,
    pub gateway: BoundAddrs,
    store: Option<StoreParts>,
    dataplane_stop: oneshot::Sender<()>,
    dataplane_done: oneshot::Receiver<()>,
    control_stop: watch::Sender<bool>,
    control_tasks: JoinSet<()>,
    readiness: api::Readiness,
}

impl Bound {
    /// Graceful stop: readiness goes red; a leading store hands leadership to another voter
    /// (bounded) and stops with its Raft server; the data plane drains (bounded by its
    /// deadline); then the admin API and the identity owner stop.
    pub async fn shutdown(self) {
        let _draining = self.readiness.block("shutdown");
        if let Some(store) = self.store {
            store.shutdown().await;
        }
        let _ = self.dataplane_stop.send(());
        let _ = self.dataplane_done.await;
        let _ = self.control_stop.send(true);
        let mut tasks = self.control_tasks;
        while tasks.join_next().await.is_some() {}
    }
}

pub async fn build(config: Config) -> Result<Bound, AppError> {
    let readiness = api::Readiness::new();
    let identity_ready = readiness.block("identity");
    let listeners_ready = readiness.block("listeners");

    let mut registry = Registry::default();
    let metrics_root = registry.sub_registry_with_prefix("causeway");

    let trust_domain = TrustDomain::parse(&config.trust_domain)?;
    let (owner, svid) = IdentityOwner::start(
        &config.data_dir,
        &trust_domain,
        &config.name,
        config.identity.svid_ttl,
        metrics_root,
    )?;
    tracing::info!(id = %svid.borrow().id(), not_after = %humantime::format_rfc3339_seconds(svid.borrow().not_after()), "identity ready");
    identity_ready.ready();

    // Our own root is trusted too: later, agents and other gateways of this cluster present it.
    let mut bundles = TrustBundles::new();
    bundles.insert(trust_domain.clone(), vec![owner.ca().root_der()]);
    let mut peers = Vec::with_capacity(config.peers.len());
    for p in &config.peers {
        let td = TrustDomain::parse(&p.trust_domain)?;
        bundles.load_pem_file(td.clone(), &p.trust_bundle)?;
        peers.push(gateway::Peer {
            cluster: p.cluster.clone(),
            trust_domain: td,
            address: p.address,
        });
    }
    let gateway_metrics = gateway::metrics::Metrics::register(metrics_root);
    let raft_metrics = config
        .store
        .as_ref()
        .map(|_| store::RaftMetrics::register(metrics_root));
    let registry = Arc::new(registry);
    let bundles = Arc::new(bundles);
    let store_svid = svid.clone();

    let settings = gateway::Settings {
        cluster: config.cluster.clone(),
        tunnel_addr: config.listen.tunnel,
        outbound_addr: config.listen.outbound,
        dns_addr: config.listen.dns,
        tunnel: gateway::TunnelSettings {
            keep_alive: config.tunnel.keep_alive,
            idle_timeout: config.tunnel.idle_timeout,
            connect_timeout: config.tunnel.connect_timeout,
            reconnect_backoff_max: config.tunnel.reconnect_backoff_max,
            max_streams: config.tunnel.max_streams,
            max_preamble_bytes: config.tunnel.max_preamble_bytes,
        },
        drain_timeout: config.shutdown.drain_timeout,
        peers,
        services: config.services.clone(),
    };
    let (gateway_addrs, dataplane_stop, dataplane_done) = start_dataplane(
        settings,
        config.dataplane.worker_threads,
        svid,
        bundles.clone(),
        gateway_metrics,
    )
    .await?;

    let admin_listener = tokio::net::TcpListener::bind(config.listen.admin)
        .await
        .map_err(|source| AppError::AdminBind {
            addr: config.listen.admin,
            source,
        })?;
    let admin = admin_listener
        .local_addr()
        .map_err(|source| AppError::AdminBind {
            addr: config.listen.admin,
            source,
        })?;

    let (control_stop, control_stopped) = watch::channel(false);
    let stopped = move || {
        let mut rx = control_stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut control_tasks = JoinSet::new();
    let mut raft = None;
    let mut store = None;
    if let (Some(settings), Some(metrics)) = (&config.store, raft_metrics) {
        let listener = tokio::net::TcpListener::bind(config.listen.raft)
            .await
            .map_err(|source| AppError::RaftBind {
                addr: config.listen.raft,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| AppError::RaftBind {
            addr: config.listen.raft,
            source,
        })?;
        let parts = start_store(
            settings,
            &config.data_dir,
            listener,
            addr,
            store_svid,
            bundles,
            metrics,
        )?;
        control_tasks.spawn(watch_store(
            parts.node.clone(),
            readiness.block("store"),
            stopped(),
        ));
        raft = Some(addr);
        store = Some(parts);
    }
    let state = api::AdminState {
        registry,
        readiness: readiness.clone(),
    };
    let admin_stop = stopped();
    control_tasks.spawn(async move {
        if let Err(e) = api::serve(admin_listener, state, admin_stop).await {
            tracing::error!(error = %e, "admin API failed");
        }
    });
    control_tasks.spawn(owner.run(stopped()));
    listeners_ready.ready();

    match raft {
        Some(raft) => tracing::info!(
            cluster = %config.cluster,
            tunnel = %gateway_addrs.tunnel,
            outbound = %gateway_addrs.outbound,
            dns = %gateway_addrs.dns_udp,
            admin = %admin,
            raft = %raft,
            "gateway ready"
        ),
        None => tracing::info!(
            cluster = %config.cluster,
            tunnel = %gateway_addrs.tunnel,
            outbound = %gateway_addrs.outbound,
            dns = %gateway_addrs.dns_udp,
            admin = %admin,
            "gateway ready"
        ),
    }
    Ok(Bound {
        admin,
        gateway: gateway_addrs,
        store,
        dataplane_stop,
        dataplane_done,
        control_stop,
        control_tasks,
        readiness,
    })
}

/// The running store: the Raft node and the gRPC server that feeds it peers' messages.
struct StoreParts {
    node: store::Node,
    server_stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    /// Kept so the server's view of the membership stays open; membership changes will send
    /// new tables through it.
    _peers: watch::Sender<PeerTable>,
}

impl StoreParts {
    async fn shutdown(self) {
        hand_over_leadership(&self.node).await;
        if let Err(e) = self.node.shutdown().await {
            tracing::error!(error = %e, "raft node had failed before shutdown");
        }
        let _ = self.server_stop.send(());
        let mut server = self.server;
        if tokio::time::timeout(RAFT_SERVER_STOP_TIMEOUT, &mut server)
            .await
            .is_err()
        {
            tracing::warn!("raft server did not stop in time; aborting it");
            server.abort();
        }
        tracing::info!("store stopped");
    }
}

/// Rebuilds the Raft listener's TLS config whenever the SVID rotates, so new handshakes never
/// see an expired certificate; ends when the listener is gone.
async fn rotate_raft_server_identity(
    mut svid: watch::Receiver<Arc<Svid>>,
    bundles: Arc<TrustBundles>,
    configs: watch::Sender<Arc<rustls::ServerConfig>>,
) {
    loop {
        tokio::select! {
            () = configs.closed() => return,
            changed = svid.changed() => if changed.is_err() { return },
        }
        let current = svid.borrow_and_update().clone();
        match federation::identity::server_config_with_alpn(
            &current,
            bundles.clone(),
            &[api::raft::ALPN],
        ) {
            Ok(config) => {
                configs.send_replace(Arc::new(config));
                tracing::debug!(id = %current.id(), "raft listener certificate rotated");
            }
            Err(e) => {
                tracing::error!(error = %e, "rotated SVID unusable for the raft listener; keeping the previous one")
            }
        }
    }
}

/// Opens the Raft log, starts the node on the current (control) runtime and serves its
/// transport on `listener`.
fn start_store(
    settings: &StoreSettings,
    data_dir: &std::path::Path,
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    svid: watch::Receiver<Arc<Svid>>,
    bundles: Arc<TrustBundles>,
    metrics: store::RaftMetrics,
) -> Result<StoreParts, AppError> {
    let own_id = svid.borrow().id().clone();
    let mut table = PeerTable::new();
    table.insert(settings.node_id, own_id.clone(), &addr.to_string())?;
    for member in &settings.members {
        table.insert(
            member.id,
            member.gateway.clone(),
            &member.address.to_string(),
        )?;
    }

    // Read the watch on every (re)connect, so renewed SVIDs reach new connections.
    let client_svid = svid.clone();
    let client_bundles = bundles.clone();
    let client_tls: ClientTls = Arc::new(move |domain: &TrustDomain| {
        client_bundles.roots(domain)?;
        let svid = client_svid.borrow().clone();
        let config = federation::identity::client_config_with_alpn(
            &svid,
            client_bundles.clone(),
            domain,
            &[api::raft::ALPN],
        );
        match config {
            Ok(config) => Some(Arc::new(config)),
            Err(e) => {
                tracing::warn!(%domain, error = %e, "no TLS client config for a raft peer");
                None
            }
        }
    });
    let server_tls = federation::identity::server_config_with_alpn(
        &svid.borrow(),
        bundles.clone(),
        &[api::raft::ALPN],
    )?;
    let (server_tls_tx, server_tls) = watch::channel(Arc::new(server_tls));
    tokio::spawn(rotate_raft_server_identity(
        svid.clone(),
        bundles,
        server_tls_tx,
    ));

    let storage = store::storage::SledStore::open(&data_dir.join("raft"))?;
    let transport = GrpcTransport::new(settings.node_id, &table, client_tls);
    let mut node_config = store::NodeConfig::new(settings.node_id, settings.voters.clone());
    node_config.tick = settings.tick;
    node_config.election_tick = settings.election_tick as usize;
    node_config.metrics = Some(metrics);
    let (node, inbox) = store::start(node_config, storage, MeshLog::new(), transport)?;

    let (peers_tx, peers) = watch::channel(table);
    let (server_stop, server_stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = server_stopped.await;
        };
        if let Err(e) = api::raft::serve(listener, server_tls, peers, inbox, stop).await {
            tracing::error!(error = %e, "raft server failed");
        }
    });
    tracing::info!(
        node_id = settings.node_id,
        id = %own_id,
        voters = ?settings.voters,
        members = settings.members.len(),
        "store started"
    );
    Ok(StoreParts {
        node,
        server_stop,
        server,
        _peers: peers_tx,
    })
}

/// Logs leader changes and releases `ready` once a leader is known. Ends when the node stops.
async fn watch_store(
    node: store::Node,
    ready: api::Blocker,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut ready = Some(ready);
    let mut leader = None;
    loop {
        let Ok(status) = node.status().await else {
            return;
        };
        if status.leader != leader {
            match status.leader {
                Some(new) => tracing::info!(
                    leader = new,
                    term = status.term,
                    role = ?status.role,
                    "raft leader elected"
                ),
                None => tracing::info!(
                    term = status.term,
                    previous = ?leader,
                    "raft leader lost"
                ),
            }
            leader = status.leader;
        }
        if leader.is_some()
            && let Some(ready) = ready.take()
        {
            ready.ready();
        }
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(STORE_STATUS_INTERVAL) => {}
        }
    }
}

/// If this node leads, asks the most caught-up other voter to take over and waits (bounded)
/// until it has, so the group does not sit through an election timeout. Best effort.
async fn hand_over_leadership(node: &store::Node) {
    let Ok(status) = node.status().await else {
        return;
    };
    if status.role != store::Role::Leader {
        return;
    }
    let matched = |v: &u64| status.matched.get(v).copied().unwrap_or(0);
    let Some(to) = status
        .voters
        .iter()
        .copied()
        .filter(|&v| v != status.id)
        .max_by_key(matched)
    else {
        return;
    };
    let moved = tokio::time::timeout(LEADER_TRANSFER_TIMEOUT, async {
        node.transfer_leader(to).await?;
        loop {
            let now = node.status().await?;
            if now.role != store::Role::Leader {
                return Ok::<_, store::ProposeError>(now.leader);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    match moved {
        Ok(Ok(leader)) => tracing::info!(to, ?leader, "handed raft leadership over"),
        Ok(Err(e)) => tracing::warn!(to, error = %e, "raft leadership transfer failed"),
        Err(_) => tracing::warn!(
            to,
            "raft leadership did not move within {LEADER_TRANSFER_TIMEOUT:?}; stopping anyway"
        ),
    }
}

/// Runs the data plane on its own runtime in its own thread, and returns once it is bound.
async fn start_dataplane(
    settings: gateway::Settings,
    worker_threads: u32,
    svid: watch::Receiver<Arc<federation::identity::Svid>>,
    bundles: Arc<TrustBundles>,
    metrics: gateway::metrics::Metrics,
) -> Result<(BoundAddrs, oneshot::Sender<()>, oneshot::Receiver<()>), AppError> {
    let (bound_tx, bound_rx) = oneshot::channel();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (done_tx, done_rx) = oneshot::channel();
    let workers = worker_threads as usize;
    // One worker: a current-thread runtime on the data plane's own thread, which then drives
    // every task and all I/O itself, with no hand-offs between threads.
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder
        .thread_name(format!("dataplane-{}", settings.cluster))
        .enable_all()
        .build()
        .map_err(AppError::Runtime)?;
    std::thread::Builder::new()
        .name(format!("dataplane-{}", settings.cluster))
        .spawn(move || {
            runtime.block_on(async move {
                match Gateway::start(settings, svid, bundles, metrics).await {
                    Ok(gateway) => {
                        let _ = bound_tx.send(Ok(gateway.addrs()));
                        // A dropped sender (the app went away) also stops the data plane.
                        let _ = stop_rx.await;
                        gateway.shutdown().await;
                    }
                    Err(e) => {
                        let _ = bound_tx.send(Err(e));
                    }
                }
            });
            // Whatever is still spawned (detached upstream connections) ends with the runtime.
            runtime.shutdown_timeout(Duration::from_secs(1));
            let _ = done_tx.send(());
        })
        .map_err(AppError::Runtime)?;
    match bound_rx.await {
        Ok(Ok(addrs)) => Ok((addrs, stop_tx, done_rx)),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(AppError::Runtime(std::io::Error::other(
            "data plane thread died while starting",
        ))),
    }
}
