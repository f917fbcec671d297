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

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

pub use mesh::SharedMesh;
pub use readiness::{Blocker, Readiness};
pub use rest::{
    CaRotator, JoinCa, JoinCaRequest, NodeInfo, RotationRefusal, RotationReport, SvidSigner,
    TunnelView, Writer,
};
pub use tls::server_config as tls_server_config;
pub use tls::{RotatingCert, rotating_server_config};

/// What the admin API's handlers share. Build it with [`AdminState::new`], then
/// [`AdminState::with_store`] on a gateway that runs the replicated store, and
/// [`AdminState::with_tunnels`] to show the data plane's tunnels, and
/// [`AdminState::with_svid_signer`] to issue workload SVIDs with the cluster's CA:
///
/// ```text
/// let (compiled_tx, compiled_rx) = watch::channel(Arc::new(MeshSnapshot::default()));
/// let mesh = api::SharedMesh::new(compiled_tx);
/// let (node, inbox) = store::start(config, storage, mesh.clone(), transport.clone())?;
/// let state = api::AdminState::new(registry, readiness, info)
///     .with_store(mesh, node, Some(transport)) // transport: Arc<GrpcTransport>, forwards writes
///     .with_tunnels(tunnels_rx)
///     .with_svid_signer(ca); // Arc<CertificateAuthority>
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
    /// Counts connections the admin port turns away.
    pub admin_metrics: AdminMetrics,
    /// Signs workload SVIDs (`POST /v1/svids`) with this gateway's cluster CA; `None` answers
    /// that route with 503.
    pub svid_signer: Option<Arc<dyn rest::SvidSigner>>,
    /// Rotates this gateway's cluster CA (`POST /v1/clusters/{name}/ca/rotate`); `None`
    /// answers that route with 503.
    pub ca_rotator: Option<Arc<dyn rest::CaRotator>>,
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
            admin_metrics: AdminMetrics::default(),
            svid_signer: None,
            ca_rotator: None,
            stopping: watch::channel(false).1,
        }
    }

    /// Counts the admin port's refusals in `metrics` (see [`AdminMetrics::register`]).
    pub fn with_admin_metrics(mut self, metrics: AdminMetrics) -> Self {
        self.admin_metrics = metrics;
        self
    }

    /// Issues workload SVIDs (`POST /v1/svids`) with `signer`: this gateway's own cluster CA
    /// (`Arc<CertificateAuthority>`), whose key stays local.
    pub fn with_svid_signer(mut self, signer: Arc<dyn rest::SvidSigner>) -> Self {
        self.svid_signer = Some(signer);
        self
    }

    /// Rotates this gateway's cluster CA with `rotator` (`POST /v1/clusters/{name}/ca/rotate`).
    pub fn with_ca_rotator(mut self, rotator: Arc<dyn rest::CaRotator>) -> Self {
        self.ca_rotator = Some(rotator);
        self
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

/// Connections the admin port turned away, by reason: `plain_http` (HTTP on the HTTPS port),
/// `tls_handshake` (failed or timed out), `max_connections`. Anyone can cause these without a
/// token, so they are counted here and logged only aggregated.
#[derive(Clone, Default)]
pub struct AdminMetrics {
    refusals: Family<AdminRefusalLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AdminRefusalLabels {
    reason: &'static str,
}

impl AdminMetrics {
    /// Registers `admin_refusals` (`causeway_admin_refusals_total` under the `causeway` prefix).
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "admin_refusals",
            "Connections the admin port turned away (plain HTTP, failed TLS handshake, too many connections)",
            m.refusals.clone(),
        );
        m
    }

    pub(crate) fn refused(&self, reason: &'static str) {
        self.refusals
            .get_or_create(&AdminRefusalLabels { reason })
            .inc();
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
    let limits = Limits::default();
    match tls {
        Some(tls) => {
            let listener = tls::TlsListener::new(listener, tls, state.admin_metrics.clone())?;
            serve_on(listener, state, limits, shutdown).await
        }
        None => serve_on(listener, state, limits, shutdown).await,
    }
}

/// How many connections the admin API serves, and how patiently.
#[derive(Debug, Clone, Copy)]
struct Limits {
    /// Connections served at once; a client beyond it is answered 503 and closed. Operators
    /// and kubelets need a handful; this bounds what idle or hostile clients can hold.
    max_connections: usize,
    /// A request's head must arrive within this long. hyper's timer also runs while a
    /// connection waits for its next request, so it doubles as the idle keep-alive timeout
    /// (clients reconnect); a response in progress, such as a watch stream, is not affected.
    header_read_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// What a client over [`Limits::max_connections`] reads.
const TOO_MANY_CONNECTIONS: &str =
    "causeway: the admin API has too many open connections; retry later\n";

/// Serves `router` on connections from `listener` (hyper HTTP/1.1 within `limits`) until
/// `shutdown`; then stops accepting, ends watch streams (`stopping`), lets requests in flight
/// finish and waits for every connection.
async fn serve_on<L>(
    mut listener: L,
    state: AdminState,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    use tower::ServiceExt as _;

    let (stop, stopping) = watch::channel(false);
    let state = AdminState { stopping, ..state };
    let metrics = state.admin_metrics.clone();
    let app = router(state);
    let max = limits.max_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(max));
    let refused = tls::Throttled::new(move |s| {
        tracing::warn!("admin API connections refused, at most {max} open: {s}")
    });
    let mut connections = tokio::task::JoinSet::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (io, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let permit = slots.clone().try_acquire_owned().ok();
        if permit.is_none() {
            metrics.refused("max_connections");
        }
        if permit.is_none() && refused.event(|| format!("from {remote:?}")) {
            tracing::warn!(
                ?remote,
                "admin API connection refused: too many open connections"
            );
        }
        let app = app.clone();
        let mut stopping = stop.subscribe();
        connections.spawn(async move {
            let Some(_permit) = permit else {
                refuse(io).await;
                return;
            };
            let service =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(req.map(axum::body::Body::new))
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .serve_connection(hyper_util::rt::TokioIo::new(io), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    stop.send_replace(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Answers one request on `io` with 503 and closes, bounded in time.
async fn refuse<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(|_req| async {
        let mut resp = http::Response::new(axum::body::Body::from(TOO_MANY_CONNECTIONS));
        *resp.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        resp.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        Ok::<_, std::convert::Infallible>(resp)
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .keep_alive(false)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(2), conn).await;
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    async fn start(limits: Limits) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = listener.local_addr().unwrap();
        let info = NodeInfo {
            id: 0,
            name: "gw-a".into(),
            cluster: "east".into(),
            spiffe_id: "spiffe://east.mesh/gateway/gw-a".into(),
            admin,
        };
        let state = AdminState::new(Arc::new(Registry::default()), Readiness::new(), info);
        tokio::spawn(serve_on(listener, state, limits, std::future::pending()));
        admin
    }

    async fn get(admin: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(admin).await.unwrap();
        s.write_all(b"GET /healthz HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut text = String::new();
        let _ = s.read_to_string(&mut text).await;
        text
    }

    #[tokio::test]
    async fn over_the_cap_clients_get_503_and_a_freed_slot_serves_again() {
        let admin = start(Limits {
            max_connections: 2,
            header_read_timeout: Duration::from_secs(30),
        })
        .await;
        let idle = [
            TcpStream::connect(admin).await.unwrap(),
            TcpStream::connect(admin).await.unwrap(),
        ];
        // Both slots are taken once the server has accepted them.
        let refused = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let answer = get(admin).await;
                if answer.starts_with("HTTP/1.1 503") {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("no 503 over the cap");
        assert!(refused.contains("too many open connections"), "{refused}");
        drop(idle);
        let served = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let answer = get(admin).await;
                if answer.starts_with("HTTP/1.1 200") {
                    return answer;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(served.is_ok(), "not served after the idle clients left");
    }

    #[tokio::test]
    async fn a_trickled_or_idle_head_is_cut_off_by_the_header_timeout() {
        let admin = start(Limits {
            max_connections: 16,
            header_read_timeout: Duration::from_millis(500),
        })
        .await;
        let mut trickle = TcpStream::connect(admin).await.unwrap();
        trickle
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(admin).await.unwrap();
        for s in [&mut trickle, &mut idle] {
            let mut buf = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
            assert!(closed.is_ok(), "connection still open");
        }
        assert!(get(admin).await.starts_with("HTTP/1.1 200"));
    }
}
