//! The Raft node's metrics, registered in the process registry under the `causeway_` prefix.
//!
//! One [`RaftMetrics`] per node: register it in the `causeway` sub-registry and hand it to
//! [`NodeConfig::metrics`](crate::NodeConfig::metrics). The owner task sets the gauges after each
//! batch of Readies; the [`Node`](crate::Node) handle times proposals, so their latency is what
//! the proposer saw. Label values are low-cardinality: roles, outcomes, node ids.
//!
//! | name (with the prefix)                          | type      | labels    |
//! |-------------------------------------------------|-----------|-----------|
//! | `causeway_raft_term`                            | gauge     |           |
//! | `causeway_raft_role`                            | gauge     | `role`    |
//! | `causeway_raft_commit_index`                    | gauge     |           |
//! | `causeway_raft_applied_index`                   | gauge     |           |
//! | `causeway_raft_proposal_duration_seconds`       | histogram | `outcome` |
//! | `causeway_raft_proposals_total`                 | counter   | `outcome` |
//! | `causeway_raft_snapshots_sent_total`            | counter   |           |
//! | `causeway_raft_snapshots_received_total`        | counter   |           |
//! | `causeway_raft_log_compactions_total`           | counter   |           |
//! | `causeway_raft_peer_lag_entries`                | gauge     | `peer`    |
//! | `causeway_raft_leader_changes_total`            | counter   |           |
//!
//! `raft_role` has one series per role (`follower`, `pre_candidate`, `candidate`, `leader`):
//! 1 for the node's current role, 0 for the others, so `sum(causeway_raft_role{role="leader"})`
//! counts leaders.

use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::node::{ProposeError, Role};

type IndexGauge = Gauge<u64, AtomicU64>;

impl EncodeLabelValue for Role {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Role::Follower => "follower",
            Role::PreCandidate => "pre_candidate",
            Role::Candidate => "candidate",
            Role::Leader => "leader",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

const ROLES: [Role; 4] = [
    Role::Follower,
    Role::PreCandidate,
    Role::Candidate,
    Role::Leader,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: Role,
}

/// How a [`Node::propose`](crate::Node::propose) call ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ProposalOutcome {
    Ok,
    NotLeader,
    Dropped,
    LeaderChanged,
    Rejected,
    Stopped,
}

impl ProposalOutcome {
    pub fn of<T>(result: &Result<T, ProposeError>) -> Self {
        match result {
            Ok(_) => Self::Ok,
            Err(ProposeError::NotLeader { .. }) => Self::NotLeader,
            Err(ProposeError::Dropped) => Self::Dropped,
            Err(ProposeError::LeaderChanged { .. }) => Self::LeaderChanged,
            Err(ProposeError::Rejected { .. }) => Self::Rejected,
            Err(ProposeError::Stopped) => Self::Stopped,
        }
    }
}

impl EncodeLabelValue for ProposalOutcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
        let name = match self {
            Self::Ok => "ok",
            Self::NotLeader => "not_leader",
            Self::Dropped => "dropped",
            Self::LeaderChanged => "leader_changed",
            Self::Rejected => "rejected",
            Self::Stopped => "stopped",
        };
        EncodeLabelValue::encode(&name, encoder)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: ProposalOutcome,
}

/// A peer's node id: copied, never allocated.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PeerLabels {
    pub peer: u64,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn proposal_histogram() -> Histogram {
    // 100 µs .. ~52 s: a local commit takes a flush and a quorum round trip.
    Histogram::new(exponential_buckets(0.0001, 2.0, 20))
}

/// One node's Raft metrics. Cheap to clone: clones share the series.
#[derive(Clone, Debug)]
pub struct RaftMetrics {
    pub term: IndexGauge,
    pub role: Family<RoleLabels, Gauge>,
    pub commit_index: IndexGauge,
    pub applied_index: IndexGauge,
    pub proposal_duration: HistogramFamily<OutcomeLabels>,
    pub proposals: Family<OutcomeLabels, Counter>,
    pub snapshots_sent: Counter,
    pub snapshots_received: Counter,
    pub log_compactions: Counter,
    pub peer_lag: Family<PeerLabels, IndexGauge>,
    pub leader_changes: Counter,
}

impl RaftMetrics {
    /// Creates the metrics and registers them; `registry` should be the `causeway` prefix.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            term: Gauge::default(),
            role: Family::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            proposal_duration: Family::new_with_constructor(proposal_histogram),
            proposals: Family::default(),
            snapshots_sent: Counter::default(),
            snapshots_received: Counter::default(),
            log_compactions: Counter::default(),
            peer_lag: Family::default(),
            leader_changes: Counter::default(),
        };
        // Every role is exposed from the start, so a query never misses a series.
        for role in ROLES {
            m.role.get_or_create(&RoleLabels { role }).set(0);
        }
        registry.register("raft_term", "This node's current Raft term", m.term.clone());
        registry.register(
            "raft_role",
            "1 for this node's current Raft role, 0 for the others",
            m.role.clone(),
        );
        registry.register(
            "raft_commit_index",
            "Highest log index this node knows committed",
            m.commit_index.clone(),
        );
        registry.register(
            "raft_applied_index",
            "Highest log index applied to the state machine on this node",
            m.applied_index.clone(),
        );
        registry.register(
            "raft_proposal_duration_seconds",
            "Time from propose() to its answer, on the node that proposed, by outcome",
            m.proposal_duration.clone(),
        );
        registry.register(
            "raft_proposals",
            "Proposals made on this node, by outcome",
            m.proposals.clone(),
        );
        registry.register(
            "raft_snapshots_sent",
            "Snapshots this node handed to the transport for a lagging peer",
            m.snapshots_sent.clone(),
        );
        registry.register(
            "raft_snapshots_received",
            "Snapshots from the leader installed on this node",
            m.snapshots_received.clone(),
        );
        registry.register(
            "raft_log_compactions",
            "Times this node folded its applied log into a snapshot",
            m.log_compactions.clone(),
        );
        registry.register(
            "raft_peer_lag_entries",
            "On the leader: its last log index minus the index known replicated on each peer",
            m.peer_lag.clone(),
        );
        registry.register(
            "raft_leader_changes",
            "Times this node saw a new leader",
            m.leader_changes.clone(),
        );
        m
    }

    pub(crate) fn observe_proposal(&self, outcome: ProposalOutcome, elapsed: Duration) {
        let labels = OutcomeLabels { outcome };
        self.proposals.get_or_create(&labels).inc();
        self.proposal_duration
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }
}

/// What the owner task last published, so it only touches what changed.
#[derive(Debug)]
pub(crate) struct Observer {
    pub metrics: RaftMetrics,
    role: Option<Role>,
    leader: u64,
    /// Peers with a lag series (and whether the latest update listed them), so the series of
    /// departed peers (or all, on losing leadership) can be removed without scanning the family.
    lag_peers: Vec<(u64, bool)>,
}

impl Observer {
    pub fn new(metrics: RaftMetrics) -> Self {
        Self {
            metrics,
            role: None,
            leader: raft::INVALID_ID,
            lag_peers: Vec::new(),
        }
    }

    pub fn state(&mut self, term: u64, role: Role, leader: u64, commit: u64, applied: u64) {
        let m = &self.metrics;
        m.term.set(term);
        m.commit_index.set(commit);
        m.applied_index.set(applied);
        if self.role != Some(role) {
            if let Some(old) = self.role {
                m.role.get_or_create(&RoleLabels { role: old }).set(0);
            }
            m.role.get_or_create(&RoleLabels { role }).set(1);
            self.role = Some(role);
        }
        if leader != raft::INVALID_ID && leader != self.leader {
            m.leader_changes.inc();
            self.leader = leader;
        }
    }

    /// Sets the lag of each `(peer, matched)`; removes the series of peers not listed.
    /// Pass an empty iterator on a node that does not lead.
    pub fn lag(&mut self, last_index: u64, peers: impl Iterator<Item = (u64, u64)>) {
        let family = &self.metrics.peer_lag;
        for (_, seen) in &mut self.lag_peers {
            *seen = false;
        }
        for (peer, matched) in peers {
            family
                .get_or_create(&PeerLabels { peer })
                .set(last_index.saturating_sub(matched));
            match self.lag_peers.iter_mut().find(|(p, _)| *p == peer) {
                Some((_, seen)) => *seen = true,
                None => self.lag_peers.push((peer, true)),
            }
        }
        self.lag_peers.retain(|&(peer, seen)| {
            if !seen {
                family.remove(&PeerLabels { peer });
            }
            seen
        });
    }
}
