//! QUIC tunnels between gateways: one endpoint per gateway, one long-lived connection per peer
//! gateway.
//!
//! The endpoint both accepts (peers dial us on the tunnel port) and dials (one connector task
//! per gateway of each peer cluster keeps a connection up, with backoff; `follow` starts and
//! stops them).
//! Both ends present SVIDs; the rustls verifiers in `federation::identity` refuse unknown trust
//! domains, expired certificates and certificates from the wrong CA before any stream can open.
//! They read the shared [`TrustStore`] on every handshake, so a cluster that joins is trusted
//! from its first handshake on without rebuilding any config.

use std::sync::Arc;
use std::time::Duration;

use federation::identity::{self, Svid, TrustDomain, TrustStore};
use federation::model::ClusterName;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rand::Rng;
use tokio::sync::watch;

use crate::catalog::{Snapshot, Tunnel};
use crate::drain;
use crate::metrics::{HandshakeLabels, Metrics, PeerLabels};
use crate::preamble::{self, Catalog, StreamRequest, VerdictCode};
use crate::{GatewayError, Peer, TunnelSettings};

/// Largest catalog a peer may send; a cluster exports at most thousands of services.
const MAX_CATALOG_BYTES: usize = 4 << 20;

pub(crate) fn transport(
    settings: &TunnelSettings,
) -> Result<Arc<quinn::TransportConfig>, GatewayError> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(settings.keep_alive));
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(settings.idle_timeout)
            .map_err(|_| GatewayError::Config("tunnel.idle_timeout is too large".into()))?,
    ));
    t.max_concurrent_bidi_streams(settings.max_streams.into());
    // Every stream is bidirectional (preamble out, verdict back): peers get no uni streams.
    t.max_concurrent_uni_streams(0u32.into());
    Ok(Arc::new(t))
}

pub(crate) fn server_config(
    svid: &Svid,
    trust: &TrustStore,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, GatewayError> {
    let tls = identity::server_config(svid, trust.clone())?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| GatewayError::Tls(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport.clone());
    Ok(config)
}

fn client_config(
    svid: &Svid,
    trust: &TrustStore,
    peer: &TrustDomain,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, GatewayError> {
    let tls = identity::client_config(svid, trust.clone(), peer)?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| GatewayError::Tls(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport.clone());
    Ok(config)
}

/// Everything a connector needs; shared, immutable.
pub(crate) struct Dialer {
    pub endpoint: quinn::Endpoint,
    pub svid: watch::Receiver<Arc<Svid>>,
    pub trust: TrustStore,
    pub transport: Arc<quinn::TransportConfig>,
    pub settings: TunnelSettings,
    pub snapshot: watch::Sender<Arc<Snapshot>>,
    pub metrics: Metrics,
}

/// Keeps the tunnel to one peer gateway up until draining starts or `follow` aborts it.
/// `number` is the connector's number in its gateway's slot; it publishes nowhere else.
pub(crate) async fn run_connector(
    dialer: Arc<Dialer>,
    peer: Peer,
    number: u64,
    drain: drain::Watch,
) {
    let labels = PeerLabels {
        peer_cluster: peer.cluster.to_string(),
        peer_gateway: peer.address.to_string(),
    };
    let mut failures: u32 = 0;
    loop {
        let attempt = tokio::select! {
            _ = drain.signaled() => return,
            r = connect(&dialer, &peer) => r,
        };
        match attempt {
            Ok(conn) => {
                failures = 0;
                // Learn what the peer exports before routing to it, so a tunnel is never "up"
                // with an unknown catalog. A peer that never answers costs one timeout.
                let fetched = tokio::select! {
                    _ = drain.signaled() => return,
                    r = tokio::time::timeout(dialer.settings.connect_timeout, fetch_catalog(&dialer, &conn, &peer.cluster)) => r,
                };
                let catalog = match fetched {
                    Ok(Ok(catalog)) => catalog,
                    Ok(Err(e)) => {
                        tracing::warn!(peer = %peer.cluster, addr = %peer.address, error = %e, "catalog fetch failed; reconnecting");
                        conn.close(1u32.into(), b"catalog fetch failed");
                        continue_after_backoff(&dialer, &drain, 1).await;
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!(peer = %peer.cluster, addr = %peer.address, "peer sent no catalog in time; reconnecting");
                        conn.close(1u32.into(), b"catalog timeout");
                        continue_after_backoff(&dialer, &drain, 1).await;
                        continue;
                    }
                };
                dialer.metrics.tunnel_connects.get_or_create(&labels).inc();
                dialer.metrics.tunnel_up.get_or_create(&labels).set(1);
                tracing::info!(peer = %peer.cluster, addr = %peer.address, services = catalog.services.len(), "tunnel up");
                publish_tunnel(
                    &dialer.snapshot,
                    (&peer.cluster, number),
                    Some(Tunnel::new(peer.address, conn.clone())),
                    Some(catalog),
                );
                let reason = tokio::select! {
                    _ = drain.signaled() => return,
                    reason = conn.closed() => reason,
                };
                dialer.metrics.tunnel_up.get_or_create(&labels).set(0);
                publish_tunnel(&dialer.snapshot, (&peer.cluster, number), None, None);
                tracing::warn!(peer = %peer.cluster, addr = %peer.address, %reason, "tunnel down");
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(peer = %peer.cluster, addr = %peer.address, error = %e, attempts = failures, "cannot reach peer gateway");
                }
            }
        }
        if !continue_after_backoff(&dialer, &drain, failures).await {
            return;
        }
    }
}

/// Sleeps before the next dial; false if draining started meanwhile.
async fn continue_after_backoff(dialer: &Dialer, drain: &drain::Watch, failures: u32) -> bool {
    let delay = backoff(failures, dialer.settings.reconnect_backoff_max);
    tokio::select! {
        _ = drain.signaled() => false,
        _ = tokio::time::sleep(delay) => true,
    }
}

/// Exponential from 100 ms up to `max`, with jitter so restarted peers do not dial in lockstep.
fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(100).saturating_mul(1 << failures.min(10));
    let capped = base.min(max);
    let jitter = rand::rng().random_range(0.8..1.2);
    capped.mul_f64(jitter)
}

async fn connect(dialer: &Dialer, peer: &Peer) -> Result<quinn::Connection, GatewayError> {
    // Always dial with the newest SVID: rotation reaches new connections without restarts.
    let svid = dialer.svid.borrow().clone();
    let config = client_config(&svid, &dialer.trust, &peer.trust_domain, &dialer.transport)?;
    // The server name is required by the API but never checked: SPIFFE IDs, not DNS names,
    // identify peers.
    let connecting = dialer
        .endpoint
        .connect_with(config, peer.address, &format!("{}.mesh", peer.cluster))
        .map_err(|e| GatewayError::Tunnel(e.to_string()))?;
    let result = tokio::time::timeout(dialer.settings.connect_timeout, connecting).await;
    match result {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            if is_handshake_failure(&e) {
                dialer
                    .metrics
                    .tunnel_handshake_failures
                    .get_or_create(&HandshakeLabels {
                        peer_cluster: peer.cluster.to_string(),
                        direction: "outbound",
                    })
                    .inc();
            }
            Err(GatewayError::Tunnel(e.to_string()))
        }
        Err(_) => Err(GatewayError::Tunnel(format!(
            "no handshake within {:?}",
            dialer.settings.connect_timeout
        ))),
    }
}

pub(crate) fn is_handshake_failure(e: &quinn::ConnectionError) -> bool {
    matches!(
        e,
        quinn::ConnectionError::TransportError(_) | quinn::ConnectionError::ConnectionClosed(_)
    )
}

async fn fetch_catalog(
    dialer: &Dialer,
    conn: &quinn::Connection,
    peer: &ClusterName,
) -> Result<Catalog, GatewayError> {
    let source = dialer.svid.borrow().id().clone();
    let (mut send, mut recv) = conn
        .open_bi()
        .await
        .map_err(|e| GatewayError::Tunnel(e.to_string()))?;
    preamble::write_frame(&mut send, &StreamRequest::Catalog { source }.to_preamble()).await?;
    let verdict = preamble::read_verdict(&mut recv).await?;
    if verdict.decision() != VerdictCode::Accepted {
        return Err(GatewayError::Refused(verdict.decision(), verdict.reason));
    }
    let catalog: Catalog = preamble::read_frame(&mut recv, MAX_CATALOG_BYTES).await?;
    if catalog.cluster != peer.as_str() {
        return Err(GatewayError::Tunnel(format!(
            "peer at this address is cluster {:?}, configured as {peer}",
            catalog.cluster
        )));
    }
    Ok(catalog)
}

/// Records the tunnel of connector `number` (and, on connect, the peer's catalog) in a new
/// snapshot, unless its gateway or cluster left the mesh or another connector took over
/// meanwhile.
fn publish_tunnel(
    snapshot: &watch::Sender<Arc<Snapshot>>,
    (cluster, number): (&ClusterName, u64),
    tunnel: Option<Tunnel>,
    catalog: Option<Catalog>,
) {
    snapshot.send_if_modified(|snap| {
        let ours = |snap: &Snapshot| {
            snap.peers
                .get(cluster)
                .and_then(|view| view.gateways.iter().position(|g| g.connector == number))
        };
        let Some(slot) = ours(snap) else {
            return false;
        };
        let mut next = (**snap).clone();
        if let Some(peer) = next.peers.get_mut(cluster) {
            peer.gateways[slot].tunnel = tunnel;
            // Every gateway of a cluster serves the same replicated catalog; the newest wins.
            if let Some(catalog) = catalog {
                peer.fetched = crate::inbound::exports_from_catalog(&catalog, cluster);
            }
        }
        *snap = Arc::new(next);
        true
    });
}

/// The endpoint's server config, behind a lock shared by rotation and shutdown so a rotation
/// racing with shutdown can never re-open the endpoint to new handshakes.
#[derive(Clone)]
pub(crate) struct ServerIdentity {
    endpoint: quinn::Endpoint,
    closed: Arc<std::sync::Mutex<bool>>,
}

impl ServerIdentity {
    pub fn new(endpoint: quinn::Endpoint) -> Self {
        Self {
            endpoint,
            closed: Arc::default(),
        }
    }

    /// Installs `config` unless the endpoint was closed to new handshakes.
    fn install(&self, config: quinn::ServerConfig) -> bool {
        let closed = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !*closed {
            self.endpoint.set_server_config(Some(config));
        }
        !*closed
    }

    /// Refuses every new handshake from now on.
    pub fn close(&self) {
        let mut closed = self
            .closed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *closed = true;
        self.endpoint.set_server_config(None);
    }
}

/// Swaps the endpoint's server config whenever the SVID rotates. Established connections keep
/// their session; new handshakes see the new certificate.
pub(crate) async fn rotate_server_identity(
    server: ServerIdentity,
    mut svid: watch::Receiver<Arc<Svid>>,
    trust: TrustStore,
    transport: Arc<quinn::TransportConfig>,
    drain: drain::Watch,
) {
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            changed = svid.changed() => if changed.is_err() { return },
        }
        let current = svid.borrow_and_update().clone();
        match server_config(&current, &trust, &transport) {
            Ok(config) => {
                if !server.install(config) {
                    return;
                }
                tracing::info!(id = %current.id(), "tunnel server certificate rotated");
            }
            Err(e) => {
                tracing::error!(error = %e, "rotated SVID unusable; keeping the previous one")
            }
        }
    }
}
