//! `GET /v1/status`: this node, the Raft group as it sees it, and its tunnels.

use std::collections::BTreeSet;

use axum::Json;
use axum::extract::State;

use super::auth::{Caller, Viewer};
use super::input::Params;
use super::problem::{Problem, ProblemBody};
use super::wire::{MemberRole, MemberStatus, NodeView, StatusView, TunnelState, TunnelStatus};
use super::writer::leader_view;
use crate::AdminState;

/// Where this node stands: its Raft role and indexes, the group's members (with replication
/// progress when asked on the leader) and the state of its tunnels.
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "status",
    responses(
        (status = 200, description = "This node's view", body = StatusView),
        (status = 400, description = "A query parameter was given (there are none)", body = ProblemBody, content_type = "application/problem+json"),
    )
)]
pub async fn status(
    _: Caller<Viewer>,
    State(state): State<AdminState>,
    params: Params,
) -> Result<Json<StatusView>, Problem> {
    params.only(&[])?;
    let node = state.node()?;
    let raft = node
        .status()
        .await
        .map_err(|e| Problem::no_quorum(format!("the raft node does not answer: {e}")))?;
    let voters: BTreeSet<u64> = raft
        .voters
        .iter()
        .chain(&raft.outgoing_voters)
        .copied()
        .collect();
    let learners: BTreeSet<u64> = raft.learners.iter().copied().collect();
    let recorded = state.mesh.read(|s| {
        s.members()
            .into_iter()
            .map(|m| (m.node_id, m.clone()))
            .collect::<std::collections::BTreeMap<_, _>>()
    });
    // Members the state records and ids Raft knows (a founding member before bootstrap has no
    // record yet), each once.
    let ids: BTreeSet<u64> = recorded
        .keys()
        .copied()
        .chain(voters.iter().copied())
        .chain(learners.iter().copied())
        .collect();
    let members = ids
        .into_iter()
        .map(|id| {
            let member = recorded.get(&id);
            let role = if voters.contains(&id) {
                MemberRole::Voter
            } else if learners.contains(&id) {
                MemberRole::Learner
            } else {
                MemberRole::Pending
            };
            let match_index = raft.matched.get(&id).copied();
            MemberStatus {
                id,
                name: member.map(|m| m.name.clone()).unwrap_or_default(),
                cluster: member.map(|m| m.cluster.to_string()).unwrap_or_default(),
                role,
                raft: member.map(|m| m.raft.to_string()).unwrap_or_default(),
                admin: member.map(|m| m.admin.to_string()).unwrap_or_default(),
                match_index,
                lag: match_index.map(|m| raft.commit.saturating_sub(m)),
            }
        })
        .collect();
    let tunnels = state
        .tunnels
        .borrow()
        .iter()
        .map(|t| TunnelStatus {
            cluster: t.cluster.clone(),
            address: t.address.clone(),
            state: if t.up {
                TunnelState::Up
            } else {
                TunnelState::Down
            },
        })
        .collect();
    let info = &state.info;
    Ok(Json(StatusView {
        node: NodeView {
            id: info.id,
            name: info.name.clone(),
            cluster: info.cluster.clone(),
            spiffe_id: info.spiffe_id.clone(),
            admin: info.admin.to_string(),
        },
        role: raft.role.into(),
        leader: raft.leader.map(|id| leader_view(&state.mesh, id)),
        term: raft.term,
        commit_index: raft.commit,
        applied_index: raft.applied,
        members,
        tunnels,
    }))
}
