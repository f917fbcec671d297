//! The admin API's HTTPS certificate, renewed while the gateway runs: at two thirds of its
//! lifetime, and at once when the cluster CA switches (a rotation), so that it always chains
//! to the root clients are told to trust.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::ServerName;

use crate::ca::ClusterCa;

pub struct AdminCert {
    pub names: Vec<ServerName<'static>>,
    pub ttl: Duration,
    pub ca: Arc<ClusterCa>,
    pub serving: Arc<api::RotatingCert>,
    /// The current certificate's expiry.
    pub not_after: SystemTime,
}

impl AdminCert {
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        let mut generation = self.ca.generation();
        loop {
            let renew_at = self.not_after - self.ttl / 3;
            let wait = renew_at
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO);
            tokio::select! {
                _ = &mut stop => return,
                _ = tokio::time::sleep(wait) => {}
                changed = generation.changed() => if changed.is_err() { return },
            }
            let issued = self
                .ca
                .issue_server_cert(&self.names, self.ttl)
                .map_err(|e| e.to_string())
                .and_then(|cert| {
                    self.serving
                        .replace(cert.chain().to_vec(), cert.key())
                        .map(|()| cert.not_after())
                        .map_err(|e| e.to_string())
                });
            match issued {
                Ok(not_after) => {
                    self.not_after = not_after;
                    tracing::info!(not_after = %humantime::format_rfc3339_seconds(not_after), "admin HTTPS certificate renewed");
                }
                Err(e) => {
                    // Keep serving the current one; try again in a minute.
                    tracing::error!(error = %e, "admin HTTPS certificate renewal failed; keeping the current one");
                    self.not_after = SystemTime::now() + Duration::from_secs(60) + self.ttl / 3;
                }
            }
        }
    }
}
