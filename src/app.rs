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
use federation::identity::{Svid, TrustBundles, TrustDomain, TrustStore};
use gateway::{BoundAddrs, Gateway};
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use federation::mesh::{JoinRequest, Member, MeshSnapshot};

use crate::admin_cert::AdminCert;
use crate::ca::ClusterCa;
use crate::config::{Config, StoreSettings};
use crate::identity::IdentityOwner;
use crate::rotation::Rotator;
use crate::{bootstrap, join, membership, mesh_sync, seed};

/// The node id of a mesh's founding gateway; joiners get the next ones.
const FOUNDER_NODE_ID: u64 = 1;

/// How long a leader that is shutting down waits for a voter to take over before it stops anyway.
const LEADER_TRANSFER_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the Raft server may take to finish its calls in flight at shutdown.
const RAFT_SERVER_STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the status watcher asks the node where it stands.
const STORE_STATUS_INTERVAL: Duration = Duration::from_millis(100);
/// Validity of the admin API's certificate. It is issued afresh from the cluster CA at every
/// start and not renewed while running: clients trust the CA, not this certificate, so a new
/// one changes nothing for them, and a gateway is restarted (upgrades) well within 90 days.
const ADMIN_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 60 * 60);

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
    /// rustls refused the admin certificate the CA issued.
    #[error("admin API TLS: {0}")]
    AdminTls(rustls::Error),
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
    /// The mesh refused to let this gateway join, or its join record is unreadable.
    #[error("join: {0}")]
    Join(#[from] join::JoinError),
    #[error("cannot create the data dir {}: {source}", path.display())]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
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
    // A gateway joining a cluster that already has gateways takes the cluster's CA from one of
    // them, over the join's TLS channel, before it would make one of its own.
    if let Some(settings) = &config.join
        && config.store.is_none()
        && join::load(&config.data_dir)?.is_none()
        && !config.data_dir.join(crate::ca::CA_DIR).exists()
    {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| AppError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        join::fetch_cluster_ca(&config.data_dir, settings, config.cluster.as_str()).await?;
    }
    let (owner, svid) = IdentityOwner::start(
        &config.data_dir,
        &trust_domain,
        &config.name,
        config.identity.svid_ttl,
        metrics_root,
    )?;
    tracing::info!(id = %svid.borrow().id(), not_after = %humantime::format_rfc3339_seconds(svid.borrow().not_after()), "identity ready");
    identity_ready.ready();

    // Our own root is always trusted: other gateways of this cluster present it, whatever
    // the mesh state says. Peers, services and their CAs start as the config file says.
    let mut own_bundle = TrustBundles::new();
    own_bundle.insert(trust_domain.clone(), vec![owner.ca().current().root_der()]);
    let seed = seed::from_config(
        &config,
        owner.ca().current().root_der(),
        config.listen.tunnel,
    )?;
    let feed = seed::MeshFeed::new(seed, own_bundle);
    let gateway_metrics = gateway::metrics::Metrics::register(metrics_root);
    let raft_metrics = store::RaftMetrics::register(metrics_root);
    let admin_metrics = api::AdminMetrics::register(metrics_root);
    let registry = Arc::new(registry);
    let store_svid = svid.clone();
    let rotation_svid = svid.clone();
    let handoff = Arc::new(crate::rotation::Handoff::default());
    let own_id = svid.borrow().id().clone();
    let trust_bundle_pem = owner.ca().current().bundle_pem();

    let settings = gateway::Settings {
        cluster: config.cluster.clone(),
        tunnel_addr: config.listen.tunnel,
        outbound_addr: config.listen.outbound,
        workload_addr: Some(config.listen.workload),
        attribute_by_address: config.security.trust_source_address,
        root_namespace: config.security.root_namespace.clone(),
        ca_handoff: Some(handoff.clone()),
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
        busy_poll: config.dataplane.busy_poll,
        clients: gateway::ClientLimits {
            max_connections: config.dataplane.max_client_connections as usize,
            header_read_timeout: config.dataplane.header_read_timeout,
            idle_timeout: config.dataplane.idle_timeout,
        },
    };
    let dataplane = start_dataplane(
        settings,
        config.dataplane.worker_threads,
        svid,
        feed.trust.clone(),
        feed.mesh.subscribe(),
        gateway_metrics,
    )
    .await?;
    let gateway_addrs = dataplane.addrs;
    if gateway_addrs.tunnel != config.listen.tunnel {
        let bound = seed::with_tunnel(
            (**feed.mesh.borrow()).clone(),
            &config.cluster,
            gateway_addrs.tunnel,
        );
        feed.publish(bound);
    }

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
    let (admin_tls, admin_cert) = match admin_tls(&config, owner.ca(), admin)? {
        Some((tls, renewer)) => (Some(tls), Some(renewer)),
        None => (None, None),
    };

    let raft_listener = tokio::net::TcpListener::bind(config.listen.raft)
        .await
        .map_err(|source| AppError::RaftBind {
            addr: config.listen.raft,
            source,
        })?;
    let raft = raft_listener
        .local_addr()
        .map_err(|source| AppError::RaftBind {
            addr: config.listen.raft,
            source,
        })?;
    let me = Member {
        node_id: 0,
        cluster: config.cluster.clone(),
        name: config.name.clone(),
        spiffe_id: own_id.to_string(),
        tunnel: gateway_addrs.tunnel,
        raft,
        admin,
    };

    // Which Raft group, and who we are in it: a fixed group from the file, a group joined
    // earlier (member.json), a group to join now, or a new mesh of our own.
    let mut seed_snapshot = (**feed.mesh.borrow()).clone();
    let mut fixed_peers = Vec::new();
    let (node_id, voters) = if let Some(settings) = &config.store {
        for m in &settings.members {
            fixed_peers.push((m.id, m.gateway.clone(), m.address.to_string()));
        }
        (settings.node_id, settings.voters.clone())
    } else if let Some(membership) = join::load(&config.data_dir)? {
        if config.join.is_some() {
            tracing::info!(node_id = membership.node_id, via = %membership.joined_via, "already joined this mesh; --join ignored");
        }
        (membership.node_id, Vec::new())
    } else if let Some(settings) = &config.join {
        let request = JoinRequest {
            cluster: me.cluster.clone(),
            trust_domain: trust_domain.to_string(),
            trust_bundle: trust_bundle_pem.clone(),
            name: me.name.clone(),
            spiffe_id: me.spiffe_id.clone(),
            tunnel: me.tunnel,
            raft: me.raft,
            admin: me.admin,
        };
        let joined = join::join(&config.data_dir, settings, &request).await?;
        // Until our own log catches up, the join answer is how we know the others: their
        // Raft addresses, and the CAs to trust them by.
        for m in &joined.members {
            match federation::identity::SpiffeId::parse(&m.spiffe_id) {
                Ok(id) if m.node_id != joined.node_id => {
                    fixed_peers.push((m.node_id, id, m.raft.to_string()))
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(node = m.node_id, error = %e, "member's SPIFFE ID unusable")
                }
            }
        }
        seed_snapshot = seed::with_join_answer(seed_snapshot, &joined);
        feed.publish(seed_snapshot.clone());
        (joined.node_id, Vec::new())
    } else {
        (FOUNDER_NODE_ID, vec![FOUNDER_NODE_ID])
    };
    fixed_peers.push((node_id, own_id.clone(), raft.to_string()));
    let me = Member { node_id, ..me };

    let (control_stop, control_stopped) = watch::channel(false);
    let rotation_stop = control_stopped.clone();
    let stopped = move || {
        let mut rx = control_stopped.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let mut control_tasks = JoinSet::new();
    let (compiled_tx, compiled) = watch::channel(Arc::new(MeshSnapshot::default()));
    let mesh = api::SharedMesh::new(compiled_tx);
    let parts = start_store(
        StoreStart {
            node_id,
            voters,
            settings: config.store.as_ref(),
            fixed_peers: &fixed_peers,
            data_dir: &config.data_dir,
        },
        raft_listener,
        store_svid,
        feed.trust.clone(),
        raft_metrics,
        mesh.clone(),
    )?;
    control_tasks.spawn(watch_store(
        parts.node.clone(),
        readiness.block("store"),
        stopped(),
    ));
    control_tasks.spawn(mesh_sync::follow(
        compiled,
        seed_snapshot,
        feed.clone(),
        fixed_peers,
        parts.transport.clone(),
        parts.peers.clone(),
    ));
    control_tasks.spawn(membership::reconcile(
        parts.node.clone(),
        mesh.clone(),
        stopped(),
    ));
    control_tasks.spawn(bootstrap::found_when_leader(
        parts.node.clone(),
        mesh.clone(),
        bootstrap::Founder {
            member: me.clone(),
            trust_domain: trust_domain.to_string(),
            trust_bundle_pem,
            data_dir: config.data_dir.clone(),
        },
        stopped(),
    ));
    let (tunnel_views, tunnel_views_rx) = watch::channel(Vec::new());
    control_tasks.spawn(publish_tunnels(dataplane.tunnels.clone(), tunnel_views));

    let info = api::NodeInfo {
        id: node_id,
        name: config.name.clone(),
        cluster: config.cluster.to_string(),
        spiffe_id: own_id.to_string(),
        admin,
    };
    let forward: Arc<dyn api::rest::Forward> = parts.transport.clone();
    let rotator = Arc::new(Rotator {
        ca: owner.ca().clone(),
        data_dir: config.data_dir.clone(),
        cluster: config.cluster.clone(),
        td: trust_domain.clone(),
        id: own_id.clone(),
        bind: gateway_addrs.tunnel.ip(),
        feed: feed.clone(),
        writer: api::Writer::new(parts.node.clone(), Some(forward.clone()), mesh.clone()),
        svid: rotation_svid,
        probe_timeout: config.tunnel.connect_timeout,
        busy: tokio::sync::Mutex::new(()),
        stop: rotation_stop,
    });
    let _ = handoff.0.set(rotator.clone());
    rotator.clone().resume();
    let state = api::AdminState::new(registry, readiness.clone(), info)
        .with_store(mesh, parts.node.clone(), Some(forward))
        .with_tunnels(tunnel_views_rx)
        .with_data_dir(config.data_dir.clone())
        .with_admin_metrics(admin_metrics)
        .with_svid_signer(owner.ca().clone())
        .with_ca_rotator(rotator);
    let store = Some(parts);
    let admin_stop = stopped();
    control_tasks.spawn(async move {
        if let Err(e) = api::serve(admin_listener, state, admin_tls, admin_stop).await {
            tracing::error!(error = %e, "admin API failed");
        }
    });
    if let Some(renewer) = admin_cert {
        control_tasks.spawn(renewer.run(stopped()));
    }
    control_tasks.spawn(owner.run(stopped()));
    listeners_ready.ready();

    tracing::info!(
        cluster = %config.cluster,
        node_id,
        tunnel = %gateway_addrs.tunnel,
        outbound = %gateway_addrs.outbound,
        workload = %gateway_addrs.workload.map_or("off".into(), |a| a.to_string()),
        dns = %gateway_addrs.dns_udp,
        admin = %admin,
        raft = %raft,
        "gateway ready"
    );
    Ok(Bound {
        admin,
        gateway: gateway_addrs,
        store,
        dataplane_stop: dataplane.stop,
        dataplane_done: dataplane.done,
        control_stop,
        control_tasks,
        readiness,
    })
}

/// The admin API's TLS config: a certificate from the cluster CA for the names clients reach
/// `admin` by ([`crate::config::AdminSettings::server_names`]), and what renews it; `None` with
/// `[admin] tls = false`.
fn admin_tls(
    config: &Config,
    ca: &Arc<ClusterCa>,
    admin: SocketAddr,
) -> Result<Option<(Arc<rustls::ServerConfig>, AdminCert)>, AppError> {
    if !config.admin.tls {
        tracing::warn!(%admin, "the admin API serves plain HTTP ([admin] tls = false): tokens, join tokens included, cross the network in clear text");
        return Ok(None);
    }
    if admin.ip().is_unspecified() && config.admin.names.is_empty() {
        tracing::warn!(%admin, "the admin certificate names only loopback and the gateway's name; add the addresses clients use to [admin] names");
    }
    let names = config.admin.server_names(admin, &config.name);
    let cert = ca.issue_server_cert(&names, ADMIN_CERT_TTL)?;
    let serving = Arc::new(
        api::RotatingCert::new(cert.chain().to_vec(), cert.key()).map_err(AppError::AdminTls)?,
    );
    let tls = api::rotating_server_config(serving.clone()).map_err(AppError::AdminTls)?;
    let shown: Vec<_> = names.iter().map(|n| n.to_str().into_owned()).collect();
    tracing::info!(names = ?shown, not_after = %humantime::format_rfc3339_seconds(cert.not_after()), "admin API serves HTTPS");
    let renewer = AdminCert {
        names,
        ttl: ADMIN_CERT_TTL,
        ca: ca.clone(),
        serving,
        not_after: cert.not_after(),
    };
    Ok(Some((Arc::new(tls), renewer)))
}

/// The running store: the Raft node and the gRPC server that feeds it peers' messages.
struct StoreParts {
    node: store::Node,
    /// Dials the other members; also forwards proposals to the leader.
    transport: Arc<GrpcTransport>,
    server_stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    /// The server's view of the members, kept in line with the state by `mesh_sync`.
    peers: watch::Sender<PeerTable>,
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
    trust: TrustStore,
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
            trust.clone(),
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

/// Who this node is in which Raft group.
struct StoreStart<'a> {
    node_id: u64,
    /// The founding voters, used only on an empty log (see `store::NodeConfig::voters`).
    voters: Vec<u64>,
    /// Timing from a `[store]` section, if any.
    settings: Option<&'a StoreSettings>,
    /// Raft peers known before the state says (this node, `[store]` members, a join answer).
    fixed_peers: &'a [(u64, federation::identity::SpiffeId, String)],
    data_dir: &'a std::path::Path,
}

/// Opens the Raft log, starts the node on the current (control) runtime and serves its
/// transport on `listener`.
fn start_store(
    start: StoreStart<'_>,
    listener: tokio::net::TcpListener,
    svid: watch::Receiver<Arc<Svid>>,
    trust: TrustStore,
    metrics: store::RaftMetrics,
    mesh: api::SharedMesh,
) -> Result<StoreParts, AppError> {
    let mut table = PeerTable::new();
    for (id, spiffe, addr) in start.fixed_peers {
        table.insert(*id, spiffe.clone(), addr)?;
    }

    // Read the watch on every (re)connect, so renewed SVIDs reach new connections.
    let client_svid = svid.clone();
    let client_trust = trust.clone();
    let client_tls: ClientTls = Arc::new(move |domain: &TrustDomain| {
        client_trust.current().roots(domain)?;
        let svid = client_svid.borrow().clone();
        let config = federation::identity::client_config_with_alpn(
            &svid,
            client_trust.clone(),
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
        trust.clone(),
        &[api::raft::ALPN],
    )?;
    let (server_tls_tx, server_tls) = watch::channel(Arc::new(server_tls));
    tokio::spawn(rotate_raft_server_identity(
        svid.clone(),
        trust,
        server_tls_tx,
    ));

    let storage = store::storage::SledStore::open(&start.data_dir.join("raft"))?;
    let transport = GrpcTransport::new(start.node_id, &table, client_tls);
    let mut node_config = store::NodeConfig::new(start.node_id, start.voters.clone());
    if let Some(settings) = start.settings {
        node_config.tick = settings.tick;
        node_config.election_tick = settings.election_tick as usize;
    }
    node_config.metrics = Some(metrics);
    let (node, inbox) = store::start(node_config, storage, mesh, transport.clone())?;

    let (peers_tx, peers) = watch::channel(table);
    let (server_stop, server_stopped) = oneshot::channel::<()>();
    let proposer = Some(node.clone());
    let server = tokio::spawn(async move {
        let stop = async move {
            let _ = server_stopped.await;
        };
        if let Err(e) = api::raft::serve(listener, server_tls, peers, inbox, proposer, stop).await {
            tracing::error!(error = %e, "raft server failed");
        }
    });
    tracing::info!(
        node_id = start.node_id,
        id = %svid.borrow().id(),
        voters = ?start.voters,
        peers = start.fixed_peers.len(),
        "store started"
    );
    Ok(StoreParts {
        node,
        transport,
        server_stop,
        server,
        peers: peers_tx,
    })
}

/// Adapts the data plane's tunnel list to what `/v1/status` shows, until either side is gone.
async fn publish_tunnels(
    mut tunnels: watch::Receiver<Vec<gateway::TunnelStatus>>,
    views: watch::Sender<Vec<api::TunnelView>>,
) {
    loop {
        let list = tunnels
            .borrow_and_update()
            .iter()
            .map(|t| api::TunnelView {
                cluster: t.cluster.to_string(),
                address: t.address.to_string(),
                up: t.up,
            })
            .collect();
        views.send_replace(list);
        tokio::select! {
            () = views.closed() => return,
            changed = tunnels.changed() => if changed.is_err() { return },
        }
    }
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
    let mut catch_up_to = None;
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
        // Ready once a leader is known and this node has applied what was committed when it
        // first saw one: reads served here are then no older than when it started. (Comparing
        // with the commit index of the moment would wait for a lull in a busy group.)
        if leader.is_some() {
            let goal = *catch_up_to.get_or_insert(status.commit);
            if status.applied >= goal
                && let Some(ready) = ready.take()
            {
                ready.ready();
            }
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

/// The running data plane, seen from the control runtime.
struct Dataplane {
    addrs: BoundAddrs,
    tunnels: watch::Receiver<Vec<gateway::TunnelStatus>>,
    /// Send (or drop) to start its graceful shutdown.
    stop: oneshot::Sender<()>,
    /// Resolves once it has stopped.
    done: oneshot::Receiver<()>,
}

/// Runs the data plane on its own runtime in its own thread, and returns once it is bound.
/// It follows `mesh` from then on; `trust` is read on every tunnel handshake.
async fn start_dataplane(
    settings: gateway::Settings,
    worker_threads: u32,
    svid: watch::Receiver<Arc<federation::identity::Svid>>,
    trust: TrustStore,
    mesh: watch::Receiver<Arc<federation::mesh::MeshSnapshot>>,
    metrics: gateway::metrics::Metrics,
) -> Result<Dataplane, AppError> {
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
                match Gateway::start(settings, svid, trust, mesh, metrics).await {
                    Ok(gateway) => {
                        let _ = bound_tx.send(Ok((gateway.addrs(), gateway.tunnels())));
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
        Ok(Ok((addrs, tunnels))) => Ok(Dataplane {
            addrs,
            tunnels,
            stop: stop_tx,
            done: done_rx,
        }),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(AppError::Runtime(std::io::Error::other(
            "data plane thread died while starting",
        ))),
    }
}
