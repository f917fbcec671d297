//! The composition root: turns a [`Config`] into running parts and returns where they listen.
//!
//! ```text
//!  control runtime (caller's)            data plane runtime (own thread)
//!   admin API  /metrics /readyz            gateway: tunnels, outbound, inbound, DNS
//!   identity owner --watch<Svid>-------->  (reads the newest SVID on every handshake)
//! ```
//!
//! Every port is bound before `build` returns, so with port 0 the caller learns the real
//! addresses from [`Bound`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use federation::identity::{TrustBundles, TrustDomain};
use gateway::{BoundAddrs, Gateway};
use prometheus_client::registry::Registry;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::identity::IdentityOwner;

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
}

/// A running gateway: its bound addresses and the means to stop it.
pub struct Bound {
    pub admin: SocketAddr,
    pub gateway: BoundAddrs,
    dataplane_stop: oneshot::Sender<()>,
    dataplane_done: oneshot::Receiver<()>,
    control_stop: watch::Sender<bool>,
    control_tasks: JoinSet<()>,
    readiness: api::Readiness,
}

impl Bound {
    /// Graceful stop: readiness goes red, the data plane drains (bounded by its deadline),
    /// then the admin API and the identity owner stop.
    pub async fn shutdown(self) {
        let _draining = self.readiness.block("shutdown");
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
    let registry = Arc::new(registry);

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
        Arc::new(bundles),
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

    tracing::info!(
        cluster = %config.cluster,
        tunnel = %gateway_addrs.tunnel,
        outbound = %gateway_addrs.outbound,
        dns = %gateway_addrs.dns_udp,
        admin = %admin,
        "gateway ready"
    );
    Ok(Bound {
        admin,
        gateway: gateway_addrs,
        dataplane_stop,
        dataplane_done,
        control_stop,
        control_tasks,
        readiness,
    })
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
