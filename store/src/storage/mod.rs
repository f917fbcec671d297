//! Durable storage for the Raft log, behind one trait with two implementations:
//! [`MemStore`] (tests, and the reference the conformance suite checks sled against) and
//! [`SledStore`] (what gateways run).
//!
//! Everything a gateway needs after a restart lives here: log entries, hard state (term, vote,
//! commit), conf state, the last snapshot (state machine bytes plus its index, term and conf
//! state) and the applied index. Writes other than `set_applied` are durable when the method
//! returns: sled syncs only every half second by itself, so the sled store flushes before
//! returning, and then `fdatasync`s sled's files. sled 0.34's `Db::flush` ends, on Linux, in
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)`, which only starts and waits for the
//! write-out of dirty pages: it neither flushes the disk's volatile write-back cache nor writes
//! file metadata, so a write it "acknowledged" can still be lost in a power failure.
//! `fdatasync` issues the cache flush (FUA/flush command) as well; etcd, for comparison, does
//! one per write.

#[cfg(test)]
mod conformance;
mod mem;
mod sled_store;

pub use mem::MemStore;
pub use sled_store::SledStore;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

use crate::StoreError;

/// The write side that raft-rs's read-only [`raft::Storage`] lacks.
///
/// Invariants every implementation keeps (the conformance suite checks them):
/// * `first_index() == snapshot index + 1`, and `last_index() >= first_index() - 1`;
/// * `append` replaces any existing entries from the first new entry's index on (a conflicting
///   suffix from an old leader), and persists entries and hard state in one durable batch;
/// * `apply_snapshot` replaces the log with the snapshot (entries up to its index are gone);
/// * `compact` keeps the entries after `index` and records a snapshot at `index`;
/// * after reopening, every method answers what it answered before the process stopped, except
///   `applied`, which may lag (see `set_applied`);
/// * `snapshot_index <= hard_state.commit <= last_index()` (raft-rs panics at start otherwise).
///
/// Errors: a write raft-rs would never ask for (a gap, rewriting committed entries, a commit
/// outside the log, compacting uncommitted entries) is refused with
/// `StoreError::Raft(raft::Error::Store(StorageError::Other(_)))` and changes nothing; appending
/// below the first index is `Compacted`, compacting past the last index `Unavailable`, a
/// snapshot not newer than the current one `SnapshotOutOfDate`. Any other write error means the
/// disk failed mid-write: the store must not be used again. `Storage::snapshot` answers with the
/// stored snapshot, or `SnapshotTemporarilyUnavailable` when asked for a newer one.
pub trait LogStore: raft::Storage + Send + 'static {
    /// Appends `entries` (truncating a conflicting suffix) and, if given, sets the hard state,
    /// durably and atomically.
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError>;
    /// Persists the hard state alone (e.g. a new commit index).
    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError>;
    /// Persists the membership.
    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError>;
    /// Replaces the log with a snapshot received from the leader.
    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError>;
    /// Records `data` (the state machine at `index`) as the snapshot and drops entries up to
    /// `index`. `index` must be applied and within the log.
    fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), StoreError>;
    /// Records how far the state machine has applied, without waiting for the disk: the value
    /// becomes durable with the next write that is (any other write method), so after a crash
    /// the stored applied index may lag behind the last one set. It is advisory: a node does not
    /// rebuild its state from it (it restores the snapshot and replays the committed log), so a
    /// lagging value costs nothing but information. Flushing it on every batch of applied
    /// entries would cost a disk flush per write for no safety.
    fn set_applied(&mut self, index: u64) -> Result<(), StoreError>;
    /// How far the state machine had applied when last set (after a restart: when last made
    /// durable, which may lag; see `set_applied`).
    fn applied(&self) -> u64;
    /// The stored snapshot (empty data and index 0 if none), whatever raft-rs asks for.
    fn latest_snapshot(&self) -> Snapshot;
}
