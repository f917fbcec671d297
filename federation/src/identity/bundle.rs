//! Trust bundles: for each trust domain, the root certificates allowed to vouch for its members.
//!
//! Bundles are per domain on purpose. A peer claiming `spiffe://west.mesh/...` is checked
//! against west's roots only, so a compromised CA in one federated domain cannot mint identities
//! in another.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use rustls::pki_types::CertificateDer;

use super::{IdentityError, TrustDomain};

/// Root certificates by trust domain.
#[derive(Clone, Default, Debug, PartialEq, Eq)]
pub struct TrustBundles {
    roots: BTreeMap<TrustDomain, Vec<CertificateDer<'static>>>,
}

impl TrustBundles {
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces `td`'s roots. The certificates are trusted as given; [`Self::insert_pem`] checks
    /// them first.
    pub fn insert(&mut self, td: TrustDomain, roots: Vec<CertificateDer<'static>>) {
        self.roots.insert(td, roots);
    }

    /// Replaces `td`'s roots with every certificate in `pem` (e.g. another cluster's
    /// `CertificateAuthority::bundle_pem`).
    pub fn insert_pem(&mut self, td: TrustDomain, pem: &str) -> Result<(), IdentityError> {
        self.insert_pem_from(td, pem, "PEM text")
    }

    /// [`Self::insert_pem`] with the file at `path`.
    pub fn load_pem_file(&mut self, td: TrustDomain, path: &Path) -> Result<(), IdentityError> {
        let pem = fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        self.insert_pem_from(td, &pem, &path.display().to_string())
    }

    fn insert_pem_from(
        &mut self,
        td: TrustDomain,
        pem: &str,
        origin: &str,
    ) -> Result<(), IdentityError> {
        let invalid = |td: &TrustDomain, reason: String| IdentityError::InvalidBundle {
            trust_domain: td.clone(),
            origin: origin.to_string(),
            reason,
        };
        let roots = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid(&td, format!("bad PEM: {e}")))?;
        if roots.is_empty() {
            return Err(invalid(&td, "no CERTIFICATE block found".into()));
        }
        // Refuse roots webpki cannot use as anchors now, rather than have the domain's peers
        // fail later with a less helpful "unknown issuer".
        for (i, root) in roots.iter().enumerate() {
            webpki::anchor_from_trusted_cert(root)
                .map_err(|e| invalid(&td, format!("certificate #{} is unusable: {e}", i + 1)))?;
        }
        self.insert(td, roots);
        Ok(())
    }

    pub fn roots(&self, td: &TrustDomain) -> Option<&[CertificateDer<'static>]> {
        self.roots.get(td).map(Vec::as_slice)
    }

    pub fn domains(&self) -> impl Iterator<Item = &TrustDomain> {
        self.roots.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::CertificateAuthority;

    fn td(s: &str) -> TrustDomain {
        TrustDomain::parse(s).unwrap()
    }

    #[test]
    fn pem_bundles_load_and_are_kept_per_domain() {
        let dir = tempfile::tempdir().unwrap();
        let east =
            CertificateAuthority::load_or_create(&dir.path().join("east"), &td("east")).unwrap();
        let path = dir.path().join("east-bundle.pem");
        fs::write(&path, east.bundle_pem()).unwrap();

        let mut bundles = TrustBundles::new();
        bundles.load_pem_file(td("east"), &path).unwrap();
        bundles.insert(td("west"), Vec::new());
        assert_eq!(bundles.roots(&td("east")).unwrap(), [east.root_der()]);
        assert_eq!(bundles.roots(&td("north")), None);
        let domains: Vec<_> = bundles.domains().map(TrustDomain::as_str).collect();
        assert_eq!(domains, ["east", "west"]);
    }

    #[test]
    fn bundles_without_certificates_are_refused_naming_the_source() {
        let mut bundles = TrustBundles::new();
        let err = bundles.insert_pem(td("east"), "").unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");

        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(bundles.insert_pem(td("east"), garbage).is_err());

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.pem");
        let err = bundles.load_pem_file(td("east"), &missing).unwrap_err();
        assert!(err.to_string().contains("nope.pem"), "{err}");

        let empty = dir.path().join("empty.pem");
        fs::write(&empty, "not pem").unwrap();
        let err = bundles.load_pem_file(td("east"), &empty).unwrap_err();
        assert!(err.to_string().contains("empty.pem"), "{err}");
        assert_eq!(bundles.domains().count(), 0);
    }
}
