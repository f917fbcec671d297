//! The gateway's certificate owner: one task that keeps the SVID fresh.
//!
//! It renews at half-life, keeps the last good certificate when renewal fails (retrying
//! sooner), and publishes every new SVID through a `watch` channel that the data plane reads.
//! The CA key stays in the data dir (mode 0600); only the public root leaves this process.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use federation::identity::{IdentityError, SpiffeId, Svid, TrustDomain};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use crate::ca::ClusterCa;

#[derive(Clone, Default)]
struct IdentityMetrics {
    rotations: Counter,
    failures: Counter,
    expiry: Gauge,
}

pub struct IdentityOwner {
    ca: Arc<ClusterCa>,
    id: SpiffeId,
    ttl: Duration,
    svid: watch::Sender<Arc<Svid>>,
    metrics: IdentityMetrics,
}

impl IdentityOwner {
    /// Loads (or creates) the cluster CA under `data_dir/ca` and issues the first SVID.
    pub fn start(
        data_dir: &Path,
        trust_domain: &TrustDomain,
        gateway_name: &str,
        ttl: Duration,
        registry: &mut Registry,
    ) -> Result<(Self, watch::Receiver<Arc<Svid>>), IdentityError> {
        let ca = ClusterCa::load_or_create(data_dir, trust_domain)?;
        let id = SpiffeId::gateway(trust_domain, gateway_name)?;
        let first = ca.issue_for(&id, ttl)?;
        let metrics = IdentityMetrics::default();
        registry.register(
            "svid_rotations",
            "SVIDs issued to this gateway after the first",
            metrics.rotations.clone(),
        );
        registry.register(
            "svid_renewal_failures",
            "Failed SVID renewals (the previous SVID stays in use)",
            metrics.failures.clone(),
        );
        registry.register(
            "svid_expiry_timestamp_seconds",
            "When the current SVID expires (Unix time)",
            metrics.expiry.clone(),
        );
        metrics.expiry.set(unix(first.not_after()));
        let (svid, rx) = watch::channel(Arc::new(first));
        let owner = Self {
            ca: Arc::new(ca),
            id,
            ttl,
            svid,
            metrics,
        };
        Ok((owner, rx))
    }

    pub fn ca(&self) -> &Arc<ClusterCa> {
        &self.ca
    }

    /// Renews until `stop` resolves: at half-life, and at once when the CA switches.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut retry = None;
        let mut generation = self.ca.generation();
        loop {
            let current = self.svid.borrow().clone();
            let wait = retry.take().unwrap_or_else(|| {
                current
                    .renew_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
            });
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
                changed = generation.changed() => if changed.is_err() { return },
            }
            match self.ca.issue_for(&self.id, self.ttl) {
                Ok(next) => {
                    tracing::info!(id = %self.id, not_after = %humantime::format_rfc3339_seconds(next.not_after()), "SVID renewed");
                    self.metrics.rotations.inc();
                    self.metrics.expiry.set(unix(next.not_after()));
                    self.svid.send_replace(Arc::new(next));
                }
                Err(e) => {
                    self.metrics.failures.inc();
                    // Keep serving with the current SVID; retry well before it expires.
                    let left = current
                        .not_after()
                        .duration_since(SystemTime::now())
                        .unwrap_or(Duration::ZERO);
                    let again =
                        (left / 10).clamp(Duration::from_millis(100), Duration::from_secs(30));
                    tracing::error!(id = %self.id, error = %e, retry_in = ?again, "SVID renewal failed; keeping the current one");
                    retry = Some(again);
                }
            }
        }
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}
