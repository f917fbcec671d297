use std::io;
use std::path::PathBuf;

use super::spiffe::{SpiffeId, TrustDomain};

/// Why an identity operation failed. Every message names what it was about (a file, a field, a
/// trust domain) so an operator can act on it without reading code.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A trust domain name does not follow the SPIFFE spec.
    #[error("trust domain {value:?} is invalid: {reason}")]
    InvalidTrustDomain { value: String, reason: &'static str },
    /// A SPIFFE ID does not follow the SPIFFE spec.
    #[error("SPIFFE ID {value:?} is invalid: {reason}")]
    InvalidSpiffeId { value: String, reason: String },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file exists but its content is not what Causeway wrote there.
    #[error("{} is corrupt: {reason}", path.display())]
    CorruptFile { path: PathBuf, reason: String },
    /// A private key file can be read by group or other users.
    #[error(
        "{} has mode {mode:o}: a private key must not be accessible by group or others (chmod 600)",
        path.display()
    )]
    InsecureKeyFile { path: PathBuf, mode: u32 },
    /// Only one of the CA's two files exists, so the CA can be neither loaded nor safely recreated.
    #[error("{} exists but {} is missing; restore it or remove both to create a new CA", present.display(), missing.display())]
    IncompleteCa { present: PathBuf, missing: PathBuf },
    /// The CA stored on disk belongs to another trust domain than the one configured.
    #[error("CA in {} is for trust domain {stored}, but trust domain {configured} is configured", dir.display())]
    CaTrustDomainMismatch {
        dir: PathBuf,
        stored: TrustDomain,
        configured: TrustDomain,
    },
    /// A CA was asked to issue an SVID outside its own trust domain.
    #[error("cannot issue {id}: this CA signs for trust domain {ca}")]
    ForeignId { id: SpiffeId, ca: TrustDomain },
    /// A requested validity window is empty or cannot be encoded.
    #[error("invalid validity for {subject}: {reason}")]
    InvalidValidity {
        subject: String,
        reason: &'static str,
    },
    /// Generating a key or signing a certificate failed.
    #[error("generating {what} failed: {source}")]
    Generate {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    /// A certificate signing request cannot be certified: it does not parse, its signature
    /// does not verify with its own key, or its key is of a kind or size we do not certify.
    #[error("certificate signing request refused: {reason}")]
    InvalidCsr { reason: String },
    /// The operating system's random number generator failed.
    #[error("random number generator failed while generating {what}")]
    Random { what: String },
    /// A PEM trust bundle holds no usable root certificate.
    #[error("trust bundle for {trust_domain} from {origin}: {reason}")]
    InvalidBundle {
        trust_domain: TrustDomain,
        origin: String,
        reason: String,
    },
    /// The peer presented no certificate.
    #[error("peer presented no certificate")]
    NoPeerCertificate,
    /// The peer's leaf certificate could not be parsed.
    #[error("peer certificate cannot be parsed: {0}")]
    MalformedPeerCertificate(String),
    /// The peer's leaf does not carry exactly one URI SAN, as an X.509-SVID must.
    #[error("peer certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    PeerUriSanCount(usize),
    /// The peer's trust domain has no bundle, so nothing can vouch for it.
    #[error("unknown trust domain {0}")]
    UnknownTrustDomain(TrustDomain),
    /// The peer authenticated, but as a member of another trust domain than the one dialled.
    #[error("peer {actual} is not in the expected trust domain {expected}")]
    UnexpectedTrustDomain {
        expected: TrustDomain,
        actual: SpiffeId,
    },
    /// rustls refused to build a TLS configuration from the SVID.
    #[error("building TLS config for {id}: {source}")]
    TlsConfig {
        id: SpiffeId,
        #[source]
        source: rustls::Error,
    },
}
