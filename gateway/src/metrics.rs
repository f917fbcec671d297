//! The data plane's metrics, registered in the process registry under the `causeway_` prefix.
//!
//! Label sets are typed; label values are low-cardinality names (clusters, services, codes),
//! never addresses or principals.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Which hop recorded a sample, as Istio's `reporter` label.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Reporter {
    /// The gateway in the caller's cluster (outbound listener).
    Source,
    /// The gateway in the destination cluster (tunnel inbound).
    Destination,
}

impl EncodeLabelValue for Reporter {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub reporter: Reporter,
    pub source_cluster: String,
    pub destination_cluster: String,
    pub service: String,
    /// The DestinationRule subset the route chose; empty for the whole service.
    pub destination_subset: String,
    pub response_code: u16,
    /// Envoy's response flags, comma-separated (`UO`, `UF`, `URX`, `UH`, `UT`, `NR`, `DI`,
    /// `FI`, ...), or `-`, as Istio's `response_flags` label.
    pub response_flags: String,
}

/// A traffic policy engine's event, by service and subset.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PolicyLabels {
    pub reporter: Reporter,
    pub service: String,
    pub destination_subset: String,
    /// What happened: `retry`, `budget_exhausted`; for ejections the cluster or `endpoint`;
    /// for overflows the limit (`requests`, `pending`, `retries`).
    pub reason: &'static str,
}

/// One authorization decision at the destination gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    pub service: String,
    /// `namespace/name` of the policy that decided (or, for `audit`, that matched); `-` when
    /// none did (no ALLOW or DENY applies, or no ALLOW matched).
    pub policy: String,
    /// That policy's action: `allow`, `deny`, `audit`, or `none` with policy `-`.
    pub action: &'static str,
    /// `allowed` or `denied` (`audit`: the decision the other policies made).
    pub decision: &'static str,
}

/// A connection the workload listener refused, by reason.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkloadRefusalLabels {
    /// The certificate check that failed (`expired`, `unknown_issuer`, ...; see
    /// `federation::identity::refusal_reason`), `foreign_trust_domain` (a workload of another
    /// cluster), `not_a_workload` (an SVID without a workload path), or `timeout`.
    pub reason: &'static str,
}

/// A request a RateLimitPolicy refused at the source gateway.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitLabels {
    pub service: String,
    pub policy: String,
    /// `local` or `mesh`.
    pub scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: Reporter,
    pub source_cluster: String,
    pub destination_cluster: String,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer_cluster: String,
    /// The tunnel address of the peer gateway dialled: a cluster with several gateways has a
    /// tunnel to each.
    pub peer_gateway: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandshakeLabels {
    /// The peer we dialled, or `unknown` for a refused incoming connection.
    pub peer_cluster: String,
    /// `outbound` when we dialled, `inbound` when the peer did.
    pub direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub peer_cluster: String,
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `outbound_http`, `outbound_tcp` or `dns_tcp`.
    pub listener: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerRefusalLabels {
    pub listener: &'static str,
    /// `max_connections`, `accept_error`, `header_timeout` or `idle_timeout`.
    pub reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 100 µs .. ~52 s: tunnel overhead is sub-millisecond, callers' timeouts are seconds.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

#[derive(Clone)]
pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: HistogramFamily<RequestLabels>,
    pub tcp_open_connections: Family<TcpLabels, Gauge>,
    pub tcp_connections: Family<TcpLabels, Counter>,
    pub tunnel_up: Family<PeerLabels, Gauge>,
    pub tunnel_connects: Family<PeerLabels, Counter>,
    pub tunnel_handshake_failures: Family<HandshakeLabels, Counter>,
    pub stream_refusals: Family<RefusalLabels, Counter>,
    pub listener_connections: Family<ListenerLabels, Gauge>,
    pub listener_refusals: Family<ListenerRefusalLabels, Counter>,
    pub retries: Family<PolicyLabels, Counter>,
    pub ejections: Family<PolicyLabels, Counter>,
    pub overflows: Family<PolicyLabels, Counter>,
    pub mirrored: Family<PolicyLabels, Counter>,
    pub authz_decisions: Family<AuthzLabels, Counter>,
    pub rate_limited: Family<RateLimitLabels, Counter>,
    pub workload_refusals: Family<WorkloadRefusalLabels, Counter>,
}

impl Metrics {
    /// Creates the metrics and registers them; `registry` should be the `causeway` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(latency_histogram),
            tcp_open_connections: Family::default(),
            tcp_connections: Family::default(),
            tunnel_up: Family::default(),
            tunnel_connects: Family::default(),
            tunnel_handshake_failures: Family::default(),
            stream_refusals: Family::default(),
            listener_connections: Family::default(),
            listener_refusals: Family::default(),
            retries: Family::default(),
            ejections: Family::default(),
            overflows: Family::default(),
            mirrored: Family::default(),
            authz_decisions: Family::default(),
            rate_limited: Family::default(),
            workload_refusals: Family::default(),
        };
        registry.register(
            "retries",
            "Retries of HTTP requests by the route's retry policy (reason retry), and retries the retry budget refused (budget_exhausted)",
            m.retries.clone(),
        );
        registry.register(
            "outlier_ejections",
            "Ejections by outlier detection: whole clusters at the source gateway, endpoints at the destination",
            m.ejections.clone(),
        );
        registry.register(
            "overflows",
            "Requests answered 503 at once because a DestinationRule connection pool limit was reached",
            m.overflows.clone(),
        );
        registry.register(
            "mirrored_requests",
            "Copies of requests sent to a mirror (sent), or dropped because too many were in flight (dropped)",
            m.mirrored.clone(),
        );
        registry.register(
            "requests",
            "HTTP requests proxied, by reporting hop, clusters, service and response code",
            m.requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Time from request received to response headers sent",
            m.request_duration.clone(),
        );
        registry.register(
            "tcp_open_connections",
            "TCP connections currently proxied",
            m.tcp_open_connections.clone(),
        );
        registry.register(
            "tcp_connections",
            "TCP connections proxied since start",
            m.tcp_connections.clone(),
        );
        registry.register(
            "tunnel_up",
            "1 while the QUIC tunnel to a peer gateway is established",
            m.tunnel_up.clone(),
        );
        registry.register(
            "tunnel_connects",
            "QUIC tunnels established to a peer gateway",
            m.tunnel_connects.clone(),
        );
        registry.register(
            "tunnel_handshake_failures",
            "QUIC/TLS handshakes that failed, incl. refused identities",
            m.tunnel_handshake_failures.clone(),
        );
        registry.register(
            "authorization_decisions",
            "AuthorizationPolicy decisions at the destination gateway, by service, policy and action (one per TCP stream or HTTP request a policy applies to)",
            m.authz_decisions.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests answered 429 by a RateLimitPolicy at this gateway, by service, policy and scope",
            m.rate_limited.clone(),
        );
        registry.register(
            "workload_refusals",
            "Connections the workload mTLS listener refused, by reason",
            m.workload_refusals.clone(),
        );
        registry.register(
            "stream_refusals",
            "Tunnel streams refused by this gateway, by reason",
            m.stream_refusals.clone(),
        );
        registry.register(
            "listener_connections",
            "Client connections open on a data-plane listener",
            m.listener_connections.clone(),
        );
        registry.register(
            "listener_refusals",
            "Client connections refused or closed by a data-plane listener, and accept errors, by reason",
            m.listener_refusals.clone(),
        );
        m
    }

    /// Counts an open client connection on a listener until the returned guard drops.
    pub fn open_client(&self, labels: ListenerLabels) -> OpenConnection {
        let gauge = self.listener_connections.get_or_create(&labels).clone();
        gauge.inc();
        OpenConnection { gauge }
    }

    pub fn count_refusal(&self, listener: &'static str, reason: &'static str) {
        self.listener_refusals
            .get_or_create(&ListenerRefusalLabels { listener, reason })
            .inc();
    }

    /// Counts an open TCP connection until the returned guard drops.
    pub fn open_tcp(&self, labels: TcpLabels) -> OpenConnection {
        self.tcp_connections.get_or_create(&labels).inc();
        let gauge = self.tcp_open_connections.get_or_create(&labels).clone();
        gauge.inc();
        OpenConnection { gauge }
    }
}

/// Decrements `causeway_tcp_open_connections` when the connection ends, however it ends.
pub struct OpenConnection {
    gauge: Gauge,
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::encoding::text::encode;

    #[test]
    fn names_and_guards() {
        let mut registry = Registry::default();
        let m = Metrics::register(registry.sub_registry_with_prefix("causeway"));
        let labels = TcpLabels {
            reporter: Reporter::Source,
            source_cluster: "east".into(),
            destination_cluster: "west".into(),
            service: "db.demo".into(),
        };
        let guard = m.open_tcp(labels.clone());
        assert_eq!(m.tcp_open_connections.get_or_create(&labels).get(), 1);
        drop(guard);
        assert_eq!(m.tcp_open_connections.get_or_create(&labels).get(), 0);
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("causeway_tcp_open_connections{reporter=\"source\""),
            "{text}"
        );
        assert!(text.contains("causeway_tcp_connections_total"), "{text}");
    }
}
