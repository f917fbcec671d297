//! The in-memory [`LogStore`]: the reference the conformance suite holds [`SledStore`] to, and
//! the store unit tests of the node use.
//!
//! Its semantics mirror raft-rs's `MemStorageCore`, with two deliberate differences: `compact`
//! records a snapshot (so `first_index() == snapshot index + 1` always holds), and misuse that
//! `MemStorageCore` answers with a panic is an error here. The checks every write makes live in
//! [`Bounds`], which [`SledStore`] calls too, so the two stores cannot drift apart on what they
//! accept.
//!
//! [`SledStore`]: super::SledStore

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};

use super::LogStore;
use crate::StoreError;

/// A [`LogStore`] that keeps everything in memory and forgets it on drop.
#[derive(Debug, Default)]
pub struct MemStore {
    hard_state: HardState,
    conf_state: ConfState,
    /// The latest snapshot, data included; index 0 while there is none.
    snapshot: Snapshot,
    /// The log after the snapshot: `entries[i].index == snapshot index + 1 + i`.
    entries: Vec<Entry>,
    applied: u64,
}

impl MemStore {
    /// An empty store: no entries, no snapshot, default hard and conf state.
    pub fn new() -> Self {
        Self::default()
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            snapshot_index: self.snapshot.get_metadata().index,
            last: self.snapshot.get_metadata().index + self.entries.len() as u64,
            commit: self.hard_state.commit,
        }
    }
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        let bounds = self.bounds();
        bounds.check_range(low, high)?;
        let first = bounds.first();
        let (lo, hi) = ((low - first) as usize, (high - first) as usize);
        let mut entries = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut entries, max_size.into());
        Ok(entries)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snapshot.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        let bounds = self.bounds();
        if idx < bounds.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > bounds.last {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - bounds.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.bounds().last)
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        snapshot_for(&self.snapshot, request_index)
    }
}

impl LogStore for MemStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let bounds = self.bounds();
        bounds.check_append(entries, hard_state)?;
        if let Some(head) = entries.first() {
            self.entries
                .truncate((head.index - bounds.first()) as usize);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError> {
        self.bounds().check_hard_state(hard_state)?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError> {
        self.conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let meta = snapshot.get_metadata();
        self.bounds().check_snapshot(meta)?;
        self.hard_state = hard_state_after_snapshot(&self.hard_state, meta);
        self.conf_state = meta.get_conf_state().clone();
        self.entries.clear();
        self.snapshot = snapshot;
        Ok(())
    }

    fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), StoreError> {
        let bounds = self.bounds();
        if !bounds.check_compact(index)? {
            return Ok(());
        }
        let term = self.entries[(index - bounds.first()) as usize].term;
        self.snapshot = new_snapshot(index, term, &self.conf_state, data);
        self.entries.drain(..(index + 1 - bounds.first()) as usize);
        Ok(())
    }

    fn set_applied(&mut self, index: u64) -> Result<(), StoreError> {
        self.applied = index;
        Ok(())
    }

    fn applied(&self) -> u64 {
        self.applied
    }

    fn latest_snapshot(&self) -> Snapshot {
        self.snapshot.clone()
    }
}

/// What the write checks need to know about a store's log; shared with the sled store so both
/// accept and refuse exactly the same writes.
///
/// Every successful write keeps `snapshot_index <= commit <= last`: raft-rs panics at start
/// (`RawNode::new`) on a hard state whose commit lies outside the log, so a write that would
/// store one is refused instead, and the sled store reports one found at open as corruption.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// Index of the latest snapshot (0 if none); the log holds `snapshot_index + 1..=last`.
    pub(super) snapshot_index: u64,
    pub(super) last: u64,
    /// The stored hard state's commit index.
    pub(super) commit: u64,
}

impl Bounds {
    pub(super) fn first(self) -> u64 {
        self.snapshot_index + 1
    }

    /// `entries(low, high)` may only ask for `first..=last`; raft-rs never asks for more, so
    /// anything else is answered with an error rather than `MemStorage`'s panic.
    pub(super) fn check_range(self, low: u64, high: u64) -> raft::Result<()> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if low > high {
            return Err(raft::Error::Store(StorageError::Other(
                format!("entries: low {low} is above high {high}").into(),
            )));
        }
        Ok(())
    }

    /// An append must be contiguous, start inside the log or right after it, and leave
    /// committed entries alone (raft-rs never rewrites them; a store that did would break
    /// Raft's safety).
    pub(super) fn check_append(
        self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let mut last = self.last;
        if let (Some(head), Some(tail)) = (entries.first(), entries.last()) {
            if let Some(pair) = entries
                .windows(2)
                .find(|pair| pair[0].index.checked_add(1) != Some(pair[1].index))
            {
                return Err(invalid(format!(
                    "append: entries are not contiguous ({} then {})",
                    pair[0].index, pair[1].index
                )));
            }
            if head.index < self.first() {
                return Err(StoreError::Raft(raft::Error::Store(
                    StorageError::Compacted,
                )));
            }
            if head.index > self.last + 1 {
                return Err(invalid(format!(
                    "append: entry {} leaves a gap after the last index {}",
                    head.index, self.last
                )));
            }
            if head.index <= self.commit {
                return Err(invalid(format!(
                    "append: entry {} would overwrite committed entries (commit {})",
                    head.index, self.commit
                )));
            }
            last = tail.index;
        }
        let commit = hard_state.map_or(self.commit, |hs| hs.commit);
        Bounds { last, ..self }.check_commit(commit)
    }

    pub(super) fn check_hard_state(self, hard_state: &HardState) -> Result<(), StoreError> {
        self.check_commit(hard_state.commit)
    }

    fn check_commit(self, commit: u64) -> Result<(), StoreError> {
        if commit < self.snapshot_index || commit > self.last {
            return Err(invalid(format!(
                "hard state commit {commit} lies outside the log [{}, {}]",
                self.snapshot_index, self.last
            )));
        }
        Ok(())
    }

    /// As `MemStorage`: a snapshot not newer than the current one is out of date.
    pub(super) fn check_snapshot(self, meta: &SnapshotMetadata) -> Result<(), StoreError> {
        if meta.index < self.first() {
            return Err(StoreError::Raft(raft::Error::Store(
                StorageError::SnapshotOutOfDate,
            )));
        }
        if meta.index == u64::MAX {
            return Err(invalid("apply_snapshot: index u64::MAX".to_owned()));
        }
        Ok(())
    }

    /// `Ok(false)`: nothing to do, the current snapshot is at or past `index` (as `MemStorage`,
    /// not an error). The snapshot may only cover committed entries of the log.
    pub(super) fn check_compact(self, index: u64) -> Result<bool, StoreError> {
        if index <= self.snapshot_index {
            return Ok(false);
        }
        if index > self.last {
            return Err(StoreError::Raft(raft::Error::Store(
                StorageError::Unavailable,
            )));
        }
        if index > self.commit {
            return Err(invalid(format!(
                "compact: index {index} is not committed (commit {})",
                self.commit
            )));
        }
        Ok(true)
    }
}

/// A write raft-rs would never ask for; reported through raft's error type so callers match
/// one kind of storage error.
pub(super) fn invalid(reason: String) -> StoreError {
    StoreError::Raft(raft::Error::Store(StorageError::Other(reason.into())))
}

/// As `MemStorageCore::apply_snapshot`: the log now ends at the snapshot, so commit moves to its
/// index; the term never goes back.
pub(super) fn hard_state_after_snapshot(
    hard_state: &HardState,
    meta: &SnapshotMetadata,
) -> HardState {
    let mut hard_state = hard_state.clone();
    hard_state.term = hard_state.term.max(meta.term);
    hard_state.commit = meta.index;
    hard_state
}

pub(super) fn new_snapshot(
    index: u64,
    term: u64,
    conf_state: &ConfState,
    data: Vec<u8>,
) -> Snapshot {
    let mut snapshot = Snapshot::default();
    let meta = snapshot.mut_metadata();
    meta.index = index;
    meta.term = term;
    meta.set_conf_state(conf_state.clone());
    snapshot.data = data.into();
    snapshot
}

/// `Storage::snapshot`: the stored snapshot, unless raft-rs asks for a newer one (a follower's
/// request), which the node makes by compacting; until then it is temporarily unavailable and
/// raft-rs asks again later.
pub(super) fn snapshot_for(snapshot: &Snapshot, request_index: u64) -> raft::Result<Snapshot> {
    if snapshot.get_metadata().index < request_index {
        return Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable,
        ));
    }
    Ok(snapshot.clone())
}
