//! The Raft node: one task owns the `RawNode`, its storage and the state machine; everything else
//! holds a [`Node`] handle and talks to that task through bounded channels and `watch` receivers.
//!
//! ```text
//!  Node (Clone) ─ propose ────────► proposals (bounded) ──┐
//!               ─ read_index ─────► reads (bounded) ──────┤     owner task
//!               ─ status, add_learner, promote, remove,   ├──► select! { tick | proposal | read
//!                 transfer_leader ► admin (bounded) ──────┤             | admin | peer message
//!               ─ shutdown ───────► watch<bool> ──────────┤             | shutdown }
//!  Transport ───► NodeInbox ──────► peers (bounded) ──────┘        │
//!                                                                  ▼ then, while RawNode has a Ready:
//!   1. send `messages` (a leader may send before persisting: Raft thesis 10.2.1)
//!   2. install the snapshot, if any: storage.apply_snapshot + StateMachine::restore
//!   3. apply committed entries; answer each proposer on the node that proposed it
//!   4. persist entries + hard state: one LogStore::append, flushed
//!   5. send `persisted_messages` (votes and acks: only once durable)
//!   6. advance → LightReady: persist the new commit index, send, apply committed entries
//!   7. advance_apply; then persist `applied`, compact if the log is long, publish `applied`
//!  watch_applied() ◄── watch<u64> ── owner task
//! ```
//!
//! Proposals carry a [`ProposalId`] (node id, sequence) in the entry's context. When an entry
//! applies, only the node holding a pending proposal with that id *at that index* answers it; a
//! pending proposal whose index got a different entry was overwritten by a newer leader
//! ([`ProposeError::Dropped`]). A leader that steps down fails what it still waits for with
//! [`ProposeError::LeaderChanged`]: those entries may yet commit under the new leader.
//!
//! The state machine lives in memory. At start it is restored from the latest snapshot in
//! storage, raft-rs is told that snapshot's index as `applied`, and the committed entries after it
//! are applied again before the node takes any request.
//!
//! A brand-new group is bootstrapped with an identical snapshot at index 1 on every initial voter,
//! holding the voters. The log therefore never starts at index 1, so a node added later (with an
//! empty log) always catches up through a snapshot, which carries the membership, instead of
//! replaying a log that never mentions the initial voters. raft-rs makes a node refuse a snapshot
//! whose membership lacks it, so every member also compacts right after a membership change: the
//! snapshot a new node is sent always names it.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasher;
use std::mem;
use std::sync::Arc;
use std::time::Duration;

use raft::eraftpb::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState,
    Entry, EntryType, HardState, Message, MessageType, Snapshot,
};
use raft::{RawNode, ReadOnlyOption, ReadState, SnapshotStatus, StateRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{self, MissedTickBehavior};
use tracing::Instrument as _;

use crate::logging;
use crate::metrics::{Observer, ProposalOutcome, RaftMetrics};
use crate::storage::LogStore;
use crate::transport::{NodeInbox, Transport};
use crate::{StateMachine, StoreError};

/// Messages queued from peers before the inbox drops (Raft retransmits).
const INBOX_CAPACITY: usize = 1024;
/// Proposals and reads queued before callers wait: backpressure, not unbounded memory.
const REQUEST_CAPACITY: usize = 256;
/// Status and membership requests queued before callers wait.
const ADMIN_CAPACITY: usize = 16;
/// Requests and messages taken in one go, so a burst shares one Ready and one flush.
const MAX_BATCH: usize = 256;
/// raft-rs drops read requests silently (no leader, or a new leader that has not committed in
/// its term yet): a read unanswered for this many election timeouts fails.
const READ_TIMEOUT_ELECTIONS: u64 = 2;

/// How one node runs. Pre-vote and check-quorum are always on: a node that was cut off must not
/// disrupt the group when it returns, and a leader cut off from the quorum must step down.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id; not 0, unique in the group, never reused.
    pub id: u64,
    /// The initial voters, used only when the storage is empty (the first start of the group's
    /// founding members, which must all be given the same list). Empty for a node that joins
    /// later: it learns the membership from the leader's snapshot.
    pub voters: Vec<u64>,
    /// How often Raft's logical clock ticks.
    pub tick: Duration,
    /// Ticks without a leader before an election (randomised up to twice this).
    pub election_tick: usize,
    /// Ticks between a leader's heartbeats; less than `election_tick`.
    pub heartbeat_tick: usize,
    /// Largest append message in bytes (at least one entry is always sent).
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower during optimistic replication.
    pub max_inflight_msgs: usize,
    /// Compact the log into a snapshot once this many applied entries are in it...
    pub snapshot_every: u64,
    /// ...or once the commands applied since the last compaction add up to this many bytes,
    /// whichever comes first. (Counted from this process's start: after a restart the log may
    /// hold up to twice this before the next compaction.)
    pub snapshot_bytes: u64,
    /// Where to publish this node's metrics (see [`crate::metrics`]); none by default.
    pub metrics: Option<RaftMetrics>,
}

impl NodeConfig {
    /// Defaults like etcd's: 100 ms ticks, heartbeats every tick, elections after about a second.
    pub fn new(id: u64, voters: Vec<u64>) -> Self {
        Self {
            id,
            voters,
            tick: Duration::from_millis(100),
            election_tick: 10,
            heartbeat_tick: 1,
            max_size_per_msg: 1024 * 1024,
            max_inflight_msgs: 256,
            snapshot_every: 10_000,
            snapshot_bytes: 64 << 20,
            metrics: None,
        }
    }

    fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_tick,
            heartbeat_tick: self.heartbeat_tick,
            applied,
            max_size_per_msg: self.max_size_per_msg,
            max_inflight_msgs: self.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            // A leader whose quorum is slow stops taking proposals (they fail as dropped)
            // instead of growing its log and pending map without bound.
            max_uncommitted_size: MAX_UNCOMMITTED_BYTES,
            // Reads are confirmed by a quorum round, not by a lease that trusts clocks.
            read_only_option: ReadOnlyOption::Safe,
            ..raft::Config::default()
        }
    }
}

/// Bytes of proposed-but-uncommitted entries a leader accepts before refusing more.
const MAX_UNCOMMITTED_BYTES: u64 = 64 << 20;

/// Why a request to the node did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader, so nothing was proposed; `leader` is the leader if known.
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader { leader: Option<u64> },
    /// Not applied, safe to retry: Raft refused the request (a leader transfer or another
    /// membership change is under way, or a read could not be confirmed in time), or a newer
    /// leader overwrote the proposal's entry.
    #[error("dropped before it applied")]
    Dropped,
    /// This node lost leadership before the entry applied. The entry may still commit under the
    /// new leader: check before retrying a command that is not idempotent.
    #[error("leadership changed before the entry applied; it may still apply (leader: {leader:?})")]
    LeaderChanged { leader: Option<u64> },
    /// The membership change does not fit the current membership.
    #[error("membership change rejected: {reason}")]
    Rejected { reason: String },
    /// The node has stopped; a request it had already taken may or may not have applied.
    #[error("the raft node has stopped")]
    Stopped,
}

/// Why the node task ended without being asked to.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NodeFailure {
    /// Storage or the state machine failed; the node stopped rather than diverge.
    #[error("raft node stopped: {0}")]
    Store(Arc<StoreError>),
    /// The task panicked (raft-rs panics when one of its invariants breaks).
    #[error("raft node task panicked")]
    Panicked,
}

/// A node's part in the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Follower,
    /// Asking for pre-votes: would it win an election? (It does not raise the term yet.)
    PreCandidate,
    Candidate,
    Leader,
}

/// A snapshot of the node's Raft state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub term: u64,
    pub role: Role,
    pub leader: Option<u64>,
    /// Highest log index known committed.
    pub commit: u64,
    /// Highest log index applied to the state machine.
    pub applied: u64,
    /// Voters, sorted (the incoming set while a joint change is under way).
    pub voters: Vec<u64>,
    /// The outgoing voters of a joint change; empty otherwise.
    pub outgoing_voters: Vec<u64>,
    /// Learners, sorted (including voters being demoted by a joint change).
    pub learners: Vec<u64>,
    /// On the leader: the highest log index known replicated on each member. Empty elsewhere.
    pub matched: BTreeMap<u64, u64>,
}

type Reply<T> = oneshot::Sender<Result<T, ProposeError>>;

struct Proposal {
    command: Vec<u8>,
    reply: Reply<(u64, Vec<u8>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MembershipChange {
    AddLearner(u64),
    Promote(u64),
    /// A voter becomes a learner: it keeps the log but stops voting.
    Demote(u64),
    Remove(u64),
}

enum Admin {
    Status(Reply<Status>),
    Membership(MembershipChange, Reply<()>),
    TransferLeader(u64, Reply<()>),
}

/// Handle to a running node. Cheap to clone; the node stops on [`Node::shutdown`] or when every
/// handle is gone.
#[derive(Debug, Clone)]
pub struct Node {
    id: u64,
    proposals: mpsc::Sender<Proposal>,
    reads: mpsc::Sender<Reply<u64>>,
    admin: mpsc::Sender<Admin>,
    shutdown: Arc<watch::Sender<bool>>,
    applied: watch::Receiver<u64>,
    exit: watch::Receiver<Option<Result<(), NodeFailure>>>,
    metrics: Option<RaftMetrics>,
}

impl Node {
    /// This node's Raft id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Replicates `command` and returns its log index and the state machine's result once it has
    /// applied on this node. Only the leader takes proposals; forwarding is the caller's job.
    pub async fn propose(&self, command: Vec<u8>) -> Result<(u64, Vec<u8>), ProposeError> {
        let started = time::Instant::now();
        let result = request(&self.proposals, |reply| Proposal { command, reply }).await;
        if let Some(metrics) = &self.metrics {
            metrics.observe_proposal(ProposalOutcome::of(&result), started.elapsed());
        }
        result
    }

    /// A linearizable read barrier: returns an index that was committed when the read was asked,
    /// once this node has applied up to it. Reading the state machine after that sees every write
    /// acknowledged before the call. Works on followers too (the leader confirms the index).
    pub async fn read_index(&self) -> Result<u64, ProposeError> {
        request(&self.reads, |reply| reply).await
    }

    /// Where this node stands. Fails only with [`ProposeError::Stopped`].
    pub async fn status(&self) -> Result<Status, ProposeError> {
        request(&self.admin, Admin::Status).await
    }

    /// Adds `id` as a learner: it receives the log but does not vote. Resolves once applied here.
    pub async fn add_learner(&self, id: u64) -> Result<(), ProposeError> {
        self.change_membership(MembershipChange::AddLearner(id))
            .await
    }

    /// Makes learner `id` a voter.
    pub async fn promote(&self, id: u64) -> Result<(), ProposeError> {
        self.change_membership(MembershipChange::Promote(id)).await
    }

    /// Makes voter `id` a learner again (not the leader itself: transfer leadership first).
    pub async fn demote(&self, id: u64) -> Result<(), ProposeError> {
        self.change_membership(MembershipChange::Demote(id)).await
    }

    /// Removes voter or learner `id` from the group.
    pub async fn remove(&self, id: u64) -> Result<(), ProposeError> {
        self.change_membership(MembershipChange::Remove(id)).await
    }

    /// Asks the leader to hand leadership to voter `to`; returns once asked, not once moved
    /// (watch [`Node::status`]).
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        request(&self.admin, |reply| Admin::TransferLeader(to, reply)).await
    }

    /// The highest log index applied to the state machine on this node.
    pub fn watch_applied(&self) -> watch::Receiver<u64> {
        self.applied.clone()
    }

    /// Stops the node and waits for its task to end. Requests in flight fail with `Stopped`.
    pub async fn shutdown(&self) -> Result<(), NodeFailure> {
        self.shutdown.send_replace(true);
        self.closed().await
    }

    /// Waits until the node task has ended, and says why if it failed.
    pub async fn closed(&self) -> Result<(), NodeFailure> {
        let mut exit = self.exit.clone();
        match exit.wait_for(Option::is_some).await {
            Ok(outcome) => outcome.clone().unwrap_or(Ok(())),
            // The runtime went away under the task: nothing failed.
            Err(_) => Ok(()),
        }
    }

    async fn change_membership(&self, change: MembershipChange) -> Result<(), ProposeError> {
        request(&self.admin, |reply| Admin::Membership(change, reply)).await
    }
}

async fn request<T, R>(
    to: &mpsc::Sender<R>,
    make: impl FnOnce(Reply<T>) -> R,
) -> Result<T, ProposeError> {
    let (reply, answer) = oneshot::channel();
    to.send(make(reply))
        .await
        .map_err(|_| ProposeError::Stopped)?;
    answer.await.unwrap_or(Err(ProposeError::Stopped))
}

/// Starts a node on the current tokio runtime. Returns its handle and the inbox the transport
/// must deliver this node's incoming messages to.
///
/// # Panics
/// Outside a tokio runtime.
pub fn start<S: LogStore, M: StateMachine>(
    config: NodeConfig,
    mut storage: S,
    mut machine: M,
    transport: Arc<dyn Transport>,
) -> Result<(Node, NodeInbox), StoreError> {
    let id = config.id;
    bootstrap(&config, &mut storage, &machine)?;
    let snapshot = storage.latest_snapshot();
    let snapshot_index = snapshot.get_metadata().index;
    // raft-rs replays every committed entry after `applied` (the snapshot index, below), conf
    // changes included, on top of the stored membership. That must therefore be the membership
    // *at the snapshot*: the one stored last may already include changes that are about to be
    // replayed, and applying a change twice can yield a different group (e.g. a removal that was
    // refused the first time and is accepted on replay).
    storage.set_conf_state(snapshot.get_metadata().get_conf_state())?;
    if snapshot_index > 0 {
        machine
            .restore(snapshot.get_data())
            .map_err(|reason| StoreError::Corrupt {
                what: format!("stored snapshot at index {snapshot_index}"),
                reason,
            })?;
    }
    // raft-rs hands out committed entries after `applied`: the in-memory machine holds exactly
    // the snapshot now, so everything after it must be applied again.
    let raft_config = config.raft_config(snapshot_index);
    raft_config.validate()?;
    let raw = RawNode::new(&raft_config, storage, &logging::raft_logger(id))?;

    let (proposals_tx, proposals) = mpsc::channel(REQUEST_CAPACITY);
    let (reads_tx, reads) = mpsc::channel(REQUEST_CAPACITY);
    let (admin_tx, admin) = mpsc::channel(ADMIN_CAPACITY);
    let (shutdown_tx, shutdown) = watch::channel(false);
    let (applied_tx, applied_rx) = watch::channel(snapshot_index);
    let (exit_tx, exit_rx) = watch::channel(None);
    let (inbox, peers) = NodeInbox::new(id, INBOX_CAPACITY);

    let owner = Owner {
        id,
        raw,
        machine,
        transport,
        snapshot_every: config.snapshot_every,
        snapshot_bytes: config.snapshot_bytes,
        applied_bytes: 0,
        read_timeout_ticks: READ_TIMEOUT_ELECTIONS * config.election_tick as u64,
        applied: snapshot_index,
        applied_persisted: snapshot_index,
        applied_tx,
        next_seq: 0,
        proposals: BTreeMap::new(),
        reads: Reads::default(),
        snapshots_sent: Vec::new(),
        membership_changed: false,
        leaving_joint: Vec::new(),
        ticks: 0,
        leader: raft::INVALID_ID,
        observer: config.metrics.clone().map(Observer::new),
    };
    let inputs = Inputs {
        proposals,
        reads,
        admin,
        peers,
        shutdown,
    };
    let task = tokio::spawn(
        owner
            .run(inputs, config.tick)
            .instrument(tracing::info_span!("raft", node = id)),
    );
    tokio::spawn(async move {
        let outcome = match task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                tracing::error!(node = id, error = %e, "raft node stopped on an error");
                Err(NodeFailure::Store(Arc::new(e)))
            }
            Err(e) if e.is_panic() => {
                tracing::error!(node = id, "raft node task panicked");
                Err(NodeFailure::Panicked)
            }
            Err(_) => Ok(()),
        };
        exit_tx.send_replace(Some(outcome));
    });

    let node = Node {
        id,
        proposals: proposals_tx,
        reads: reads_tx,
        admin: admin_tx,
        shutdown: Arc::new(shutdown_tx),
        applied: applied_rx,
        exit: exit_rx,
        metrics: config.metrics,
    };
    Ok((node, inbox))
}

/// Gives a founding member with empty storage the group's first snapshot (see the module docs).
fn bootstrap<S: LogStore, M: StateMachine>(
    config: &NodeConfig,
    storage: &mut S,
    machine: &M,
) -> Result<(), StoreError> {
    if config.voters.is_empty() || storage.initial_state()?.initialized() {
        return Ok(());
    }
    let mut snapshot = Snapshot::default();
    let meta = snapshot.mut_metadata();
    meta.index = 1;
    meta.term = 1;
    meta.mut_conf_state().voters = config.voters.clone();
    snapshot.data = machine.snapshot().into();
    storage.apply_snapshot(snapshot)?;
    // Term and commit must cover the snapshot, whatever apply_snapshot did with the hard state.
    storage.set_hard_state(&HardState {
        term: 1,
        commit: 1,
        ..HardState::default()
    })
}

/// Identifies a proposal in its entry's context. The sequence restarts with the process, so a
/// proposal is matched by id *and* log index: an entry proposed by an earlier incarnation can
/// carry the same id but never sits at the same index as a live proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProposalId {
    node: u64,
    seq: u64,
}

impl ProposalId {
    fn encode(self) -> Vec<u8> {
        [self.node.to_be_bytes(), self.seq.to_be_bytes()].concat()
    }

    fn decode(context: &[u8]) -> Option<Self> {
        let (node, seq) = context.split_first_chunk::<8>()?;
        let seq: [u8; 8] = seq.try_into().ok()?;
        Some(Self {
            node: u64::from_be_bytes(*node),
            seq: u64::from_be_bytes(seq),
        })
    }
}

/// Someone waiting for an entry to apply.
struct Pending {
    id: ProposalId,
    /// The leader's term when proposed: if the term moves on, this node was deposed.
    term: u64,
    waiter: Waiter,
}

enum Waiter {
    Command(Reply<(u64, Vec<u8>)>),
    Membership(Reply<()>),
}

/// What applying one entry produced.
enum Applied {
    /// A new leader's empty entry.
    Noop,
    Command(Vec<u8>),
    Membership(Result<(), String>),
}

impl Waiter {
    // A caller that stopped waiting is not an error: sends that find nobody are ignored.
    fn fail(self, error: ProposeError) {
        match self {
            Waiter::Command(reply) => {
                let _ = reply.send(Err(error));
            }
            Waiter::Membership(reply) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    fn settle(self, index: u64, applied: Applied) {
        match (self, applied) {
            (Waiter::Command(reply), Applied::Command(result)) => {
                let _ = reply.send(Ok((index, result)));
            }
            (Waiter::Membership(reply), Applied::Membership(outcome)) => {
                let _ = reply.send(outcome.map_err(|reason| ProposeError::Rejected { reason }));
            }
            // The id matched but the entry is of another kind: not what was proposed.
            (waiter, _) => waiter.fail(ProposeError::Dropped),
        }
    }
}

#[derive(Default)]
struct Reads {
    /// Makes contexts unique across restarts, so a late answer meant for an earlier
    /// incarnation's read cannot answer a new one with a stale index.
    nonce: u64,
    next: u64,
    /// Asked, not yet answered: context → (tick asked, reply).
    asked: HashMap<u128, (u64, Reply<u64>)>,
    /// Answered with a read index; waiting for `applied` to reach it: (read index, tick
    /// answered, reply).
    waiting: Vec<(u64, u64, Reply<u64>)>,
}

struct Inputs {
    proposals: mpsc::Receiver<Proposal>,
    reads: mpsc::Receiver<Reply<u64>>,
    admin: mpsc::Receiver<Admin>,
    peers: mpsc::Receiver<Message>,
    shutdown: watch::Receiver<bool>,
}

/// The task that owns the node's state. Nothing in it blocks on the network; storage calls are
/// synchronous and durable when they return, which is what Raft's ordering needs.
struct Owner<S: LogStore, M: StateMachine> {
    id: u64,
    raw: RawNode<S>,
    machine: M,
    transport: Arc<dyn Transport>,
    snapshot_every: u64,
    snapshot_bytes: u64,
    /// Command bytes applied since the last compaction.
    applied_bytes: u64,
    read_timeout_ticks: u64,
    /// Highest index applied to `machine`.
    applied: u64,
    applied_persisted: u64,
    applied_tx: watch::Sender<u64>,
    next_seq: u64,
    /// By log index.
    proposals: BTreeMap<u64, Pending>,
    reads: Reads,
    /// Peers a snapshot was handed to the transport for during the current Ready.
    snapshots_sent: Vec<u64>,
    /// A membership change applied since the last compaction.
    membership_changed: bool,
    /// Membership changes applied as a joint configuration, answered once it is left.
    leaving_joint: Vec<Waiter>,
    ticks: u64,
    /// The leader last seen; unanswered reads fail when it changes.
    leader: u64,
    /// Publishes the metrics, if the node has any.
    observer: Option<Observer>,
}

impl<S: LogStore, M: StateMachine> Owner<S, M> {
    async fn run(mut self, mut inputs: Inputs, tick: Duration) -> Result<(), StoreError> {
        self.reads.nonce = RandomState::new().hash_one(self.id);
        // Entries committed before a restart are applied again before any request is taken.
        self.process_ready()?;
        let mut ticker = time::interval(tick);
        // After a stall (a slow flush), resume the normal pace rather than fire the missed ticks
        // at once: a burst could start an election before the queued heartbeats are read.
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => self.tick(),
                Some(msg) = inputs.peers.recv() => self.step(msg),
                proposal = inputs.proposals.recv() => match proposal {
                    Some(proposal) => self.propose(proposal),
                    // Every handle is gone.
                    None => return Ok(()),
                },
                Some(reply) = inputs.reads.recv() => self.read_index(reply),
                Some(admin) = inputs.admin.recv() => self.admin(admin),
                _ = inputs.shutdown.changed() => return Ok(()),
            }
            self.take_queued(&mut inputs);
            self.process_ready()?;
        }
    }

    /// Takes what is already queued so a burst of proposals and acks shares one Ready (one flush).
    fn take_queued(&mut self, inputs: &mut Inputs) {
        for _ in 0..MAX_BATCH {
            let mut took = false;
            if let Ok(msg) = inputs.peers.try_recv() {
                self.step(msg);
                took = true;
            }
            if let Ok(proposal) = inputs.proposals.try_recv() {
                self.propose(proposal);
                took = true;
            }
            if !took {
                break;
            }
        }
    }

    fn tick(&mut self) {
        self.raw.tick();
        self.ticks += 1;
        let (now, timeout) = (self.ticks, self.read_timeout_ticks);
        for (_, (_, reply)) in self
            .reads
            .asked
            .extract_if(|_, (asked, _)| now - *asked >= timeout)
        {
            let _ = reply.send(Err(ProposeError::Dropped));
        }
        // A node cut off after learning its read index may never apply up to it.
        for (_, _, reply) in self
            .reads
            .waiting
            .extract_if(.., |(_, answered, _)| now - *answered >= timeout)
        {
            let _ = reply.send(Err(ProposeError::Dropped));
        }
    }

    fn step(&mut self, msg: Message) {
        // Followers answer NotLeader instead of forwarding, so a proposal arriving from a peer is
        // a bug or a forgery: refuse it rather than replicate it.
        if msg.get_msg_type() == MessageType::MsgPropose {
            tracing::debug!(from = msg.from, "refused a proposal forwarded by a peer");
            return;
        }
        // raft-rs aborts when told to commit past its log, which only happens if this node's
        // storage lost acknowledged entries. Refuse the message and say so, rather than crash
        // on every heartbeat; the leader's appends then find where the logs diverge.
        let last = self.raw.raft.raft_log.last_index();
        if msg.get_msg_type() == MessageType::MsgHeartbeat && msg.commit > last {
            tracing::error!(
                from = msg.from,
                commit = msg.commit,
                last,
                "leader says entries are committed that this node's log lacks; was the data dir rolled back?"
            );
            return;
        }
        if let Err(e) = self.raw.step(msg) {
            tracing::debug!(error = %e, "raft refused a peer message");
        }
    }

    fn leader_or_refuse(&self) -> Result<(), ProposeError> {
        let raft = &self.raw.raft;
        if raft.state == StateRole::Leader {
            Ok(())
        } else {
            Err(ProposeError::NotLeader {
                leader: known(raft.leader_id),
            })
        }
    }

    fn propose(&mut self, Proposal { command, reply }: Proposal) {
        let waiter = Waiter::Command(reply);
        if let Err(e) = self.leader_or_refuse() {
            return waiter.fail(e);
        }
        let id = self.next_proposal_id();
        let index = self.raw.raft.raft_log.last_index() + 1;
        let result = self.raw.propose(id.encode(), command);
        self.track(result, index, id, waiter);
    }

    fn next_proposal_id(&mut self) -> ProposalId {
        self.next_seq += 1;
        ProposalId {
            node: self.id,
            seq: self.next_seq,
        }
    }

    /// Remembers who waits for the entry a proposal just appended at `index`.
    fn track(&mut self, result: raft::Result<()>, index: u64, id: ProposalId, waiter: Waiter) {
        // A leader appends an accepted proposal at once; anything else was refused (a leader
        // transfer under way, the uncommitted-size limit).
        if result.is_err() || self.raw.raft.raft_log.last_index() != index {
            return waiter.fail(ProposeError::Dropped);
        }
        let pending = Pending {
            id,
            term: self.raw.raft.term,
            waiter,
        };
        if let Some(old) = self.proposals.insert(index, pending) {
            old.waiter.fail(ProposeError::Dropped);
        }
    }

    fn read_index(&mut self, reply: Reply<u64>) {
        if self.raw.raft.leader_id == raft::INVALID_ID {
            let _ = reply.send(Err(ProposeError::NotLeader { leader: None }));
            return;
        }
        self.reads.next += 1;
        let context = u128::from(self.reads.nonce) << 64 | u128::from(self.reads.next);
        self.raw.read_index(context.to_be_bytes().to_vec());
        self.reads.asked.insert(context, (self.ticks, reply));
    }

    fn admin(&mut self, admin: Admin) {
        match admin {
            Admin::Status(reply) => {
                let _ = reply.send(Ok(self.status()));
            }
            Admin::Membership(change, reply) => self.change_membership(change, reply),
            Admin::TransferLeader(to, reply) => {
                let _ = reply.send(self.transfer_leader(to));
            }
        }
    }

    fn status(&self) -> Status {
        let raft = &self.raw.raft;
        let conf = raft.prs().conf().to_conf_state();
        let matched = if raft.state == StateRole::Leader {
            raft.prs()
                .iter()
                .map(|(&id, pr)| (id, pr.matched))
                .collect()
        } else {
            BTreeMap::new()
        };
        Status {
            id: self.id,
            term: raft.term,
            role: role(raft.state),
            leader: known(raft.leader_id),
            commit: raft.raft_log.committed,
            applied: self.applied,
            voters: sorted(&conf.voters),
            outgoing_voters: sorted(&conf.voters_outgoing),
            learners: sorted(&[conf.learners.as_slice(), &conf.learners_next].concat()),
            matched,
        }
    }

    fn change_membership(&mut self, change: MembershipChange, reply: Reply<()>) {
        let waiter = Waiter::Membership(reply);
        if let Err(e) = self
            .leader_or_refuse()
            .and_then(|()| check_change(&self.raw.raft.prs().conf().to_conf_state(), change))
        {
            return waiter.fail(e);
        }
        // A leader that removes itself keeps leading a group it is not in (raft-rs does not step
        // it down), and one that demotes itself leads without a vote: move leadership first.
        let me = self.raw.raft.id;
        if change == MembershipChange::Remove(me) || change == MembershipChange::Demote(me) {
            return waiter.fail(ProposeError::Rejected {
                reason: "the leader cannot remove or demote itself; transfer leadership first"
                    .into(),
            });
        }
        // raft-rs would turn a second change into an empty entry; say so now instead.
        if self.raw.raft.has_pending_conf() {
            return waiter.fail(ProposeError::Dropped);
        }
        let id = self.next_proposal_id();
        let index = self.raw.raft.raft_log.last_index() + 1;
        let result = self
            .raw
            .propose_conf_change(id.encode(), conf_change(change));
        self.track(result, index, id, waiter);
    }

    fn transfer_leader(&mut self, to: u64) -> Result<(), ProposeError> {
        self.leader_or_refuse()?;
        let conf = self.raw.raft.prs().conf().to_conf_state();
        if !conf.voters.contains(&to) {
            return Err(ProposeError::Rejected {
                reason: format!("node {to} is not a voter"),
            });
        }
        self.raw.transfer_leader(to);
        Ok(())
    }

    /// Handles Readies until raft-rs has nothing more, in the order its docs prescribe (see
    /// the module docs), then does what may wait until the batch is done.
    fn process_ready(&mut self) -> Result<(), StoreError> {
        while self.raw.has_ready() {
            self.handle_ready()?;
            // The transport cannot tell whether a snapshot arrived. Reporting it finished makes
            // the leader wait for the follower's answer and probe again, so a lost snapshot is
            // simply sent again. (A streaming gRPC transport can report the real outcome.)
            for to in mem::take(&mut self.snapshots_sent) {
                self.raw.report_snapshot(to, SnapshotStatus::Finish);
            }
        }
        self.after_apply()?;
        self.observe();
        Ok(())
    }

    /// Publishes where the node stands: after every batch, which includes every tick.
    fn observe(&mut self) {
        let Some(observer) = &mut self.observer else {
            return;
        };
        let raft = &self.raw.raft;
        observer.state(
            raft.term,
            role(raft.state),
            raft.leader_id,
            raft.raft_log.committed,
            self.applied,
        );
        let peers = raft
            .prs()
            .iter()
            .filter(|&(&id, _)| id != self.id && raft.state == StateRole::Leader)
            .map(|(&id, pr)| (id, pr.matched));
        observer.lag(raft.raft_log.last_index(), peers);
    }

    fn handle_ready(&mut self) -> Result<(), StoreError> {
        let mut ready = self.raw.ready();
        self.send(ready.take_messages());
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot().clone())?;
        }
        // New entries and the hard state (whose commit index covers the committed entries
        // below) are durable before anything applies, so a restart never finds the machine
        // ahead of the stored commit index.
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.raw.mut_store().append(ready.entries(), ready.hs())?;
        }
        // Raft only hands out committed entries that are already durable here.
        self.apply(ready.take_committed_entries())?;
        self.note_read_states(ready.take_read_states());
        self.send(ready.take_persisted_messages());

        let mut light = self.raw.advance(ready);
        if light.commit_index().is_some() {
            // Durable before the entries it covers apply, so a restart never finds `applied`
            // ahead of the stored commit index.
            let hard_state = self.raw.raft.hard_state();
            self.raw.mut_store().set_hard_state(&hard_state)?;
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        let mut by_peer: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
        for msg in msgs {
            // Snapshots go whole, in one message, for now. Chunked streaming belongs to the gRPC
            // transport; it must keep delivering a snapshot as one Message to the inbox.
            if msg.get_msg_type() == MessageType::MsgSnapshot {
                self.snapshots_sent.push(msg.to);
                if let Some(observer) = &self.observer {
                    observer.metrics.snapshots_sent.inc();
                }
            }
            by_peer.entry(msg.to).or_default().push(msg);
        }
        for (to, msgs) in by_peer {
            // Encoded here so Raft's types never leave the crate (see `transport`).
            let encoded = msgs
                .iter()
                .filter_map(|m| match protobuf::Message::write_to_bytes(m) {
                    Ok(bytes) => Some(bytes),
                    Err(e) => {
                        tracing::error!(to, error = %e, "cannot encode a raft message; dropped");
                        None
                    }
                })
                .collect();
            self.transport.send(to, encoded);
        }
    }

    fn install_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let index = snapshot.get_metadata().index;
        // Restore first: if the bytes are bad, storage still holds the old, consistent state.
        self.machine
            .restore(snapshot.get_data())
            .map_err(|reason| StoreError::Corrupt {
                what: format!("snapshot at index {index} from the leader"),
                reason,
            })?;
        self.raw.mut_store().apply_snapshot(snapshot)?;
        self.applied = index;
        if let Some(observer) = &self.observer {
            observer.metrics.snapshots_received.inc();
        }
        // Entries inside the snapshot never apply one by one here: their outcome is unknown.
        let leader = known(self.raw.raft.leader_id);
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > index {
                break;
            }
            entry
                .remove()
                .waiter
                .fail(ProposeError::LeaderChanged { leader });
        }
        Ok(())
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), StoreError> {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => self.apply_command(&entry),
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    self.apply_conf_change(&entry)?
                }
            }
            self.applied = entry.index;
            self.applied_bytes = self.applied_bytes.saturating_add(entry.data.len() as u64);
        }
        Ok(())
    }

    fn apply_command(&mut self, entry: &Entry) {
        // A new leader's first entry (and a conf change raft-rs refused) is empty and carries no
        // proposal id.
        let applied = if entry.data.is_empty() && entry.context.is_empty() {
            Applied::Noop
        } else {
            Applied::Command(self.machine.apply(entry.index, &entry.data))
        };
        self.settle(
            entry.index,
            entry.term,
            ProposalId::decode(&entry.context),
            applied,
        );
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), StoreError> {
        // A change raft-rs refuses is refused identically on every member (same entry, same
        // membership), so skipping it keeps the members in agreement.
        let mut joint = false;
        let outcome = match decode_conf_change(entry) {
            Ok(change) => match self.raw.apply_conf_change(&change) {
                Ok(conf_state) => {
                    self.raw.mut_store().set_conf_state(&conf_state)?;
                    self.membership_changed = true;
                    joint = !conf_state.voters_outgoing.is_empty();
                    tracing::info!(
                        index = entry.index,
                        ?conf_state,
                        joint,
                        "membership changed"
                    );
                    Ok(())
                }
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e),
        };
        if let Err(reason) = &outcome {
            tracing::warn!(index = entry.index, %reason, "membership change not applied");
        }
        let id = ProposalId::decode(&entry.context);
        let proposer = self.take_proposer(entry.index, entry.term, id);
        match (proposer, joint) {
            // Entered the joint configuration: the change is done only once the group has left
            // it (raft-rs proposes that by itself), so the next change can follow at once.
            (Some(waiter), true) => self.leaving_joint.push(waiter),
            (Some(waiter), false) => waiter.settle(entry.index, Applied::Membership(outcome)),
            (None, _) => {}
        }
        if !joint {
            for waiter in mem::take(&mut self.leaving_joint) {
                waiter.settle(entry.index, Applied::Membership(Ok(())));
            }
        }
        Ok(())
    }

    /// Answers whoever waits for the entry at `index`. Anyone still waiting at or below it holds
    /// a proposal whose entry a newer leader overwrote.
    ///
    /// Index *and term* identify the entry: proposal ids restart with the process, so an entry
    /// an earlier incarnation appended at the same index with the same id must not answer a
    /// proposal made now. A node leads at most one term, so the term tells them apart.
    fn settle(&mut self, index: u64, term: u64, id: Option<ProposalId>, applied: Applied) {
        if let Some(waiter) = self.take_proposer(index, term, id) {
            waiter.settle(index, applied);
        }
    }

    /// Removes and returns the proposer of the entry at `index` (see [`Self::settle`]), failing
    /// everyone still waiting at or below it.
    fn take_proposer(&mut self, index: u64, term: u64, id: Option<ProposalId>) -> Option<Waiter> {
        let mut proposer = None;
        while let Some(entry) = self.proposals.first_entry() {
            if *entry.key() > index {
                break;
            }
            let (at, pending) = entry.remove_entry();
            if at == index && pending.term == term && Some(pending.id) == id {
                proposer = Some(pending.waiter);
            } else {
                pending.waiter.fail(ProposeError::Dropped);
            }
        }
        proposer
    }

    fn note_read_states(&mut self, states: Vec<ReadState>) {
        for state in states {
            let Ok(context) = <[u8; 16]>::try_from(state.request_ctx.as_slice()) else {
                continue;
            };
            if let Some((_, reply)) = self.reads.asked.remove(&u128::from_be_bytes(context)) {
                self.reads.waiting.push((state.index, self.ticks, reply));
            }
        }
    }

    /// Work that only needs doing once per batch of Readies.
    fn after_apply(&mut self) -> Result<(), StoreError> {
        self.fail_deposed();
        let applied = self.applied;
        for (index, _, reply) in self
            .reads
            .waiting
            .extract_if(.., |(index, _, _)| *index <= applied)
        {
            let _ = reply.send(Ok(index));
        }
        if self.applied != self.applied_persisted {
            self.raw.mut_store().set_applied(self.applied)?;
            self.applied_persisted = self.applied;
            self.maybe_compact()?;
            self.applied_tx.send_replace(self.applied);
        }
        Ok(())
    }

    /// Fails proposals made in a term this node no longer leads, and reads asked under a leader
    /// that is gone (raft-rs forgets them; asking again is safe).
    fn fail_deposed(&mut self) {
        let raft = &self.raw.raft;
        let (is_leader, term, leader) =
            (raft.state == StateRole::Leader, raft.term, raft.leader_id);
        let deposed = ProposeError::LeaderChanged {
            leader: known(leader),
        };
        if !is_leader {
            for (_, pending) in mem::take(&mut self.proposals) {
                pending.waiter.fail(deposed.clone());
            }
        }
        // Terms only grow along the log, so proposals from earlier terms are a prefix.
        while let Some(first) = self.proposals.first_entry() {
            if first.get().term == term {
                break;
            }
            first.remove().waiter.fail(deposed.clone());
        }
        if leader != self.leader {
            self.leader = leader;
            for (_, (_, reply)) in self.reads.asked.drain() {
                let _ = reply.send(Err(ProposeError::LeaderChanged {
                    leader: known(leader),
                }));
            }
        }
    }

    /// Folds the applied part of the log into a snapshot once it is long, and after every
    /// membership change. Followers behind the log get that snapshot (raft-rs asks
    /// `Storage::snapshot`), and a node refuses a snapshot whose membership does not include it:
    /// so a newly added node, which always starts from a snapshot, needs one taken after its
    /// addition.
    fn maybe_compact(&mut self) -> Result<(), StoreError> {
        let first = self.raw.store().first_index()?;
        if self.applied < first {
            return Ok(());
        }
        let long = self.applied - first + 1 >= self.snapshot_every;
        let big = self.applied_bytes >= self.snapshot_bytes;
        if !(long || big || self.membership_changed) {
            return Ok(());
        }
        let data = self.machine.snapshot();
        self.raw.mut_store().compact(self.applied, data)?;
        self.membership_changed = false;
        self.applied_bytes = 0;
        if let Some(observer) = &self.observer {
            observer.metrics.log_compactions.inc();
        }
        tracing::debug!(index = self.applied, "compacted the log into a snapshot");
        Ok(())
    }
}

fn check_change(conf: &ConfState, change: MembershipChange) -> Result<(), ProposeError> {
    let is_voter = |id| conf.voters.contains(&id) || conf.voters_outgoing.contains(&id);
    let is_learner = |id| conf.learners.contains(&id) || conf.learners_next.contains(&id);
    let problem = match change {
        MembershipChange::AddLearner(0)
        | MembershipChange::Promote(0)
        | MembershipChange::Demote(0)
        | MembershipChange::Remove(0) => Some("node id 0 is reserved".to_string()),
        // raft-rs would quietly demote a voter.
        MembershipChange::AddLearner(id) if is_voter(id) => {
            Some(format!("node {id} is already a voter"))
        }
        MembershipChange::Promote(id) if !is_learner(id) => {
            Some(format!("node {id} is not a learner; add it as one first"))
        }
        MembershipChange::Demote(id) if !conf.voters.contains(&id) => {
            Some(format!("node {id} is not a voter"))
        }
        MembershipChange::Demote(_) if conf.voters.len() < 2 => {
            Some("the last voter cannot be demoted".to_string())
        }
        MembershipChange::Remove(id) if !is_voter(id) && !is_learner(id) => {
            Some(format!("node {id} is not a member"))
        }
        _ => None,
    };
    match problem {
        Some(reason) => Err(ProposeError::Rejected { reason }),
        None => Ok(()),
    }
}

/// Every change goes through a joint configuration (`Implicit`: raft-rs enters it, and leaves it
/// by itself once it is committed), so old and new majorities must both agree during the switch.
fn conf_change(change: MembershipChange) -> ConfChangeV2 {
    let (change_type, node_id) = match change {
        // On a voter, AddLearnerNode demotes it (through the joint configuration: it votes in
        // the outgoing half until the change is complete).
        MembershipChange::AddLearner(id) | MembershipChange::Demote(id) => {
            (ConfChangeType::AddLearnerNode, id)
        }
        MembershipChange::Promote(id) => (ConfChangeType::AddNode, id),
        MembershipChange::Remove(id) => (ConfChangeType::RemoveNode, id),
    };
    let mut single = ConfChangeSingle::default();
    single.set_change_type(change_type);
    single.node_id = node_id;
    let mut cc = ConfChangeV2::default();
    cc.set_transition(ConfChangeTransition::Implicit);
    cc.mut_changes().push(single);
    cc
}

/// Committed bytes from the log, in either of raft-rs's conf change formats.
fn decode_conf_change(entry: &Entry) -> Result<ConfChangeV2, String> {
    use protobuf::Message as _;
    if entry.get_entry_type() == EntryType::EntryConfChangeV2 {
        return ConfChangeV2::parse_from_bytes(&entry.data).map_err(|e| e.to_string());
    }
    let v1 = ConfChange::parse_from_bytes(&entry.data).map_err(|e| e.to_string())?;
    let mut single = ConfChangeSingle::default();
    single.set_change_type(v1.get_change_type());
    single.node_id = v1.node_id;
    let mut cc = ConfChangeV2::default();
    cc.mut_changes().push(single);
    Ok(cc)
}

fn role(state: StateRole) -> Role {
    match state {
        StateRole::Follower => Role::Follower,
        StateRole::PreCandidate => Role::PreCandidate,
        StateRole::Candidate => Role::Candidate,
        StateRole::Leader => Role::Leader,
    }
}

fn known(id: u64) -> Option<u64> {
    (id != raft::INVALID_ID).then_some(id)
}

fn sorted(ids: &[u64]) -> Vec<u64> {
    let mut ids = ids.to_vec();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tokio::time::{Instant, sleep, timeout};

    use prometheus_client::registry::Registry;

    use super::*;
    use crate::storage::{MemStore, SledStore};
    use crate::transport::LocalTransport;

    /// A tiny key-value machine: `set k v` returns the previous value. It shares its state with
    /// the test, which cannot reach into the node task.
    #[derive(Clone, Default)]
    struct Kv(Arc<Mutex<KvState>>);

    #[derive(Default)]
    struct KvState {
        map: BTreeMap<String, String>,
        /// Every command applied since the last restore, with its index.
        log: Vec<(u64, String)>,
        /// Sizes of the maps restored from snapshots.
        restored: Vec<usize>,
    }

    impl Kv {
        fn map(&self) -> BTreeMap<String, String> {
            self.0.lock().unwrap().map.clone()
        }
        fn log(&self) -> Vec<(u64, String)> {
            self.0.lock().unwrap().log.clone()
        }
        fn restored(&self) -> Vec<usize> {
            self.0.lock().unwrap().restored.clone()
        }
    }

    impl StateMachine for Kv {
        fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
            let command = String::from_utf8_lossy(command).into_owned();
            let mut state = self.0.lock().unwrap();
            state.log.push((index, command.clone()));
            match command.split(' ').collect::<Vec<_>>()[..] {
                ["set", key, value] => state
                    .map
                    .insert(key.to_string(), value.to_string())
                    .unwrap_or_default()
                    .into_bytes(),
                _ => b"?".to_vec(),
            }
        }

        fn snapshot(&self) -> Vec<u8> {
            let state = self.0.lock().unwrap();
            let lines: Vec<String> = state.map.iter().map(|(k, v)| format!("{k} {v}")).collect();
            lines.join("\n").into_bytes()
        }

        fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
            let text = std::str::from_utf8(snapshot).map_err(|e| e.to_string())?;
            let mut map = BTreeMap::new();
            for line in text.lines() {
                let (k, v) = line.split_once(' ').ok_or("bad line")?;
                map.insert(k.to_string(), v.to_string());
            }
            let mut state = self.0.lock().map_err(|e| e.to_string())?;
            state.restored.push(map.len());
            state.map = map;
            state.log.clear();
            Ok(())
        }
    }

    /// Polls `probe` until it returns `Some`, failing the test after a (virtual) deadline.
    async fn eventually<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(value) = probe().await {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            sleep(Duration::from_millis(50)).await;
        }
    }

    fn set(key: &str, value: &str) -> Vec<u8> {
        format!("set {key} {value}").into_bytes()
    }

    struct Cluster {
        transport: Arc<LocalTransport>,
        nodes: BTreeMap<u64, (Node, Kv)>,
    }

    impl Cluster {
        fn new() -> Self {
            Self {
                transport: LocalTransport::new(),
                nodes: BTreeMap::new(),
            }
        }

        /// Founding members `ids` on MemStores.
        fn in_memory(ids: &[u64], snapshot_every: u64) -> Self {
            let mut cluster = Self::new();
            for &id in ids {
                let mut config = NodeConfig::new(id, ids.to_vec());
                config.snapshot_every = snapshot_every;
                cluster.start(config, MemStore::new());
            }
            cluster
        }

        fn start<S: LogStore>(&mut self, config: NodeConfig, storage: S) -> Kv {
            let kv = Kv::default();
            let id = config.id;
            let (node, inbox) =
                start(config, storage, kv.clone(), self.transport.clone()).expect("start");
            self.transport.register(inbox);
            self.nodes.insert(id, (node, kv.clone()));
            kv
        }

        fn node(&self, id: u64) -> &Node {
            &self.nodes[&id].0
        }

        fn kv(&self, id: u64) -> &Kv {
            &self.nodes[&id].1
        }

        async fn status(&self, id: u64) -> Status {
            self.node(id).status().await.expect("status")
        }

        /// The leader that all of `ids` agree on, once there is one among them.
        async fn leader(&self, ids: &[u64]) -> u64 {
            eventually("a leader all agree on", async || {
                let mut leaders = Vec::new();
                for &id in ids {
                    leaders.push(self.status(id).await.leader?);
                }
                let leader = leaders[0];
                let agreed = leaders.iter().all(|&l| l == leader) && ids.contains(&leader);
                (agreed && self.status(leader).await.role == Role::Leader).then_some(leader)
            })
            .await
        }

        /// Waits until `ids` have applied the same index and hold the same map; returns it.
        async fn converged(&self, ids: &[u64]) -> BTreeMap<String, String> {
            eventually("replicas to converge", async || {
                let mut applied = Vec::new();
                for &id in ids {
                    applied.push(self.status(id).await.applied);
                }
                let maps: Vec<_> = ids.iter().map(|&id| self.kv(id).map()).collect();
                let same =
                    applied.iter().all(|&a| a == applied[0]) && maps.iter().all(|m| *m == maps[0]);
                same.then(|| maps[0].clone())
            })
            .await
        }
    }

    /// Founding members `ids` on MemStores, each publishing metrics to its own registry.
    fn with_metrics(ids: &[u64], snapshot_every: u64) -> (Cluster, BTreeMap<u64, Registry>) {
        let mut cluster = Cluster::new();
        let mut registries = BTreeMap::new();
        for &id in ids {
            let mut registry = Registry::default();
            let metrics = RaftMetrics::register(registry.sub_registry_with_prefix("causeway"));
            let mut config = NodeConfig::new(id, ids.to_vec());
            config.snapshot_every = snapshot_every;
            config.metrics = Some(metrics);
            cluster.start(config, MemStore::new());
            registries.insert(id, registry);
        }
        (cluster, registries)
    }

    /// The value of the series `series` (name and labels, as exposed), if it is exposed.
    fn sample(registry: &Registry, series: &str) -> Option<f64> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_show_the_role_indexes_proposals_and_peer_lag() {
        let ids = [1, 2, 3];
        let (cluster, registries) = with_metrics(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let mut index = 0;
        for i in 0..5 {
            (index, _) = cluster
                .node(leader)
                .propose(set(&format!("k{i}"), "v"))
                .await
                .unwrap();
        }
        cluster.converged(&ids).await;
        let metrics = &registries[&leader];
        eventually("the leader's indexes", async || {
            let commit = sample(metrics, "causeway_raft_commit_index")?;
            let applied = sample(metrics, "causeway_raft_applied_index")?;
            (commit >= index as f64 && applied >= index as f64).then_some(())
        })
        .await;
        let term = cluster.status(leader).await.term;
        assert_eq!(sample(metrics, "causeway_raft_term"), Some(term as f64));

        let leading: Vec<u64> = ids
            .iter()
            .copied()
            .filter(|id| {
                sample(&registries[id], r#"causeway_raft_role{role="leader"}"#) == Some(1.0)
            })
            .collect();
        assert_eq!(leading, vec![leader]);
        for &id in &ids {
            let registry = &registries[&id];
            let follower = sample(registry, r#"causeway_raft_role{role="follower"}"#);
            assert_eq!(
                follower,
                Some(if id == leader { 0.0 } else { 1.0 }),
                "node {id}"
            );
            assert!(sample(registry, "causeway_raft_leader_changes_total") >= Some(1.0));
        }

        let ok = |series: &str| sample(metrics, &format!(r#"{series}{{outcome="ok"}}"#));
        assert!(ok("causeway_raft_proposal_duration_seconds_count") >= Some(5.0));
        assert!(ok("causeway_raft_proposals_total") >= Some(5.0));

        for &id in &ids {
            let lag = format!(r#"causeway_raft_peer_lag_entries{{peer="{id}"}}"#);
            if id == leader {
                assert_eq!(sample(metrics, &lag), None, "no lag for itself");
            } else {
                eventually("a caught-up follower's lag", async || {
                    (sample(metrics, &lag)? == 0.0).then_some(())
                })
                .await;
                for (&other, registry) in &registries {
                    if other != leader {
                        assert_eq!(sample(registry, &lag), None, "lag on follower {other}");
                    }
                }
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_count_a_followers_refused_proposal() {
        let ids = [1, 2, 3];
        let (cluster, registries) = with_metrics(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let follower = follower_of(leader, &ids);
        let refused = cluster.node(follower).propose(set("a", "1")).await;
        assert!(matches!(refused, Err(ProposeError::NotLeader { .. })));
        let metrics = &registries[&follower];
        let not_leader =
            |series: &str| sample(metrics, &format!(r#"{series}{{outcome="not_leader"}}"#));
        assert_eq!(not_leader("causeway_raft_proposals_total"), Some(1.0));
        assert_eq!(
            not_leader("causeway_raft_proposal_duration_seconds_count"),
            Some(1.0)
        );
        let ok = r#"causeway_raft_proposals_total{outcome="ok"}"#;
        assert_eq!(sample(metrics, ok), None);
    }

    #[tokio::test(start_paused = true)]
    async fn metrics_count_compactions_and_snapshots() {
        let ids = [1, 2, 3];
        let (cluster, registries) = with_metrics(&ids, 4);
        let leader = cluster.leader(&ids).await;
        let behind = follower_of(leader, &ids);
        let compactions = "causeway_raft_log_compactions_total";
        assert_eq!(sample(&registries[&leader], compactions), Some(0.0));
        cluster.transport.isolate(behind);
        for i in 0..12 {
            cluster
                .node(leader)
                .propose(set(&format!("k{i}"), "v"))
                .await
                .unwrap();
        }
        assert!(sample(&registries[&leader], compactions) >= Some(1.0));

        cluster.transport.heal(behind);
        cluster.converged(&ids).await;
        assert!(sample(&registries[&leader], "causeway_raft_snapshots_sent_total") >= Some(1.0));
        assert!(
            sample(
                &registries[&behind],
                "causeway_raft_snapshots_received_total"
            ) >= Some(1.0)
        );
        let other = *ids
            .iter()
            .find(|&&id| id != leader && id != behind)
            .unwrap();
        assert_eq!(
            sample(
                &registries[&other],
                "causeway_raft_snapshots_received_total"
            ),
            Some(0.0)
        );
    }

    #[test]
    fn proposal_ids_round_trip_and_other_contexts_match_nothing() {
        let id = ProposalId { node: 3, seq: 42 };
        assert_eq!(ProposalId::decode(&id.encode()), Some(id));
        assert_eq!(ProposalId::decode(b""), None);
        assert_eq!(ProposalId::decode(&[7; 17]), None);
    }

    fn follower_of(leader: u64, ids: &[u64]) -> u64 {
        *ids.iter().find(|&&id| id != leader).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn three_nodes_elect_a_leader_and_apply_proposals_in_the_same_order() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let node = cluster.node(leader);

        let (first, previous) = node.propose(set("a", "1")).await.unwrap();
        assert_eq!(previous, b"");
        let (second, previous) = node.propose(set("a", "2")).await.unwrap();
        assert_eq!(previous, b"1");
        assert!(second > first);

        // Concurrent proposals: each answer names the index its command applied at.
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let node = node.clone();
                tokio::spawn(async move { (i, node.propose(set(&format!("k{i}"), "v")).await) })
            })
            .collect();
        let mut answers = Vec::new();
        for task in tasks {
            let (i, answer) = task.await.unwrap();
            answers.push((i, answer.unwrap().0));
        }

        let map = cluster.converged(&ids).await;
        assert_eq!(map.len(), 21);
        assert_eq!(map["a"], "2");
        let log = cluster.kv(leader).log();
        for id in ids {
            assert_eq!(
                cluster.kv(id).log(),
                log,
                "node {id} applied a different sequence"
            );
        }
        for (i, index) in answers {
            assert!(log.contains(&(index, format!("set k{i} v"))));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_refuses_proposals_naming_the_leader() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let follower = cluster.node(follower_of(leader, &ids));
        let not_leader = ProposeError::NotLeader {
            leader: Some(leader),
        };
        assert_eq!(
            follower.propose(set("a", "1")).await.unwrap_err(),
            not_leader
        );
        assert_eq!(follower.add_learner(9).await.unwrap_err(), not_leader);
        assert_eq!(
            follower.transfer_leader(leader).await.unwrap_err(),
            not_leader
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_isolated_leader_cannot_commit_while_the_majority_moves_on() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 10_000);
        let old = cluster.leader(&ids).await;
        cluster.node(old).propose(set("x", "0")).await.unwrap();

        cluster.transport.isolate(old);
        // check_quorum makes it step down about an election timeout later.
        let stale = timeout(
            Duration::from_secs(10),
            cluster.node(old).propose(set("x", "stale")),
        )
        .await;
        assert!(
            matches!(stale, Err(_) | Ok(Err(ProposeError::LeaderChanged { .. }))),
            "{stale:?}"
        );

        let rest: Vec<u64> = ids.iter().copied().filter(|&id| id != old).collect();
        let new = cluster.leader(&rest).await;
        let (_, previous) = cluster.node(new).propose(set("x", "new")).await.unwrap();
        assert_eq!(previous, b"0");
        assert_ne!(cluster.status(old).await.role, Role::Leader);

        cluster.transport.heal(old);
        let map = cluster.converged(&ids).await;
        assert_eq!(map["x"], "new");
        for id in ids {
            let log = cluster.kv(id).log();
            assert!(log.iter().all(|(_, command)| command != "set x stale"));
        }
        assert_eq!(cluster.leader(&ids).await, new);
    }

    #[tokio::test(start_paused = true)]
    async fn a_restarted_node_rebuilds_its_state_from_sled_and_rejoins() {
        let ids = [1, 2, 3];
        let dirs: Vec<_> = ids.iter().map(|_| tempfile::tempdir().unwrap()).collect();
        let config = |id: u64| {
            let mut config = NodeConfig::new(id, ids.to_vec());
            // Small, so the restart restores a snapshot and replays the log after it.
            config.snapshot_every = 3;
            config
        };
        let mut cluster = Cluster::new();
        for (&id, dir) in ids.iter().zip(&dirs) {
            cluster.start(config(id), SledStore::open(dir.path()).unwrap());
        }
        let leader = cluster.leader(&ids).await;
        for i in 0..7 {
            cluster
                .node(leader)
                .propose(set(&format!("k{i}"), "before"))
                .await
                .unwrap();
        }
        let before = cluster.converged(&ids).await;

        let restarted = follower_of(leader, &ids);
        let applied = cluster.status(restarted).await.applied;
        cluster.node(restarted).shutdown().await.unwrap();
        cluster.transport.unregister(restarted);
        assert_eq!(
            cluster.node(restarted).propose(set("a", "1")).await,
            Err(ProposeError::Stopped)
        );
        // The other two still form a quorum.
        cluster
            .node(leader)
            .propose(set("k0", "while-down"))
            .await
            .unwrap();

        let dir = &dirs[ids.iter().position(|&id| id == restarted).unwrap()];
        let kv = cluster.start(config(restarted), SledStore::open(dir.path()).unwrap());
        let mut applied_rx = cluster.node(restarted).watch_applied();
        applied_rx.wait_for(|&a| a >= applied).await.unwrap();
        assert_eq!(kv.restored().len(), 1, "restored from its snapshot");
        for (key, value) in &before {
            assert_eq!(
                kv.map().get(key),
                Some(value),
                "lost {key} across the restart"
            );
        }

        let map = cluster.converged(&ids).await;
        assert_eq!(map["k0"], "while-down");
        let (index, _) = cluster
            .node(leader)
            .propose(set("after", "1"))
            .await
            .unwrap();
        applied_rx.wait_for(|&a| a >= index).await.unwrap();
        assert_eq!(kv.map()["after"], "1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_learner_joins_through_a_snapshot_is_promoted_and_removed() {
        learner_lifecycle(10_000).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_learner_joins_a_group_that_compacts_often() {
        learner_lifecycle(2).await;
    }

    async fn learner_lifecycle(snapshot_every: u64) {
        let ids = [1, 2, 3];
        let mut cluster = Cluster::in_memory(&ids, snapshot_every);
        let leader = cluster.leader(&ids).await;
        for i in 0..5 {
            cluster
                .node(leader)
                .propose(set(&format!("k{i}"), "v"))
                .await
                .unwrap();
        }
        cluster.start(NodeConfig::new(4, vec![]), MemStore::new());
        let node = cluster.node(leader).clone();
        assert!(matches!(
            node.promote(4).await,
            Err(ProposeError::Rejected { .. })
        ));

        node.add_learner(4).await.unwrap();
        let status = cluster.status(leader).await;
        assert_eq!((status.voters, status.learners), (vec![1, 2, 3], vec![4]));
        cluster.converged(&[1, 2, 3, 4]).await;
        assert_eq!(cluster.kv(4).map().len(), 5);
        // The snapshot taken when it was added; what follows comes through the log.
        assert_eq!(cluster.kv(4).restored()[0], 5);

        node.promote(4).await.unwrap();
        let all = [1, 2, 3, 4];
        eventually("4 to see itself a voter", async || {
            (cluster.status(4).await.voters == all).then_some(())
        })
        .await;
        let (index, _) = node.propose(set("after", "promote")).await.unwrap();
        cluster.converged(&all).await;
        assert!(cluster.status(leader).await.matched[&4] >= index);

        // Demoted: a learner again, still replicating.
        node.demote(4).await.unwrap();
        let status = cluster.status(leader).await;
        assert!(status.outgoing_voters.is_empty(), "still joint: {status:?}");
        assert_eq!((status.voters, status.learners), (vec![1, 2, 3], vec![4]));
        let (index, _) = node.propose(set("after", "demote")).await.unwrap();
        cluster.converged(&all).await;
        assert!(cluster.status(leader).await.matched[&4] >= index);
        assert!(matches!(
            node.demote(4).await,
            Err(ProposeError::Rejected { .. })
        ));
        assert!(matches!(
            node.demote(leader).await,
            Err(ProposeError::Rejected { .. })
        ));

        node.remove(4).await.unwrap();
        assert_eq!(cluster.status(leader).await.voters, vec![1, 2, 3]);
        node.propose(set("after", "remove")).await.unwrap();
        assert_eq!(cluster.converged(&ids).await["after"], "remove");
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 4);
        let leader = cluster.leader(&ids).await;
        let behind = follower_of(leader, &ids);
        cluster.transport.isolate(behind);
        for i in 0..12 {
            cluster
                .node(leader)
                .propose(set(&format!("k{i}"), "v"))
                .await
                .unwrap();
        }
        assert_eq!(
            cluster.kv(behind).restored(),
            vec![0],
            "only the founding snapshot"
        );

        cluster.transport.heal(behind);
        let map = cluster.converged(&ids).await;
        assert_eq!(map.len(), 12);
        let restored = cluster.kv(behind).restored();
        assert!(
            restored.len() == 2 && restored[1] >= 8,
            "caught up from a snapshot of the compacted log: {restored:?}"
        );
        cluster
            .node(leader)
            .propose(set("k0", "again"))
            .await
            .unwrap();
        assert_eq!(cluster.converged(&ids).await["k0"], "again");
    }

    #[tokio::test(start_paused = true)]
    async fn read_index_covers_every_acknowledged_write() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let (index, _) = cluster.node(leader).propose(set("a", "1")).await.unwrap();

        let read = cluster.node(leader).read_index().await.unwrap();
        assert!(read >= index);
        assert!(*cluster.node(leader).watch_applied().borrow() >= read);

        // A follower asks the leader, then waits until it has applied that far itself.
        let follower = follower_of(leader, &ids);
        let read = cluster.node(follower).read_index().await.unwrap();
        assert!(read >= index);
        assert!(*cluster.node(follower).watch_applied().borrow() >= read);
        assert_eq!(cluster.kv(follower).map()["a"], "1");
    }

    #[tokio::test(start_paused = true)]
    async fn leadership_moves_to_the_chosen_voter() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let target = follower_of(leader, &ids);
        cluster.node(leader).transfer_leader(target).await.unwrap();
        eventually("the transfer", async || {
            (cluster.leader(&ids).await == target).then_some(())
        })
        .await;
        cluster.node(target).propose(set("a", "1")).await.unwrap();
    }

    #[test]
    fn every_membership_change_goes_through_a_joint_configuration() {
        use MembershipChange::*;
        for change in [AddLearner(4), Promote(4), Demote(4), Remove(4)] {
            // Some(true): enter a joint configuration, and leave it automatically.
            assert_eq!(conf_change(change).enter_joint(), Some(true), "{change:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_cannot_remove_itself_but_can_remove_a_follower() {
        let ids = [1, 2, 3];
        let cluster = Cluster::in_memory(&ids, 10_000);
        let leader = cluster.leader(&ids).await;
        let refused = cluster.node(leader).remove(leader).await;
        assert!(
            matches!(refused, Err(ProposeError::Rejected { .. })),
            "{refused:?}"
        );
        let follower = follower_of(leader, &ids);
        cluster.node(leader).remove(follower).await.unwrap();
        let status = cluster.status(leader).await;
        assert!(!status.voters.contains(&follower), "{status:?}");
        assert!(status.outgoing_voters.is_empty(), "still joint: {status:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn the_log_is_compacted_by_size_as_well_as_by_count() {
        let ids = [1];
        let mut cluster = Cluster::new();
        let mut registry = Registry::default();
        let mut config = NodeConfig::new(1, ids.to_vec());
        config.snapshot_every = 1_000_000;
        config.snapshot_bytes = 4096;
        config.metrics = Some(RaftMetrics::register(
            registry.sub_registry_with_prefix("causeway"),
        ));
        cluster.start(config, MemStore::new());
        let leader = cluster.leader(&ids).await;
        let compactions = "causeway_raft_log_compactions_total";
        let before = sample(&registry, compactions).unwrap();
        // 32 commands of ~300 bytes: well past 4 KiB, far below the entry count.
        let value = "v".repeat(300);
        for i in 0..32 {
            cluster
                .node(leader)
                .propose(set(&format!("k{i}"), &value))
                .await
                .unwrap();
        }
        let after = sample(&registry, compactions).unwrap();
        assert!(after >= before + 2.0, "{before} -> {after} compactions");
    }
}
