//! Rotating this gateway's cluster CA in three steps, with no failed request:
//!
//! ```text
//!  1 announce  a next CA is made in <data>/ca-next (its key never leaves it); the cluster's
//!              trust bundle becomes current + next (one Raft write), so every gateway trusts
//!              both; workloads get both with their next SVID.
//!  2 switch    once every other gateway of the mesh accepts an SVID of the next CA (a real
//!              tunnel handshake and an answered stream each), the next CA signs: the gateway's
//!              own SVID, the admin certificate and workload SVIDs are issued by it at once.
//!  3 retire    after the longest SVID the old CA signed expires, the old root leaves the
//!              bundle (a Raft write) and its key is deleted. A restart before then resumes
//!              the wait from <data>/ca-rotation.json.
//! ```
//!
//! Tunnels and Raft connections already up stay up (QUIC and TLS judge a certificate at the
//! handshake); new ones use the new SVID, which the peers trust since step 1.
//!
//! One gateway per cluster holds the CA; a cluster with several gateways (each with a copy of
//! `ca/`) is refused for now: the copies would need the new key too.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use api::{CaRotator, RotationRefusal, RotationReport, Writer};
use federation::identity::{CertificateAuthority, SpiffeId, TrustBundles, TrustDomain, TrustStore};
use federation::mesh::{Command, CommandResult};
use federation::model::ClusterName;
use serde::{Deserialize, Serialize};

use crate::ca::ClusterCa;
use crate::seed::MeshFeed;

/// Where the next CA is made.
const NEXT_DIR: &str = "ca-next";
/// Where a switched rotation waits for its old root to retire.
const STATE_FILE: &str = "ca-rotation.json";
/// How long every other gateway has to trust the next root before the call gives up (the
/// rotation stays announced; calling again continues it).
const TRUST_DEADLINE: Duration = Duration::from_secs(60);
/// Past the last expiry, for clocks that disagree a little.
const RETIRE_MARGIN: Duration = Duration::from_secs(5);

pub struct Rotator {
    pub ca: Arc<ClusterCa>,
    pub data_dir: PathBuf,
    pub cluster: ClusterName,
    pub td: TrustDomain,
    /// This gateway's SPIFFE ID (what the probe SVID names).
    pub id: SpiffeId,
    /// The tunnel address's IP: probes leave from it.
    pub bind: IpAddr,
    pub feed: MeshFeed,
    pub writer: Writer,
    /// Per probe.
    pub probe_timeout: Duration,
    pub busy: tokio::sync::Mutex<()>,
    /// Turns true when the gateway shuts down: a rotation's waits end (a pending retirement
    /// resumes at the next start), so they hold nothing of the store past its shutdown.
    pub stop: tokio::sync::watch::Receiver<bool>,
}

/// A switched rotation, kept until its old root retires.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Pending {
    /// RFC 3339.
    retire_at: String,
    /// PEM of the root that stays.
    root: String,
}

impl CaRotator for Rotator {
    fn cluster(&self) -> &str {
        self.cluster.as_str()
    }

    fn export_for_join(&self) -> Result<api::JoinCa, RotationRefusal> {
        let rotating = self.busy.try_lock().is_err()
            || self.pending().is_some()
            || self.data_dir.join(NEXT_DIR).exists();
        if rotating {
            return Err(RotationRefusal::Conflict(format!(
                "cluster {}'s CA is being rotated; join once the rotation is done",
                self.cluster
            )));
        }
        let dir = self.data_dir.join(crate::ca::CA_DIR);
        let read = |file: &str| {
            std::fs::read_to_string(dir.join(file)).map_err(|e| {
                RotationRefusal::Internal(format!("reading {}: {e}", dir.join(file).display()))
            })
        };
        Ok(api::JoinCa {
            ca_certificate: read("ca.pem")?,
            ca_key: read("ca-key.pem")?,
        })
    }

    fn rotate(
        self: Arc<Self>,
        actor: String,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<RotationReport, RotationRefusal>> + Send>,
    > {
        Box::pin(async move { self.run(actor).await })
    }
}

impl Rotator {
    async fn run(self: Arc<Self>, actor: String) -> Result<RotationReport, RotationRefusal> {
        let Ok(_busy) = self.busy.try_lock() else {
            return Err(RotationRefusal::Conflict(format!(
                "a rotation of cluster {}'s CA is running on this gateway",
                self.cluster
            )));
        };
        if let Some(pending) = self.pending() {
            return Err(RotationRefusal::Conflict(format!(
                "the previous rotation of cluster {}'s CA retires its old root at {}; rotate again after that",
                self.cluster, pending.retire_at
            )));
        }
        let mesh = self.feed.mesh.borrow().clone();
        let own: Vec<_> = mesh
            .members
            .iter()
            .filter(|m| m.cluster == self.cluster)
            .collect();
        if own.len() > 1 {
            return Err(RotationRefusal::Conflict(format!(
                "cluster {} has {} gateways, each with a copy of its CA; rotating a shared CA is not supported yet",
                self.cluster,
                own.len()
            )));
        }

        // 1. Announce: the next root joins the bundle everywhere.
        let next_dir = self.data_dir.join(NEXT_DIR);
        let next = CertificateAuthority::load_or_create(&next_dir, &self.td)
            .map_err(|e| RotationRefusal::Internal(format!("making the next CA: {e}")))?;
        let current = self.ca.current();
        self.ca.announce(next.bundle_pem());
        let both = format!("{}{}", current.bundle_pem(), next.bundle_pem());
        self.set_bundle(&both, &format!("{actor} (ca rotate: announce)"))
            .await?;
        tracing::info!(cluster = %self.cluster, "CA rotation: the next root is in the cluster's trust bundle; waiting until every gateway trusts it");

        // 2. Switch, once every other gateway accepts an SVID of the next CA.
        let trusting = self.await_trust(&next).await?;
        let old_until = self
            .ca
            .switch(&next_dir)
            .map_err(|e| RotationRefusal::Internal(format!("switching to the next CA: {e}")))?;
        let mut always = TrustBundles::new();
        always.insert(self.td.clone(), vec![next.root_der()]);
        self.feed.set_always(always);
        let switched_at = SystemTime::now();
        let retire_at = old_until.max(switched_at) + RETIRE_MARGIN;
        let pending = Pending {
            retire_at: humantime::format_rfc3339_seconds(retire_at).to_string(),
            root: next.bundle_pem(),
        };
        if let Err(e) = self.save(&pending) {
            // The retirement still runs in this process; only a restart would forget it.
            tracing::error!(error = %e, "could not record the pending CA rotation; the old root must be retired by hand if this gateway restarts before {}", pending.retire_at);
        }
        tracing::info!(cluster = %self.cluster, retire_at = %pending.retire_at, "CA rotation: issuance switched to the next CA; the old root retires after the last SVID it signed expires");
        let report = RotationReport {
            cluster: self.cluster.to_string(),
            phase: "switched".into(),
            new_root: next.bundle_pem(),
            gateways_trusting: trusting,
            switched_at: humantime::format_rfc3339_seconds(switched_at).to_string(),
            old_root_retires_at: pending.retire_at.clone(),
        };
        tokio::spawn(self.clone().retire(pending));
        Ok(report)
    }

    /// Resumes a switched rotation's wait after a restart.
    pub fn resume(self: Arc<Self>) {
        if let Some(pending) = self.pending() {
            tracing::info!(cluster = %self.cluster, retire_at = %pending.retire_at, "CA rotation: waiting to retire the old root");
            tokio::spawn(self.retire(pending));
        }
    }

    /// Every other member gateway's SPIFFE ID, once each accepted an SVID of `next`.
    async fn await_trust(
        &self,
        next: &CertificateAuthority,
    ) -> Result<Vec<String>, RotationRefusal> {
        let probe = next
            .issue_for(&self.id, Duration::from_secs(300))
            .map_err(|e| RotationRefusal::Internal(format!("a probe SVID: {e}")))?;
        let trust: TrustStore = self.feed.trust.clone();
        let deadline = tokio::time::Instant::now() + TRUST_DEADLINE;
        let mut trusting: Vec<String> = Vec::new();
        loop {
            let mesh = self.feed.mesh.borrow().clone();
            let mut waiting = Vec::new();
            for member in mesh.members.iter().filter(|m| m.cluster != self.cluster) {
                if trusting.contains(&member.spiffe_id) {
                    continue;
                }
                let Some(td) = mesh
                    .clusters
                    .get(&member.cluster)
                    .and_then(|c| TrustDomain::parse(&c.trust_domain).ok())
                else {
                    continue;
                };
                match gateway::probe(
                    self.bind,
                    member.tunnel,
                    &td,
                    &probe,
                    &trust,
                    self.probe_timeout,
                )
                .await
                {
                    Ok(()) => trusting.push(member.spiffe_id.clone()),
                    Err(e) => waiting.push(format!("{} ({e})", member.spiffe_id)),
                }
            }
            if waiting.is_empty() {
                return Ok(trusting);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RotationRefusal::Unavailable(format!(
                    "not every gateway trusts the next root after {}s: {}; the rotation stays announced (both roots trusted) and calling it again continues",
                    TRUST_DEADLINE.as_secs(),
                    waiting.join("; ")
                )));
            }
            tracing::debug!(waiting = %waiting.join("; "), "CA rotation: waiting for gateways to trust the next root");
            if !self.sleep(Duration::from_millis(250)).await {
                return Err(RotationRefusal::Unavailable(
                    "the gateway is shutting down; the rotation stays announced".into(),
                ));
            }
        }
    }

    /// Waits until `pending.retire_at`, then removes the old root from the bundle (retrying
    /// until a write succeeds) and deletes its key.
    async fn retire(self: Arc<Self>, pending: Pending) {
        let at = humantime::parse_rfc3339(&pending.retire_at).unwrap_or_else(|_| SystemTime::now());
        let wait = at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        if !self.sleep(wait).await {
            return;
        }
        loop {
            match self
                .set_bundle(&pending.root, "ca-rotation (retire the old root)")
                .await
            {
                Ok(()) => break,
                Err(e) => {
                    tracing::warn!(error = ?e, "CA rotation: retiring the old root failed; retrying in 5s");
                    if !self.sleep(Duration::from_secs(5)).await {
                        return;
                    }
                }
            }
        }
        self.ca.retire_previous();
        let _ = std::fs::remove_file(self.data_dir.join(STATE_FILE));
        tracing::info!(cluster = %self.cluster, "CA rotation done: the old root left the trust bundle and its key is deleted");
    }

    async fn set_bundle(&self, pem: &str, actor: &str) -> Result<(), RotationRefusal> {
        let command = Command::SetTrustBundle {
            cluster: self.cluster.clone(),
            trust_bundle: pem.to_string(),
            actor: actor.to_string(),
            at: federation::mesh::token::now_rfc3339(),
        };
        match self.writer.propose(&command).await {
            Ok((_, CommandResult::Done)) => Ok(()),
            Ok((_, other)) => Err(RotationRefusal::Internal(format!(
                "the trust bundle write was refused: {other:?}"
            ))),
            Err(problem) => Err(RotationRefusal::Unavailable(format!(
                "the trust bundle write did not commit: {}",
                problem.detail
            ))),
        }
    }

    /// Sleeps `wait`; false when the gateway began to shut down first.
    async fn sleep(&self, wait: Duration) -> bool {
        let mut stop = self.stop.clone();
        if *stop.borrow_and_update() {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => true,
            _ = stop.changed() => false,
        }
    }

    fn pending(&self) -> Option<Pending> {
        let text = std::fs::read_to_string(self.data_dir.join(STATE_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn save(&self, pending: &Pending) -> std::io::Result<()> {
        let path = self.data_dir.join(STATE_FILE);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(pending)?)?;
        std::fs::rename(&tmp, &path)
    }
}
