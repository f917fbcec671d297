//! The Raft transport between gateways: gRPC (tonic) over mutually authenticated TLS.
//!
//! ```text
//!  node A ── Transport::send(B, msgs) ──► GrpcTransport: peer B's bounded queue (drops when full)
//!                                              │ one sender task per peer, folding what queued
//!                                              ▼ while a call was in flight into one Batch
//!                              Raft.Send(Batch{from: A, to: B, messages}) over h2 + TLS 1.3
//!                                              │ client cert: A's X.509-SVID
//!                                              ▼
//!  serve(B): TLS accept (SPIFFE verifier) ─► peer's SpiffeId ─► PeerTable ─► node id
//!            refuse unless it is batch.from ─► NodeInbox(B)::deliver_encoded, each message
//! ```
//!
//! Authentication is the TLS handshake's (the SPIFFE verifiers in `federation::identity`);
//! authorisation is the [`PeerTable`]: an SVID speaks for exactly one Raft node, so a gateway
//! cannot forge another member's messages at the batch level. (Each message's own `from` is
//! inside the Raft encoding, which only `store` decodes; it has to check it against the batch's.)
//!
//! Everything is best effort, as [`store::Transport`] asks: a slow or dead peer costs only its
//! own queue's dropped messages, and Raft retransmits.

mod client;
mod peers;
mod server;
#[cfg(test)]
mod tests;

pub use client::{ClientTls, GrpcTransport};
pub use peers::{Peer, PeerTable};
pub use server::{PeerIdentity, serve};

/// The generated gRPC code for `proto/raft.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("causeway.raft.v1");
}

/// The ALPN protocol of the Raft transport's TLS: gRPC runs on HTTP/2. Pass it to
/// `federation::identity::{server,client}_config_with_alpn`.
pub const ALPN: &[u8] = b"h2";

/// Largest batch a peer may send or receive, in bytes of encoded Raft messages. Snapshots travel
/// as one Raft message, so this also bounds a snapshot; chunked snapshot streaming is future
/// work.
pub const MAX_BATCH_BYTES: usize = 64 * 1024 * 1024;

/// The gRPC message limit: a full batch plus the protobuf framing of its fields.
const MAX_GRPC_MESSAGE_BYTES: usize = MAX_BATCH_BYTES + 1024 * 1024;

/// Why the Raft transport could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RaftTransportError {
    /// Raft node id 0 means "none" to raft-rs and cannot be a peer.
    #[error("raft node id 0 is reserved")]
    ZeroNode,
    /// One SPIFFE ID may speak for one node only, or a peer could forge another's messages.
    #[error("{id} already speaks for raft node {node}")]
    IdInUse {
        id: federation::identity::SpiffeId,
        node: u64,
    },
    /// A peer address is not `host:port`.
    #[error("invalid address {addr:?} of raft node {node}: {reason}")]
    InvalidAddress {
        node: u64,
        addr: String,
        reason: String,
    },
    /// The gRPC server failed.
    #[error("raft gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}
