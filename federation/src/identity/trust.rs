//! Trust bundles that change while the gateway runs: a cluster joins the mesh, a CA rotates.
//!
//! ```text
//!  owner (mesh snapshot follower) ── replace(bundles) ──► TrustStore ◄── current() ── verifiers
//!                                                                        (every handshake)
//! ```
//!
//! A verifier reads the bundles once per handshake, so a replaced bundle governs the next
//! handshake and established connections keep the verification they had. The lock is held only
//! to clone or swap an `Arc`, never across an `.await` or a certificate check.

use std::sync::{Arc, PoisonError, RwLock};

use super::TrustBundles;

/// Shared, replaceable [`TrustBundles`]. Cheap to clone; every clone sees the same bundles.
#[derive(Clone, Debug, Default)]
pub struct TrustStore {
    bundles: Arc<RwLock<Arc<TrustBundles>>>,
}

impl TrustStore {
    pub fn new(bundles: TrustBundles) -> Self {
        Self {
            bundles: Arc::new(RwLock::new(Arc::new(bundles))),
        }
    }

    /// The bundles now in force; later replacements do not change what this returns.
    pub fn current(&self) -> Arc<TrustBundles> {
        // A panicking writer cannot leave a half-written value: the write is one `Arc` swap.
        self.bundles
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Puts `bundles` in force for every handshake from now on. Returns whether they differ
    /// from the bundles they replace.
    pub fn replace(&self, bundles: TrustBundles) -> bool {
        let mut current = self.bundles.write().unwrap_or_else(PoisonError::into_inner);
        if **current == bundles {
            return false;
        }
        *current = Arc::new(bundles);
        true
    }
}

impl From<TrustBundles> for TrustStore {
    fn from(bundles: TrustBundles) -> Self {
        Self::new(bundles)
    }
}

/// A fixed set of bundles, for callers that never change them (tests, tools).
impl From<Arc<TrustBundles>> for TrustStore {
    fn from(bundles: Arc<TrustBundles>) -> Self {
        Self {
            bundles: Arc::new(RwLock::new(bundles)),
        }
    }
}

#[cfg(test)]
mod tests {
    use rustls::pki_types::CertificateDer;

    use super::*;
    use crate::identity::TrustDomain;

    #[test]
    fn clones_share_replacements_and_earlier_reads_stay_as_they_were() {
        let td = TrustDomain::parse("east").unwrap();
        let store = TrustStore::default();
        let clone = store.clone();
        let before = clone.current();

        let mut bundles = TrustBundles::new();
        bundles.insert(td.clone(), vec![CertificateDer::from(vec![1, 2, 3])]);
        assert!(store.replace(bundles.clone()));
        assert!(!store.replace(bundles), "same bundles: no change");

        assert!(clone.current().roots(&td).is_some());
        assert!(before.roots(&td).is_none());
    }
}
