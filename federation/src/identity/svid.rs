//! X.509-SVIDs: a SPIFFE ID bound to a key pair by a certificate, and reading the ID back out of
//! a peer's certificate.

use std::fmt;
use std::time::SystemTime;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;

use super::{IdentityError, SpiffeId};

/// An X.509-SVID with its private key.
pub struct Svid {
    pub(super) id: SpiffeId,
    /// Leaf first. Causeway CAs sign leaves directly, so today this is just the leaf.
    pub(super) chain: Vec<CertificateDer<'static>>,
    pub(super) key: PrivatePkcs8KeyDer<'static>,
    /// As encoded in the certificate (whole seconds).
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
    /// When it was issued: `not_before` is backdated for clock skew, so it cannot tell.
    pub(super) issued_at: SystemTime,
}

impl Svid {
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A copy of the PKCS#8 private key, in the form rustls configs take.
    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Half-way through the lifetime it was issued with: late enough not to churn, early
    /// enough that a failing CA leaves half the lifetime to recover before peers start refusing
    /// us. Measured from issuance, not from `not_before`, which is backdated for clock skew: a
    /// short-lived SVID would otherwise be due for renewal the moment it is issued.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .not_after
            .duration_since(self.issued_at)
            .unwrap_or_default();
        self.issued_at + lifetime / 2
    }
}

impl Clone for Svid {
    fn clone(&self) -> Self {
        Self {
            id: self.id.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            not_before: self.not_before,
            not_after: self.not_after,
            issued_at: self.issued_at,
        }
    }
}

impl fmt::Debug for Svid {
    // Written out so the private key can never reach a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Svid")
            .field("id", &self.id)
            .field("chain_len", &self.chain.len())
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// An X.509-SVID signed for a key held elsewhere ([`super::CertificateAuthority::sign_csr`]):
/// the certificate, without a private key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedSvid {
    pub(super) id: SpiffeId,
    /// Leaf first; as for [`Svid::chain`], just the leaf today.
    pub(super) chain: Vec<CertificateDer<'static>>,
    /// As encoded in the certificate (whole seconds).
    pub(super) not_before: SystemTime,
    pub(super) not_after: SystemTime,
}

impl SignedSvid {
    pub fn id(&self) -> &SpiffeId {
        &self.id
    }

    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// The chain as PEM, leaf first.
    pub fn chain_pem(&self) -> String {
        self.chain
            .iter()
            .map(|c| super::ca::encode_pem(c))
            .collect()
    }

    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }
}

/// The SPIFFE ID of a peer from its presented chain (leaf first): the leaf's single URI SAN.
///
/// This only reads the certificate. Call it on chains the verifiers in this module accepted
/// (e.g. `Connection::peer_certificates`), where the ID has been vouched for by the peer trust
/// domain's roots.
pub fn peer_spiffe_id(chain: &[CertificateDer<'_>]) -> Result<SpiffeId, IdentityError> {
    let leaf = chain.first().ok_or(IdentityError::NoPeerCertificate)?;
    let cert = parse_certificate(leaf)
        .map_err(|e| IdentityError::MalformedPeerCertificate(e.to_string()))?;
    let uris = uri_sans(&cert).map_err(IdentityError::MalformedPeerCertificate)?;
    match uris.as_slice() {
        [uri] => SpiffeId::parse(uri),
        _ => Err(IdentityError::PeerUriSanCount(uris.len())),
    }
}

pub(super) fn parse_certificate<'a>(
    der: &'a CertificateDer<'_>,
) -> Result<X509Certificate<'a>, x509_parser::nom::Err<x509_parser::error::X509Error>> {
    x509_parser::parse_x509_certificate(der).map(|(_, cert)| cert)
}

/// Every URI in the subject alternative names.
pub(super) fn uri_sans<'a>(cert: &'a X509Certificate<'_>) -> Result<Vec<&'a str>, String> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("subject alternative names: {e}"))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

#[cfg(test)]
mod renewal_tests {
    use super::*;

    #[test]
    fn short_lived_svids_renew_half_way_through_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let td = super::super::TrustDomain::parse("east.mesh").unwrap();
        let ca = super::super::CertificateAuthority::load_or_create(dir.path(), &td).unwrap();
        let id = SpiffeId::gateway(&td, "east-1").unwrap();
        let before = SystemTime::now();
        let svid = ca
            .issue_for(&id, std::time::Duration::from_secs(4))
            .unwrap();
        // Backdated not_before must not pull renewal into the past.
        assert!(svid.renew_at() >= before + std::time::Duration::from_millis(1500));
        assert!(svid.renew_at() < svid.not_after());
        assert_eq!(svid.clone().renew_at(), svid.renew_at());
    }
}
