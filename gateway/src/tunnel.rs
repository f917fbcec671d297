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

/// Whether the gateway at `peer` (of trust domain `peer_td`) accepts `svid`: a fresh QUIC
/// connection from `bind` presenting it, and a stream the peer answers (a catalog request, or
/// for a gateway of the same cluster an empty rate-limit report). Proves that the peer trusts
/// the CA that signed `svid` (a CA rotation asks this of every gateway before it switches
/// issuance).
pub async fn probe(
    bind: std::net::IpAddr,
    peer: std::net::SocketAddr,
    peer_td: &TrustDomain,
    svid: &Svid,
    trust: &TrustStore,
    timeout: Duration,
) -> Result<(), GatewayError> {
    let sibling = svid.id().trust_domain() == peer_td;
    let request = if sibling {
        StreamRequest::Quota {
            source: svid.id().clone(),
        }
    } else {
        StreamRequest::Catalog {
            source: svid.id().clone(),
        }
    };
    let payload = sibling.then(preamble::QuotaReport::default);
    once::<_, preamble::CaSwitched>(
        bind, peer, peer_td, svid, trust, timeout, request, payload, false,
    )
    .await
    .map(drop)
}

/// Hands the cluster's next CA to `peer`, another gateway of this cluster, during a rotation.
pub async fn hand_next_ca(
    bind: std::net::IpAddr,
    peer: std::net::SocketAddr,
    svid: &Svid,
    trust: &TrustStore,
    timeout: Duration,
    certificate_pem: String,
    key_pem: String,
) -> Result<(), GatewayError> {
    let request = StreamRequest::CaNext {
        source: svid.id().clone(),
    };
    let payload = preamble::CaHandoff {
        certificate_pem,
        key_pem,
    };
    let td = svid.id().trust_domain().clone();
    once::<_, preamble::CaSwitched>(
        bind,
        peer,
        &td,
        svid,
        trust,
        timeout,
        request,
        Some(payload),
        false,
    )
    .await
    .map(drop)
}

/// Asks `peer`, another gateway of this cluster, to switch issuance to the next CA; answers
/// until when what its old CA signed stays valid.
pub async fn ask_switch(
    bind: std::net::IpAddr,
    peer: std::net::SocketAddr,
    svid: &Svid,
    trust: &TrustStore,
    timeout: Duration,
) -> Result<std::time::SystemTime, GatewayError> {
    let request = StreamRequest::CaSwitch {
        source: svid.id().clone(),
    };
    let td = svid.id().trust_domain().clone();
    let switched = once::<preamble::Catalog, preamble::CaSwitched>(
        bind, peer, &td, svid, trust, timeout, request, None, true,
    )
    .await?
    .ok_or_else(|| GatewayError::Tunnel("no switch answer".into()))?;
    Ok(std::time::UNIX_EPOCH + Duration::from_secs(switched.old_signed_until))
}

/// One request on a fresh connection to `peer`: the preamble, then `payload` if any, then
/// the verdict; with `answer`, the frame that follows an accepted verdict.
#[allow(clippy::too_many_arguments)]
async fn once<M: prost::Message, A: prost::Message + Default>(
    bind: std::net::IpAddr,
    peer: std::net::SocketAddr,
    peer_td: &TrustDomain,
    svid: &Svid,
    trust: &TrustStore,
    timeout: Duration,
    request: StreamRequest,
    payload: Option<M>,
    answer: bool,
) -> Result<Option<A>, GatewayError> {
    let endpoint =
        quinn::Endpoint::client(std::net::SocketAddr::new(bind, 0)).map_err(|source| {
            GatewayError::Bind {
                what: "tunnel probe (UDP)",
                addr: std::net::SocketAddr::new(bind, 0),
                source,
            }
        })?;
    let transport = Arc::new(quinn::TransportConfig::default());
    let config = client_config(svid, trust, peer_td, &transport)?;
    let attempt = async {
        let conn = endpoint
            .connect_with(config, peer, "probe.mesh")
            .map_err(|e| GatewayError::Tunnel(e.to_string()))?
            .await
            .map_err(|e| GatewayError::Tunnel(e.to_string()))?;
        // The server judges the client's certificate after the handshake: only an answered
        // stream proves it was accepted.
        let (mut send, mut recv) = conn
            .open_bi()
            .await
            .map_err(|e| GatewayError::Tunnel(e.to_string()))?;
        preamble::write_frame(&mut send, &request.to_preamble()).await?;
        if let Some(payload) = &payload {
            preamble::write_frame(&mut send, payload).await?;
        }
        let _ = send.finish();
        let verdict = preamble::read_verdict(&mut recv).await?;
        if verdict.decision() != VerdictCode::Accepted {
            conn.close(0u32.into(), b"done");
            return Err(GatewayError::Refused(verdict.decision(), verdict.reason));
        }
        let answered = if answer {
            Some(preamble::read_frame::<A>(&mut recv, 1024).await?)
        } else {
            None
        };
        conn.close(0u32.into(), b"done");
        Ok(answered)
    };
    let outcome = tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(GatewayError::Tunnel(format!(
                "no answer within {timeout:?}"
            )))
        });
    endpoint.close(0u32.into(), b"done");
    outcome
}

/// A connection to `addr`, another gateway of this cluster (trust domain `td`), over which
/// only rate-limit demand travels (see `quota`).
pub(crate) async fn dial_sibling(
    dialer: &Dialer,
    addr: std::net::SocketAddr,
    td: &TrustDomain,
) -> Result<quinn::Connection, GatewayError> {
    let svid = dialer.svid.borrow().clone();
    let config = client_config(&svid, &dialer.trust, td, &dialer.transport)?;
    let connecting = dialer
        .endpoint
        .connect_with(config, addr, "sibling.mesh")
        .map_err(|e| GatewayError::Tunnel(e.to_string()))?;
    match tokio::time::timeout(dialer.settings.connect_timeout, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(GatewayError::Tunnel(e.to_string())),
        Err(_) => Err(GatewayError::Tunnel(format!(
            "no handshake within {:?}",
            dialer.settings.connect_timeout
        ))),
    }
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use federation::identity::{CertificateAuthority, SpiffeId, TrustBundles};
    use federation::mesh::{ClusterView, MeshSnapshot};
    use federation::model::{Protocol, ServicePort};

    use super::*;
    use crate::catalog::{NoRoute, TargetKind};
    use crate::follow::{apply, plan};

    fn name(s: &str) -> ClusterName {
        ClusterName::new(s).unwrap()
    }

    fn svid(ca: &CertificateAuthority, gateway: &str) -> Svid {
        let id = SpiffeId::gateway(ca.trust_domain(), gateway).unwrap();
        ca.issue_for(&id, Duration::from_secs(3600)).unwrap()
    }

    fn mesh(west: &[SocketAddr]) -> MeshSnapshot {
        let mut mesh = MeshSnapshot::default();
        for (cluster, gateways) in [
            ("east", vec![SocketAddr::from(([127, 0, 0, 1], 1))]),
            ("west", west.to_vec()),
        ] {
            mesh.clusters.insert(
                name(cluster),
                ClusterView {
                    name: name(cluster),
                    trust_domain: format!("{cluster}.mesh"),
                    trust_bundle: Vec::new(),
                    gateways,
                    locality: None,
                },
            );
        }
        let port = ServicePort {
            port: 80,
            protocol: Protocol::Http,
        };
        mesh.exports.insert(
            name("west"),
            Arc::new([("api.demo".parse().unwrap(), vec![port])].into()),
        );
        mesh
    }

    /// The addresses of the tunnels west's one target carries; none when west is unreachable.
    fn tunnels_to_west(snapshot: &Snapshot) -> Vec<SocketAddr> {
        let service = "api.demo".parse().unwrap();
        let targets = match snapshot.targets(&service, Protocol::Http, None, None) {
            Ok(targets) => targets,
            Err(NoRoute::Unreachable { .. }) => return Vec::new(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(targets.len(), 1, "one target per cluster");
        let TargetKind::Remote { gateways, .. } = &targets[0].kind else {
            panic!("west is remote");
        };
        assert!(!gateways.tunnels.is_empty());
        gateways.tunnels.iter().map(|t| t.address).collect()
    }

    /// Real QUIC tunnels from east to west's two gateways, published by connector number into
    /// the slots `follow` made: each lands in its own gateway's slot, a stale connector's
    /// nowhere; one gateway leaving stops its connector and keeps the other's tunnel.
    #[tokio::test]
    async fn each_gateway_has_its_slot_and_one_leaving_keeps_the_others_tunnel() {
        let dir = tempfile::tempdir().unwrap();
        let east_td = TrustDomain::parse("east.mesh").unwrap();
        let west_td = TrustDomain::parse("west.mesh").unwrap();
        let east_ca =
            CertificateAuthority::load_or_create(&dir.path().join("east"), &east_td).unwrap();
        let west_ca =
            CertificateAuthority::load_or_create(&dir.path().join("west"), &west_td).unwrap();
        let mut bundles = TrustBundles::new();
        bundles.insert(east_td.clone(), vec![east_ca.root_der()]);
        bundles.insert(west_td.clone(), vec![west_ca.root_der()]);
        let trust = TrustStore::new(bundles);
        let settings = TunnelSettings {
            keep_alive: Duration::from_millis(300),
            idle_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            reconnect_backoff_max: Duration::from_secs(1),
            max_streams: 16,
            max_preamble_bytes: 4096,
        };
        let transport = transport(&settings).unwrap();
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut servers = Vec::new();
        for gateway in ["west-1", "west-2"] {
            let config = server_config(&svid(&west_ca, gateway), &trust, &transport).unwrap();
            servers.push(quinn::Endpoint::server(config, loopback).unwrap());
        }
        let client = quinn::Endpoint::client(loopback).unwrap();
        let east_svid = svid(&east_ca, "east-1");
        let mut conns = Vec::new();
        for server in &servers {
            let config = client_config(&east_svid, &trust, &west_td, &transport).unwrap();
            let addr = server.local_addr().unwrap();
            let (dialled, accepted) = tokio::join!(
                async {
                    client
                        .connect_with(config, addr, "west.mesh")
                        .unwrap()
                        .await
                },
                async { server.accept().await.unwrap().await },
            );
            conns.push((addr, dialled.unwrap(), accepted.unwrap()));
        }
        let (w1, w2) = (conns[0].0, conns[1].0);

        let mut number = 0;
        let initial = Snapshot {
            local_cluster: Some(name("east")),
            ..Snapshot::default()
        };
        let (first, changes) = apply(
            &initial,
            &plan(&mesh(&[w1, w2]), &name("east"), None),
            &mut number,
        );
        let started: Vec<_> = changes.start.iter().map(|(p, n)| (p.address, *n)).collect();
        assert_eq!(started, [(w1, 1), (w2, 2)]);
        let (snapshot, _) = watch::channel(Arc::new(first));
        assert!(tunnels_to_west(&snapshot.borrow()).is_empty());

        let west = name("west");
        publish_tunnel(
            &snapshot,
            (&west, 99),
            Some(Tunnel::new(w1, conns[0].1.clone())),
            None,
        );
        assert!(
            tunnels_to_west(&snapshot.borrow()).is_empty(),
            "no slot carries connector 99"
        );
        publish_tunnel(
            &snapshot,
            (&west, 2),
            Some(Tunnel::new(w2, conns[1].1.clone())),
            None,
        );
        assert_eq!(tunnels_to_west(&snapshot.borrow()), [w2]);
        publish_tunnel(
            &snapshot,
            (&west, 1),
            Some(Tunnel::new(w1, conns[0].1.clone())),
            None,
        );
        assert_eq!(tunnels_to_west(&snapshot.borrow()), [w1, w2]);

        // Streams take turns; a stalled tunnel goes last until it answers again.
        let current = snapshot.borrow().clone();
        let targets = current
            .targets(&"api.demo".parse().unwrap(), Protocol::Http, None, None)
            .unwrap();
        let TargetKind::Remote { gateways, .. } = &targets[0].kind else {
            panic!("west is remote");
        };
        let now = tokio::time::Instant::now();
        let firsts: Vec<_> = (0..4).map(|_| gateways.in_turn(now)[0].address).collect();
        assert_eq!(firsts, [w1, w2, w1, w2]);
        gateways.tunnels[0].stalled(now, Duration::from_secs(5));
        let firsts: Vec<_> = (0..2).map(|_| gateways.in_turn(now)[0].address).collect();
        assert_eq!(firsts, [w2, w2]);
        assert_eq!(
            gateways.in_turn(now)[1].address,
            w1,
            "a stalled tunnel is still tried"
        );
        let later = now + Duration::from_secs(5);
        let firsts: Vec<_> = (0..2).map(|_| gateways.in_turn(later)[0].address).collect();
        assert!(firsts.contains(&w1), "the hold ends: {firsts:?}");
        gateways.tunnels[0].answered();
        let firsts: Vec<_> = (0..2).map(|_| gateways.in_turn(now)[0].address).collect();
        assert!(firsts.contains(&w1) && firsts.contains(&w2), "{firsts:?}");

        // West-1 leaves its cluster: its connector stops and its tunnel closes; west-2's stays.
        let (next, changes) = apply(
            &current,
            &plan(&mesh(&[w2]), &name("east"), None),
            &mut number,
        );
        assert!(changes.start.is_empty());
        assert_eq!(changes.stop.len(), 1);
        assert_eq!(
            (
                changes.stop[0].connector,
                changes.stop[0].address,
                changes.stop[0].gone
            ),
            (1, w1, true)
        );
        assert_eq!(changes.close.len(), 1);
        assert_eq!(changes.close[0].0.stable_id(), conns[0].1.stable_id());
        assert_eq!(tunnels_to_west(&next), [w2]);
        let slot = &next.peers[&west].gateways[0];
        assert_eq!(slot.connector, 2);
        assert_eq!(
            slot.live().unwrap().conn.stable_id(),
            conns[1].1.stable_id()
        );

        // With no tunnel left open, the cluster is unreachable.
        conns[1].1.close(0u32.into(), b"test");
        assert!(tunnels_to_west(&next).is_empty());
    }
}
