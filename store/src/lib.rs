//! Causeway's replicated log: raft-rs on sled.
//!
//! The gateways form one Raft group. This crate replicates opaque commands, in log order, to a
//! [`StateMachine`] that another crate supplies (the composition root hands it `federation`'s
//! mesh state); it knows nothing about meshes. Raft's protobuf types never leave the crate.
//!
//! ```text
//!  propose(cmd) ──► node task (owns RawNode) ──► storage: entries + hard state, one flushed batch
//!                        │   ▲                  ──► transport: messages to peers
//!                        ▼   │ peer messages
//!                   committed entries ──► StateMachine::apply, in log order
//! ```
#![forbid(unsafe_code)]

mod logging;
pub mod metrics;
pub mod node;
pub mod storage;
pub mod transport;

pub use metrics::RaftMetrics;
pub use node::{Node, NodeConfig, NodeFailure, ProposeError, Role, Status, start};
pub use transport::{LocalTransport, NodeInbox, Transport};

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The data directory could not be read or written.
    #[error("storage at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// sled refused an operation.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// Stored bytes do not decode: the data dir is corrupt or was written by something else.
    #[error("corrupt {what}: {reason}")]
    Corrupt { what: String, reason: String },
    /// raft-rs refused an operation (e.g. an index that was compacted away).
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
}

/// What the store replicates to: deterministic, in memory, rebuilt at start from the latest
/// snapshot plus the log.
pub trait StateMachine: Send + 'static {
    /// Applies one committed command at `index` and returns its result for the proposer.
    /// Must be deterministic: every member applies the same commands in the same order.
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8>;
    /// The whole state, for a snapshot.
    fn snapshot(&self) -> Vec<u8>;
    /// Replaces the whole state with a snapshot's.
    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String>;
}
