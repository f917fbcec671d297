//! The receiving side of tunnels: accept connections from peer gateways, check every stream's
//! preamble, and proxy accepted streams to local endpoints.
//!
//! A malformed or refused stream is answered with a verdict (when a verdict can still be sent)
//! and closed; the connection and every other stream on it carry on.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ::http::header::HeaderValue;
use federation::identity::{self, SpiffeId};
use federation::model::{ClusterName, LocalService, Protocol, ServiceKey, ServicePort};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::catalog::Snapshot;
use crate::drain;
use crate::endpoints;
use crate::guard;
use crate::http;
use crate::listen::Throttled;
use crate::metrics::{HandshakeLabels, Metrics, RefusalLabels, Reporter, RequestLabels, TcpLabels};
use crate::policy::outlier::Outcome;
use crate::pool;
use crate::preamble::{
    self, Caller, Catalog, CatalogPort, CatalogService, Preamble, StreamRequest, Verdict,
    VerdictCode,
};

/// A CA hand-over is a certificate and a key in PEM: a few KiB.
const MAX_CA_BYTES: usize = 64 * 1024;

/// How long past the caller's deadline the destination still waits for its endpoint. The
/// caller's own timer started first and answers with its route's message and flag (`UT`); that
/// is the answer a client should see, not a race between two clocks that run out together.
/// The destination's deadline is there to bound the work left behind.
const DEADLINE_GRACE: Duration = Duration::from_millis(100);

/// Header naming the verified caller, set (never passed through) by the destination gateway.
pub const SOURCE_PRINCIPAL_HEADER: &str = "x-causeway-source-principal";
/// Header naming the caller's cluster, set by the destination gateway.
pub const SOURCE_CLUSTER_HEADER: &str = "x-causeway-source-cluster";
/// Header naming the sending gateway (the tunnel peer), set by the destination gateway.
pub const SOURCE_GATEWAY_HEADER: &str = "x-causeway-source-gateway";
/// How the caller's principal was established (`mtls`, `source-address`, `none`), set by the
/// destination gateway.
pub const SOURCE_AUTHN_HEADER: &str = "x-causeway-source-authn";

pub(crate) struct Inbound {
    pub cluster: ClusterName,
    /// Keep-alive connections to local HTTP endpoints, shared with the outbound side.
    pub pool: Arc<pool::Pool>,
    /// How long a peer may take to send a stream's preamble before the stream is closed.
    pub preamble_timeout: Duration,
    /// Also says which clusters' gateways may open tunnels (`clusters_by_domain`).
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub max_preamble_bytes: usize,
    /// Largest rate-limit demand report a peer may send.
    pub max_quota_bytes: usize,
    pub metrics: Metrics,
    pub next_endpoint: AtomicUsize,
    /// Endpoint ejections and requests in flight, kept across snapshots.
    pub policy: Arc<crate::policy::state::PolicyState>,
    /// The mesh's root namespace: its PeerAuthentication and AuthorizationPolicy without a
    /// selector hold for every workload.
    pub root_namespace: String,
    /// Aggregates denial logs: a denied client that retries in a loop is one line a second.
    pub denials: Arc<Throttled>,
    /// This cluster's trust domain: its other gateways may connect to report rate-limit demand.
    pub own_domain: federation::identity::TrustDomain,
    /// This gateway's own SPIFFE ID.
    pub own_id: SpiffeId,
    /// Takes the cluster's next CA from another gateway of the cluster (a rotation).
    pub ca_handoff: Option<Arc<dyn crate::CaHandoff>>,
}

/// Tunnel handshakes in progress at once. Anyone can send QUIC Initials; beyond this many, new
/// ones are refused at once (quinn answers CONNECTION_REFUSED) instead of piling up tasks and
/// memory. Peers retry with back-off, and a handshake takes milliseconds.
const MAX_HANDSHAKES: usize = 256;

pub(crate) async fn accept_loop(
    endpoint: quinn::Endpoint,
    inbound: Arc<Inbound>,
    drain: drain::Watch,
) {
    // Anyone can send QUIC Initials: refusals are counted in
    // `causeway_tunnel_handshake_failures_total` and logged aggregated, never one line each.
    let refused = Throttled::new(|s| tracing::warn!("tunnel handshakes refused: {s}"));
    let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
    loop {
        let incoming = tokio::select! {
            _ = drain.signaled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(incoming) => incoming,
                None => break,
            },
        };
        let Ok(handshake) = handshakes.clone().try_acquire_owned() else {
            count_refused_connection(&inbound);
            let remote = incoming.remote_address();
            if refused.event(|| format!("from {remote}: {MAX_HANDSHAKES} handshakes in progress")) {
                tracing::warn!(%remote, max = MAX_HANDSHAKES, "refused tunnel handshake: too many in progress");
            }
            incoming.refuse();
            continue;
        };
        let inbound = inbound.clone();
        let drain = drain.clone();
        let refused = refused.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let handshaken = incoming.await;
            drop(handshake);
            match handshaken {
                Ok(conn) => serve_connection(conn, inbound, drain, &refused).await,
                Err(e) => {
                    count_refused_connection(&inbound);
                    if refused.event(|| format!("from {remote}: {e}")) {
                        tracing::warn!(%remote, error = %e, "refused tunnel handshake");
                    }
                }
            }
        });
    }
}

/// An incoming connection refused before it could carry streams. Its cluster is unknown: the
/// peer either failed the handshake or is not a peer cluster's gateway.
fn count_refused_connection(inbound: &Inbound) {
    inbound
        .metrics
        .tunnel_handshake_failures
        .get_or_create(&HandshakeLabels {
            peer_cluster: "unknown".into(),
            direction: "inbound",
        })
        .inc();
}

fn peer_id(conn: &quinn::Connection) -> Option<SpiffeId> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<CertificateDer<'static>>>()
        .ok()?;
    identity::peer_spiffe_id(&certs).ok()
}

async fn serve_connection(
    conn: quinn::Connection,
    inbound: Arc<Inbound>,
    drain: drain::Watch,
    refused: &Arc<Throttled>,
) {
    // The verifier already checked the chain; this only reads back what it accepted.
    let Some(peer) = peer_id(&conn) else {
        conn.close(2u32.into(), b"no SPIFFE identity");
        return;
    };
    // Only the gateways of the mesh's other clusters may open tunnels. Any other holder of a
    // trusted SVID (a workload, later an agent) may not: a tunnel peer may assert any
    // principal of its trust domain, which only a gateway is trusted to do.
    let mut snapshots = inbound.snapshot.clone();
    // Another gateway of this cluster may connect too, for one thing only: to report its
    // demand on mesh-wide rate limits (its other streams are refused).
    let sibling =
        peer.trust_domain() == &inbound.own_domain && peer.path().starts_with("/gateway/");
    let peer_cluster = match peer_cluster_of(&snapshots.borrow_and_update(), &peer) {
        Some(cluster) => cluster,
        None if sibling => inbound.cluster.to_string(),
        None => {
            count_refused_connection(&inbound);
            let remote = conn.remote_address();
            if refused
                .event(|| format!("from {remote}: {peer} is not the gateway of a peer cluster"))
            {
                tracing::warn!(%peer, %remote, "refused tunnel: not the gateway of a peer cluster");
            }
            conn.close(3u32.into(), b"not a peer gateway");
            return;
        }
    };
    tracing::debug!(peer = %peer, remote = %conn.remote_address(), "tunnel accepted");
    // While serving, every stream holds a drain watch. Once draining starts the connection
    // stays open for the streams in flight, and new ones are refused with `Draining` at once
    // so the peer moves to another cluster instead of waiting for a verdict.
    let mut serving = Some(drain);
    let mut following = true;
    loop {
        let draining = async {
            match &serving {
                Some(watch) => watch.signaled().await,
                None => std::future::pending().await,
            }
        };
        let accepted = tokio::select! {
            () = draining => {
                serving = None;
                continue;
            }
            // A cluster that leaves the mesh loses its tunnels at once, not at their next
            // handshake (its CA is no longer trusted for those).
            changed = snapshots.changed(), if following && !sibling => {
                if changed.is_err() {
                    following = false;
                } else if peer_cluster_of(&snapshots.borrow_and_update(), &peer).as_ref() != Some(&peer_cluster) {
                    tracing::info!(%peer, cluster = %peer_cluster, "peer cluster left the mesh; closing its tunnel");
                    conn.close(3u32.into(), b"not a peer gateway");
                    break;
                }
                continue;
            }
            s = conn.accept_bi() => s,
        };
        let Ok((send, recv)) = accepted else { break };
        let inbound = inbound.clone();
        let peer = peer.clone();
        let peer_cluster = peer_cluster.clone();
        let remote = conn.remote_address().ip();
        match &serving {
            Some(watch) => {
                let watch = watch.clone();
                tokio::spawn(async move {
                    serve_stream(send, recv, &inbound, &peer, &peer_cluster, remote, sibling).await;
                    drop(watch);
                });
            }
            None => {
                tokio::spawn(async move {
                    refuse_draining(send, &inbound, &peer_cluster).await;
                });
            }
        }
    }
}

/// The cluster whose gateway `peer` is, if it is one of the mesh's other clusters' gateways.
fn peer_cluster_of(snapshot: &Snapshot, peer: &SpiffeId) -> Option<String> {
    let cluster = snapshot.clusters_by_domain.get(peer.trust_domain())?;
    peer.path()
        .starts_with("/gateway/")
        .then(|| cluster.to_string())
}

async fn refuse_draining(mut send: quinn::SendStream, inbound: &Inbound, peer_cluster: &str) {
    count_refusal(inbound, peer_cluster, VerdictCode::Draining);
    let verdict = Verdict::refused(
        VerdictCode::Draining,
        format!("gateway of {} is shutting down", inbound.cluster),
    );
    let _ = preamble::write_frame(&mut send, &verdict).await;
    finish(&mut send, inbound.preamble_timeout).await;
}

fn count_refusal(inbound: &Inbound, peer_cluster: &str, code: VerdictCode) {
    inbound
        .metrics
        .stream_refusals
        .get_or_create(&RefusalLabels {
            peer_cluster: peer_cluster.to_string(),
            reason: code.as_label(),
        })
        .inc();
}

async fn serve_stream(
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
    inbound: &Inbound,
    peer: &SpiffeId,
    peer_cluster: &str,
    remote: std::net::IpAddr,
    sibling: bool,
) {
    let refuse = |code: VerdictCode| count_refusal(inbound, peer_cluster, code);
    // A peer that opens a stream and never speaks must not hold it forever.
    let read = preamble::read_frame(&mut recv, inbound.max_preamble_bytes);
    let read = tokio::time::timeout(inbound.preamble_timeout, read)
        .await
        .unwrap_or_else(|_| {
            Err(preamble::FrameError::Io(
                std::io::ErrorKind::TimedOut.into(),
            ))
        });
    let preamble: Preamble = match read {
        Ok(p) => p,
        Err(e) => {
            // Unreadable: the framing itself is broken, so only closing the stream is safe.
            refuse(VerdictCode::Malformed);
            tracing::debug!(%peer, error = %e, "malformed preamble; closing stream");
            let _ = preamble::write_frame(
                &mut send,
                &Verdict::refused(VerdictCode::Malformed, e.to_string()),
            )
            .await;
            finish(&mut send, inbound.preamble_timeout).await;
            let _ = recv.stop(1u32.into());
            return;
        }
    };
    let snapshot = inbound.snapshot.borrow().clone();
    let decision = StreamRequest::from_preamble(preamble, SystemTime::now())
        .and_then(|req| match req {
            StreamRequest::Quota { .. } => Ok(req),
            StreamRequest::CaNext { .. } | StreamRequest::CaSwitch { .. } if !sibling => {
                Err(Verdict::refused(
                    VerdictCode::Forbidden,
                    "only a gateway of this cluster may hand over or switch its CA",
                ))
            }
            StreamRequest::CaNext { .. } | StreamRequest::CaSwitch { .. } => Ok(req),
            _ if sibling => Err(Verdict::refused(
                VerdictCode::Forbidden,
                "a gateway of this cluster may only report rate-limit demand here: calls \
                 between a cluster's own gateways cross no boundary",
            )),
            _ => Ok(req),
        })
        .and_then(|req| authorize(req, peer))
        .and_then(|req| match &req {
            StreamRequest::Catalog { .. }
            | StreamRequest::Quota { .. }
            | StreamRequest::CaNext { .. }
            | StreamRequest::CaSwitch { .. } => Ok((req, None)),
            StreamRequest::Proxy {
                service,
                port,
                choice,
                ..
            } => local_service(&snapshot, service, *port, choice.subset.as_deref())
                .map(|svc| (req, Some(svc))),
        });
    let (request, service) = match decision {
        Ok(ok) => ok,
        Err(verdict) => {
            refuse(verdict.decision());
            tracing::info!(%peer, code = verdict.decision().as_label(), reason = %verdict.reason, "stream refused");
            let _ = preamble::write_frame(&mut send, &verdict).await;
            finish(&mut send, inbound.preamble_timeout).await;
            return;
        }
    };
    match (request, service) {
        (StreamRequest::Catalog { .. }, _) => {
            let catalog = catalog_of(&snapshot, &inbound.cluster);
            let _ = preamble::write_frame(&mut send, &Verdict::accepted()).await;
            let _ = preamble::write_frame(&mut send, &catalog).await;
            finish(&mut send, inbound.preamble_timeout).await;
        }
        (
            StreamRequest::Proxy {
                service,
                port,
                source,
                authn,
                deadline,
                choice,
                ..
            },
            Some(svc),
        ) => {
            let endpoints = endpoints::choose(
                &snapshot,
                &inbound.policy,
                &svc,
                choice.subset.as_deref(),
                choice.hash,
                &inbound.next_endpoint,
            );
            let upstream = match port.protocol {
                Protocol::Tcp => {
                    connect_endpoint(&svc, &inbound.next_endpoint, inbound.preamble_timeout)
                        .await
                        .map(Local::Tcp)
                }
                Protocol::Http => inbound
                    .pool
                    .checkout_in(&svc.key, &endpoints.order, &endpoints.pool)
                    .await
                    .map(Local::Http),
            };
            let Some(upstream) = upstream else {
                let verdict = Verdict::refused(
                    VerdictCode::EndpointUnavailable,
                    format!(
                        "no endpoint of {service} in cluster {} accepts connections",
                        inbound.cluster
                    ),
                );
                refuse(verdict.decision());
                let _ = preamble::write_frame(&mut send, &verdict).await;
                finish(&mut send, inbound.preamble_timeout).await;
                return;
            };
            let caller = Caller {
                principal: source,
                authn,
            };
            let stream = guard::Stream {
                service: &service,
                svc: &svc,
                endpoint: upstream.addr(),
                port: port.port,
                caller: &caller,
                peer_cluster,
                remote,
                http: port.protocol == Protocol::Http,
            };
            let admitted = match snapshot.guard.admit(
                &stream,
                &inbound.root_namespace,
                &inbound.metrics,
                &inbound.denials,
            ) {
                Ok(admitted) => {
                    if let Some(reason) = &admitted.refused {
                        refuse(VerdictCode::Unauthenticated);
                        if inbound.denials.event(|| format!("{service}: {reason}")) {
                            tracing::info!(%service, caller = %caller.principal, authn = caller.authn.as_label(), cluster = peer_cluster, %reason, "requests refused");
                        }
                    }
                    admitted
                }
                Err(refusal) => {
                    let (code, reason) = match refusal {
                        guard::Refusal::Unauthenticated(why) => (VerdictCode::Unauthenticated, why),
                        guard::Refusal::Forbidden(why) => (VerdictCode::Forbidden, why),
                    };
                    refuse(code);
                    if inbound.denials.event(|| format!("{service}: {reason}")) {
                        tracing::info!(%service, caller = %caller.principal, authn = caller.authn.as_label(), cluster = peer_cluster, %reason, "stream refused");
                    }
                    let _ = preamble::write_frame(&mut send, &Verdict::refused(code, reason)).await;
                    finish(&mut send, inbound.preamble_timeout).await;
                    return;
                }
            };
            if preamble::write_frame(&mut send, &Verdict::accepted())
                .await
                .is_err()
            {
                return;
            }
            let mut stream_io = tokio::io::join(recv, send);
            match upstream {
                Local::Tcp(mut upstream) => {
                    let _open = inbound.metrics.open_tcp(TcpLabels {
                        reporter: Reporter::Destination,
                        source_cluster: peer_cluster.to_string(),
                        destination_cluster: inbound.cluster.to_string(),
                        service: service.to_string(),
                    });
                    let _ = tokio::io::copy_bidirectional(&mut stream_io, &mut upstream).await;
                    let (_, mut send) = stream_io.into_inner();
                    finish(&mut send, inbound.preamble_timeout).await;
                }
                Local::Http(upstream) => {
                    let call = Call {
                        service: &service,
                        endpoints: &endpoints,
                        caller: &caller,
                        gateway: peer,
                        peer_cluster,
                        deadline,
                        stream: &stream,
                        admitted: &admitted,
                    };
                    serve_http(stream_io, upstream, inbound, call).await;
                }
            }
        }
        (StreamRequest::Quota { .. }, _) => {
            let _ = preamble::write_frame(&mut send, &Verdict::accepted()).await;
            let read =
                preamble::read_frame::<preamble::QuotaReport>(&mut recv, inbound.max_quota_bytes);
            match tokio::time::timeout(inbound.preamble_timeout, read).await {
                Ok(Ok(report)) => match quota_report(report) {
                    // A gateway that dialled its own advertised address hears itself: its
                    // demand must not count twice.
                    Ok(_) if peer == &inbound.own_id => {}
                    Ok(report) => inbound.policy.rate_limits.heard(
                        peer.to_string(),
                        report,
                        std::time::Instant::now(),
                    ),
                    Err(why) => {
                        refuse(VerdictCode::Malformed);
                        tracing::debug!(%peer, %why, "malformed quota report; ignored");
                    }
                },
                Ok(Err(e)) => {
                    refuse(VerdictCode::Malformed);
                    tracing::debug!(%peer, error = %e, "unreadable quota report; ignored");
                }
                Err(_) => tracing::debug!(%peer, "quota report did not arrive in time"),
            }
            finish(&mut send, inbound.preamble_timeout).await;
        }
        (StreamRequest::CaNext { .. }, _) => {
            let read = preamble::read_frame::<preamble::CaHandoff>(&mut recv, MAX_CA_BYTES);
            let verdict = match tokio::time::timeout(inbound.preamble_timeout, read).await {
                Ok(Ok(handoff)) => match &inbound.ca_handoff {
                    Some(hook) => {
                        match hook.accept_next(&handoff.certificate_pem, &handoff.key_pem) {
                            Ok(()) => {
                                tracing::info!(%peer, "CA rotation: took the cluster's next CA from another of its gateways");
                                Verdict::accepted()
                            }
                            Err(why) => Verdict::refused(VerdictCode::Forbidden, why),
                        }
                    }
                    None => Verdict::refused(
                        VerdictCode::Forbidden,
                        "this gateway takes no CA hand-over",
                    ),
                },
                Ok(Err(e)) => Verdict::refused(VerdictCode::Malformed, e.to_string()),
                Err(_) => Verdict::refused(VerdictCode::Malformed, "no CA in time"),
            };
            if verdict.decision() != VerdictCode::Accepted {
                refuse(verdict.decision());
                tracing::warn!(%peer, reason = %verdict.reason, "CA hand-over refused");
            }
            let _ = preamble::write_frame(&mut send, &verdict).await;
            finish(&mut send, inbound.preamble_timeout).await;
        }
        (StreamRequest::CaSwitch { .. }, _) => {
            let switched = match &inbound.ca_handoff {
                Some(hook) => hook.switch(),
                None => Err("this gateway takes no CA hand-over".to_string()),
            };
            match switched {
                Ok(until) => {
                    tracing::info!(%peer, "CA rotation: switched issuance to the next CA, as another gateway of this cluster asked");
                    let secs = until
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let _ = preamble::write_frame(&mut send, &Verdict::accepted()).await;
                    let _ = preamble::write_frame(
                        &mut send,
                        &preamble::CaSwitched {
                            old_signed_until: secs,
                        },
                    )
                    .await;
                }
                Err(why) => {
                    refuse(VerdictCode::Forbidden);
                    tracing::warn!(%peer, reason = %why, "CA switch refused");
                    let _ = preamble::write_frame(
                        &mut send,
                        &Verdict::refused(VerdictCode::Forbidden, why),
                    )
                    .await;
                }
            }
            finish(&mut send, inbound.preamble_timeout).await;
        }
        (StreamRequest::Proxy { .. }, None) => {}
    }
}

/// A gateway may only speak for callers of its own trust domain.
fn authorize(req: StreamRequest, peer: &SpiffeId) -> Result<StreamRequest, Verdict> {
    if req.source().trust_domain() != peer.trust_domain() {
        return Err(Verdict::refused(
            VerdictCode::SourceOutsidePeerDomain,
            format!(
                "gateway {peer} may not assert source principal {} outside trust domain {}",
                req.source(),
                peer.trust_domain()
            ),
        ));
    }
    Ok(req)
}

fn local_service(
    snapshot: &Snapshot,
    service: &ServiceKey,
    port: ServicePort,
    subset: Option<&str>,
) -> Result<Arc<LocalService>, Verdict> {
    let svc = snapshot
        .local
        .get(service)
        .filter(|s| s.export)
        .ok_or_else(|| {
            Verdict::refused(
                VerdictCode::UnknownService,
                format!("this cluster exports no service {service}"),
            )
        })?;
    if svc.port(port.port) != Some(port) {
        return Err(Verdict::refused(
            VerdictCode::UnknownService,
            format!(
                "service {service} has no {} port {}",
                port.protocol, port.port
            ),
        ));
    }
    let Some(subset) = subset else {
        return Ok(svc.clone());
    };
    // The subset by this cluster's own reading of the DestinationRule: endpoints never leave
    // their cluster, so only this gateway can pick them. A refusal sends the caller on to
    // the next cluster that runs the subset.
    snapshot
        .policy
        .subset(service, subset)
        .and_then(|view| view.local.clone())
        .ok_or_else(|| {
            Verdict::refused(
                VerdictCode::EndpointUnavailable,
                format!("no endpoint of subset {subset:?} of {service} in this cluster"),
            )
        })
}

/// Tries each endpoint once, starting from a rotating index so load spreads.
/// Tries each endpoint once (each for at most `timeout`, so a blackholed endpoint cannot hold
/// the caller for the kernel's minutes), starting from a rotating index so load spreads.
pub(crate) async fn connect_endpoint(
    svc: &LocalService,
    next: &AtomicUsize,
    timeout: Duration,
) -> Option<TcpStream> {
    let n = svc.endpoints.len();
    let start = next.fetch_add(1, Ordering::Relaxed);
    for i in 0..n {
        let addr: SocketAddr = svc.endpoints[(start + i) % n];
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Some(s);
            }
            Ok(Err(e)) => {
                tracing::warn!(service = %svc.key, endpoint = %addr, error = %e, "endpoint refused connection")
            }
            Err(_) => {
                tracing::warn!(service = %svc.key, endpoint = %addr, ?timeout, "endpoint did not accept in time")
            }
        }
    }
    None
}

/// A peer's demand report, checked: bounded, every demand a finite non-negative rate.
fn quota_report(
    report: preamble::QuotaReport,
) -> Result<std::collections::HashMap<String, f64>, String> {
    use crate::policy::ratelimit::{MAX_REPORT_ENTRIES, MAX_REPORT_KEY};
    if report.entries.len() > MAX_REPORT_ENTRIES {
        return Err(format!(
            "{} entries (at most {MAX_REPORT_ENTRIES})",
            report.entries.len()
        ));
    }
    report
        .entries
        .into_iter()
        .map(|e| {
            if e.key.len() > MAX_REPORT_KEY {
                return Err(format!("a key of {} bytes", e.key.len()));
            }
            if !e.demand.is_finite() || e.demand < 0.0 || e.demand > 1e9 {
                return Err(format!("demand {} for {:?}", e.demand, e.key));
            }
            Ok((e.key, e.demand))
        })
        .collect()
}

/// Who called what, as the accepted preamble says.
struct Call<'a> {
    service: &'a ServiceKey,
    /// The endpoint choice, for outlier detection to hear how it went.
    endpoints: &'a endpoints::Choice,
    caller: &'a Caller,
    /// The sending gateway.
    gateway: &'a SpiffeId,
    peer_cluster: &'a str,
    deadline: Option<SystemTime>,
    /// The stream as the security checks saw it, and what its requests are judged by.
    stream: &'a guard::Stream<'a>,
    admitted: &'a guard::Admitted,
}

/// The local side of an accepted stream, ready before the verdict is sent.
enum Local {
    Tcp(TcpStream),
    Http(pool::Conn),
}

impl Local {
    /// The endpoint it reaches.
    fn addr(&self) -> SocketAddr {
        match self {
            Local::Tcp(s) => s
                .peer_addr()
                .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0))),
            Local::Http(c) => c.addr(),
        }
    }
}

async fn serve_http(
    io: tokio::io::Join<quinn::RecvStream, quinn::SendStream>,
    upstream: pool::Conn,
    inbound: &Inbound,
    call: Call<'_>,
) {
    let Call {
        service,
        endpoints,
        caller,
        gateway,
        peer_cluster,
        deadline,
        stream,
        admitted,
    } = call;
    // One request per stream; the upstream connection made before the verdict serves it.
    let upstream = std::sync::Mutex::new(Some(upstream));
    // The workload's principal as PeerAuthentication left it (none under DISABLE).
    let principal = admitted
        .principal
        .as_ref()
        .and_then(|p| HeaderValue::from_str(p.as_str()).ok());
    let authn = HeaderValue::from_static(if admitted.principal.is_some() {
        caller.authn.as_label()
    } else {
        "none"
    });
    let source_gateway = HeaderValue::from_str(gateway.as_str()).ok();
    let source_cluster = HeaderValue::from_str(peer_cluster).ok();
    let service_fn = hyper::service::service_fn(|mut req: http::Request<Incoming>| {
        // AuthorizationPolicy, per request, on the request as the caller sent it.
        let denied = admitted.refused.is_some()
            || admitted.judged().then(|| {
                let decision = judge(admitted, stream, &req);
                admitted.record(stream, &decision, &inbound.metrics, &inbound.denials);
                !decision.allowed
            }) == Some(true);
        let upstream = if denied {
            None
        } else {
            upstream.lock().ok().and_then(|mut u| u.take())
        };
        let started = Instant::now();
        let headers = req.headers_mut();
        // Overwrite, never trust: only this gateway may vouch for the caller.
        for name in [
            SOURCE_PRINCIPAL_HEADER,
            SOURCE_CLUSTER_HEADER,
            SOURCE_GATEWAY_HEADER,
            SOURCE_AUTHN_HEADER,
        ] {
            headers.remove(name);
        }
        if let Some(v) = &principal {
            headers.insert(SOURCE_PRINCIPAL_HEADER, v.clone());
        }
        headers.insert(SOURCE_AUTHN_HEADER, authn.clone());
        if let Some(v) = &source_gateway {
            headers.insert(SOURCE_GATEWAY_HEADER, v.clone());
        }
        if let Some(v) = &source_cluster {
            headers.insert(SOURCE_CLUSTER_HEADER, v.clone());
        }
        async move {
            // The caller stops waiting at its deadline; so does the upstream call, a moment
            // later (see DEADLINE_GRACE).
            let budget = deadline
                .map(|d| {
                    d.duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO)
                        + DEADLINE_GRACE
                })
                .unwrap_or(Duration::MAX);
            let response = match upstream {
                _ if denied => match &admitted.refused {
                    Some(why) => http::error_response(http::StatusCode::FORBIDDEN, why),
                    None => rbac_denied(),
                },
                Some(conn) => {
                    let addr = conn.addr();
                    let _in_flight = endpoints.in_flight(&inbound.policy, addr);
                    let sent =
                        tokio::time::timeout(budget, inbound.pool.send(conn, req.map(http::boxed)));
                    let (response, outcome) = match sent.await {
                        Ok(Ok(resp)) => {
                            let status = resp.status().as_u16();
                            (resp, Outcome::Status(status))
                        }
                        Ok(Err(e)) => (
                            http::error_response(
                                http::StatusCode::BAD_GATEWAY,
                                &format!("upstream {service} failed: {e}"),
                            ),
                            Outcome::LocalFailure,
                        ),
                        Err(_) => (
                            http::error_response(
                                http::StatusCode::GATEWAY_TIMEOUT,
                                &format!(
                                    "upstream {service} did not answer before the caller's deadline"
                                ),
                            ),
                            Outcome::LocalFailure,
                        ),
                    };
                    let service = service.to_string();
                    endpoints.observe(&inbound.policy, &inbound.metrics, &service, addr, outcome);
                    response
                }
                None => http::error_response(
                    http::StatusCode::BAD_REQUEST,
                    "one request per tunnel stream",
                ),
            };
            let labels = RequestLabels {
                reporter: Reporter::Destination,
                source_cluster: peer_cluster.to_string(),
                destination_cluster: inbound.cluster.to_string(),
                service: service.to_string(),
                destination_subset: endpoints.subset.clone(),
                response_code: response.status().as_u16(),
                response_flags: "-".into(),
            };
            inbound.metrics.requests.get_or_create(&labels).inc();
            inbound
                .metrics
                .request_duration
                .get_or_create(&labels)
                .observe(started.elapsed().as_secs_f64());
            Ok::<_, std::convert::Infallible>(response)
        }
    });
    // half_close: the opener may finish its side of the stream after the request and still
    // expects the response.
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(inbound.preamble_timeout)
        .keep_alive(false)
        .half_close(true)
        .serve_connection(TokioIo::new(io), service_fn)
        .without_shutdown();
    match conn.await {
        Ok(parts) => {
            let (_, mut send) = parts.io.into_inner().into_inner();
            finish(&mut send, inbound.preamble_timeout).await;
        }
        Err(e) => tracing::debug!(error = %e, "tunnel HTTP stream ended with an error"),
    }
}

/// The AuthorizationPolicy decision on one HTTP request.
fn judge<B>(
    admitted: &guard::Admitted,
    stream: &guard::Stream<'_>,
    req: &http::Request<B>,
) -> federation::authz::Decision {
    let headers: Vec<(&str, &str)> = req
        .headers()
        .iter()
        .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?)))
        .collect();
    let host = req
        .headers()
        .get(::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    admitted.decide(
        stream,
        Some(federation::authz::Http {
            host,
            method: req.method().as_str(),
            path,
            headers,
        }),
    )
}

/// Envoy's answer to a request RBAC denies: 403 with this very body.
fn rbac_denied() -> http::Response<http::Body> {
    let mut resp = http::Response::new(http::boxed(http_body_util::Full::new(
        bytes::Bytes::from_static(guard::RBAC_DENIED.as_bytes()),
    )));
    *resp.status_mut() = http::StatusCode::FORBIDDEN;
    resp.headers_mut().insert(
        ::http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    resp
}

/// Ends our side of a stream and waits (bounded) until the peer has received all of it.
///
/// A stream is not finished when its last byte is buffered: closing the endpoint at the end
/// of a drain would discard whatever the peer has not acknowledged yet.
async fn finish(send: &mut quinn::SendStream, timeout: Duration) {
    let _ = send.finish();
    let _ = tokio::time::timeout(timeout, send.stopped()).await;
}

/// The services this cluster offers to others.
fn catalog_of(snapshot: &Snapshot, cluster: &ClusterName) -> Catalog {
    Catalog {
        cluster: cluster.to_string(),
        services: snapshot
            .local
            .values()
            .filter(|s| s.export)
            .map(|s| CatalogService {
                service: s.key.to_string(),
                ports: s
                    .ports
                    .iter()
                    .map(|p| CatalogPort {
                        port: u32::from(p.port),
                        protocol: preamble::wire_protocol(p.protocol) as i32,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// Reads a peer's catalog, skipping (and logging) entries this gateway cannot use.
/// What one peer may export: generous for a real cluster, small enough that a misbehaving
/// peer cannot make this gateway hold or listen on unbounded things.
const MAX_EXPORTED_SERVICES: usize = 10_000;
const MAX_PORTS_PER_SERVICE: usize = 64;

pub(crate) fn exports_from_catalog(
    catalog: &Catalog,
    peer: &ClusterName,
) -> BTreeMap<ServiceKey, Vec<ServicePort>> {
    let mut exports = BTreeMap::new();
    if catalog.services.len() > MAX_EXPORTED_SERVICES {
        tracing::warn!(%peer, services = catalog.services.len(), max = MAX_EXPORTED_SERVICES, "peer exports too many services; ignoring the rest");
    }
    for svc in catalog.services.iter().take(MAX_EXPORTED_SERVICES) {
        let Ok(key) = svc.service.parse::<ServiceKey>() else {
            tracing::warn!(%peer, service = %svc.service, "peer exports an invalid service name; ignored");
            continue;
        };
        let ports = svc
            .ports
            .iter()
            .take(MAX_PORTS_PER_SERVICE)
            .filter_map(|p| {
                let port = u16::try_from(p.port).ok().filter(|p| *p != 0)?;
                let protocol = match preamble::StreamProtocol::try_from(p.protocol).ok()? {
                    preamble::StreamProtocol::Http => Protocol::Http,
                    preamble::StreamProtocol::Tcp => Protocol::Tcp,
                    _ => return None,
                };
                Some(ServicePort { port, protocol })
            })
            .collect();
        exports.insert(key, ports);
    }
    exports
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        /// A peer's demand report is taken whole or refused whole, with a reason; what is
        /// taken holds only finite, non-negative rates of bounded keys.
        #[test]
        fn quota_reports_are_taken_only_when_sane(
            entries in proptest::collection::vec(("\\PC{0,1100}", proptest::num::f64::ANY), 0..8),
        ) {
            let report = preamble::QuotaReport {
                entries: entries
                    .iter()
                    .map(|(key, demand)| preamble::QuotaEntry { key: key.clone(), demand: *demand })
                    .collect(),
            };
            let sane = entries
                .iter()
                .all(|(k, d)| k.len() <= 1024 && d.is_finite() && *d >= 0.0 && *d <= 1e9);
            match quota_report(report) {
                Ok(taken) => {
                    prop_assert!(sane);
                    prop_assert!(taken.values().all(|d| d.is_finite() && *d >= 0.0));
                }
                Err(why) => {
                    prop_assert!(!sane);
                    prop_assert!(!why.is_empty());
                }
            }
        }
    }
}
