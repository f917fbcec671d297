//! Causeway's admin surface on the admin port — the REST API of the mesh ([`rest`]), metrics,
//! health and readiness — and the Raft transport between gateways ([`raft`]: gRPC over mutual
//! TLS).
//!
//! `/healthz` and `/readyz` stay unauthenticated so that kubelets can reach them; everything
//! else takes a bearer token from the mesh state.
#![forbid(unsafe_code)]

pub mod client;
pub mod mesh;
pub mod raft;
mod readiness;
pub mod rest;
mod tls;

use std::future::Future;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use mesh::SharedMesh;
pub use readiness::{Blocker, Readiness};
pub use rest::{NodeInfo, TunnelView, Writer};
pub use tls::server_config as tls_server_config;

/// What the admin API's handlers share. Build it with [`AdminState::new`], then
/// [`AdminState::with_store`] on a gateway that runs the replicated store, and
/// [`AdminState::with_tunnels`] to show the data plane's tunnels:
///
/// ```text
/// let (compiled_tx, compiled_rx) = watch::channel(Arc::new(MeshSnapshot::default()));
/// let mesh = api::SharedMesh::new(compiled_tx);
/// let (node, inbox) = store::start(config, storage, mesh.clone(), transport.clone())?;
/// let state = api::AdminState::new(registry, readiness, info)
///     .with_store(mesh, node, Some(transport)) // transport: Arc<GrpcTransport>, forwards writes
///     .with_tunnels(tunnels_rx);
/// ```
#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    pub readiness: Readiness,
    /// The replicated mesh state (empty without the store).
    pub mesh: SharedMesh,
    /// The Raft node; none on a gateway without the store, where every mesh route answers 503
    /// and `/metrics` needs no token.
    pub node: Option<store::Node>,
    /// How writes reach Raft; present exactly when `node` is.
    pub writer: Option<Writer>,
    /// Who this gateway is.
    pub info: NodeInfo,
    /// This gateway's tunnels, as the data plane last reported them.
    pub tunnels: watch::Receiver<Vec<TunnelView>>,
    /// This gateway's data directory, where `causeway token recover` leaves its break-glass
    /// request (see [`rest::recover`]); `None` turns recovery off.
    pub data_dir: Option<std::path::PathBuf>,
    /// Turns true when [`serve`] begins to shut down, so endless responses (watches) end and
    /// the graceful shutdown does not wait for them forever.
    stopping: watch::Receiver<bool>,
}

impl AdminState {
    /// A state without the store and without tunnels.
    pub fn new(registry: Arc<Registry>, readiness: Readiness, info: NodeInfo) -> Self {
        let (compiled, _) = watch::channel(Arc::default());
        let (_, tunnels) = watch::channel(Vec::new());
        Self {
            registry,
            readiness,
            mesh: SharedMesh::new(compiled),
            node: None,
            writer: None,
            info,
            tunnels,
            data_dir: None,
            stopping: watch::channel(false).1,
        }
    }

    /// Serves the mesh in `mesh` (the state machine `node` applies to). `forward` carries a
    /// follower's writes to the leader: pass the Raft transport (`Arc<GrpcTransport>`).
    pub fn with_store(
        mut self,
        mesh: SharedMesh,
        node: store::Node,
        forward: Option<Arc<dyn rest::Forward>>,
    ) -> Self {
        self.writer = Some(Writer::new(node.clone(), forward, mesh.clone()));
        self.mesh = mesh;
        self.node = Some(node);
        self
    }

    pub fn with_tunnels(mut self, tunnels: watch::Receiver<Vec<TunnelView>>) -> Self {
        self.tunnels = tunnels;
        self
    }

    /// Lets operators with access to `data_dir` recover an admin token (`causeway token
    /// recover`).
    pub fn with_data_dir(mut self, data_dir: std::path::PathBuf) -> Self {
        self.data_dir = Some(data_dir);
        self
    }
}

/// The admin API's router (see [`rest`]).
pub fn router(state: AdminState) -> axum::Router {
    rest::router(state)
}

/// Serves the admin API on `listener` until `shutdown` resolves: over HTTPS with `tls` (see
/// [`tls_server_config`]), else plain HTTP. At shutdown, open watch streams end and requests in
/// flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: AdminState,
    tls: Option<Arc<rustls::ServerConfig>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    match tls {
        Some(tls) => serve_on(tls::TlsListener::new(listener, tls)?, state, shutdown).await,
        None => serve_on(listener, state, shutdown).await,
    }
}

async fn serve_on<L>(
    listener: L,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let (stop, stopping) = watch::channel(false);
    let state = AdminState { stopping, ..state };
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move {
            shutdown.await;
            stop.send_replace(true);
        })
        .await
}
