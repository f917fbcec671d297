//! The outbound side: local clients call mesh services here.
//!
//! * HTTP/1.1 on the outbound listener, routed by `Host`: `<svc>.<ns>`, `<svc>.<ns>.mesh`,
//!   `<svc>.<ns>.svc.cluster.local`, or `<svc>.<ns>.<cluster>.mesh` for one cluster.
//! * TCP on a port per service port, on the outbound listener's address; the listeners follow
//!   the catalog as peers come and go.
//!
//! Requests spread round-robin over the clusters whose tunnel is up, and within a cluster over
//! its gateways' tunnels; a request that cannot even start on one gateway (stream refused,
//! tunnel gone, no verdict in time) moves on to the cluster's next gateway, then to the next
//! cluster.

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

use federation::traffic::{LoadBalancer, RouteAction};

use crate::catalog::{Gateways, Snapshot, Target, TargetKind, Tunnel};
use crate::drain;
use crate::early::{Replayable, VerdictFirst};
use crate::forward::{self, Call, Ended, Flags, Pending};
use crate::http::{self, Body, StatusCode};
use crate::inbound::connect_endpoint;
use crate::listen::{self, Accepted, ClientLimits, Kind, SharedTimer, TimedIo, Tracked};
use crate::long_line::LongLine;
use crate::metrics::{Metrics, Reporter, RequestLabels, TcpLabels};
use crate::mirror;
use crate::policy::{self, Random, ThreadRandom};
use crate::pool;
use crate::preamble::{self, Caller, RouteChoice, SourceAuthn, StreamRequest, VerdictCode};
use crate::routing::{self, RequestView};
use crate::spin::Spinner;

pub(crate) struct Outbound {
    pub cluster: ClusterName,
    pub pool: Arc<pool::Pool>,
    /// Keeps the runtime polling while a peer gateway's answer is awaited.
    pub spinner: Spinner,
    /// How long a peer may take to answer a preamble with its verdict.
    pub verdict_timeout: std::time::Duration,
    /// How long a tunnel that left a stream without a verdict goes last among its cluster's
    /// gateways: the tunnel idle timeout, by which QUIC has closed it if the peer died.
    pub stall_hold: std::time::Duration,
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub svid: watch::Receiver<Arc<Svid>>,
    pub metrics: Metrics,
    pub next_target: AtomicUsize,
    pub next_endpoint: AtomicUsize,
    /// Timers of HTTP client connections.
    pub limits: ClientLimits,
    /// The client connection budget of the HTTP listener and every TCP service port.
    pub slots: listen::Slots,
    /// Retry budgets, outlier detection and pool limits, kept across snapshots.
    pub policy: Arc<policy::state::PolicyState>,
    /// Mirrored requests in flight (see `mirror`).
    pub mirrors: Arc<tokio::sync::Semaphore>,
    /// Plaintext clients are attributed to the workload registered at their address
    /// (`[workloads] trust_source_address`).
    pub attribute_by_address: bool,
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
                    let caller = outbound.caller_at(remote.ip());
                    let resp = route_http(&outbound, req, remote, caller).await;
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

pub(crate) async fn route_http(
    outbound: &Arc<Outbound>,
    mut req: http::Request<Incoming>,
    client: SocketAddr,
    caller: Caller,
) -> http::Response<Body> {
    let started = Instant::now();
    let host = match request_host(&req) {
        Ok(host) => host,
        Err(why) => return http::error_response(StatusCode::BAD_REQUEST, &why),
    };
    let Some(target) = parse_host(&host) else {
        return http::error_response(
            StatusCode::NOT_FOUND,
            &format!(
                "Host {host:?} is not a mesh service name (<svc>.<ns>[.mesh], <svc>.<ns>.<cluster>.mesh or <svc>.<ns>.svc.cluster.local)"
            ),
        );
    };
    let snapshot = outbound.snapshot.borrow().clone();
    let mut flags = Flags::default();
    if let Some(limited) = rate_limit(outbound, &snapshot, &target.service, &req, client, &caller) {
        flags.set(Flags::RATE_LIMITED);
        return answered_here(outbound, &target.service, limited, flags, started);
    }
    let host_port = host
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok());
    let service_policy = snapshot.policy.routes.get(&target.service).cloned();
    let routes = service_policy
        .as_ref()
        .map(|p| p.routes.as_slice())
        .unwrap_or_default();
    let empty_index = federation::traffic::RouteIndex::default();
    let index = service_policy.as_ref().map_or(&empty_index, |p| &p.index);

    // Route choice, as Istio's caller-side proxy makes it. No VirtualService: one default
    // route to the service itself.
    let (route, matched) = if routes.is_empty() {
        (None, None)
    } else {
        let namespace = caller
            .workload()
            .and_then(|p| preamble::workload_path(p.path()))
            .map(|(ns, _)| ns);
        let view = RequestView::of(&req, &host, host_port).from_namespace(namespace);
        match routing::select(routes, index, &view) {
            Some((route, matched)) => (Some(route), matched),
            None => {
                flags.set(Flags::NO_ROUTE);
                let from = service_policy
                    .as_ref()
                    .and_then(|p| p.routes_from.as_deref())
                    .unwrap_or("its routes");
                let resp = http::error_response(
                    StatusCode::NOT_FOUND,
                    &format!("no route of {from} matches this request"),
                );
                return answered_here(outbound, &target.service, resp, flags, started);
            }
        }
    };

    let mut rng = ThreadRandom;
    // Faults first: they stand for the destination failing, before anything else happens.
    if let Some(fault) = route.and_then(|r| r.fault.as_ref()) {
        let decision = policy::fault::decide(fault, &mut rng);
        if let Some(delay) = decision.delay {
            flags.set(Flags::DELAY_INJECTED);
            tokio::time::sleep(delay).await;
        }
        if let Some(status) = decision.abort {
            flags.set(Flags::FAULT_INJECTED);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let resp = http::error_response(status, "fault filter abort");
            return answered_here(outbound, &target.service, resp, flags, started);
        }
    }

    let destination = match route.map(|r| &r.action) {
        None => None,
        Some(RouteAction::Forward(weighted)) => {
            let total = weighted.total();
            match weighted.pick(rng.below(total)) {
                Some(d) => Some(d),
                None => {
                    flags.set(Flags::NO_ROUTE);
                    let resp = http::error_response(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the matching route has no destination with weight",
                    );
                    return answered_here(outbound, &target.service, resp, flags, started);
                }
            }
        }
        Some(RouteAction::Redirect(redirect)) => {
            let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
            let location = routing::redirect_location(redirect, &host, path);
            let mut resp = http::error_response(
                StatusCode::from_u16(redirect.status).unwrap_or(StatusCode::MOVED_PERMANENTLY),
                &format!("redirected to {location}"),
            );
            if let Ok(value) = ::http::HeaderValue::from_str(&location) {
                resp.headers_mut().insert(::http::header::LOCATION, value);
            }
            resp.headers_mut().remove("x-causeway-error");
            return answered_here(outbound, &target.service, resp, flags, started);
        }
        Some(RouteAction::Direct { status, body }) => {
            flags.set(Flags::DIRECT_RESPONSE);
            let mut resp = http::Response::new(http::boxed(http_body_util::Full::new(
                bytes::Bytes::from(body.clone().unwrap_or_default()),
            )));
            *resp.status_mut() = StatusCode::from_u16(*status).unwrap_or(StatusCode::OK);
            return answered_here(outbound, &target.service, resp, flags, started);
        }
    };

    let traceparent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    // The client's own timeout header overrides the route's, as Envoy lets it.
    let timeout = timeout_of(req.headers()).or(route.and_then(|r| r.timeout));
    let headers = req.headers_mut();
    http::strip_hop_by_hop(headers);
    // Only the destination gateway may vouch for a caller; whatever a client sent is dropped,
    // also on the path to a local endpoint.
    headers.remove(crate::inbound::SOURCE_PRINCIPAL_HEADER);
    headers.remove(crate::inbound::SOURCE_CLUSTER_HEADER);
    headers.remove(TIMEOUT_HEADER);
    if let Some(route) = route {
        routing::apply_header_ops(headers, &route.request_headers);
        if let Some(d) = destination {
            routing::apply_header_ops(headers, &d.request_headers);
        }
        if let Some(rewrite) = &route.rewrite {
            let uri = routing::rewrite_uri(req.uri(), matched, rewrite);
            *req.uri_mut() = uri;
            if let Some(authority) = rewrite
                .authority
                .as_deref()
                .and_then(|a| ::http::HeaderValue::from_str(a).ok())
            {
                req.headers_mut().insert(::http::header::HOST, authority);
            }
        }
    }

    let (service, subset, port) = match destination {
        Some(d) => (d.service.clone(), d.subset.clone(), d.port),
        None => (target.service.clone(), None, None),
    };
    // The destination's own policy (its DestinationRule), which may be another service's.
    let rule = if service == target.service {
        service_policy.as_ref().and_then(|p| p.destination.clone())
    } else {
        snapshot
            .policy
            .routes
            .get(&service)
            .and_then(|p| p.destination.clone())
    };
    let traffic = rule
        .as_ref()
        .map(|r| r.traffic_for(subset.as_deref()).clone())
        .unwrap_or_default();
    let hash = match &traffic.load_balancer {
        LoadBalancer::ConsistentHash(on) => {
            let headers = req.headers();
            let query = req.uri().query().unwrap_or("");
            let cookies = headers
                .get(::http::header::COOKIE)
                .and_then(|c| c.to_str().ok())
                .unwrap_or("");
            policy::lb::hash_key(
                on,
                |name| headers.get(name).and_then(|v| v.to_str().ok()),
                |name| policy::lb::cookie_value(cookies, name),
                |name| policy::lb::query_value(query, name),
                Some(client.ip()),
            )
        }
        _ => None,
    };
    let call = Call {
        service,
        subset,
        port,
        // A cluster-specific name pins the call to that cluster, whatever the route says.
        only_cluster: target.cluster.clone(),
        route: route.map(|r| r.name.clone()),
        retries: route.and_then(|r| r.retries.clone()),
        budget: service_policy
            .as_ref()
            .and_then(|p| p.retry_budget)
            .unwrap_or_default(),
        pool: traffic.connection_pool,
        outlier: traffic.outlier_detection,
        lb: traffic.load_balancer,
        locality: traffic.locality,
        hash,
        traceparent,
        deadline: timeout.map(|t| SystemTime::now() + t),
        caller,
    };

    // A small request is buffered so that it can ride right behind its preamble, be retried,
    // mirrored, and replayed on the next cluster if refused (see `early`); others wait for the
    // verdict and go once.
    let mut client_fault = None;
    let pending = match Replayable::buffer(req).await {
        Ok(Ok(replayable)) => Pending::Replayable(replayable),
        Ok(Err((streaming, fault))) => {
            client_fault = Some(fault);
            Pending::Streaming(Some(streaming))
        }
        Err(e) => {
            let resp = http::error_response(
                StatusCode::BAD_REQUEST,
                &format!("reading the request body failed: {e}"),
            );
            return answered_here(outbound, &call.service, resp, flags, started);
        }
    };
    if let (Some(route), Pending::Replayable(replayable)) = (route, &pending) {
        mirror::send(
            outbound,
            &snapshot,
            &route.mirrors,
            replayable,
            &call.caller,
            &mut rng,
        );
    }

    let forwarding = forward::forward(outbound, &snapshot, &call, pending, flags);
    let ended = match timeout {
        Some(limit) => match tokio::time::timeout(limit, forwarding).await {
            Ok(ended) => ended,
            Err(_) => {
                flags.set(Flags::TIMEOUT);
                Ended {
                    response: http::error_response(
                        StatusCode::GATEWAY_TIMEOUT,
                        &format!(
                            "upstream request timeout: {} did not answer within {limit:?}",
                            call.service
                        ),
                    ),
                    cluster: "unknown".into(),
                    flags,
                }
            }
        },
        None => forwarding.await,
    };
    let Ended {
        mut response,
        cluster,
        flags,
    } = ended;
    // The client's own body broke the forward (a malformed chunk): its fault, not the
    // upstream's.
    if let Some(why) = client_fault.as_ref().and_then(|f| f.get())
        && response.headers().contains_key("x-causeway-error")
    {
        response = http::error_response(
            StatusCode::BAD_REQUEST,
            &format!("reading the request body failed: {why}"),
        );
    }
    if let Some(route) = route {
        routing::apply_header_ops(response.headers_mut(), &route.response_headers);
        if let Some(d) = destination {
            routing::apply_header_ops(response.headers_mut(), &d.response_headers);
        }
    }
    let subset = call.subset.as_deref().unwrap_or("");
    record(
        outbound,
        &call.service,
        subset,
        &cluster,
        &response,
        flags,
        started,
    );
    response
}

/// The RateLimitPolicies of `service`, each taking a token for this request: none when all
/// allow it, else the 429 to answer (`retry-after` and Envoy's `x-ratelimit-*` headers).
fn rate_limit<B>(
    outbound: &Outbound,
    snapshot: &Snapshot,
    service: &ServiceKey,
    req: &http::Request<B>,
    client: SocketAddr,
    caller: &Caller,
) -> Option<http::Response<Body>> {
    use federation::ratelimit::Descriptor;

    use crate::policy::ratelimit::{Limiter, Take};

    let limits = snapshot.guard.security.rate_limits.get(service)?;
    let now = std::time::Instant::now();
    let principal = caller.workload().map_or("-", |p| p.as_str());
    let remote = client.ip().to_string();
    for limit in limits {
        let values = limit.descriptors.iter().map(|d| match d {
            Descriptor::Header(name) => req
                .headers()
                .get(name.as_str())
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            Descriptor::Path => req.uri().path(),
            Descriptor::Principal => principal,
            Descriptor::SourceCluster => outbound.cluster.as_str(),
            Descriptor::RemoteAddress => remote.as_str(),
        });
        let key = Limiter::key(limit, values);
        if let Take::Limited {
            retry_after,
            limit: rate,
        } = outbound.policy.rate_limits.take(key, limit, now)
        {
            let scope = match limit.scope {
                federation::ratelimit::Scope::Local => "local",
                federation::ratelimit::Scope::Mesh => "mesh",
            };
            outbound
                .metrics
                .rate_limited
                .get_or_create(&crate::metrics::RateLimitLabels {
                    service: service.to_string(),
                    policy: limit.name.clone(),
                    scope,
                })
                .inc();
            let mut resp = http::error_response(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("rate limited by RateLimitPolicy {} ({scope})", limit.name),
            );
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            let headers = resp.headers_mut();
            for (name, value) in [
                ("retry-after", secs.to_string()),
                ("x-ratelimit-limit", format!("{}", rate.round() as u64)),
                ("x-ratelimit-remaining", "0".to_string()),
                ("x-ratelimit-reset", secs.to_string()),
            ] {
                if let Ok(v) = ::http::HeaderValue::from_str(&value) {
                    headers.insert(name, v);
                }
            }
            return Some(resp);
        }
    }
    None
}

/// How an early request ended.
pub(crate) enum Early {
    /// The peer accepted and answered.
    Answered(http::Response<Body>),
    /// Refused, or failed before the peer could have acted on it: the next cluster may try.
    /// `true` when the tunnel failed (a connect failure) rather than the peer refusing.
    TryNext(String, bool),
    /// Accepted (or possibly acted on) and then failed: not to be sent again.
    Failed(String),
}

/// The preamble for proxying `call` to `target`, on behalf of its caller.
fn proxy_request(target: &Target, call: &Call, choice: RouteChoice) -> StreamRequest {
    StreamRequest::Proxy {
        service: call.service.clone(),
        port: target.port,
        source: call.caller.principal.clone(),
        authn: call.caller.authn,
        deadline: call.deadline,
        traceparent: call.traceparent.clone(),
        choice,
    }
}

impl Outbound {
    /// The caller of a plaintext client connection from `ip`: the workload registered at
    /// that address where this cluster trusts its node network, otherwise anonymous (this
    /// gateway speaks for it as itself).
    pub(crate) fn caller_at(&self, ip: std::net::IpAddr) -> Caller {
        if self.attribute_by_address
            && let Some(id) = self.snapshot.borrow().guard.attribute(ip)
        {
            return Caller {
                principal: id.clone(),
                authn: SourceAuthn::SourceAddress,
            };
        }
        Caller::anonymous(self.svid.borrow().id().clone())
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

/// Sends a replayable request to `target`'s cluster through `gateways`: on the tunnel whose
/// turn it is, then on the others while it could not start ([`Early::TryNext`]). `true` in a
/// `TryNext` only when every gateway failed to connect.
pub(crate) async fn send_early(
    outbound: &Outbound,
    gateways: &Gateways,
    target: &Target,
    call: &Call,
    replayable: &Replayable,
    choice: RouteChoice,
) -> Early {
    let order = gateways.in_turn(tokio::time::Instant::now());
    let several = order.len() > 1;
    let mut errors = Vec::new();
    let mut connect = true;
    for tunnel in order {
        match send_early_on(outbound, tunnel, target, call, replayable, choice.clone()).await {
            Early::TryNext(e, tunnel_failed) => {
                connect &= tunnel_failed;
                errors.push(on_gateway(several, tunnel, e));
            }
            done => return done,
        }
    }
    Early::TryNext(errors.join("; "), connect)
}

/// `e`, naming the gateway when the cluster has several.
fn on_gateway(several: bool, tunnel: &Tunnel, e: impl std::fmt::Display) -> String {
    if several {
        format!("gateway {}: {e}", tunnel.address)
    } else {
        e.to_string()
    }
}

/// Sends a replayable request right behind its preamble on one tunnel; see `early`.
async fn send_early_on(
    outbound: &Outbound,
    tunnel: &Tunnel,
    target: &Target,
    call: &Call,
    replayable: &Replayable,
    choice: RouteChoice,
) -> Early {
    let request = proxy_request(target, call, choice);
    let conn = &tunnel.conn;
    let opened = tokio::time::timeout(outbound.verdict_timeout, open_stream(conn, &request)).await;
    let (send, recv) = match opened {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Early::TryNext(format!("tunnel: {e}"), true),
        Err(_) => {
            tunnel.stalled(tokio::time::Instant::now(), outbound.stall_hold);
            return Early::TryNext(
                format!("tunnel: no stream within {:?}", outbound.verdict_timeout),
                true,
            );
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
    if verdict.is_some() {
        tunnel.answered();
    } else if result.is_err() && tunnel.is_open() {
        // No verdict on a tunnel QUIC still holds open: the peer may have died, and streams
        // go to its cluster's other gateways first until QUIC knows.
        tunnel.stalled(tokio::time::Instant::now(), outbound.stall_hold);
    }
    match (result, verdict) {
        (Ok(resp), _) => Early::Answered(resp.map(http::boxed)),
        (Err(_), Some(v)) if v.decision() != VerdictCode::Accepted => Early::TryNext(
            format!(
                "refused by the peer gateway ({}): {}",
                v.decision().as_label(),
                v.reason
            ),
            false,
        ),
        (Err(e), None) if replayable.idempotent() => Early::TryNext(format!("tunnel: {e}"), true),
        // A gateway that shuts down closes its endpoint only once every stream it accepted has
        // finished: a stream still without a verdict then was never acted on, so even a POST
        // may go to the next cluster.
        (Err(e), None) if closed_by_shutdown(conn) => {
            Early::TryNext(format!("tunnel: {e} (the peer gateway shut down)"), false)
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

/// The caller's own timeout, from [`TIMEOUT_HEADER`] if present. With the route's, it makes
/// the deadline that travels in the preamble and bounds the destination's call too.
fn timeout_of(headers: &::http::HeaderMap) -> Option<std::time::Duration> {
    let ms: u64 = headers
        .get(TIMEOUT_HEADER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

/// A response the source gateway made itself (no route, a fault, a redirect, ...): counted
/// with no destination cluster, then answered.
fn answered_here(
    outbound: &Outbound,
    service: &ServiceKey,
    resp: http::Response<Body>,
    flags: Flags,
    started: Instant,
) -> http::Response<Body> {
    record(outbound, service, "", "unknown", &resp, flags, started);
    resp
}

fn record(
    outbound: &Outbound,
    service: &ServiceKey,
    subset: &str,
    dest: &str,
    response: &http::Response<Body>,
    flags: Flags,
    started: Instant,
) {
    let labels = RequestLabels {
        reporter: Reporter::Source,
        source_cluster: outbound.cluster.to_string(),
        destination_cluster: dest.to_string(),
        service: service.to_string(),
        destination_subset: subset.to_string(),
        response_code: response.status().as_u16(),
        response_flags: flags.label(),
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

impl OpenError {
    /// Whether the peer gateway refused (it acted on nothing) rather than being unreachable.
    pub fn is_refusal(&self) -> bool {
        matches!(self, OpenError::Refused(..))
    }
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
    call: &Call,
    choice: RouteChoice,
) -> Result<Upstream, OpenError> {
    let svc = match &target.kind {
        TargetKind::Local(svc) => svc,
        TargetKind::Remote { gateways, .. } => {
            return open_remote(outbound, gateways, target, call, choice).await;
        }
    };
    let opening = async {
        if target.port.protocol == Protocol::Http {
            outbound
                .pool
                .checkout(svc)
                .await
                .map(Upstream::Pooled)
                .ok_or(OpenError::NoEndpoint)
        } else {
            connect_endpoint(svc, &outbound.next_endpoint, outbound.verdict_timeout)
                .await
                .map(|s| Upstream::Stream(Stream::Local(s)))
                .ok_or(OpenError::NoEndpoint)
        }
    };
    // A stuck local endpoint (or pool checkout) costs one timeout too.
    tokio::time::timeout(outbound.verdict_timeout, opening)
        .await
        .unwrap_or_else(|_| {
            Err(OpenError::Tunnel(format!(
                "no verdict within {:?}",
                outbound.verdict_timeout
            )))
        })
}

/// Opens a stream to `target`'s cluster on the tunnel whose turn it is, then on its other
/// gateways' while it could not start (refused, tunnel gone, no verdict in time).
async fn open_remote(
    outbound: &Outbound,
    gateways: &Gateways,
    target: &Target,
    call: &Call,
    choice: RouteChoice,
) -> Result<Upstream, OpenError> {
    let request = proxy_request(target, call, choice);
    let order = gateways.in_turn(tokio::time::Instant::now());
    let several = order.len() > 1;
    let mut errors = Vec::new();
    let mut refused = None;
    for tunnel in order {
        match open_on(outbound, tunnel, &request).await {
            Ok(upstream) => return Ok(upstream),
            Err(e) => {
                if let OpenError::Refused(code, _) = &e {
                    refused.get_or_insert(*code);
                }
                errors.push(on_gateway(several, tunnel, &e));
                if !several {
                    return Err(e);
                }
            }
        }
    }
    let errors = errors.join("; ");
    Err(match refused {
        Some(code) => OpenError::Refused(code, errors),
        None => OpenError::Tunnel(errors),
    })
}

/// Opens a stream on one tunnel and waits for its verdict.
async fn open_on(
    outbound: &Outbound,
    tunnel: &Tunnel,
    request: &StreamRequest,
) -> Result<Upstream, OpenError> {
    let opening = async {
        let (send, mut recv) = open_stream(&tunnel.conn, request)
            .await
            .map_err(OpenError::Tunnel)?;
        let verdict = preamble::read_verdict(&mut recv)
            .await
            .map_err(|e| OpenError::Tunnel(e.to_string()))?;
        tunnel.answered();
        match verdict.decision() {
            VerdictCode::Accepted => Ok(Upstream::Stream(Stream::Tunnel(tokio::io::join(
                recv, send,
            )))),
            code => Err(OpenError::Refused(code, verdict.reason)),
        }
    };
    // Bounds every step, including waiting for stream credit on a saturated tunnel, so a stuck
    // gateway costs one timeout and the stream moves on to the next.
    match tokio::time::timeout(outbound.verdict_timeout, opening).await {
        Ok(opened) => opened,
        Err(_) => {
            tunnel.stalled(tokio::time::Instant::now(), outbound.stall_hold);
            Err(OpenError::Tunnel(format!(
                "no verdict within {:?}",
                outbound.verdict_timeout
            )))
        }
    }
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
    let mut last: Option<Arc<Snapshot>> = None;
    loop {
        let snapshot = snapshots.borrow_and_update().clone();
        // Listeners follow services and ports only; most writes change neither.
        if last.as_ref().is_some_and(|l| l.same_catalog(&snapshot))
            && running.values().all(|(_, task)| !task.is_finished())
        {
            tokio::select! {
                _ = drain.signaled() => break,
                changed = snapshots.changed() => if changed.is_err() { break } else { continue },
            }
        }
        last = Some(snapshot.clone());
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
        let _ = client.set_nodelay(true);
        let outbound = outbound.clone();
        let service = service.clone();
        let watch = drain.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let caller = outbound.caller_at(peer.ip());
            if let Err(e) = proxy_tcp(client, &outbound, &service, port, caller).await {
                tracing::info!(%service, client = %peer, error = %e, "TCP connection not proxied");
            }
            drop(watch);
        });
    }
}

pub(crate) async fn proxy_tcp(
    mut client: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    outbound: &Outbound,
    service: &ServiceKey,
    port: u16,
    caller: Caller,
) -> Result<(), String> {
    let snapshot = outbound.snapshot.borrow().clone();
    let targets = snapshot
        .targets(service, Protocol::Tcp, Some(port), None)
        .map_err(|e| e.to_string())?;
    let start = outbound.next_target.fetch_add(1, Ordering::Relaxed);
    let mut errors = Vec::new();
    for i in 0..targets.len() {
        let target = &targets[(start + i) % targets.len()];
        let dest = target.cluster(&outbound.cluster).to_string();
        let call = Call::tcp(service, port, caller.clone());
        let choice = RouteChoice {
            attempt: 1,
            ..RouteChoice::default()
        };
        match open(outbound, target, &call, choice).await {
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
