//! One conformance suite for every [`LogStore`] (the idea of openraft's `testing/log/suite.rs`):
//! each test is a function generic over a [`Harness`], and `conformance!` instantiates all of
//! them per implementation (`storage::conformance::mem::*`, `storage::conformance::sled::*`).
//!
//! Every successful write in every test is followed by a simulated crash: the sled harness copies
//! the data dir as it is at that instant (the store still open, nothing flushed on drop) and
//! opens the copy, which must answer every read exactly as before. Every refused write must leave
//! the store's answers unchanged, before and after a restart. `set_applied` alone is not durable
//! when it returns (the stored applied index is advisory and may lag after a crash): it is
//! checked on a crash copy that may lag, and every later write must make it durable.
//! `mem_and_sled_agree` then drives
//! both implementations through the same pseudo-random operations and compares every answer.

use std::path::Path;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, NO_LIMIT, Storage, StorageError};
use tempfile::TempDir;

use super::sled_store::{
    APPLIED_KEY, BLOBS_DIR, CONF_STATE_KEY, FORMAT_KEY, FORMAT_V1, HARD_STATE_KEY, LOG_PREFIX,
    SENTINEL, SNAPSHOT_KEY, SNAPSHOTS_TREE, TREE, log_key, snapshot_key,
};
use super::{LogStore, MemStore, SledStore};
use crate::StoreError;

/// A store under test and a way to restart it.
trait Harness {
    type Store: LogStore;
    fn new() -> Self;
    fn store(&mut self) -> &mut Self::Store;
    /// Replaces the store with one opened from what is durable right now, as after a crash.
    fn restart(&mut self);
    /// What a store opened from what is durable right now would answer, leaving this one be;
    /// `None` if nothing is durable.
    fn answers_after_crash(&self) -> Option<Answers>;
}

struct Mem(MemStore);

impl Harness for Mem {
    type Store = MemStore;

    fn new() -> Self {
        Mem(MemStore::new())
    }

    fn store(&mut self) -> &mut MemStore {
        &mut self.0
    }

    /// Nothing is durable; the store carries on as it is.
    fn restart(&mut self) {}

    fn answers_after_crash(&self) -> Option<Answers> {
        None
    }
}

struct Sled {
    store: SledStore,
    dir: TempDir,
}

impl Harness for Sled {
    type Store = SledStore;

    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("open an empty sled store");
        Sled { store, dir }
    }

    fn store(&mut self) -> &mut SledStore {
        &mut self.store
    }

    fn restart(&mut self) {
        let crashed = tempfile::tempdir().expect("temp dir");
        copy_dir(self.dir.path(), crashed.path());
        self.store = SledStore::open(crashed.path()).expect("reopen after a crash");
        self.dir = crashed;
    }

    fn answers_after_crash(&self) -> Option<Answers> {
        let crashed = tempfile::tempdir().expect("temp dir");
        copy_dir(self.dir.path(), crashed.path());
        let store = SledStore::open(crashed.path()).expect("reopen after a crash");
        Some(answers(&store))
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create dir");
    for item in std::fs::read_dir(from).expect("read dir") {
        let item = item.expect("dir entry");
        let target = to.join(item.file_name());
        if item.file_type().expect("file type").is_dir() {
            copy_dir(&item.path(), &target);
        } else {
            std::fs::copy(item.path(), target).expect("copy file");
        }
    }
}

/// Everything a store answers, for comparing stores and restarts.
#[derive(Debug, PartialEq)]
struct Answers {
    first_index: u64,
    last_index: u64,
    hard_state: HardState,
    conf_state: ConfState,
    /// `term(i)` for every `i` in `0..=last + 1`.
    terms: Vec<Result<u64, String>>,
    entries: Result<Vec<Entry>, String>,
    latest_snapshot: Snapshot,
    snapshot: Result<Snapshot, String>,
    applied: u64,
}

fn answers<S: LogStore>(store: &S) -> Answers {
    let first_index = store.first_index().expect("first_index");
    let last_index = store.last_index().expect("last_index");
    let state = store.initial_state().expect("initial_state");
    let latest_snapshot = store.latest_snapshot();

    // The invariants of `LogStore`, whatever the test did.
    assert_eq!(first_index, latest_snapshot.get_metadata().index + 1);
    assert!(last_index + 1 >= first_index);
    assert!(state.hard_state.commit + 1 >= first_index);
    assert!(state.hard_state.commit <= last_index);

    Answers {
        first_index,
        last_index,
        hard_state: state.hard_state,
        conf_state: state.conf_state,
        terms: (0..=last_index + 1)
            .map(|i| store.term(i).map_err(|e| e.to_string()))
            .collect(),
        entries: read(store, first_index, last_index + 1, None).map_err(|e| e.to_string()),
        latest_snapshot,
        snapshot: store.snapshot(0, 0).map_err(|e| e.to_string()),
        applied: store.applied(),
    }
}

/// Runs a write that must succeed, then restarts: the answers must survive.
fn write<H: Harness>(
    h: &mut H,
    what: &str,
    op: impl FnOnce(&mut H::Store) -> Result<(), StoreError>,
) {
    if let Err(error) = op(h.store()) {
        panic!("{what}: {error}");
    }
    let before = answers(h.store());
    h.restart();
    assert_eq!(
        answers(h.store()),
        before,
        "{what}: answers changed across a restart"
    );
}

/// Sets the applied index, which need not be durable yet: a crash may keep an older value but
/// must change nothing else. The store carries on (the next write must make it durable).
fn write_applied<H: Harness>(h: &mut H, index: u64) {
    let before = answers(h.store());
    if let Err(error) = h.store().set_applied(index) {
        panic!("set_applied {index}: {error}");
    }
    assert_eq!(h.store().applied(), index);
    if let Some(mut after) = h.answers_after_crash() {
        assert!(
            after.applied <= before.applied.max(index),
            "set_applied {index}: a crash kept applied {} (before {})",
            after.applied,
            before.applied
        );
        after.applied = before.applied;
        assert_eq!(
            after, before,
            "set_applied {index} changed more than applied"
        );
    }
}

/// Runs a write that must be refused, and returns why; the store must not change.
fn refused<H: Harness>(
    h: &mut H,
    what: &str,
    op: impl FnOnce(&mut H::Store) -> Result<(), StoreError>,
) -> StoreError {
    let before = answers(h.store());
    let Err(error) = op(h.store()) else {
        panic!("{what}: expected an error");
    };
    assert_eq!(
        answers(h.store()),
        before,
        "{what}: a refused write changed the store"
    );
    h.restart();
    assert_eq!(
        answers(h.store()),
        before,
        "{what}: a refused write changed the disk"
    );
    error
}

fn storage_error(error: &StoreError) -> Option<&StorageError> {
    match error {
        StoreError::Raft(raft::Error::Store(error)) => Some(error),
        _ => None,
    }
}

fn is(error: &StoreError, want: StorageError) -> bool {
    storage_error(error) == Some(&want)
}

fn is_other(error: &StoreError) -> bool {
    matches!(storage_error(error), Some(StorageError::Other(_)))
}

const COMPACTED: raft::Error = raft::Error::Store(StorageError::Compacted);
const UNAVAILABLE: raft::Error = raft::Error::Store(StorageError::Unavailable);

fn read<S: Storage>(store: &S, low: u64, high: u64, max: Option<u64>) -> raft::Result<Vec<Entry>> {
    store.entries(low, high, max, GetEntriesContext::empty(false))
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("command {index} of term {term}")
            .into_bytes()
            .into(),
        ..Entry::default()
    }
}

/// Entries `indexes` all of `term`.
fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes.map(|index| entry(index, term)).collect()
}

fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

fn conf_state(voters: &[u64], learners: &[u64]) -> ConfState {
    ConfState {
        voters: voters.to_vec(),
        learners: learners.to_vec(),
        ..ConfState::default()
    }
}

fn snapshot(index: u64, term: u64, voters: &[u64], data: &str) -> Snapshot {
    let mut snapshot = Snapshot::default();
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot
        .mut_metadata()
        .set_conf_state(conf_state(voters, &[]));
    snapshot.data = data.as_bytes().to_vec().into();
    snapshot
}

/// Entries 1..=`last` with terms 1, 1, 2, 2, 3, 3, … and the hard state committing `commit`.
fn seed<H: Harness>(h: &mut H, last: u64, commit: u64) -> Vec<Entry> {
    let log: Vec<Entry> = (1..=last).map(|i| entry(i, i.div_ceil(2))).collect();
    let hs = hard_state(last.div_ceil(2), 1, commit);
    write(h, "seed", |s| s.append(&log, Some(&hs)));
    log
}

fn empty_store<H: Harness>() {
    let mut h = H::new();
    let s = h.store();
    assert_eq!(s.first_index().unwrap(), 1);
    assert_eq!(s.last_index().unwrap(), 0);
    assert_eq!(s.term(0), Ok(0));
    assert_eq!(s.term(1), Err(UNAVAILABLE));
    let state = s.initial_state().unwrap();
    assert_eq!(state.hard_state, HardState::default());
    assert_eq!(state.conf_state, ConfState::default());
    assert!(!state.initialized());
    assert_eq!(read(s, 1, 1, None), Ok(vec![]));
    assert_eq!(read(s, 1, 2, None), Err(UNAVAILABLE));
    assert_eq!(s.latest_snapshot(), Snapshot::default());
    assert_eq!(s.snapshot(0, 2), Ok(Snapshot::default()));
    assert_eq!(s.applied(), 0);
    let before = answers(s);
    h.restart();
    assert_eq!(answers(h.store()), before);
}

fn append_and_read<H: Harness>() {
    let mut h = H::new();
    let log = seed(&mut h, 5, 0);
    let s = h.store();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (1, 5));
    for e in &log {
        assert_eq!(s.term(e.index), Ok(e.term));
    }
    assert_eq!(s.term(0), Ok(0));
    assert_eq!(s.term(6), Err(UNAVAILABLE));
    assert_eq!(read(s, 1, 6, None), Ok(log.clone()));
    assert_eq!(read(s, 2, 4, None), Ok(log[1..3].to_vec()));
    assert_eq!(read(s, 3, 3, None), Ok(vec![]));
    assert_eq!(read(s, 6, 6, None), Ok(vec![]));

    write(&mut h, "append at last + 1", |s| {
        s.append(&entries(6..=7, 4), None)
    });
    let s = h.store();
    assert_eq!(s.last_index().unwrap(), 7);
    assert_eq!(read(s, 5, 8, None).unwrap().len(), 3);
    write(&mut h, "append nothing", |s| s.append(&[], None));
    assert_eq!(h.store().last_index().unwrap(), 7);
}

fn entries_max_size<H: Harness>() {
    let mut h = H::new();
    let log = seed(&mut h, 6, 0);
    let size = |e: &Entry| u64::from(protobuf::Message::compute_size(e));
    let (one, two) = (size(&log[1]), size(&log[1]) + size(&log[2]));
    let total: u64 = log.iter().map(size).sum();
    let s = h.store();
    for max in [
        0,
        1,
        one - 1,
        one,
        two - 1,
        two,
        two + 1,
        total - 1,
        total,
        NO_LIMIT,
    ] {
        for (low, high) in [(1, 7), (2, 7), (2, 5), (4, 5)] {
            let mut want = log[(low - 1) as usize..(high - 1) as usize].to_vec();
            raft::util::limit_size(&mut want, Some(max));
            assert!(!want.is_empty());
            assert_eq!(
                read(s, low, high, Some(max)),
                Ok(want),
                "max {max}, {low}..{high}"
            );
        }
    }
    assert_eq!(
        read(s, 2, 7, Some(0)).unwrap().len(),
        1,
        "at least one entry"
    );
    assert_eq!(read(s, 2, 7, Some(two)).unwrap().len(), 2);
    assert_eq!(read(s, 1, 7, Some(total)).unwrap().len(), 6);
    assert_eq!(read(s, 1, 7, None).unwrap().len(), 6);
}

fn entries_out_of_range<H: Harness>() {
    let mut h = H::new();
    seed(&mut h, 5, 5);
    write(&mut h, "compact", |s| s.compact(2, b"two".to_vec()));
    let s = h.store();
    assert_eq!(read(s, 1, 4, None), Err(COMPACTED));
    assert_eq!(read(s, 2, 4, None), Err(COMPACTED));
    assert_eq!(read(s, 3, 6, None).unwrap().len(), 3);
    assert_eq!(
        read(s, 3, 7, None),
        Err(UNAVAILABLE),
        "raft-rs's MemStorage panics here"
    );
    assert!(read(s, 5, 4, None).is_err(), "low above high");
}

fn term_bounds<H: Harness>() {
    let mut h = H::new();
    let log = seed(&mut h, 5, 3);
    write(&mut h, "compact", |s| s.compact(3, b"three".to_vec()));
    let s = h.store();
    assert_eq!(s.term(0), Err(COMPACTED));
    assert_eq!(s.term(2), Err(COMPACTED));
    assert_eq!(
        s.term(3),
        Ok(log[2].term),
        "the snapshot's index answers with its term"
    );
    assert_eq!(s.term(4), Ok(log[3].term));
    assert_eq!(s.term(5), Ok(log[4].term));
    assert_eq!(s.term(6), Err(UNAVAILABLE));
}

fn append_truncates_conflicting_suffix<H: Harness>() {
    let mut h = H::new();
    write(&mut h, "append", |s| s.append(&entries(1..=5, 1), None));
    write(&mut h, "overwrite 3..=4", |s| {
        s.append(&entries(3..=4, 2), None)
    });
    let s = h.store();
    assert_eq!(
        s.last_index().unwrap(),
        4,
        "entry 5 followed the conflict and is gone"
    );
    assert_eq!(s.term(3), Ok(2));
    assert_eq!(s.term(5), Err(UNAVAILABLE));
    let mut want = entries(1..=2, 1);
    want.extend(entries(3..=4, 2));
    assert_eq!(read(s, 1, 5, None), Ok(want));

    write(&mut h, "overwrite from 2 with a longer run", |s| {
        s.append(&entries(2..=7, 3), None)
    });
    let s = h.store();
    assert_eq!(s.last_index().unwrap(), 7);
    assert_eq!((s.term(1), s.term(2), s.term(7)), (Ok(1), Ok(3), Ok(3)));

    write(&mut h, "overwrite the first entry", |s| {
        s.append(&entries(1..=1, 4), None)
    });
    let s = h.store();
    assert_eq!(s.last_index().unwrap(), 1);
    assert_eq!(read(s, 1, 2, None), Ok(entries(1..=1, 4)));
}

fn append_refuses_bad_entries<H: Harness>() {
    let mut h = H::new();
    seed(&mut h, 5, 4);
    let e = refused(&mut h, "gap", |s| s.append(&entries(7..=8, 3), None));
    assert!(is_other(&e), "{e}");
    let e = refused(&mut h, "not contiguous", |s| {
        s.append(&[entry(6, 3), entry(8, 3)], None)
    });
    assert!(is_other(&e), "{e}");
    let e = refused(&mut h, "overwrites committed entry 4", |s| {
        s.append(&entries(4..=6, 9), None)
    });
    assert!(is_other(&e), "{e}");
    write(&mut h, "overwrite after commit", |s| {
        s.append(&entries(5..=6, 9), None)
    });

    write(&mut h, "compact", |s| s.compact(3, vec![]));
    let e = refused(&mut h, "compacted", |s| s.append(&entries(3..=4, 9), None));
    assert!(is(&e, StorageError::Compacted), "{e}");
    let e = refused(&mut h, "compacted", |s| s.append(&entries(1..=7, 9), None));
    assert!(is(&e, StorageError::Compacted), "{e}");
}

fn append_with_hard_state<H: Harness>() {
    let mut h = H::new();
    let hs = hard_state(2, 1, 3);
    write(&mut h, "entries and commit", |s| {
        s.append(&entries(1..=3, 2), Some(&hs))
    });
    assert_eq!(h.store().initial_state().unwrap().hard_state, hs);

    let hs = hard_state(3, 2, 3);
    write(&mut h, "hard state alone", |s| s.append(&[], Some(&hs)));
    assert_eq!(h.store().initial_state().unwrap().hard_state, hs);

    let e = refused(&mut h, "commit past the log", |s| {
        s.append(&[], Some(&hard_state(3, 2, 4)))
    });
    assert!(is_other(&e), "{e}");
    let e = refused(&mut h, "commit past the new entries", |s| {
        s.append(&entries(4..=4, 3), Some(&hard_state(3, 2, 5)))
    });
    assert!(is_other(&e), "{e}");

    let hs = hard_state(3, 2, 5);
    write(&mut h, "entries with their commit", |s| {
        s.append(&entries(4..=5, 3), Some(&hs))
    });
    let s = h.store();
    assert_eq!(s.initial_state().unwrap().hard_state, hs);
    assert_eq!(s.last_index().unwrap(), 5);
}

fn hard_state_round_trip<H: Harness>() {
    let mut h = H::new();
    let hs = hard_state(5, 2, 0);
    write(&mut h, "hard state", |s| s.set_hard_state(&hs));
    assert_eq!(h.store().initial_state().unwrap().hard_state, hs);
    seed(&mut h, 4, 0);
    let hs = hard_state(7, 3, 4);
    write(&mut h, "hard state", |s| s.set_hard_state(&hs));
    assert_eq!(h.store().initial_state().unwrap().hard_state, hs);
    let e = refused(&mut h, "commit past the log", |s| {
        s.set_hard_state(&hard_state(7, 3, 5))
    });
    assert!(is_other(&e), "{e}");

    write(&mut h, "compact", |s| s.compact(3, vec![]));
    let e = refused(&mut h, "commit below the snapshot", |s| {
        s.set_hard_state(&hard_state(7, 3, 2))
    });
    assert!(is_other(&e), "{e}");
}

fn conf_state_round_trip<H: Harness>() {
    let mut h = H::new();
    let mut cs = conf_state(&[1, 2, 3], &[4]);
    cs.voters_outgoing = vec![1, 2];
    cs.learners_next = vec![5];
    cs.auto_leave = true;
    write(&mut h, "conf state", |s| s.set_conf_state(&cs));
    let state = h.store().initial_state().unwrap();
    assert_eq!(state.conf_state, cs);
    assert!(state.initialized());
    let cs = conf_state(&[1], &[]);
    write(&mut h, "conf state", |s| s.set_conf_state(&cs));
    assert_eq!(h.store().initial_state().unwrap().conf_state, cs);
}

fn compact_records_snapshot<H: Harness>() {
    let mut h = H::new();
    let log = seed(&mut h, 10, 8);
    let cs = conf_state(&[1, 2, 3], &[]);
    write(&mut h, "conf state", |s| s.set_conf_state(&cs));
    let hs = h.store().initial_state().unwrap().hard_state;

    write(&mut h, "compact 5", |s| {
        s.compact(5, b"state at 5".to_vec())
    });
    let s = h.store();
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (6, 10));
    assert_eq!(s.term(5), Ok(log[4].term));
    assert_eq!(s.term(4), Err(COMPACTED));
    assert_eq!(read(s, 5, 11, None), Err(COMPACTED));
    assert_eq!(read(s, 6, 11, None), Ok(log[5..].to_vec()));
    let snap = s.latest_snapshot();
    assert_eq!(snap.get_metadata().index, 5);
    assert_eq!(snap.get_metadata().term, log[4].term);
    assert_eq!(snap.get_metadata().get_conf_state(), &cs);
    assert_eq!(&snap.data[..], b"state at 5");
    assert_eq!(s.snapshot(0, 2), Ok(snap.clone()));
    assert_eq!(s.snapshot(5, 2), Ok(snap.clone()));
    assert_eq!(
        s.initial_state().unwrap().hard_state,
        hs,
        "compact leaves the hard state"
    );

    write(&mut h, "compact below the snapshot", |s| {
        s.compact(3, b"old".to_vec())
    });
    write(&mut h, "compact at the snapshot", |s| {
        s.compact(5, b"old".to_vec())
    });
    assert_eq!(
        h.store().latest_snapshot(),
        snap,
        "an older compaction is ignored"
    );

    let e = refused(&mut h, "compact past commit", |s| s.compact(9, vec![]));
    assert!(is_other(&e), "{e}");
    let e = refused(&mut h, "compact past the log", |s| s.compact(11, vec![]));
    assert!(is(&e, StorageError::Unavailable), "{e}");

    let cs = conf_state(&[1, 2], &[3]);
    write(&mut h, "conf state", |s| s.set_conf_state(&cs));
    write(&mut h, "compact 8", |s| {
        s.compact(8, b"state at 8".to_vec())
    });
    let snap = h.store().latest_snapshot();
    assert_eq!(
        snap.get_metadata().get_conf_state(),
        &cs,
        "the current conf state"
    );

    write(&mut h, "commit 10", |s| {
        s.set_hard_state(&hard_state(5, 1, 10))
    });
    write(&mut h, "compact everything", |s| {
        s.compact(10, b"state at 10".to_vec())
    });
    let s = h.store();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (11, 10)
    );
    assert_eq!(s.term(10), Ok(log[9].term));
    assert_eq!(read(s, 11, 11, None), Ok(vec![]));
    write(&mut h, "append after the snapshot", |s| {
        s.append(&entries(11..=12, 6), None)
    });
    assert_eq!(h.store().last_index().unwrap(), 12);
}

fn apply_snapshot_ahead_of_log<H: Harness>() {
    let mut h = H::new();
    seed(&mut h, 3, 2);
    let snap = snapshot(10, 4, &[1, 2, 3], "state at 10");
    write(&mut h, "apply snapshot", |s| s.apply_snapshot(snap.clone()));
    let s = h.store();
    assert_eq!(
        (s.first_index().unwrap(), s.last_index().unwrap()),
        (11, 10)
    );
    assert_eq!(s.term(10), Ok(4));
    assert_eq!(s.term(3), Err(COMPACTED));
    assert_eq!(s.term(11), Err(UNAVAILABLE));
    let state = s.initial_state().unwrap();
    assert_eq!(
        state.hard_state,
        hard_state(4, 1, 10),
        "term raised, vote kept, commit moved"
    );
    assert_eq!(state.conf_state, conf_state(&[1, 2, 3], &[]));
    assert_eq!(s.latest_snapshot(), snap);
    assert_eq!(s.snapshot(10, 2), Ok(snap));
    write(&mut h, "append after it", |s| {
        s.append(&entries(11..=12, 4), None)
    });
    assert_eq!(h.store().last_index().unwrap(), 12);
}

fn apply_snapshot_inside_log<H: Harness>() {
    let mut h = H::new();
    let log = seed(&mut h, 6, 2);
    write(&mut h, "apply snapshot", |s| {
        s.apply_snapshot(snapshot(4, 1, &[1], "state at 4"))
    });
    let s = h.store();
    // As raft-rs's MemStorage: the whole log goes, including entries after the snapshot.
    assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (5, 4));
    assert_eq!(s.term(4), Ok(1));
    assert_eq!(s.term(5), Err(UNAVAILABLE));
    let hs = s.initial_state().unwrap().hard_state;
    assert_eq!(
        (hs.term, hs.commit),
        (log[5].term, 4),
        "the term never goes back"
    );
}

fn apply_snapshot_out_of_date<H: Harness>() {
    let mut h = H::new();
    let e = refused(&mut h, "snapshot at 0", |s| {
        s.apply_snapshot(Snapshot::default())
    });
    assert!(is(&e, StorageError::SnapshotOutOfDate), "{e}");
    write(&mut h, "apply snapshot", |s| {
        s.apply_snapshot(snapshot(5, 2, &[1], "five"))
    });
    for index in [3, 5] {
        let e = refused(&mut h, "older snapshot", |s| {
            s.apply_snapshot(snapshot(index, 2, &[7], "older"))
        });
        assert!(is(&e, StorageError::SnapshotOutOfDate), "{e}");
    }
    write(&mut h, "newer snapshot", |s| {
        s.apply_snapshot(snapshot(6, 2, &[1], "six"))
    });
    assert_eq!(h.store().first_index().unwrap(), 7);
}

fn applied_round_trip<H: Harness>() {
    let mut h = H::new();
    seed(&mut h, 8, 8);
    write_applied(&mut h, 3);
    assert_eq!(h.store().applied(), 3);
    // Any other write makes it durable (`write` restarts and compares `applied` too).
    write(&mut h, "hard state", |s| {
        s.set_hard_state(&hard_state(4, 1, 8))
    });
    assert_eq!(h.store().applied(), 3);
    write_applied(&mut h, 8);
    write_applied(&mut h, 7);
    write(&mut h, "compact", |s| s.compact(7, vec![]));
    assert_eq!(h.store().applied(), 7);
    write_applied(&mut h, 8);
    write(&mut h, "append", |s| s.append(&entries(9..=9, 4), None));
    assert_eq!(h.store().applied(), 8);
}

fn snapshot_request_newer_than_stored<H: Harness>() {
    let mut h = H::new();
    seed(&mut h, 6, 6);
    write(&mut h, "compact", |s| s.compact(4, b"four".to_vec()));
    let s = h.store();
    assert_eq!(s.snapshot(4, 2).unwrap().get_metadata().index, 4);
    assert_eq!(
        s.snapshot(5, 2),
        Err(raft::Error::Store(
            StorageError::SnapshotTemporarilyUnavailable
        ))
    );
}

macro_rules! conformance {
    ($($test:ident),* $(,)?) => {
        mod mem {
            $(#[test] fn $test() { super::$test::<super::Mem>(); })*
        }
        mod sled {
            $(#[test] fn $test() { super::$test::<super::Sled>(); })*
        }
    };
}

conformance!(
    empty_store,
    append_and_read,
    entries_max_size,
    entries_out_of_range,
    term_bounds,
    append_truncates_conflicting_suffix,
    append_refuses_bad_entries,
    append_with_hard_state,
    hard_state_round_trip,
    conf_state_round_trip,
    compact_records_snapshot,
    apply_snapshot_ahead_of_log,
    apply_snapshot_inside_log,
    apply_snapshot_out_of_date,
    applied_round_trip,
    snapshot_request_newer_than_stored,
);

/// A small deterministic generator, so a failure replays.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n.max(1)
    }
}

/// Drives both stores through the same operations, valid and not, and compares every answer
/// and every error; the sled store restarts every few steps.
#[test]
fn mem_and_sled_agree() {
    let mut mem = Mem::new();
    let mut sled = Sled::new();
    let mut rng = Lcg(7);
    for step in 0..400 {
        let a = answers(mem.store());
        let (first, last, commit) = (a.first_index, a.last_index, a.hard_state.commit);
        let term = a.hard_state.term + rng.below(2);
        let op = rng.below(100);
        let (desc, result_mem, result_sled) = match op {
            0..=44 => {
                let start = first.saturating_sub(1) + rng.below(last + 3 - first.saturating_sub(1));
                let log = entries(start..=start + rng.below(4), term);
                let log = if rng.below(10) == 0 { vec![] } else { log };
                let new_last = log.last().map_or(last, |e| e.index);
                let hs = (rng.below(2) == 0)
                    .then(|| hard_state(term, 1, commit + rng.below(new_last + 2 - commit)));
                (
                    format!(
                        "append {:?} with {hs:?}",
                        log.iter().map(|e| e.index).collect::<Vec<_>>()
                    ),
                    mem.store().append(&log, hs.as_ref()),
                    sled.store().append(&log, hs.as_ref()),
                )
            }
            45..=59 => {
                let low = first - 1;
                let hs = hard_state(term, rng.below(3), low + rng.below(last + 2 - low));
                (
                    format!("set_hard_state {hs:?}"),
                    mem.store().set_hard_state(&hs),
                    sled.store().set_hard_state(&hs),
                )
            }
            60..=74 => {
                let index = first.saturating_sub(2) + rng.below(last + 3 - first.saturating_sub(2));
                let data = format!("state at {index}").into_bytes();
                (
                    format!("compact {index}"),
                    mem.store().compact(index, data.clone()),
                    sled.store().compact(index, data),
                )
            }
            75..=82 => {
                let index = first.saturating_sub(2) + rng.below(last + 5 - first.saturating_sub(2));
                let snap = snapshot(index, term, &[1, 1 + rng.below(3)], "received");
                (
                    format!("apply_snapshot {index}"),
                    mem.store().apply_snapshot(snap.clone()),
                    sled.store().apply_snapshot(snap),
                )
            }
            83..=90 => {
                let cs = conf_state(&[1, 2 + rng.below(3)], &[rng.below(9)]);
                (
                    format!("set_conf_state {cs:?}"),
                    mem.store().set_conf_state(&cs),
                    sled.store().set_conf_state(&cs),
                )
            }
            _ => {
                let index = rng.below(last + 1);
                (
                    format!("set_applied {index}"),
                    mem.store().set_applied(index),
                    sled.store().set_applied(index),
                )
            }
        };
        assert_eq!(
            result_mem.as_ref().map_err(ToString::to_string),
            result_sled.as_ref().map_err(ToString::to_string),
            "step {step}: {desc}"
        );
        if step % 7 == 0 {
            sled.restart();
            // The stored applied index may lag after a crash (it is advisory): it is one that
            // was set, and both stores carry on from it.
            let kept = sled.store().applied();
            if kept != mem.store().applied() {
                mem.store().set_applied(kept).unwrap();
            }
        }
        assert_eq!(
            answers(mem.store()),
            answers(sled.store()),
            "step {step}: {desc}"
        );
        let s = sled.store();
        let (first, last) = (s.first_index().unwrap(), s.last_index().unwrap());
        for (low, high) in [(first, last + 1), (first + 1, last + 1)] {
            if low <= high {
                for max in [0, 40, 100, NO_LIMIT] {
                    assert_eq!(
                        read(mem.store(), low, high, Some(max)),
                        read(sled.store(), low, high, Some(max))
                    );
                }
            }
        }
    }
    let a = answers(sled.store());
    assert!(a.last_index > 20, "the walk should have grown a log: {a:?}");
}

/// Tests of what only a durable store has: a data dir, and bytes on disk that may be wrong.
mod sled_only {
    use super::*;

    /// A store with a log after a snapshot, hard and conf state and an applied index, closed.
    fn populated() -> TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut s = SledStore::open(dir.path()).expect("open");
        s.append(&entries(1..=6, 1), Some(&hard_state(1, 1, 5)))
            .unwrap();
        s.set_conf_state(&conf_state(&[1, 2, 3], &[])).unwrap();
        s.compact(2, b"state at 2".to_vec()).unwrap();
        s.set_applied(5).unwrap();
        // Makes the applied index durable.
        s.set_hard_state(&hard_state(1, 1, 5)).unwrap();
        drop(s);
        dir
    }

    /// Opens the raw tree, lets `tamper` change it, and returns what opening the store says.
    fn open_tampered(tamper: impl FnOnce(&::sled::Tree)) -> StoreError {
        let dir = populated();
        {
            let db = ::sled::open(dir.path()).expect("raw open");
            tamper(&db.open_tree(TREE).expect("tree"));
            db.flush().expect("flush");
        }
        match SledStore::open(dir.path()) {
            Ok(store) => panic!("opened a tampered store: {store:?}"),
            Err(error) => error,
        }
    }

    fn assert_corrupt(error: StoreError, want_what: &str) {
        match error {
            StoreError::Corrupt { what, reason } => {
                assert!(
                    what.contains(want_what),
                    "corrupt {what:?} ({reason}), expected {want_what:?}"
                );
            }
            other => panic!("expected corrupt {want_what}, got {other}"),
        }
    }

    /// Bytes that do not decode as any protobuf message: a varint tag cut short.
    const GARBAGE: &[u8] = b"\xff\xff\xff";

    #[test]
    fn populated_store_opens() {
        let dir = populated();
        let s = SledStore::open(dir.path()).expect("reopen");
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 6));
        assert_eq!(s.applied(), 5);
        assert_eq!(s.initial_state().unwrap().hard_state, hard_state(1, 1, 5));
    }

    #[test]
    fn corrupt_metadata_is_named() {
        for (key, what) in [
            (HARD_STATE_KEY, "hard_state"),
            (CONF_STATE_KEY, "conf_state"),
            (SNAPSHOT_KEY, "snapshot"),
        ] {
            let error = open_tampered(|t| {
                t.insert(key, GARBAGE).unwrap();
            });
            assert_corrupt(error, what);
        }
        let error = open_tampered(|t| {
            t.insert(APPLIED_KEY, &[0, 0, 5]).unwrap();
        });
        assert_corrupt(error, "applied");
    }

    #[test]
    fn corrupt_log_is_named() {
        let error = open_tampered(|t| {
            t.insert(log_key(4), GARBAGE).unwrap();
        });
        assert_corrupt(error, "log entry 4");

        let error = open_tampered(|t| {
            t.insert([LOG_PREFIX, &[0, 0, 4][..]].concat(), GARBAGE)
                .unwrap();
        });
        assert_corrupt(error, "log key");

        let error = open_tampered(|t| {
            let entry_4 = t.get(log_key(4)).unwrap().unwrap();
            t.insert(log_key(5), entry_4).unwrap();
        });
        assert_corrupt(error, "log entry 5");

        let error = open_tampered(|t| {
            t.insert(b"meta/other", &b"?"[..]).unwrap();
        });
        assert_corrupt(error, "key meta/other");
    }

    #[test]
    fn log_that_does_not_fit_is_corrupt() {
        // A gap.
        let error = open_tampered(|t| {
            t.remove(log_key(4)).unwrap();
        });
        assert_corrupt(error, "log entry 5");
        // The log must start right after the snapshot at 2 …
        let error = open_tampered(|t| {
            t.remove(log_key(3)).unwrap();
        });
        assert_corrupt(error, "log entry 4");
        // … and not reach into it.
        let error = open_tampered(|t| {
            let entry = protobuf::Message::write_to_bytes(&entry(2, 1)).unwrap();
            t.insert(log_key(2), entry).unwrap();
        });
        assert_corrupt(error, "log entry 2");
        // A commit past the log would make raft-rs panic at start.
        let error = open_tampered(|t| {
            let hs = protobuf::Message::write_to_bytes(&hard_state(1, 1, 9)).unwrap();
            t.insert(HARD_STATE_KEY, hs).unwrap();
        });
        assert_corrupt(error, "hard_state");
    }

    /// Every file in `dir`, recursively.
    fn files(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for item in std::fs::read_dir(dir).unwrap() {
            let path = item.unwrap().path();
            if path.is_dir() {
                found.extend(files(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[test]
    fn garbage_data_dir_is_an_error() {
        let mut rng = Lcg(11);
        let mut noise =
            |len: usize| -> Vec<u8> { (0..len).map(|_| rng.below(256) as u8).collect() };

        // sled's files replaced by random bytes of the same length.
        let dir = populated();
        for file in files(dir.path()) {
            let len = std::fs::metadata(&file).unwrap().len().max(64) as usize;
            std::fs::write(&file, noise(len)).unwrap();
        }
        let result = SledStore::open(dir.path());
        assert!(result.is_err(), "opened random bytes: {result:?}");

        // Each file alone replaced, then each file cut in half.
        let model = populated();
        let names: Vec<_> = files(model.path())
            .iter()
            .map(|f| f.strip_prefix(model.path()).unwrap().to_owned())
            .collect();
        assert!(!names.is_empty());
        for name in &names {
            let dir = populated();
            let file = dir.path().join(name);
            let len = std::fs::metadata(&file).unwrap().len().max(64) as usize;
            std::fs::write(&file, noise(len)).unwrap();
            if let Ok(store) = SledStore::open(dir.path()) {
                // sled may not need every file (e.g. an old snapshot); then nothing may be lost.
                assert_eq!(
                    store.last_index().unwrap(),
                    6,
                    "{name:?} replaced: {store:?}"
                );
                assert_eq!(store.applied(), 5, "{name:?} replaced");
            }
        }
        // sled reads a cut-off log file as a crash in the middle of writing and recovers the
        // writes before the cut: the store may open, but only as one it could have been.
        for name in &names {
            let dir = populated();
            let file = dir.path().join(name);
            let bytes = std::fs::read(&file).unwrap();
            std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
            if let Ok(store) = SledStore::open(dir.path()) {
                answers(&store);
            }
        }
    }

    #[test]
    fn lost_sled_files_are_an_error() {
        let dir = populated();
        assert!(dir.path().join(SENTINEL).is_file());
        for file in files(dir.path()) {
            if !file.ends_with(SENTINEL) {
                std::fs::remove_file(file).unwrap();
            }
        }
        let error = SledStore::open(dir.path()).expect_err("opened a store whose files are gone");
        assert_corrupt(error, "sled database");
    }

    #[test]
    fn foreign_or_unknown_format_is_an_error() {
        let error = open_tampered(|t| {
            t.insert(FORMAT_KEY, &b"something else"[..]).unwrap();
        });
        assert_corrupt(error, "sled database");
        let error = open_tampered(|t| {
            t.remove(FORMAT_KEY).unwrap();
        });
        assert_corrupt(error, "sled database");

        // A sled database someone else wrote, in a dir this store never used.
        let dir = tempfile::tempdir().unwrap();
        {
            let db = ::sled::open(dir.path()).unwrap();
            db.open_tree(TREE).unwrap().insert("x", "y").unwrap();
            db.flush().unwrap();
        }
        let error = SledStore::open(dir.path()).expect_err("opened a foreign database");
        assert_corrupt(error, "sled database");
    }

    #[test]
    fn open_creates_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a").join("raft");
        let store = SledStore::open(&path).expect("open");
        assert!(path.is_dir());
        assert_eq!(store.last_index().unwrap(), 0);
    }

    #[test]
    fn a_dir_in_use_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let _store = SledStore::open(dir.path()).expect("open");
        assert!(SledStore::open(dir.path()).is_err());
    }

    #[test]
    fn a_file_where_the_dir_should_be_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raft");
        std::fs::write(&path, b"not a dir").unwrap();
        match SledStore::open(&path) {
            Err(StoreError::Io { path: p, .. }) => assert!(p.ends_with("raft")),
            other => panic!("expected an io error, got {other:?}"),
        }
    }

    /// Opens the raw database of a [`populated`] store, lets `tamper` change it and flushes.
    fn tamper_db(dir: &Path, tamper: impl FnOnce(&::sled::Db)) {
        let db = ::sled::open(dir).expect("raw open");
        tamper(&db);
        db.flush().expect("flush");
    }

    #[test]
    fn snapshot_data_lives_outside_the_main_tree() {
        let dir = populated();
        tamper_db(dir.path(), |db| {
            let tree = db.open_tree(TREE).unwrap();
            let meta: Snapshot =
                protobuf::Message::parse_from_bytes(&tree.get(SNAPSHOT_KEY).unwrap().unwrap())
                    .unwrap();
            assert_eq!(meta.get_metadata().index, 2);
            assert!(meta.data.is_empty(), "the main tree holds metadata only");
            let data = db.open_tree(SNAPSHOTS_TREE).unwrap();
            assert_eq!(
                data.get(snapshot_key(2)).unwrap().as_deref(),
                Some(&b"state at 2"[..])
            );
        });
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(&s.latest_snapshot().data[..], b"state at 2");
        assert_eq!(s.stored_snapshot_indexes(), vec![2]);
    }

    /// A crash after step (1) of a compaction (the data is in `snapshots`) but before step (2)
    /// (the metadata naming it): the old snapshot stands and the stray data goes.
    #[test]
    fn crash_between_snapshot_data_and_metadata() {
        let dir = populated();
        tamper_db(dir.path(), |db| {
            let data = db.open_tree(SNAPSHOTS_TREE).unwrap();
            data.insert(snapshot_key(5), &b"state at 5, never recorded"[..])
                .unwrap();
            // And a crash during step (4) of an earlier compaction.
            data.insert(snapshot_key(1), &b"state at 1"[..]).unwrap();
        });
        let mut s = SledStore::open(dir.path()).expect("open after the crash");
        let snap = s.latest_snapshot();
        assert_eq!(snap.get_metadata().index, 2);
        assert_eq!(&snap.data[..], b"state at 2");
        assert_eq!((s.first_index().unwrap(), s.last_index().unwrap()), (3, 6));
        assert_eq!(s.stored_snapshot_indexes(), vec![2], "strays removed");
        // Still works: compaction replaces the data and removes the old.
        s.compact(5, b"state at 5".to_vec()).unwrap();
        assert_eq!(s.stored_snapshot_indexes(), vec![5]);
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(&s.latest_snapshot().data[..], b"state at 5");
        assert_eq!(s.stored_snapshot_indexes(), vec![5]);
    }

    #[test]
    fn missing_snapshot_data_is_corrupt() {
        let dir = populated();
        tamper_db(dir.path(), |db| {
            db.open_tree(SNAPSHOTS_TREE)
                .unwrap()
                .remove(snapshot_key(2))
                .unwrap();
        });
        let error = SledStore::open(dir.path()).expect_err("opened without snapshot data");
        assert_corrupt(error, "snapshot data at index 2");
    }

    /// A store written before snapshot data moved out of the main tree still opens, and its
    /// next compaction moves it to the new layout.
    #[test]
    fn v1_store_opens_and_migrates() {
        let dir = populated();
        tamper_db(dir.path(), |db| {
            let tree = db.open_tree(TREE).unwrap();
            let full = snapshot(2, 1, &[1, 2, 3], "state at 2");
            tree.insert(
                SNAPSHOT_KEY,
                protobuf::Message::write_to_bytes(&full).unwrap(),
            )
            .unwrap();
            tree.insert(FORMAT_KEY, FORMAT_V1).unwrap();
            db.drop_tree(SNAPSHOTS_TREE).unwrap();
        });
        let mut s = SledStore::open(dir.path()).expect("open v1");
        assert_eq!(
            s.latest_snapshot(),
            snapshot(2, 1, &[1, 2, 3], "state at 2")
        );
        s.compact(4, b"state at 4".to_vec()).unwrap();
        drop(s);
        let s = SledStore::open(dir.path()).expect("open migrated");
        assert_eq!(&s.latest_snapshot().data[..], b"state at 4");
        assert_eq!(s.stored_snapshot_indexes(), vec![4]);
    }

    /// sled's flush ends in `sync_file_range`, which leaves data in the disk's cache: every
    /// write but `set_applied` must also sync the data file.
    #[test]
    fn every_durable_write_syncs_the_data_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStore::open(dir.path()).unwrap();
        type Op = Box<dyn Fn(&mut SledStore) -> Result<(), StoreError>>;
        let ops: Vec<(&str, Op, bool)> = vec![
            (
                "append",
                Box::new(|s| s.append(&entries(1..=4, 1), None)),
                true,
            ),
            (
                "set_hard_state",
                Box::new(|s| s.set_hard_state(&hard_state(1, 1, 4))),
                true,
            ),
            (
                "set_conf_state",
                Box::new(|s| s.set_conf_state(&conf_state(&[1], &[]))),
                true,
            ),
            ("set_applied", Box::new(|s| s.set_applied(3)), false),
            ("compact", Box::new(|s| s.compact(2, b"two".to_vec())), true),
            (
                "apply_snapshot",
                Box::new(|s| s.apply_snapshot(snapshot(9, 2, &[1], "nine"))),
                true,
            ),
        ];
        for (what, op, syncs) in ops {
            let before = s.syncs();
            op(&mut s).unwrap_or_else(|e| panic!("{what}: {e}"));
            let after = s.syncs();
            if syncs {
                assert!(after > before, "{what} did not sync the data file");
            } else {
                assert_eq!(after, before, "{what} should not wait for the disk");
            }
        }
        assert!(dir.path().join("db").is_file(), "sled's data file");
    }

    /// A snapshot larger than sled's blob threshold goes to a file of its own, which sled does
    /// not sync: the store must.
    #[test]
    fn large_snapshots_in_blob_files_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = SledStore::open(dir.path()).unwrap();
        s.append(&entries(1..=4, 1), Some(&hard_state(1, 1, 4)))
            .unwrap();
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        s.compact(3, data.clone()).unwrap();
        let blobs = std::fs::read_dir(dir.path().join(BLOBS_DIR))
            .map(|listing| listing.count())
            .unwrap_or(0);
        assert!(blobs > 0, "a 1 MiB value should be a blob file");
        assert!(s.synced_blobs() > 0, "the blob file was not synced");
        drop(s);
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(&s.latest_snapshot().data[..], &data[..]);
    }
}
