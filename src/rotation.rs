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
//! A cluster's other gateways hold the CA too (they got it through their join): the rotating
//! gateway hands them the next CA after step 1 (a connection of their own, mutual TLS with the
//! current SVIDs; they take it only for a root already in the cluster's bundle), probes them
//! like every other gateway, and asks them to switch before it switches itself; the old root
//! retires after the last SVID any of them signed expires, and each deletes its copy of the old
//! key once the root has left the bundle.

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
    /// This gateway's SVID: other gateways of the cluster take the next CA from it.
    pub svid: tokio::sync::watch::Receiver<Arc<federation::identity::Svid>>,
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

/// DER of each certificate in `pem`.
fn rustls_pemfile_certs(pem: &str) -> Vec<Vec<u8>> {
    use rustls::pki_types::pem::PemObject;
    rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect()
}

impl gateway::CaHandoff for Rotator {
    fn accept_next(&self, certificate_pem: &str, key_pem: &str) -> Result<(), String> {
        // Only a root the cluster's trust bundle already holds: the hand-over follows the
        // announce, and never brings in a CA the mesh has not been told about.
        let ders = rustls_pemfile_certs(certificate_pem);
        let known = self
            .feed
            .mesh
            .borrow()
            .clusters
            .get(&self.cluster)
            .is_some_and(|c| !ders.is_empty() && ders.iter().all(|d| c.trust_bundle.contains(d)));
        if !known {
            return Err("the CA handed over is not in this cluster's trust bundle".into());
        }
        let next_dir = self.data_dir.join(NEXT_DIR);
        if let Ok(existing) = std::fs::read_to_string(next_dir.join("ca.pem")) {
            if existing == certificate_pem {
                return Ok(());
            }
            std::fs::remove_dir_all(&next_dir).map_err(|e| e.to_string())?;
        }
        std::fs::create_dir_all(&next_dir).map_err(|e| e.to_string())?;
        {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(next_dir.join("ca-key.pem"))
                .map_err(|e| e.to_string())?;
            file.write_all(key_pem.as_bytes())
                .and_then(|()| file.sync_all())
                .map_err(|e| e.to_string())?;
        }
        std::fs::write(next_dir.join("ca.pem"), certificate_pem).map_err(|e| e.to_string())?;
        // Refuses a key that is not the certificate's, or a CA of another trust domain.
        let next = CertificateAuthority::load_or_create(&next_dir, &self.td).map_err(|e| {
            let _ = std::fs::remove_dir_all(&next_dir);
            e.to_string()
        })?;
        self.ca.announce(next.bundle_pem());
        Ok(())
    }

    fn switch(&self) -> Result<SystemTime, String> {
        let next_dir = self.data_dir.join(NEXT_DIR);
        if !next_dir.exists() {
            // Switched already (a rotation that retries): the same answer again.
            return self
                .ca
                .previous_until()
                .ok_or_else(|| "no next CA to switch to".to_string());
        }
        let until = self.ca.switch(&next_dir).map_err(|e| e.to_string())?;
        let mut always = TrustBundles::new();
        always.insert(self.td.clone(), vec![self.ca.current().root_der()]);
        self.feed.set_always(always);
        Ok(until)
    }
}

/// The data plane starts before the store that a [`Rotator`] writes through: it gets this,
/// which the rotator is put into once it exists.
#[derive(Debug, Default)]
pub struct Handoff(pub std::sync::OnceLock<Arc<Rotator>>);

impl gateway::CaHandoff for Handoff {
    fn accept_next(&self, certificate_pem: &str, key_pem: &str) -> Result<(), String> {
        self.0
            .get()
            .ok_or("this gateway is still starting")?
            .accept_next(certificate_pem, key_pem)
    }

    fn switch(&self) -> Result<SystemTime, String> {
        gateway::CaHandoff::switch(
            self.0
                .get()
                .ok_or("this gateway is still starting")?
                .as_ref(),
        )
    }
}

impl std::fmt::Debug for Rotator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotator")
            .field("cluster", &self.cluster)
            .finish()
    }
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
        // The cluster's other gateways get the next CA too, from this one (never the log).
        self.hand_over(&next_dir).await?;

        // 2. Switch, once every other gateway accepts an SVID of the next CA.
        let trusting = self.await_trust(&next).await?;
        // The cluster's other gateways switch first: if one cannot, nothing has switched here
        // and calling again continues.
        let mut old_until = SystemTime::UNIX_EPOCH;
        for sibling in self.siblings() {
            let svid = self.svid.borrow().clone();
            let until = gateway::ask_switch(
                self.bind,
                sibling.tunnel,
                &svid,
                &self.feed.trust,
                self.probe_timeout,
            )
            .await
            .map_err(|e| {
                RotationRefusal::Unavailable(format!(
                    "gateway {} of this cluster did not switch to the next CA: {e}; the rotation stays announced and calling again continues",
                    sibling.spiffe_id
                ))
            })?;
            old_until = old_until.max(until);
        }
        let own_until = self
            .ca
            .switch(&next_dir)
            .map_err(|e| RotationRefusal::Internal(format!("switching to the next CA: {e}")))?;
        let old_until = old_until.max(own_until);
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

    /// Resumes a switched rotation's wait after a restart, and follows the mesh to delete a
    /// retired CA's key once another gateway of the cluster retired its root.
    pub fn resume(self: Arc<Self>) {
        if let Some(pending) = self.pending() {
            tracing::info!(cluster = %self.cluster, retire_at = %pending.retire_at, "CA rotation: waiting to retire the old root");
            tokio::spawn(self.clone().retire(pending));
        }
        tokio::spawn(self.follow_retirement());
    }

    /// Deletes `ca-retired` once its root has left the cluster's trust bundle (the gateway
    /// that ran the rotation retired it).
    async fn follow_retirement(self: Arc<Self>) {
        let mut mesh = self.feed.mesh.subscribe();
        let mut stop = self.stop.clone();
        loop {
            let retired = self.data_dir.join(format!("{}-retired", crate::ca::CA_DIR));
            if let Ok(pem) = std::fs::read_to_string(retired.join("ca.pem")) {
                let root: Vec<Vec<u8>> = rustls_pemfile_certs(&pem);
                let gone = mesh
                    .borrow_and_update()
                    .clusters
                    .get(&self.cluster)
                    .is_some_and(|c| root.iter().all(|r| !c.trust_bundle.contains(r)));
                if gone && !root.is_empty() {
                    self.ca.retire_previous();
                    tracing::info!(cluster = %self.cluster, "CA rotation: the old root left the trust bundle; its key is deleted here too");
                }
            }
            tokio::select! {
                changed = mesh.changed() => if changed.is_err() { return },
                _ = stop.changed() => return,
            }
        }
    }

    /// The other gateways of this cluster.
    fn siblings(&self) -> Vec<federation::mesh::Member> {
        let own_id = self.id.as_str();
        self.feed
            .mesh
            .borrow()
            .members
            .iter()
            .filter(|m| m.cluster == self.cluster && m.spiffe_id != own_id)
            .cloned()
            .collect()
    }

    /// Gives every other gateway of this cluster the next CA (in `next_dir`), over a
    /// connection of their own (mutual TLS with the current SVIDs), retrying until the trust
    /// deadline.
    async fn hand_over(&self, next_dir: &std::path::Path) -> Result<(), RotationRefusal> {
        let siblings = self.siblings();
        if siblings.is_empty() {
            return Ok(());
        }
        let read = |file: &str| {
            std::fs::read_to_string(next_dir.join(file)).map_err(|e| {
                RotationRefusal::Internal(format!("reading the next CA's {file}: {e}"))
            })
        };
        let (cert, key) = (read("ca.pem")?, read("ca-key.pem")?);
        let deadline = tokio::time::Instant::now() + TRUST_DEADLINE;
        let mut done: Vec<String> = Vec::new();
        loop {
            let mut waiting = Vec::new();
            for sibling in &siblings {
                if done.contains(&sibling.spiffe_id) {
                    continue;
                }
                let svid = self.svid.borrow().clone();
                match gateway::hand_next_ca(
                    self.bind,
                    sibling.tunnel,
                    &svid,
                    &self.feed.trust,
                    self.probe_timeout,
                    cert.clone(),
                    key.clone(),
                )
                .await
                {
                    Ok(()) => done.push(sibling.spiffe_id.clone()),
                    Err(e) => waiting.push(format!("{} ({e})", sibling.spiffe_id)),
                }
            }
            if waiting.is_empty() {
                tracing::info!(cluster = %self.cluster, gateways = %done.join(", "), "CA rotation: the cluster's other gateways hold the next CA");
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RotationRefusal::Unavailable(format!(
                    "not every gateway of this cluster took the next CA: {}; the rotation stays announced and calling again continues",
                    waiting.join("; ")
                )));
            }
            if !self.sleep(Duration::from_millis(250)).await {
                return Err(RotationRefusal::Unavailable(
                    "the gateway is shutting down; the rotation stays announced".into(),
                ));
            }
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
            let own_id = self.id.as_str();
            for member in mesh.members.iter().filter(|m| m.spiffe_id != own_id) {
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
