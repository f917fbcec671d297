//! Workload identity for Causeway gateways: SPIFFE IDs, a per-cluster CA, X.509-SVIDs, and the
//! rustls configurations that authenticate gateways to each other.
//!
//! ```text
//!   cluster east                                         cluster west
//!   CertificateAuthority(east) ── issue ──► Svid         CertificateAuthority(west) ──► Svid
//!        │ bundle_pem                          │               │ bundle_pem              │
//!        └──────────────► TrustBundles ◄───────┼───────────────┘                         │
//!                         {east: [root], west: [root]}                                   │
//!                                   │          │                                         │
//!                                   │ held in a TrustStore (replaceable at runtime)      │
//!                     server_config / client_config(svid, trust, expected peer domain)   │
//!                                   │                                                    │
//!                                   └────────── mutual TLS 1.3, ALPN causeway/1 ◄────────┘
//! ```
//!
//! Peers are identified by the single URI SAN of their leaf certificate and checked against the
//! roots of *their* trust domain only; DNS names are never consulted. After a handshake,
//! [`peer_spiffe_id`] on the connection's peer certificates yields the authenticated ID.
//!
//! Workloads get theirs differently: [`CertificateAuthority::sign_csr`] certifies the key of a
//! [`WorkloadKeyRequest`] made on the workload's machine as the ID the CA's caller chose, and
//! returns a [`SignedSvid`]; the private key never reaches the CA.
//!
//! Renewal is the caller's: an owner task re-issues at [`Svid::renew_at`] and swaps configs.
//! Trust is the caller's too: whoever follows the mesh replaces the [`TrustStore`]'s bundles,
//! and every config built on that store verifies the next handshake against them.

mod bundle;
mod ca;
mod csr;
mod error;
mod spiffe;
mod svid;
mod trust;
mod verifier;

pub use bundle::TrustBundles;
pub use ca::{CertificateAuthority, ServerCertificate};
pub use csr::WorkloadKeyRequest;
pub use error::IdentityError;
pub use spiffe::{SpiffeId, TrustDomain};
pub use svid::{SignedSvid, Svid, peer_spiffe_id};
pub use trust::TrustStore;
#[doc(hidden)]
pub use verifier::fuzzing;
pub use verifier::{
    ALPN, client_config, client_config_with_alpn, refusal_reason, server_config,
    server_config_with_alpn,
};
