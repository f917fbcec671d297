//! The workload listener (15008): workloads of this cluster call the mesh over mutual TLS with
//! their own SVID, so the principal that crosses the boundary is theirs.
//!
//! ```text
//!  workload --TLS 1.3, client SVID spiffe://<own td>/ns/<ns>/sa/<sa>--> 15008
//!     HTTP/1.1 request, routed by Host  ──► the outbound HTTP path, caller = that SVID
//!     CONNECT <svc>.<ns>[.mesh]:<port>  ──► the outbound TCP path (as HBONE carries TCP)
//! ```
//!
//! Only SVIDs of this cluster's trust domain with a workload path are admitted: a workload of
//! another cluster calls through its own gateway, and a gateway's or admin's certificate is no
//! workload's. The gateway presents its own SVID (rotated with it); a workload verifies it as
//! an X.509-SVID of its trust domain.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use federation::identity::{self, IdentityError, Svid, TrustDomain, TrustStore};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::drain;
use crate::http::{self, StatusCode};
use crate::listen::{self, Accepted, SharedTimer, Throttled, TimedIo, Tracked};
use crate::metrics::WorkloadRefusalLabels;
use crate::outbound::{self, Outbound};
use crate::preamble::{Caller, SourceAuthn, workload_path};

/// The TLS server config for the current SVID, rebuilt when it rotates.
pub(crate) struct Tls {
    svid: watch::Receiver<Arc<Svid>>,
    trust: TrustStore,
    built: Mutex<Option<(Arc<Svid>, Arc<ServerConfig>)>>,
}

impl Tls {
    pub fn new(svid: watch::Receiver<Arc<Svid>>, trust: TrustStore) -> Result<Self, IdentityError> {
        let tls = Tls {
            svid,
            trust,
            built: Mutex::new(None),
        };
        tls.config()?;
        Ok(tls)
    }

    fn config(&self) -> Result<Arc<ServerConfig>, IdentityError> {
        let svid = self.svid.borrow().clone();
        let mut built = self.built.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((from, config)) = built.as_ref()
            && Arc::ptr_eq(from, &svid)
        {
            return Ok(config.clone());
        }
        let config = Arc::new(identity::server_config_with_alpn(
            &svid,
            self.trust.clone(),
            &[b"http/1.1"],
        )?);
        *built = Some((svid, config.clone()));
        Ok(config)
    }
}

pub(crate) async fn serve(
    mut listener: listen::Listener,
    tls: Arc<Tls>,
    own_domain: TrustDomain,
    outbound: Arc<Outbound>,
    handshake_timeout: Duration,
    drain: drain::Watch,
) {
    let refused = Throttled::new(|s| tracing::warn!("workload connections refused: {s}"));
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        // Over the cap a TLS client can only be closed.
        let Accepted::Conn(tcp, remote, slot) = accepted else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let config = match tls.config() {
            Ok(config) => config,
            Err(e) => {
                tracing::error!(error = %e, "workload listener has no usable certificate");
                continue;
            }
        };
        let (outbound, drain, refused, own_domain) = (
            outbound.clone(),
            drain.clone(),
            refused.clone(),
            own_domain.clone(),
        );
        tokio::spawn(async move {
            let _slot = slot;
            let acceptor = tokio_rustls::TlsAcceptor::from(config);
            let handshake = tokio::time::timeout(handshake_timeout, acceptor.accept(tcp)).await;
            let count = |reason| {
                outbound
                    .metrics
                    .workload_refusals
                    .get_or_create(&WorkloadRefusalLabels { reason })
                    .inc();
            };
            let tls = match handshake {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    let reason = e
                        .get_ref()
                        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                        .map_or("handshake", identity::refusal_reason);
                    count(reason);
                    if refused.event(|| format!("from {remote}: {e}")) {
                        tracing::warn!(client = %remote, error = %e, reason, "workload TLS handshake failed");
                    }
                    return;
                }
                Err(_) => {
                    count("timeout");
                    if refused.event(|| format!("from {remote}: handshake timed out")) {
                        tracing::warn!(client = %remote, ?handshake_timeout, "workload TLS handshake timed out");
                    }
                    return;
                }
            };
            let certs = tls.get_ref().1.peer_certificates().unwrap_or_default();
            let id = match identity::peer_spiffe_id(certs) {
                Ok(id) => id,
                Err(e) => {
                    count("not_a_workload");
                    if refused.event(|| format!("from {remote}: {e}")) {
                        tracing::warn!(client = %remote, error = %e, "workload presented no SPIFFE ID");
                    }
                    return;
                }
            };
            if id.trust_domain() != &own_domain || workload_path(id.path()).is_none() {
                count(if id.trust_domain() != &own_domain {
                    "foreign_trust_domain"
                } else {
                    "not_a_workload"
                });
                if refused.event(|| format!("from {remote}: {id}")) {
                    tracing::warn!(client = %remote, %id, trust_domain = %own_domain, "refused workload connection: not a workload identity of this cluster (spiffe://<td>/ns/<ns>/sa/<sa>)");
                }
                return;
            }
            tracing::debug!(client = %remote, %id, "workload connected");
            let caller = Caller {
                principal: id,
                authn: SourceAuthn::Mtls,
            };
            serve_connection(tls, remote, caller, &outbound, drain).await;
        });
    }
}

async fn serve_connection(
    tls: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    remote: SocketAddr,
    caller: Caller,
    outbound: &Arc<Outbound>,
    drain: drain::Watch,
) {
    let timer = SharedTimer::new(&outbound.limits);
    let service = hyper::service::service_fn(|req: http::Request<Incoming>| {
        let busy = timer.request();
        let outbound = outbound.clone();
        let caller = caller.clone();
        async move {
            let resp = if req.method() == ::http::Method::CONNECT {
                connect(req, outbound, caller).await
            } else {
                outbound::route_http(&outbound, req, remote, caller).await
            };
            Ok::<_, std::convert::Infallible>(resp.map(|inner| Tracked { inner, _busy: busy }))
        }
    });
    let io = TokioIo::new(TimedIo::new(tls, timer.clone()));
    let conn = hyper::server::conn::http1::Builder::new()
        .serve_connection(io, service)
        .with_upgrades();
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        why = timer.expired() => {
            outbound.metrics.count_refusal(listen::Kind::Workload.label(), why.reason());
        }
        _ = drain.signaled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

/// `CONNECT <svc>.<ns>[.mesh]:<port>`: a TCP stream to that service port, as the TCP service
/// listeners carry one, with the workload as the caller.
async fn connect(
    req: http::Request<Incoming>,
    outbound: Arc<Outbound>,
    caller: Caller,
) -> http::Response<http::Body> {
    let Some(authority) = req.uri().authority().cloned() else {
        return http::error_response(
            StatusCode::BAD_REQUEST,
            "CONNECT needs a target <svc>.<ns>:<port>",
        );
    };
    let Some(port) = authority.port_u16().filter(|p| *p != 0) else {
        return http::error_response(
            StatusCode::BAD_REQUEST,
            &format!("CONNECT target {authority} has no port"),
        );
    };
    let Some(target) = outbound::parse_host(authority.host()) else {
        return http::error_response(
            StatusCode::NOT_FOUND,
            &format!("CONNECT target {authority} is not a mesh service name"),
        );
    };
    let service = target.service;
    tokio::spawn(async move {
        match hyper::upgrade::on(req).await {
            Ok(upgraded) => {
                let io = TokioIo::new(upgraded);
                if let Err(e) = outbound::proxy_tcp(io, &outbound, &service, port, caller).await {
                    tracing::info!(%service, port, error = %e, "workload TCP stream not proxied");
                }
            }
            Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
        }
    });
    let mut resp = http::Response::new(http::boxed(http_body_util::Empty::new()));
    *resp.status_mut() = StatusCode::OK;
    resp
}
