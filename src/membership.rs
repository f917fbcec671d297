//! Keeps the Raft group's membership in line with the members the mesh state records.
//!
//! A join is a write to the mesh state (it allocates the node id and records the gateway); the
//! Raft side follows here, on whichever node leads: every recorded member that is not in the
//! group is added as a learner, and learners that have caught up are promoted to voters while
//! the placement rule allows:
//!
//! - at most five voters;
//! - with three or more clusters, at most one voter per cluster, so losing any one cluster
//!   loses one voter and never the quorum;
//! - a cluster without a voter is served first, whatever the mesh's size;
//! - a mesh of a single cluster gets up to three voters from it, so it survives losing one
//!   gateway; once three clusters exist, the extra voters of a cluster are demoted to learners
//!   again (never the leader: another voter of its cluster goes).
//!
//! Extra gateways stay learners: they replicate everything and serve reads and the data plane,
//! they just do not vote.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// How often the leader compares the group with the recorded members.
const RECONCILE_INTERVAL: Duration = Duration::from_millis(300);
/// A learner this many entries or fewer behind the leader's commit index counts as caught up.
const CAUGHT_UP_LAG: u64 = 16;
/// Voters at most, whatever the mesh's size: more would only slow every write.
const MAX_VOTERS: usize = 5;
/// Voters to aim for in a mesh of one cluster.
const SMALL_MESH_VOTERS: usize = 3;

/// What the leader should do next to bring the group in line, one step at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    AddLearner(u64),
    Promote(u64),
    Demote(u64),
}

/// The next membership change, if any. `members` maps every recorded member's node id to its
/// cluster; `voters`/`learners` are the group's current sets; `matched` the leader's view of
/// each member's log, `commit` its commit index; `leader` is the node deciding (never demoted).
pub fn next_step(
    members: &BTreeMap<u64, String>,
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
    matched: &BTreeMap<u64, u64>,
    commit: u64,
    leader: u64,
) -> Option<Step> {
    if let Some(&id) = members
        .keys()
        .find(|id| !voters.contains(id) && !learners.contains(id))
    {
        return Some(Step::AddLearner(id));
    }
    let cluster_of = |id: &u64| members.get(id).map(String::as_str);
    let clusters: BTreeSet<&str> = members.values().map(String::as_str).collect();
    let voter_clusters: BTreeSet<&str> = voters.iter().filter_map(cluster_of).collect();
    let caught_up = |id: &&u64| matched.get(id).copied().unwrap_or(0) + CAUGHT_UP_LAG >= commit;
    let candidates: Vec<(u64, &str)> = learners
        .iter()
        .filter(caught_up)
        .filter_map(|id| Some((*id, cluster_of(id)?)))
        .collect();
    // A cluster without a voter first, whatever the mesh's size.
    if voters.len() < MAX_VOTERS
        && let Some(&(id, _)) = candidates
            .iter()
            .find(|(_, cluster)| !voter_clusters.contains(cluster))
    {
        return Some(Step::Promote(id));
    }
    // Three clusters or more: one voter each (a second one would make that cluster's loss
    // cost two votes). Promotions above come first, so the group never shrinks while a
    // cluster still waits for its voter and there is room for it.
    if clusters.len() >= 3 {
        let mut seen = BTreeSet::new();
        // Walk the leader first, so that it is the one its cluster keeps.
        let order = voters
            .iter()
            .filter(|&&id| id == leader)
            .chain(voters.iter().filter(|&&id| id != leader));
        for &id in order {
            if let Some(cluster) = cluster_of(&id)
                && !seen.insert(cluster)
            {
                return Some(Step::Demote(id));
            }
        }
    }
    if voters.len() >= MAX_VOTERS {
        return None;
    }
    if clusters.len() == 1 && voters.len() < SMALL_MESH_VOTERS {
        return candidates.first().map(|&(id, _)| Step::Promote(id));
    }
    None
}

/// Runs until `stop` resolves; acts only while this node leads.
pub async fn reconcile(
    node: store::Node,
    mesh: api::mesh::SharedMesh,
    stop: impl std::future::Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(RECONCILE_INTERVAL) => {}
        }
        let Ok(status) = node.status().await else {
            return;
        };
        if status.role != store::Role::Leader || !status.outgoing_voters.is_empty() {
            continue;
        }
        let members: BTreeMap<u64, String> = mesh.read(|state| {
            state
                .members()
                .into_iter()
                .map(|m| (m.node_id, m.cluster.to_string()))
                .collect()
        });
        if members.is_empty() {
            continue;
        }
        let voters: BTreeSet<u64> = status.voters.iter().copied().collect();
        let learners: BTreeSet<u64> = status.learners.iter().copied().collect();
        let Some(step) = next_step(
            &members,
            &voters,
            &learners,
            &status.matched,
            status.commit,
            status.id,
        ) else {
            continue;
        };
        let result = match step {
            Step::AddLearner(id) => node.add_learner(id).await,
            Step::Promote(id) => node.promote(id).await,
            Step::Demote(id) => node.demote(id).await,
        };
        match result {
            Ok(()) => tracing::info!(?step, "raft membership changed"),
            Err(e) => {
                tracing::warn!(?step, error = %e, "raft membership change failed; will retry")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(list: &[(u64, &str)]) -> BTreeMap<u64, String> {
        list.iter().map(|&(id, c)| (id, c.to_string())).collect()
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    fn all_matched(ids: &[u64], at: u64) -> BTreeMap<u64, u64> {
        ids.iter().map(|&id| (id, at)).collect()
    }

    /// [`next_step`] as decided by node 1.
    fn step(
        m: &BTreeMap<u64, String>,
        voters: &BTreeSet<u64>,
        learners: &BTreeSet<u64>,
        matched: &BTreeMap<u64, u64>,
        commit: u64,
    ) -> Option<Step> {
        next_step(m, voters, learners, matched, commit, 1)
    }

    #[test]
    fn a_mesh_grown_from_one_cluster_gives_up_its_extra_voters_once_three_clusters_vote() {
        let m = members(&[
            (1, "east"),
            (2, "east"),
            (3, "east"),
            (4, "west"),
            (5, "edge"),
        ]);
        let matched = all_matched(&[1, 2, 3, 4, 5], 20);
        let decide = |voters: &[u64], learners: &[u64]| {
            // Node 2 leads: its cluster keeps it.
            next_step(&m, &set(voters), &set(learners), &matched, 20, 2)
        };
        // The newcomers get their voters first...
        assert_eq!(decide(&[1, 2, 3], &[4, 5]), Some(Step::Promote(4)));
        assert_eq!(decide(&[1, 2, 3, 4], &[5]), Some(Step::Promote(5)));
        // ...then east keeps one, the leader.
        assert_eq!(decide(&[1, 2, 3, 4, 5], &[]), Some(Step::Demote(1)));
        assert_eq!(decide(&[2, 3, 4, 5], &[1]), Some(Step::Demote(3)));
        assert_eq!(decide(&[2, 4, 5], &[1, 3]), None);

        // Five voters and a fourth cluster waiting: demote first, to make room.
        let mut more = m.clone();
        more.insert(6, "north".to_string());
        let matched = all_matched(&[1, 2, 3, 4, 5, 6], 20);
        let decide = |voters: &[u64], learners: &[u64]| {
            next_step(&more, &set(voters), &set(learners), &matched, 20, 2)
        };
        assert_eq!(decide(&[1, 2, 3, 4, 5], &[6]), Some(Step::Demote(1)));
        assert_eq!(decide(&[2, 3, 4, 5], &[1, 6]), Some(Step::Promote(6)));
    }

    #[test]
    fn recorded_members_become_learners_first() {
        let m = members(&[(1, "east"), (2, "west")]);
        let step = step(&m, &set(&[1]), &set(&[]), &all_matched(&[1], 10), 10);
        assert_eq!(step, Some(Step::AddLearner(2)));
    }

    #[test]
    fn a_learner_is_promoted_only_once_caught_up() {
        let m = members(&[(1, "east"), (2, "west")]);
        let behind = all_matched(&[1], 100);
        assert_eq!(step(&m, &set(&[1]), &set(&[2]), &behind, 100), None);
        let caught_up = all_matched(&[1, 2], 100);
        assert_eq!(
            step(&m, &set(&[1]), &set(&[2]), &caught_up, 100),
            Some(Step::Promote(2))
        );
    }

    #[test]
    fn three_clusters_get_one_voter_each_and_extra_gateways_stay_learners() {
        let m = members(&[(1, "east"), (2, "east"), (3, "west"), (4, "edge")]);
        let matched = all_matched(&[1, 2, 3, 4], 50);
        // east already votes: west's learner goes before east's second gateway.
        assert_eq!(
            step(&m, &set(&[1]), &set(&[2, 3, 4]), &matched, 50),
            Some(Step::Promote(3))
        );
        assert_eq!(
            step(&m, &set(&[1, 3]), &set(&[2, 4]), &matched, 50),
            Some(Step::Promote(4))
        );
        // Every cluster votes once: losing any cluster must not lose the quorum.
        assert_eq!(step(&m, &set(&[1, 3, 4]), &set(&[2]), &matched, 50), None);
    }

    #[test]
    fn two_clusters_vote_once_each_and_one_cluster_fills_up_to_three() {
        let m = members(&[(1, "east"), (2, "east"), (3, "west"), (4, "west")]);
        let matched = all_matched(&[1, 2, 3, 4], 9);
        assert_eq!(
            step(&m, &set(&[1]), &set(&[2, 3, 4]), &matched, 9),
            Some(Step::Promote(3))
        );
        assert_eq!(step(&m, &set(&[1, 3]), &set(&[2, 4]), &matched, 9), None);
        let one = members(&[(1, "east"), (2, "east"), (3, "east"), (4, "east")]);
        assert_eq!(
            step(&one, &set(&[1]), &set(&[2, 3, 4]), &matched, 9),
            Some(Step::Promote(2))
        );
        assert_eq!(step(&one, &set(&[1, 2, 3]), &set(&[4]), &matched, 9), None);
    }

    #[test]
    fn never_more_than_five_voters() {
        let list: Vec<(u64, String)> = (1..=7).map(|i| (i, format!("c{i}"))).collect();
        let m: BTreeMap<u64, String> = list.into_iter().collect();
        let matched = all_matched(&[1, 2, 3, 4, 5, 6, 7], 3);
        assert_eq!(
            step(&m, &set(&[1, 2, 3, 4]), &set(&[5, 6, 7]), &matched, 3),
            Some(Step::Promote(5))
        );
        assert_eq!(
            step(&m, &set(&[1, 2, 3, 4, 5]), &set(&[6, 7]), &matched, 3),
            None
        );
    }
}
