//! Shares mesh-wide rate limits: every [`REPORT_INTERVAL`] this gateway folds its demand on
//! the mesh-scoped buckets (see `policy::ratelimit`) and tells every peer gateway it has a
//! tunnel to, on a short stream of its own (`StreamProtocol::Quota`). Nothing is sent while no
//! mesh-scoped bucket saw traffic. A report that cannot be delivered is dropped: the next one
//! follows within the interval, and a peer's share falls back to the whole rate once reports
//! stop (`REPORT_TTL`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use federation::identity::Svid;
use tokio::sync::watch;

use crate::catalog::Snapshot;
use crate::drain;
use crate::policy::ratelimit::REPORT_INTERVAL;
use crate::policy::state::PolicyState;
use crate::preamble::{self, QuotaEntry, QuotaReport, StreamRequest};

pub(crate) async fn run(
    snapshot: watch::Receiver<Arc<Snapshot>>,
    policy: Arc<PolicyState>,
    svid: watch::Receiver<Arc<Svid>>,
    timeout: Duration,
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
                let (conn, report, request) =
                    (tunnel.conn.clone(), report.clone(), request.clone());
                tokio::spawn(async move {
                    let send = async {
                        let (mut send, mut recv) = conn.open_bi().await.ok()?;
                        preamble::write_frame(&mut send, &request).await.ok()?;
                        preamble::write_frame(&mut send, report.as_ref())
                            .await
                            .ok()?;
                        let _ = send.finish();
                        // The verdict tells whether the peer took it; an older peer refuses
                        // the protocol, which costs nothing but this report.
                        preamble::read_verdict(&mut recv).await.ok()
                    };
                    if tokio::time::timeout(timeout, send).await.is_err() {
                        tracing::debug!("quota report not delivered in time");
                    }
                });
            }
        }
    }
}
