//! The data plane follows the mesh snapshot: a peer, an export or a local service that
//! appears in a later snapshot becomes routable, and one that disappears stops being routed,
//! without a restart. Two gateways in one process, real QUIC on loopback.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use federation::identity::{CertificateAuthority, SpiffeId, TrustBundles, TrustDomain, TrustStore};
use federation::mesh::{ClusterView, MeshSnapshot};
use federation::model::{ClusterName, LocalService, Protocol, ServicePort};
use gateway::{Gateway, Settings, TunnelSettings, TunnelStatus};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(15);
const PORT: ServicePort = ServicePort {
    port: 8080,
    protocol: Protocol::Http,
};

struct Cluster {
    name: ClusterName,
    td: TrustDomain,
    ca: CertificateAuthority,
}

impl Cluster {
    fn new(dir: &Path, name: &str) -> Self {
        let td = TrustDomain::parse(&format!("{name}.mesh")).unwrap();
        Self {
            name: ClusterName::new(name).unwrap(),
            ca: CertificateAuthority::load_or_create(&dir.join(name), &td).unwrap(),
            td,
        }
    }

    /// This cluster as a mesh snapshot lists it; `gateway` = its tunnel address, if dialable.
    fn view(&self, gateway: Option<SocketAddr>) -> (ClusterName, ClusterView) {
        let view = ClusterView {
            name: self.name.clone(),
            trust_domain: self.td.to_string(),
            trust_bundle: vec![self.ca.root_der().to_vec()],
            gateways: gateway.into_iter().collect(),
            locality: None,
        };
        (self.name.clone(), view)
    }

    async fn start(&self, trust: &TrustStore, mesh: watch::Receiver<Arc<MeshSnapshot>>) -> Gateway {
        let id = SpiffeId::gateway(&self.td, &format!("{}-1", self.name)).unwrap();
        let svid = self.ca.issue_for(&id, Duration::from_secs(3600)).unwrap();
        let (_svid_tx, svid_rx) = watch::channel(Arc::new(svid));
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let settings = Settings {
            cluster: self.name.clone(),
            tunnel_addr: any,
            outbound_addr: any,
            dns_addr: any,
            tunnel: TunnelSettings {
                keep_alive: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                reconnect_backoff_max: Duration::from_millis(300),
                max_streams: 64,
                max_preamble_bytes: 4096,
            },
            drain_timeout: Duration::from_secs(1),
            busy_poll: Duration::from_micros(500),
            clients: gateway::ClientLimits::default(),
            workload_addr: None,
            attribute_by_address: false,
            root_namespace: "istio-system".into(),
            ca_handoff: None,
        };
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = gateway::metrics::Metrics::register(&mut registry);
        Gateway::start(settings, svid_rx, trust.clone(), mesh, metrics)
            .await
            .unwrap()
    }
}

fn trust(clusters: &[&Cluster]) -> TrustBundles {
    let mut bundles = TrustBundles::new();
    for c in clusters {
        bundles.insert(c.td.clone(), vec![c.ca.root_der()]);
    }
    bundles
}

fn service(key: &str, endpoint: SocketAddr) -> LocalService {
    LocalService {
        endpoint_labels: Default::default(),
        endpoint_accounts: Default::default(),
        key: key.parse().unwrap(),
        ports: vec![PORT],
        endpoints: vec![endpoint],
        export: true,
    }
}

/// An HTTP server answering every request with `body`.
async fn backend(body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_req| async move {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                        Bytes::from_static(body.as_bytes()),
                    )))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    addr
}

/// Status code and body of `GET /` with `Host: host` through the outbound listener.
/// (0, "") when nothing answered within 10 s.
async fn get(outbound: SocketAddr, host: &str) -> (u16, String) {
    let exchange = async {
        let mut tcp = TcpStream::connect(outbound).await?;
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut response = String::new();
        tcp.read_to_string(&mut response).await?;
        std::io::Result::Ok(response)
    };
    let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(10), exchange).await else {
        return (0, String::new());
    };
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// Polls `check` until it returns `Some`, or fails the test with `what` at the deadline.
async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(found) = check().await {
            return found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_exports_and_services_follow_the_mesh_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let east = Cluster::new(dir.path(), "east");
    let west = Cluster::new(dir.path(), "west");
    let west_backend = backend("hello from west").await;
    let east_backend = backend("hello from east").await;

    // West serves echo.demo and accepts east's gateway, which it need not dial.
    let mut west_mesh = MeshSnapshot::default();
    west_mesh
        .clusters
        .extend([west.view(None), east.view(None)]);
    west_mesh.services.insert(
        west.name.clone(),
        vec![Arc::new(service("echo.demo", west_backend))],
    );
    let (_west_tx, west_rx) = watch::channel(Arc::new(west_mesh));
    let west_gw = west.start(&trust(&[&east, &west]).into(), west_rx).await;

    // East starts alone, trusting only itself.
    let east_trust = TrustStore::new(trust(&[&east]));
    let mut alone = MeshSnapshot::default();
    alone.clusters.extend([east.view(None)]);
    let (east_tx, east_rx) = watch::channel(Arc::new(alone.clone()));
    let east_gw = east.start(&east_trust, east_rx).await;
    let outbound = east_gw.addrs().outbound;
    let tunnels = east_gw.tunnels();
    assert_eq!(get(outbound, "echo.demo").await.0, 404);
    assert_eq!(get(outbound, "local.demo").await.0, 404);
    assert!(tunnels.borrow().is_empty());

    // West joins east's mesh (trust first, as the feed does) and a local service appears.
    let west_tunnel = west_gw.addrs().tunnel;
    east_trust.replace(trust(&[&east, &west]));
    let mut joined = alone.clone();
    joined.clusters.extend([west.view(Some(west_tunnel))]);
    joined.exports.insert(
        west.name.clone(),
        Arc::new(BTreeMap::from([("echo.demo".parse().unwrap(), vec![PORT])])),
    );
    joined.services.insert(
        east.name.clone(),
        vec![Arc::new(service("local.demo", east_backend))],
    );
    joined.version = 2;
    east_tx.send_replace(Arc::new(joined));

    let body = eventually("echo.demo is served by west through the tunnel", || async {
        let (status, body) = get(outbound, "echo.demo").await;
        (status == 200).then_some(body)
    })
    .await;
    assert_eq!(body, "hello from west");
    assert_eq!(
        get(outbound, "local.demo").await,
        (200, "hello from east".into())
    );
    let up = TunnelStatus {
        cluster: west.name.clone(),
        address: west_tunnel,
        up: true,
    };
    eventually("the status shows west's tunnel up", || {
        let now = tunnels.borrow().clone();
        let want = vec![up.clone()];
        async move { (now == want).then_some(()) }
    })
    .await;

    // West leaves and the local service is withdrawn: neither is routed any more.
    let mut left = alone;
    left.version = 3;
    east_tx.send_replace(Arc::new(left));
    east_trust.replace(trust(&[&east]));
    eventually("echo.demo is no longer routed", || async {
        (get(outbound, "echo.demo").await.0 == 404).then_some(())
    })
    .await;
    assert_eq!(get(outbound, "local.demo").await.0, 404);
    eventually("the status lists no tunnel", || {
        let empty = tunnels.borrow().is_empty();
        async move { empty.then_some(()) }
    })
    .await;

    east_gw.shutdown().await;
    west_gw.shutdown().await;
}
