//! The write path: every change goes through Raft, and a handler answers only once this node
//! has applied it, so a client that reads from the same gateway right after sees its write.
//!
//! ```text
//!  Writer::propose(cmd) ─► node.propose ─ ok ─────────────────────────────┐
//!                             │ NotLeader{Some(l)}                        │
//!                             ▼                                           ▼
//!                          Forward::forward(l, cmd) ─ ok ─► wait until applied here ≥ index
//!                             │ anything else                              │
//!                             ▼                                           ▼
//!                          503 no-quorum (saying whether it may still apply)   (index, result)
//! ```
//! All of it within [`WRITE_TIMEOUT`].

use std::sync::Arc;
use std::time::Duration;

use federation::mesh::{Command, CommandResult};
use futures::future::BoxFuture;
use store::ProposeError;

use super::problem::Problem;
use super::wire::LeaderView;
use crate::mesh::SharedMesh;

/// How long a write may take, forwarding and waiting to apply included.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// Hands a proposal to the leader when this node is not it: the Raft gRPC transport
/// ([`crate::raft::GrpcTransport::forward`]), or a stand-in in tests.
pub trait Forward: Send + Sync + 'static {
    fn forward(
        &self,
        leader: u64,
        command: Vec<u8>,
    ) -> BoxFuture<'_, Result<(u64, Vec<u8>), ProposeError>>;
}

impl Forward for crate::raft::GrpcTransport {
    fn forward(
        &self,
        leader: u64,
        command: Vec<u8>,
    ) -> BoxFuture<'_, Result<(u64, Vec<u8>), ProposeError>> {
        Box::pin(crate::raft::GrpcTransport::forward(self, leader, command))
    }
}

/// Proposes commands and waits for them; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    node: store::Node,
    forward: Option<Arc<dyn Forward>>,
    mesh: SharedMesh,
}

impl Writer {
    /// `forward` is how proposals reach the leader from a follower; without it a follower's
    /// writes answer 503 naming the leader.
    pub fn new(node: store::Node, forward: Option<Arc<dyn Forward>>, mesh: SharedMesh) -> Self {
        Self {
            node,
            forward,
            mesh,
        }
    }

    /// Replicates `command`; returns its log index and the state machine's result once this
    /// node has applied it.
    pub async fn propose(&self, command: &Command) -> Result<(u64, CommandResult), Problem> {
        let bytes = serde_json::to_vec(command)
            .map_err(|e| Problem::internal(format!("cannot encode the command: {e}")))?;
        let (index, result) = tokio::time::timeout(WRITE_TIMEOUT, self.replicate(bytes))
            .await
            .map_err(|_| {
                Problem::no_quorum(format!(
                    "the write was not committed within {} s; it may still apply",
                    WRITE_TIMEOUT.as_secs()
                ))
            })??;
        let result = serde_json::from_slice(&result).map_err(|e| {
            Problem::internal(format!("the state machine's answer does not decode: {e}"))
        })?;
        Ok((index, result))
    }

    async fn replicate(&self, bytes: Vec<u8>) -> Result<(u64, Vec<u8>), Problem> {
        match self.node.propose(bytes.clone()).await {
            Ok(done) => Ok(done),
            Err(ProposeError::NotLeader {
                leader: Some(leader),
            }) if leader != self.node.id() => {
                let Some(forward) = &self.forward else {
                    return Err(self.refused(ProposeError::NotLeader {
                        leader: Some(leader),
                    }));
                };
                let (index, result) = forward
                    .forward(leader, bytes)
                    .await
                    .map_err(|e| self.refused(e))?;
                self.applied_here(index).await?;
                Ok((index, result))
            }
            Err(e) => Err(self.refused(e)),
        }
    }

    /// Waits until this node has applied `index`, so reads here see the write.
    async fn applied_here(&self, index: u64) -> Result<(), Problem> {
        let mut applied = self.node.watch_applied();
        applied
            .wait_for(|&a| a >= index)
            .await
            .map(drop)
            .map_err(|_| Problem::no_quorum("the raft node stopped; the write may have applied"))
    }

    fn refused(&self, e: ProposeError) -> Problem {
        let leader = match &e {
            ProposeError::NotLeader { leader } | ProposeError::LeaderChanged { leader } => *leader,
            _ => None,
        };
        let detail = match &e {
            ProposeError::NotLeader { leader: None } => {
                "no leader is known (an election is under way, or the group lost its quorum); nothing was written".to_string()
            }
            ProposeError::NotLeader { leader: Some(l) } => {
                format!("node {l} is the leader and this gateway cannot forward to it; nothing was written")
            }
            ProposeError::LeaderChanged { .. } => {
                "leadership changed before the write applied; it may still apply".to_string()
            }
            ProposeError::Dropped => {
                "the write was dropped before it applied (a leader change or membership change, or the leader is unreachable); retry".to_string()
            }
            ProposeError::Stopped => {
                "the raft node is stopping; the write may have applied".to_string()
            }
            ProposeError::Rejected { reason } => format!("the leader refused the write: {reason}"),
        };
        let mut problem = Problem::no_quorum(detail);
        problem.leader = leader.map(|id| leader_view(&self.mesh, id));
        problem
    }
}

/// The leader with its name and admin address when it is a recorded member.
pub fn leader_view(mesh: &SharedMesh, id: u64) -> LeaderView {
    mesh.read(|s| {
        let member = s.member(id);
        LeaderView {
            id,
            name: member.map(|m| m.name.clone()),
            admin: member.map(|m| m.admin.to_string()),
        }
    })
}
