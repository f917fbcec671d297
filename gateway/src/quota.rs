//! Shares mesh-wide rate limits: every [`REPORT_INTERVAL`] this gateway folds its demand on
//! the mesh-scoped buckets (see `policy::ratelimit`) and tells every peer gateway it has a
//! tunnel to, and every other gateway of its own cluster (over a connection kept for this
//! alone), on a short stream of its own (`StreamProtocol::Quota`). Nothing is sent while no
//! mesh-scoped bucket saw traffic. A report that cannot be delivered is dropped: the next one
//! follows within the interval, and a peer's share falls back to the whole rate once reports
//! stop (`REPORT_TTL`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use federation::identity::{Svid, TrustDomain};
use federation::mesh::MeshSnapshot;
use federation::model::ClusterName;
use tokio::sync::watch;

use crate::catalog::Snapshot;
use crate::drain;
use crate::policy::ratelimit::REPORT_INTERVAL;
use crate::policy::state::PolicyState;
use crate::preamble::{self, QuotaEntry, QuotaReport, StreamRequest};

/// This gateway's cluster and tunnel address, and how to reach its other gateways.
pub(crate) struct Siblings {
    pub own: ClusterName,
    pub own_tunnel: SocketAddr,
    pub mesh: watch::Receiver<Arc<MeshSnapshot>>,
    pub dialer: Arc<crate::tunnel::Dialer>,
    /// Connections kept to them, by tunnel address.
    pub conns: Arc<Mutex<HashMap<SocketAddr, quinn::Connection>>>,
}

impl Siblings {
    /// The other gateways of this cluster, by tunnel address, with the cluster's trust domain.
    fn addresses(&self) -> Option<(TrustDomain, Vec<SocketAddr>)> {
        let mesh = self.mesh.borrow();
        let cluster = mesh.clusters.get(&self.own)?;
        let td = TrustDomain::parse(&cluster.trust_domain).ok()?;
        let others = cluster
            .gateways
            .iter()
            .copied()
            .filter(|a| *a != self.own_tunnel)
            .collect();
        Some((td, others))
    }
}

/// A connection to sibling `addr`: the kept one while it is open, else a new one.
async fn sibling_conn(
    siblings: &Siblings,
    addr: SocketAddr,
    td: &TrustDomain,
) -> Option<quinn::Connection> {
    let kept = siblings
        .conns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&addr)
        .filter(|c| c.close_reason().is_none())
        .cloned();
    if kept.is_some() {
        return kept;
    }
    match crate::tunnel::dial_sibling(&siblings.dialer, addr, td).await {
        Ok(conn) => {
            siblings
                .conns
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(addr, conn.clone());
            Some(conn)
        }
        Err(e) => {
            tracing::debug!(sibling = %addr, error = %e, "cannot reach a gateway of this cluster for rate-limit demand");
            None
        }
    }
}

pub(crate) async fn run(
    snapshot: watch::Receiver<Arc<Snapshot>>,
    policy: Arc<PolicyState>,
    svid: watch::Receiver<Arc<Svid>>,
    timeout: Duration,
    siblings: Arc<Siblings>,
    drain: drain::Signal,
) {
    let mut ticks = tokio::time::interval(REPORT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = drain.signaled() => return,
            _ = ticks.tick() => {}
        }
        let demand = policy.rate_limits.fold(Instant::now(), REPORT_INTERVAL);
        if demand.is_empty() {
            continue;
        }
        let report = Arc::new(QuotaReport {
            entries: demand
                .into_iter()
                .map(|(key, demand)| QuotaEntry { key, demand })
                .collect(),
        });
        let request = StreamRequest::Quota {
            source: svid.borrow().id().clone(),
        }
        .to_preamble();
        let snapshot = snapshot.borrow().clone();
        for view in snapshot.peers.values() {
            for slot in &view.gateways {
                let Some(tunnel) = slot.live() else { continue };
                let conn = tunnel.conn.clone();
                tokio::spawn(deliver(conn, request.clone(), report.clone(), timeout));
            }
        }
        if let Some((td, others)) = siblings.addresses() {
            for addr in others {
                let (siblings, td, request, report) = (
                    siblings.clone(),
                    td.clone(),
                    request.clone(),
                    report.clone(),
                );
                tokio::spawn(async move {
                    if let Some(conn) = sibling_conn(&siblings, addr, &td).await {
                        deliver(conn, request, report, timeout).await;
                    }
                });
            }
        }
    }
}

/// One report on its own stream of `conn`.
async fn deliver(
    conn: quinn::Connection,
    request: preamble::Preamble,
    report: Arc<QuotaReport>,
    timeout: Duration,
) {
    let send = async {
        let (mut send, mut recv) = conn.open_bi().await.ok()?;
        preamble::write_frame(&mut send, &request).await.ok()?;
        preamble::write_frame(&mut send, report.as_ref())
            .await
            .ok()?;
        let _ = send.finish();
        // The verdict tells whether the peer took it; an older peer refuses the protocol,
        // which costs nothing but this report.
        preamble::read_verdict(&mut recv).await.ok()
    };
    if tokio::time::timeout(timeout, send).await.is_err() {
        tracing::debug!("quota report not delivered in time");
    }
}
