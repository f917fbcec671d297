//! The destination gateway's security checks: PeerAuthentication on every stream, and
//! AuthorizationPolicy on every TCP stream (at its verdict) and every HTTP request.
//!
//! Istio enforces both in the server-side proxy, in front of the workload; here the
//! destination gateway is that proxy for every endpoint of its cluster that other clusters
//! reach. A stream's checks need the endpoint it will reach (selectors match endpoint labels,
//! `portLevelMtls` the endpoint's port), so they run once the endpoint is chosen and before
//! the verdict is sent.
//!
//! Local callers of this gateway's own services (15001 to a service of this cluster) are not
//! judged here: they never cross the boundary.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use federation::authz::{self, Decision, Policy};
use federation::identity::{SpiffeId, TrustDomain};
use federation::mesh::{MeshSnapshot, Security};
use federation::model::{ClusterName, LocalService, ServiceKey};
use federation::peer_authn::{self, Mode};

use crate::listen::Throttled;
use crate::metrics::{AuthzLabels, Metrics};
use crate::preamble::Caller;

/// What Envoy answers a request RBAC denies; clients and dashboards know this text.
pub const RBAC_DENIED: &str = "RBAC: access denied";

/// The security view of one mesh snapshot.
#[derive(Debug, Default)]
pub(crate) struct Guard {
    pub security: Arc<Security>,
    /// The trust domain of every cluster: what `cluster.local` in a policy's principal stands
    /// for (Istio's multi-cluster meshes share `cluster.local`; a federation's clusters each
    /// have their own domain, read as aliases of it).
    pub domains: Arc<[String]>,
    /// This cluster's workloads by address, for source-address attribution: `None` where two
    /// service accounts share an address (then nobody is attributed).
    by_address: HashMap<IpAddr, Option<SpiffeId>>,
    own: Option<ClusterName>,
    own_domain: Option<String>,
}

impl Guard {
    pub fn new(
        mesh: &MeshSnapshot,
        own: &ClusterName,
        local: &std::collections::BTreeMap<ServiceKey, Arc<LocalService>>,
    ) -> Self {
        let domains = mesh
            .clusters
            .values()
            .map(|c| c.trust_domain.clone())
            .collect();
        let own_domain = mesh.clusters.get(own).map(|c| c.trust_domain.clone());
        let mut by_address: HashMap<IpAddr, Option<SpiffeId>> = HashMap::new();
        if let Some(td) = own_domain
            .as_deref()
            .and_then(|td| TrustDomain::parse(td).ok())
        {
            for svc in local.values() {
                for (addr, account) in &svc.endpoint_accounts {
                    let id = SpiffeId::parse(&format!(
                        "spiffe://{td}/ns/{}/sa/{account}",
                        svc.key.namespace()
                    ))
                    .ok();
                    by_address
                        .entry(addr.ip())
                        .and_modify(|seen| {
                            if *seen != id {
                                *seen = None;
                            }
                        })
                        .or_insert(id);
                }
            }
        }
        Guard {
            security: mesh.security.clone(),
            domains,
            by_address,
            own: Some(own.clone()),
            own_domain,
        }
    }

    /// Whether `mesh` has the security policy and trust domains this view was read from
    /// (the caller compares the services).
    pub fn same_mesh(&self, mesh: &MeshSnapshot) -> bool {
        Arc::ptr_eq(&self.security, &mesh.security)
            && self
                .domains
                .iter()
                .eq(mesh.clusters.values().map(|c| &c.trust_domain))
            && self.own_domain.as_ref()
                == self
                    .own
                    .as_ref()
                    .and_then(|own| mesh.clusters.get(own))
                    .map(|c| &c.trust_domain)
    }

    /// The workload of this cluster that runs at `ip`, if exactly one service account does.
    pub fn attribute(&self, ip: IpAddr) -> Option<&SpiffeId> {
        self.by_address.get(&ip)?.as_ref()
    }

    /// The checks of one stream to `endpoint` of `svc`: refused (PeerAuthentication, or a
    /// TCP stream AuthorizationPolicy denies) with the reason, or what its requests need.
    pub fn admit(
        &self,
        stream: &Stream<'_>,
        root: &str,
        metrics: &Metrics,
        log: &Arc<Throttled>,
    ) -> Result<Admitted, Refusal> {
        let namespace = stream.service.namespace();
        let labels = stream.svc.labels_of(&stream.endpoint);
        let none: &[Arc<peer_authn::PeerAuthn>] = &[];
        let own = self
            .security
            .peer_authn
            .get(namespace)
            .map_or(none, Vec::as_slice);
        let mesh = if namespace == root {
            none
        } else {
            self.security
                .peer_authn
                .get(root)
                .map_or(none, Vec::as_slice)
        };
        let mode = peer_authn::resolve(own, mesh, labels, stream.endpoint.port());
        let principal = match (mode.mode, stream.caller.workload()) {
            (Mode::Strict, None) => {
                let why = format!(
                    "PeerAuthentication {} requires mutual TLS (STRICT) for {}: the caller has no workload identity (it called its gateway in plaintext)",
                    mode.policy.unwrap_or("-"),
                    stream.service
                );
                // HTTP callers get the reason as an answer (403); refusing the stream would
                // read to the source as an unreachable cluster, to fail over from and eject.
                if stream.http {
                    return Ok(Admitted {
                        principal: None,
                        policies: Vec::new(),
                        domains: Arc::default(),
                        refused: Some(why),
                    });
                }
                return Err(Refusal::Unauthenticated(why));
            }
            // Istio's plaintext server sees no peer identity.
            (Mode::Disable, _) => None,
            (_, principal) => principal.cloned(),
        };
        let policies: Vec<Arc<Policy>> = self
            .security
            .authz_for(namespace, root)
            .filter(|p| p.applies_to(labels))
            .cloned()
            .collect();
        let admitted = Admitted {
            principal,
            policies,
            domains: self.domains.clone(),
            refused: None,
        };
        if !stream.http {
            let decision = admitted.decide(stream, None);
            admitted.record(stream, &decision, metrics, log);
            if !decision.allowed {
                return Err(Refusal::Forbidden(match &decision.policy {
                    Some(p) => format!("{RBAC_DENIED} (AuthorizationPolicy {p} denies)"),
                    None => format!("{RBAC_DENIED} (no ALLOW policy matches)"),
                }));
            }
        }
        Ok(admitted)
    }
}

/// One accepted stream, as the checks see it.
pub(crate) struct Stream<'a> {
    pub service: &'a ServiceKey,
    pub svc: &'a LocalService,
    pub endpoint: SocketAddr,
    /// The service port called.
    pub port: u16,
    pub caller: &'a Caller,
    pub peer_cluster: &'a str,
    /// The sending gateway's address (the caller's own is not known across the boundary).
    pub remote: IpAddr,
    pub http: bool,
}

/// Why a stream is refused.
#[derive(Debug)]
pub(crate) enum Refusal {
    Unauthenticated(String),
    Forbidden(String),
}

/// A stream that passed; its HTTP requests are judged one by one.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// The caller's principal as policies see it: none without a workload identity, or
    /// where PeerAuthentication disables mTLS.
    pub principal: Option<SpiffeId>,
    pub policies: Vec<Arc<Policy>>,
    /// The guard's, shared: every stream gets one.
    domains: Arc<[String]>,
    /// PeerAuthentication refuses every request of this HTTP stream, for this reason.
    pub refused: Option<String>,
}

impl Admitted {
    pub fn judged(&self) -> bool {
        !self.policies.is_empty()
    }

    pub fn decide(&self, stream: &Stream<'_>, http: Option<authz::Http<'_>>) -> Decision {
        let policies: Vec<&Policy> = self.policies.iter().map(Arc::as_ref).collect();
        let domains: Vec<&str> = self.domains.iter().map(String::as_str).collect();
        let request = authz::Request {
            principal: self.principal.as_ref().map(SpiffeId::as_str),
            source_ip: Some(stream.remote),
            remote_ip: None,
            destination_ip: Some(stream.endpoint.ip()),
            source_cluster: Some(stream.peer_cluster),
            port: stream.port,
            http,
        };
        authz::decide(&policies, &request, &domains)
    }

    /// Counts the decision (and each AUDIT match) and logs denials and audits.
    pub fn record(
        &self,
        stream: &Stream<'_>,
        decision: &Decision,
        metrics: &Metrics,
        log: &Arc<Throttled>,
    ) {
        if !self.judged() {
            return;
        }
        let verdict = if decision.allowed {
            "allowed"
        } else {
            "denied"
        };
        // The deciding policy's action; `none` when no policy decided (no ALLOW or DENY
        // applies, or none of the ALLOW policies matched).
        let action = match (&decision.policy, decision.allowed) {
            (Some(_), true) => "allow",
            (Some(_), false) => "deny",
            (None, _) => "none",
        };
        let service = stream.service.to_string();
        metrics
            .authz_decisions
            .get_or_create(&AuthzLabels {
                service: service.clone(),
                policy: decision.policy.clone().unwrap_or_else(|| "-".into()),
                action,
                decision: verdict,
            })
            .inc();
        let caller = self
            .principal
            .as_ref()
            .map_or("(no workload identity)", SpiffeId::as_str);
        for audited in &decision.audited {
            metrics
                .authz_decisions
                .get_or_create(&AuthzLabels {
                    service: service.clone(),
                    policy: audited.clone(),
                    action: "audit",
                    decision: verdict,
                })
                .inc();
            tracing::info!(policy = %audited, %service, caller, cluster = stream.peer_cluster, decision = verdict, "AUDIT policy matched");
        }
        if !decision.allowed
            && log.event(|| format!("{service}: denied {caller} from {}", stream.peer_cluster))
        {
            tracing::info!(
                %service,
                caller,
                cluster = stream.peer_cluster,
                policy = decision.policy.as_deref().unwrap_or("(no ALLOW policy matches)"),
                "request denied by AuthorizationPolicy"
            );
        }
    }
}
