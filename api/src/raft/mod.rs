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
//! A message larger than [`CHUNK_BYTES`] (a snapshot) does not ride in a batch: the sender first
//! sends the batch of what Raft queued before it, then streams it alone through
//! `Raft.SendLarge(stream Chunk)` in [`CHUNK_BYTES`] pieces, then carries on, so the peer still
//! sees the messages in Raft's order. The receiver authenticates the stream like a batch,
//! reassembles it up to [`MAX_LARGE_MESSAGE_BYTES`] and delivers it whole; one sending node may
//! have one such stream open at a time.
//!
//! Authentication is the TLS handshake's (the SPIFFE verifiers in `federation::identity`);
//! authorisation is the [`PeerTable`]: an SVID speaks for exactly one Raft node, so a gateway
//! cannot forge another member's messages at the batch level. (Each message's own `from` is
//! inside the Raft encoding, which only `store` decodes; it has to check it against the batch's.)
//!
//! Everything is best effort, as [`store::Transport`] asks: a slow or dead peer costs only its
//! own queue's dropped messages, and Raft retransmits.
//!
//! The same connections carry proposals a follower forwards to the leader
//! ([`GrpcTransport::forward`]): `Raft.Propose(Proposal{from, command})`, authorised like a
//! batch (only members propose), answered once the command has applied on the leader or with
//! the leader's [`store::ProposeError`]. The receiver proposes to its own node only (`serve`'s
//! `proposer`), so a node that is not the leader answers `NotLeader` with the leader it knows of
//! rather than forwarding again.

mod client;
mod peers;
mod proposal;
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

/// Encoded Raft messages larger than this (snapshots, typically) do not travel inside a batch
/// but alone, through `Raft.SendLarge`, streamed in chunks of at most this many bytes.
pub const CHUNK_BYTES: usize = 1024 * 1024;

/// Largest batch a peer may send or receive, in bytes of encoded Raft messages (each at most
/// [`CHUNK_BYTES`], plus their framing). Large messages are streamed instead, so this bounds
/// only how many small ones share a call.
pub const MAX_BATCH_BYTES: usize = 4 * 1024 * 1024;

/// Largest command a member may forward through `Raft.Propose`, in bytes. The sender refuses a
/// larger one without a call, the receiver before it proposes anything.
pub const MAX_PROPOSAL_BYTES: usize = MAX_BATCH_BYTES;

/// Largest single Raft message (a snapshot) a peer may stream, in encoded bytes. The receiver
/// refuses a stream announcing more before it allocates anything, and the sender drops such a
/// message rather than start a stream bound to be refused.
pub const MAX_LARGE_MESSAGE_BYTES: usize = 1024 * 1024 * 1024;

/// The gRPC message limit, both ways: a full batch plus the protobuf framing of its fields.
/// A chunk (at most [`CHUNK_BYTES`] of data and three integers) and a proposal (at most
/// [`MAX_PROPOSAL_BYTES`] of command and an integer) fit with room to spare.
const MAX_GRPC_MESSAGE_BYTES: usize = MAX_BATCH_BYTES + 64 * 1024;

/// Protobuf framing counted per message in a batch (a tag and a length prefix), so a batch of
/// many tiny messages cannot outgrow [`MAX_GRPC_MESSAGE_BYTES`] either.
const MESSAGE_FRAMING_BYTES: usize = 16;

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
    /// `serve`'s proposer must be the node its inbox delivers to.
    #[error("raft node {proposer} cannot take the proposals of raft node {inbox}")]
    MismatchedProposer { proposer: u64, inbox: u64 },
    /// The gRPC server failed.
    #[error("raft gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
}
