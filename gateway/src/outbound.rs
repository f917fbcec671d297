//! The outbound side: local clients call mesh services here.
//!
//! * HTTP/1.1 on the outbound listener, routed by `Host`: `<svc>.<ns>`, `<svc>.<ns>.mesh`,
//!   `<svc>.<ns>.svc.cluster.local`, or `<svc>.<ns>.<cluster>.mesh` for one cluster.
//! * TCP on a port per service port, on the outbound listener's address; the listeners follow
//!   the catalog as peers come and go.
//!
//! Requests spread round-robin over the clusters whose tunnel is up; a request that cannot
//! even start on one target (stream refused, tunnel gone) moves on to the next.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Instant, SystemTime};

use federation::identity::Svid;
use federation::model::{ClusterName, Protocol, ServiceKey};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::catalog::{NoRoute, Snapshot, Target, TargetKind};
use crate::drain;
use crate::early::{Replayable, VerdictFirst};
use crate::http::{self, Body, StatusCode};
use crate::inbound::connect_endpoint;
use crate::listen::{self, Accepted, ClientLimits, Kind, SharedTimer, TimedIo, Tracked};
use crate::long_line::LongLine;
use crate::metrics::{Metrics, Reporter, RequestLabels, TcpLabels};
use crate::pool;
use crate::preamble::{self, StreamRequest, VerdictCode};
use crate::spin::Spinner;

pub(crate) struct Outbound {
    pub cluster: ClusterName,
    pub pool: Arc<pool::Pool>,
    /// Keeps the runtime polling while a peer gateway's answer is awaited.
    pub spinner: Spinner,
    /// How long a peer may take to answer a preamble with its verdict.
    pub verdict_timeout: std::time::Duration,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub svid: watch::Receiver<Arc<Svid>>,
    pub metrics: Metrics,
    pub next_target: AtomicUsize,
    pub next_endpoint: AtomicUsize,
    /// Timers of HTTP client connections.
    pub limits: ClientLimits,
    /// The client connection budget of the HTTP listener and every TCP service port.
    pub slots: listen::Slots,
}

/// Where a `Host` header points.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HostRoute {
    pub service: ServiceKey,
    pub cluster: Option<ClusterName>,
}

pub(crate) fn parse_host(host: &str) -> Option<HostRoute> {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    // Strip a port, but leave IPv6 literals (which never name a service) to fail below.
    let host = match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_string(),
        _ => host,
    };
    let labels: Vec<&str> = host.split('.').collect();
    let (svc, ns, cluster) = match labels.as_slice() {
        [svc, ns] | [svc, ns, "mesh"] | [svc, ns, "svc", "cluster", "local"] => (*svc, *ns, None),
        [svc, ns, cluster, "mesh"] => (*svc, *ns, Some(ClusterName::new(cluster).ok()?)),
        _ => return None,
    };
    Some(HostRoute {
        service: ServiceKey::new(svc, ns).ok()?,
        cluster,
    })
}

/// The authority a request names, refusing what two parties could read two ways (RFC 9112
/// §3.2): several `Host` headers, an absolute-form target that names another authority than
/// `Host`, a port that is no port.
fn request_host<B>(req: &http::Request<B>) -> Result<String, String> {
    let mut hosts = req.headers().get_all(::http::header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("request has more than one Host header".to_string());
    }
    let header = header
        .map(|h| {
            h.to_str()
                .map_err(|_| "the Host header is not ASCII".to_string())
        })
        .transpose()?;
    let target = req.uri().authority().map(|a| a.as_str());
    let host = match (header, target) {
        (Some(h), Some(t)) if !h.eq_ignore_ascii_case(t) => {
            return Err(format!(
                "the request target names {t:?} but the Host header says {h:?}"
            ));
        }
        (Some(h), _) => h,
        (None, Some(t)) => t,
        (None, None) => return Err("request has no Host header naming a mesh service".into()),
    };
    if let Some((_, port)) = host.rsplit_once(':')
        && !host.ends_with(']')
        && port.parse::<u16>().map_or(true, |p| p == 0)
    {
        return Err(format!("the Host {host:?} has no valid port"));
    }
    Ok(host.to_string())
}

pub(crate) async fn serve_http(
    mut listener: listen::Listener,
    outbound: Arc<Outbound>,
    drain: drain::Watch,
) {
    let refusing = listen::refusing();
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        let (tcp, remote, slot) = match accepted {
            Accepted::Conn(tcp, remote, slot) => (tcp, remote, slot),
            Accepted::Refused(tcp) => {
                listen::refuse_http(tcp, &refusing);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let outbound = outbound.clone();
        let drain = drain.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let timer = SharedTimer::new(&outbound.limits);
            let service = hyper::service::service_fn(|req| {
                // The connection is busy (no idle or header timer) until the response is sent.
                let busy = timer.request();
                let outbound = outbound.clone();
                async move {
                    let resp = route_http(&outbound, req).await;
                    Ok::<_, std::convert::Infallible>(
                        resp.map(|inner| Tracked { inner, _busy: busy }),
                    )
                }
            });
            let io = TokioIo::new(LongLine::new(TimedIo::new(tcp, timer.clone())));
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                why = timer.expired() => {
                    // Dropping the connection closes it; nothing is in progress on it.
                    outbound.metrics.count_refusal(Kind::OutboundHttp.label(), why.reason());
                    tracing::debug!(client = %remote, reason = why.reason(), "closed an HTTP client connection");
                }
                _ = drain.signaled() => {
                    // Finish the request in flight, then close; the drain deadline bounds it.
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            drop(drain);
        });
    }
}

async fn route_http(outbound: &Outbound, mut req: http::Request<Incoming>) -> http::Response<Body> {
    let started = Instant::now();
    let host = match request_host(&req) {
        Ok(host) => host,
        Err(why) => return http::error_response(StatusCode::BAD_REQUEST, &why),
    };
    let Some(route) = parse_host(&host) else {
        return http::error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "Host {host:?} is not a mesh service name (<svc>.<ns>[.mesh], <svc>.<ns>.<cluster>.mesh or <svc>.<ns>.svc.cluster.local)"
            ),
        );
    };
    let snapshot = outbound.snapshot.borrow().clone();
    let targets =
        match snapshot.targets(&route.service, Protocol::Http, None, route.cluster.as_ref()) {
            Ok(found) => found,
            Err(e) => {
                let status = match e {
                    NoRoute::Unknown { .. } => StatusCode::NOT_FOUND,
                    NoRoute::NoPort { .. } => StatusCode::BAD_REQUEST,
                    NoRoute::Unreachable { .. } => StatusCode::SERVICE_UNAVAILABLE,
                };
                record(
                    outbound,
                    &route.service,
                    "unknown",
                    status.as_u16(),
                    started,
                );
                return http::error_response(status, &e.to_string());
            }
        };
    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let deadline = deadline_of(req.headers());
    let headers = req.headers_mut();
    http::strip_hop_by_hop(headers);
    // Only the destination gateway may vouch for a caller; whatever a client sent is dropped,
    // also on the path to a local endpoint.
    headers.remove(crate::inbound::SOURCE_PRINCIPAL_HEADER);
    headers.remove(crate::inbound::SOURCE_CLUSTER_HEADER);
    // A small request is buffered so that it can ride right behind its preamble and be
    // replayed on the next cluster if refused (see `early`); others wait for the verdict.
    let mut client_fault = None;
    let mut req = match Replayable::buffer(req).await {
        Ok(Ok(replayable)) => Pending::Replayable(replayable),
        Ok(Err((streaming, fault))) => {
            client_fault = Some(fault);
            Pending::Streaming(Some(streaming))
        }
        Err(e) => {
            record(outbound, &route.service, "unknown", 400, started);
            return http::error_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {e}"),
            );
        }
    };
    let start = outbound.next_target.fetch_add(1, Ordering::Relaxed);
    let mut last_error = String::new();
    for i in 0..targets.len() {
        let target = &targets[(start + i) % targets.len()];
        let dest = target.cluster(&outbound.cluster).to_string();
        let sent = match (&target.kind, &mut req) {
            (TargetKind::Remote { conn, .. }, Pending::Replayable(r)) => {
                match send_early(
                    outbound,
                    conn,
                    target,
                    &route.service,
                    r,
                    traceparent.clone(),
                    deadline,
                )
                .await
                {
                    Early::Answered(resp) => Ok(resp),
                    Early::Failed(e) => Err(e),
                    Early::TryNext(e) => {
                        tracing::debug!(service = %route.service, cluster = %dest, error = %e, "target refused; trying the next");
                        last_error = format!("{dest}: {e}");
                        continue;
                    }
                }
            }
            (_, pending) => {
                let io = match open(
                    outbound,
                    target,
                    &route.service,
                    traceparent.clone(),
                    deadline,
                )
                .await
                {
                    Ok(io) => io,
                    Err(e) => {
                        tracing::debug!(service = %route.service, cluster = %dest, error = %e, "target unavailable; trying the next");
                        last_error = format!("{dest}: {e}");
                        continue;
                    }
                };
                let Some(request) = pending.take() else { break };
                match io {
                    Upstream::Pooled(conn) => outbound
                        .pool
                        .send(conn, request)
                        .await
                        .map_err(|e| e.to_string()),
                    Upstream::Stream(io) => {
                        let _awaiting = outbound.spinner.awaiting();
                        http::send(io, request)
                            .await
                            .map(|r| r.map(http::boxed))
                            .map_err(|e| e.to_string())
                    }
                }
            }
        };
        let client_failed = client_fault.as_ref().and_then(|f| f.get());
        let response = match (sent, client_failed) {
            // The client's own body broke the forward (a malformed chunk): its fault, not the
            // upstream's.
            (Err(_), Some(why)) => http::error_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {why}"),
            ),
            (Ok(resp), _) => resp,
            (Err(e), None) => http::error_response(
                StatusCode::BAD_GATEWAY,
                &format!("{} in {dest} failed: {e}", route.service),
            ),
        };
        record(
            outbound,
            &route.service,
            &dest,
            response.status().as_u16(),
            started,
        );
        return response;
    }
    record(outbound, &route.service, "unknown", 503, started);
    http::error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!(
            "no cluster serving {} accepted the request ({last_error})",
            route.service
        ),
    )
}

/// A request not yet sent: replayable (buffered), or streaming (sent once, verdict first).
enum Pending {
    Replayable(Replayable),
    Streaming(Option<http::Request<Body>>),
}

impl Pending {
    fn take(&mut self) -> Option<http::Request<Body>> {
        match self {
            Pending::Replayable(r) => Some(r.request()),
            Pending::Streaming(req) => req.take(),
        }
    }
}

/// How an early request ended.
enum Early {
    /// The peer accepted and answered.
    Answered(http::Response<Body>),
    /// Refused, or failed before the peer could have acted on it: the next cluster may try.
    TryNext(String),
    /// Accepted (or possibly acted on) and then failed: not to be sent again.
    Failed(String),
}

/// The preamble for proxying to `target`, on behalf of this gateway's callers.
fn proxy_request(
    outbound: &Outbound,
    target: &Target,
    service: &ServiceKey,
    traceparent: Option<String>,
    deadline: Option<SystemTime>,
) -> StreamRequest {
    StreamRequest::Proxy {
        service: service.clone(),
        port: target.port,
        source: outbound.svid.borrow().id().clone(),
        deadline,
        traceparent,
        choice: preamble::RouteChoice {
            attempt: 1,
            ..Default::default()
        },
    }
}

/// Opens a tunnel stream and writes its preamble.
async fn open_stream(
    conn: &quinn::Connection,
    request: &StreamRequest,
) -> Result<(quinn::SendStream, quinn::RecvStream), String> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    preamble::write_frame(&mut send, &request.to_preamble())
        .await
        .map_err(|e| e.to_string())?;
    Ok((send, recv))
}

/// Sends a replayable request right behind its preamble; see `early`.
async fn send_early(
    outbound: &Outbound,
    conn: &quinn::Connection,
    target: &Target,
    service: &ServiceKey,
    replayable: &Replayable,
    traceparent: Option<String>,
    deadline: Option<SystemTime>,
) -> Early {
    let request = proxy_request(outbound, target, service, traceparent, deadline);
    let opened = tokio::time::timeout(outbound.verdict_timeout, open_stream(conn, &request)).await;
    let (send, recv) = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Early::TryNext(format!("tunnel: {e}")),
        Err(_) => {
            return Early::TryNext(format!(
                "tunnel: no stream within {:?}",
                outbound.verdict_timeout
            ));
        }
    };
    let (recv, seen) = VerdictFirst::new(recv, outbound.verdict_timeout);
    let awaiting = outbound.spinner.awaiting();
    let result = http::send(tokio::io::join(recv, send), replayable.request()).await;
    drop(awaiting);
    let verdict = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .take();
    match (result, verdict) {
        (Ok(resp), _) => Early::Answered(resp.map(http::boxed)),
        (Err(_), Some(v)) if v.decision() != VerdictCode::Accepted => Early::TryNext(format!(
            "refused by the peer gateway ({}): {}",
            v.decision().as_label(),
            v.reason
        )),
        (Err(e), None) if replayable.idempotent() => Early::TryNext(format!("tunnel: {e}")),
        // A gateway that shuts down closes its endpoint only once every stream it accepted has
        // finished: a stream still without a verdict then was never acted on, so even a POST
        // may go to the next cluster.
        (Err(e), None) if closed_by_shutdown(conn) => {
            Early::TryNext(format!("tunnel: {e} (the peer gateway shut down)"))
        }
        (Err(e), _) => Early::Failed(e.to_string()),
    }
}

/// Whether the peer closed `conn` because it shut down (see [`crate::Gateway::shutdown`]).
fn closed_by_shutdown(conn: &quinn::Connection) -> bool {
    matches!(
        conn.close_reason(),
        Some(quinn::ConnectionError::ApplicationClosed(close))
            if close.error_code == crate::SHUTDOWN_CLOSE_CODE.into()
    )
}

/// Envoy's per-request timeout header, which Istio users already send.
const TIMEOUT_HEADER: &str = "x-envoy-upstream-rq-timeout-ms";

/// The caller's deadline, from [`TIMEOUT_HEADER`] if present. It travels in the preamble and
/// bounds the destination's call to its endpoint.
fn deadline_of(headers: &::http::HeaderMap) -> Option<SystemTime> {
    let ms: u64 = headers
        .get(TIMEOUT_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (ms > 0).then(|| SystemTime::now() + std::time::Duration::from_millis(ms))
}

fn record(outbound: &Outbound, service: &ServiceKey, dest: &str, code: u16, started: Instant) {
    let labels = RequestLabels {
        reporter: Reporter::Source,
        source_cluster: outbound.cluster.to_string(),
        destination_cluster: dest.to_string(),
        service: service.to_string(),
        response_code: code,
    };
    outbound.metrics.requests.get_or_create(&labels).inc();
    outbound
        .metrics
        .request_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
}

/// A byte stream to `target` on which the payload may flow: a local endpoint connection, or a
/// tunnel stream whose preamble the peer accepted.
pub(crate) enum Upstream {
    Stream(Stream),
    /// A keep-alive connection to a local HTTP endpoint.
    Pooled(pool::Conn),
}

/// A byte stream: TCP to a local endpoint, or an accepted tunnel stream.
pub(crate) enum Stream {
    Local(TcpStream),
    Tunnel(tokio::io::Join<quinn::RecvStream, quinn::SendStream>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Local(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tunnel(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Local(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tunnel(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Local(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tunnel(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Local(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tunnel(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    /// No local endpoint accepted a connection.
    #[error("no local endpoint accepts connections")]
    NoEndpoint,
    /// The tunnel could not open a stream.
    #[error("tunnel: {0}")]
    Tunnel(String),
    /// The peer gateway refused the stream.
    #[error("refused by the peer gateway ({}): {}", .0.as_label(), .1)]
    Refused(VerdictCode, String),
}

pub(crate) async fn open(
    outbound: &Outbound,
    target: &Target,
    service: &ServiceKey,
    traceparent: Option<String>,
    deadline: Option<SystemTime>,
) -> Result<Upstream, OpenError> {
    let opening = async {
        match &target.kind {
            TargetKind::Local(svc) if target.port.protocol == Protocol::Http => outbound
                .pool
                .checkout(svc)
                .await
                .map(Upstream::Pooled)
                .ok_or(OpenError::NoEndpoint),
            TargetKind::Local(svc) => {
                connect_endpoint(svc, &outbound.next_endpoint, outbound.verdict_timeout)
                    .await
                    .map(|s| Upstream::Stream(Stream::Local(s)))
                    .ok_or(OpenError::NoEndpoint)
            }
            TargetKind::Remote { conn, .. } => {
                let request = proxy_request(outbound, target, service, traceparent, deadline);
                let (send, mut recv) = open_stream(conn, &request)
                    .await
                    .map_err(OpenError::Tunnel)?;
                let verdict = preamble::read_verdict(&mut recv)
                    .await
                    .map_err(|e| OpenError::Tunnel(e.to_string()))?;
                match verdict.decision() {
                    VerdictCode::Accepted => Ok(Upstream::Stream(Stream::Tunnel(tokio::io::join(
                        recv, send,
                    )))),
                    code => Err(OpenError::Refused(code, verdict.reason)),
                }
            }
        }
    };
    // Bounds every step, including waiting for stream credit on a saturated tunnel, so a stuck
    // target costs one timeout and the request moves on to the next.
    tokio::time::timeout(outbound.verdict_timeout, opening)
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::Tunnel(format!(
                "no verdict within {:?}",
                outbound.verdict_timeout
            )))
        })
}

/// Keeps one TCP listener per (service, TCP port) on the outbound address in step with the
/// catalog.
pub(crate) async fn run_tcp_listeners(
    outbound: Arc<Outbound>,
    ip: std::net::IpAddr,
    drain: drain::Watch,
) {
    let mut snapshots = outbound.snapshot.clone();
    let mut running: BTreeMap<u16, (ServiceKey, JoinHandle<()>)> = BTreeMap::new();
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        let (wanted, clashes) = snapshot.tcp_ports();
        for (service, port) in clashes {
            tracing::error!(%service, port, "TCP port already offered for another service; not listening for this one");
        }
        running.retain(|port, (service, task)| {
            let keep = wanted.get(port) == Some(service) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for (port, service) in wanted {
            if running.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(ip, port);
            match TcpListener::bind(addr).await {
                Ok(listener) => {
                    tracing::info!(%service, %addr, "listening for TCP service");
                    let listener = listen::Listener::new(
                        listener,
                        Kind::OutboundTcp,
                        outbound.slots.clone(),
                        outbound.metrics.clone(),
                    );
                    let task = tokio::spawn(serve_tcp(
                        listener,
                        outbound.clone(),
                        service.clone(),
                        port,
                        drain.clone(),
                    ));
                    running.insert(port, (service, task));
                }
                Err(e) => {
                    tracing::error!(%service, %addr, error = %e, "cannot listen for TCP service")
                }
            }
        }
        tokio::select! {
            _ = drain.signaled() => break,
            changed = snapshots.changed() => if changed.is_err() { break },
        }
    }
    for (_, (_, task)) in running {
        task.abort();
    }
}

async fn serve_tcp(
    mut listener: listen::Listener,
    outbound: Arc<Outbound>,
    service: ServiceKey,
    port: u16,
    drain: drain::Watch,
) {
    loop {
        let accepted = tokio::select! {
            _ = drain.signaled() => return,
            accepted = listener.accept() => accepted,
        };
        // Over the cap a raw TCP client can only be closed.
        let Accepted::Conn(client, peer, slot) = accepted else {
            continue;
        };
        let outbound = outbound.clone();
        let service = service.clone();
        let watch = drain.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = proxy_tcp(client, &outbound, &service, port).await {
                tracing::info!(%service, client = %peer, error = %e, "TCP connection not proxied");
            }
            drop(watch);
        });
    }
}

async fn proxy_tcp(
    mut client: TcpStream,
    outbound: &Outbound,
    service: &ServiceKey,
    port: u16,
) -> Result<(), String> {
    let _ = client.set_nodelay(true);
    let snapshot = outbound.snapshot.borrow().clone();
    let targets = snapshot
        .targets(service, Protocol::Tcp, Some(port), None)
        .map_err(|e| e.to_string())?;
    let start = outbound.next_target.fetch_add(1, Ordering::Relaxed);
    let mut errors = Vec::new();
    for i in 0..targets.len() {
        let target = &targets[(start + i) % targets.len()];
        let dest = target.cluster(&outbound.cluster).to_string();
        match open(outbound, target, service, None, None).await {
            Ok(Upstream::Pooled(_)) => {
                // open() pools only HTTP targets; a TCP port never gets one.
                errors.push(format!("{dest}: not a TCP target"));
            }
            Ok(Upstream::Stream(mut upstream)) => {
                let _open = outbound.metrics.open_tcp(TcpLabels {
                    reporter: Reporter::Source,
                    source_cluster: outbound.cluster.to_string(),
                    destination_cluster: dest,
                    service: service.to_string(),
                });
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                return Ok(());
            }
            Err(e) => errors.push(format!("{dest}: {e}")),
        }
    }
    Err(format!(
        "no cluster accepted the connection ({})",
        errors.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, hosts: &[&str]) -> http::Request<()> {
        let mut builder = ::http::Request::builder().uri(target);
        for h in hosts {
            builder = builder.header(::http::header::HOST, *h);
        }
        builder.body(()).unwrap()
    }

    #[test]
    fn ambiguous_hosts_are_refused() {
        assert_eq!(
            request_host(&request("/", &["echo.demo"])).unwrap(),
            "echo.demo"
        );
        assert_eq!(
            request_host(&request("http://echo.demo/x", &[])).unwrap(),
            "echo.demo"
        );
        assert_eq!(
            request_host(&request("http://Echo.Demo:80/x", &["echo.demo:80"])).unwrap(),
            "echo.demo:80"
        );
        assert_eq!(
            request_host(&request("/", &["[::1]:8080"])).unwrap(),
            "[::1]:8080"
        );
        for (target, hosts, why) in [
            ("/", &["a.b", "c.d"][..], "more than one Host"),
            ("/", &["a.b", "a.b"], "more than one Host"),
            (
                "http://other.ns/",
                &["echo.demo"],
                "the request target names",
            ),
            ("/", &["x:99999"], "no valid port"),
            ("/", &["x:0"], "no valid port"),
            ("/", &["x:"], "no valid port"),
            ("/", &[], "no Host header"),
        ] {
            let err = request_host(&request(target, hosts)).unwrap_err();
            assert!(err.contains(why), "{target} {hosts:?}: {err}");
        }
    }

    #[test]
    fn host_forms() {
        let any = |h: &str| {
            parse_host(h).map(|r| (r.service.to_string(), r.cluster.map(|c| c.to_string())))
        };
        assert_eq!(any("echo.demo"), Some(("echo.demo".into(), None)));
        assert_eq!(
            any("echo.demo.mesh:15001"),
            Some(("echo.demo".into(), None))
        );
        assert_eq!(
            any("Echo.Demo.svc.cluster.local."),
            Some(("echo.demo".into(), None))
        );
        assert_eq!(
            any("echo.demo.west.mesh"),
            Some(("echo.demo".into(), Some("west".into())))
        );
        assert_eq!(any("127.0.0.1:15001"), None);
        assert_eq!(any("www.example.com"), None);
        assert_eq!(any("a.b.c.d.e.f"), None);
        assert_eq!(any("[::1]:15001"), None);
    }
}
