//! Causeway's mesh model and identity.
//!
//! `federation` depends on none of Causeway's crates. It owns the words of the mesh (clusters,
//! services, trust domains, SPIFFE IDs) and is the only crate that issues certificates.
#![forbid(unsafe_code)]

pub mod authz;
pub mod identity;
pub mod mesh;
pub mod model;
pub mod peer_authn;
pub mod ratelimit;
pub mod ratelog;
pub mod resource;
pub mod traffic;
