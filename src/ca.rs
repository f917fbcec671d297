//! The cluster CA this gateway signs with, switchable while it runs (`causeway ca rotate`).
//!
//! Everything that signs goes through [`ClusterCa`]: the gateway's own SVIDs, workload SVIDs
//! (`POST /v1/svids`), the admin HTTPS certificate. It remembers the latest expiry of what the
//! current CA signed, so a rotation knows when the old root may leave the trust bundle, and it
//! publishes a generation number that renewers follow to re-issue at once after a switch.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use api::SvidSigner;
use federation::identity::{
    CertificateAuthority, IdentityError, ServerCertificate, SignedSvid, SpiffeId, Svid, TrustDomain,
};
use rustls::pki_types::ServerName;
use tokio::sync::watch;

/// Where the CA in use lives, under the data dir.
pub const CA_DIR: &str = "ca";

struct State {
    current: Arc<CertificateAuthority>,
    /// Roots besides the current one that this cluster's SVIDs may still chain to (the
    /// previous root, from a switch until it retires): what workloads must trust too.
    previous: Vec<String>,
    /// The next root, announced (in every trust bundle) but not signing yet.
    announced: Option<String>,
    /// The latest `not_after` of an SVID the current CA signed.
    signed_until: SystemTime,
    /// Since a switch and until the previous root retires: the latest `not_after` of what the
    /// previous CA signed (asked again by a rotation that retries).
    previous_until: Option<SystemTime>,
}

pub struct ClusterCa {
    td: TrustDomain,
    dir: PathBuf,
    state: RwLock<State>,
    generation: watch::Sender<u64>,
}

impl ClusterCa {
    /// Loads (or creates) the CA under `data_dir/ca`.
    pub fn load_or_create(data_dir: &Path, td: &TrustDomain) -> Result<Self, IdentityError> {
        let dir = data_dir.join(CA_DIR);
        let ca = CertificateAuthority::load_or_create(&dir, td)?;
        Ok(ClusterCa {
            td: td.clone(),
            dir,
            state: RwLock::new(State {
                current: Arc::new(ca),
                previous: Vec::new(),
                announced: None,
                signed_until: SystemTime::UNIX_EPOCH,
                previous_until: None,
            }),
            generation: watch::channel(0).0,
        })
    }

    pub fn current(&self) -> Arc<CertificateAuthority> {
        self.read().current.clone()
    }

    /// Bumped by every switch.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Issues the gateway's own SVID.
    pub fn issue_for(&self, id: &SpiffeId, ttl: Duration) -> Result<Svid, IdentityError> {
        let svid = self.current().issue_for(id, ttl)?;
        self.signed(svid.not_after());
        Ok(svid)
    }

    pub fn issue_server_cert(
        &self,
        names: &[ServerName<'_>],
        ttl: Duration,
    ) -> Result<ServerCertificate, IdentityError> {
        self.current().issue_server_cert(names, ttl)
    }

    /// `root` (PEM) is the next CA's: handed to workloads with the current one from now on.
    pub fn announce(&self, root: String) {
        self.state
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .announced = Some(root);
    }

    /// Makes `next` (already written under `next_dir`) the CA in use: it replaces the current
    /// one on disk (`ca/` becomes `ca-retired/`, `next_dir` becomes `ca/`) and in memory.
    /// Returns the latest expiry of what the old CA signed: when its root may leave the
    /// bundle.
    pub fn switch(&self, next_dir: &Path) -> Result<SystemTime, IdentityError> {
        let retired = self.dir.with_file_name(format!("{CA_DIR}-retired"));
        let io = |path: &Path, source: std::io::Error| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        };
        if retired.exists() {
            std::fs::remove_dir_all(&retired).map_err(|e| io(&retired, e))?;
        }
        std::fs::rename(&self.dir, &retired).map_err(|e| io(&self.dir, e))?;
        if let Err(e) = std::fs::rename(next_dir, &self.dir) {
            // Put the old CA back: a gateway must never start without one.
            let _ = std::fs::rename(&retired, &self.dir);
            return Err(io(next_dir, e));
        }
        let next = CertificateAuthority::load_or_create(&self.dir, &self.td)?;
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        let old = std::mem::replace(&mut state.current, Arc::new(next));
        state.previous = vec![old.bundle_pem()];
        state.announced = None;
        let until = state.signed_until;
        state.signed_until = SystemTime::UNIX_EPOCH;
        state.previous_until = Some(until);
        drop(state);
        self.generation.send_modify(|g| *g += 1);
        Ok(until)
    }

    /// The previous root retired: workloads need trust only the current one, and its key is
    /// deleted from the data dir.
    pub fn retire_previous(&self) {
        {
            let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
            state.previous.clear();
            state.previous_until = None;
        }
        let retired = self.dir.with_file_name(format!("{CA_DIR}-retired"));
        if let Err(e) = std::fs::remove_dir_all(&retired)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %retired.display(), error = %e, "could not delete the retired CA");
        }
    }

    /// Since a switch, until the previous root retires: the latest expiry of what the
    /// previous CA signed.
    pub fn previous_until(&self) -> Option<SystemTime> {
        self.read().previous_until
    }

    fn signed(&self, not_after: SystemTime) {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        state.signed_until = state.signed_until.max(not_after);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }
}

impl SvidSigner for ClusterCa {
    fn trust_domain(&self) -> &TrustDomain {
        &self.td
    }

    /// The current root, and the previous one until it retires: a workload trusting both
    /// verifies its gateway across a switch.
    fn bundle_pem(&self) -> String {
        let state = self.read();
        let mut pem = state.current.bundle_pem();
        for previous in state.previous.iter().chain(&state.announced) {
            pem.push_str(previous);
        }
        pem
    }

    fn sign_csr(
        &self,
        csr_der: &[u8],
        id: &SpiffeId,
        ttl: Duration,
    ) -> Result<SignedSvid, IdentityError> {
        let signed = self.current().sign_csr(csr_der, id, ttl)?;
        self.signed(signed.not_after());
        Ok(signed)
    }
}
