//! The [`LogStore`] gateways run: sled, flushed and then fdatasync'd before every write
//! returns (see "Durability" below).
//!
//! ```text
//!  tree "raft"
//!   log/<index: u64 big-endian>  -> Entry        indexes snapshot index + 1 ..= last, no gaps
//!   meta/hard_state              -> HardState
//!   meta/conf_state              -> ConfState
//!   meta/snapshot                -> Snapshot     metadata only (index, term, conf state), no data
//!   meta/applied                 -> u64 big-endian (advisory, may lag after a crash)
//!   meta/format                  -> "causeway raft log v2"
//!  tree "snapshots"
//!   <index: u64 big-endian>      -> the state machine bytes of the snapshot at that index
//! ```
//!
//! Why the snapshot's data has a tree of its own: `meta/hard_state` (and `meta/applied`) are
//! rewritten on nearly every write, and sled rewrites a whole page when one of its keys changes;
//! with megabytes of snapshot in the same page, every 256-byte write cost a multi-megabyte page
//! write. The main tree keeps the metadata, which is the source of truth; the data lives under
//! its index in `snapshots`. `compact`/`apply_snapshot` (1) insert the new data in `snapshots`,
//! (2) apply the main tree's batch (metadata, log removal, hard state), (3) flush and sync, and
//! (4) remove older data (flushed with a later write). sled recovers a prefix of its log, so a
//! crash leaves either the old metadata (and maybe a newer, stray data key) or the new metadata
//! with its data. At open the metadata's index picks the data: if it is missing the store is
//! `Corrupt`; any other key in `snapshots` is garbage from a crash and is removed.
//! A `v1` store (snapshot data inline in `meta/snapshot`) still opens; its first compaction
//! writes the `v2` layout and marker in the same batch.
//!
//! Durability: `Db::flush` in sled 0.34 ends with `sync_file_range(WAIT_BEFORE | WRITE |
//! WAIT_AFTER)` on Linux, which writes the pages out but does not flush the disk's write-back
//! cache (nor file metadata such as a grown size), so an acknowledged write could be lost on a
//! power failure. After every flush the store therefore `fdatasync`s sled's data file (`db`),
//! and before that every value file in `blobs/` it has not synced yet (sled writes values larger
//! than about an eighth of a segment, e.g. snapshots, to their own files without syncing them)
//! together with the `blobs` directory.
//!
//! Beside sled's files, `CAUSEWAY_RAFT_LOG` marks a store that has been created, because sled
//! opens a garbage `db` file as an empty database: without the mark, a gateway whose files were
//! damaged would rejoin with no log and no memory of its votes.
//!
//! Why one tree: a sled `Batch` is atomic (also across a crash) but only within one tree, and
//! `append` (entries + hard state), `apply_snapshot` (snapshot + hard state + conf state + log
//! removal) and `compact` (snapshot + log removal) each touch the log and the metadata. One tree
//! makes every write a single `Batch`, which is simpler and cheaper than sled's cross-tree
//! transactions. Removals need the keys, which the cached index bounds give.
//!
//! In memory: hard state, conf state, the snapshot (its data is a reference-counted `Bytes`, so
//! handing it to raft-rs copies nothing) and the term of every entry in the log, so that
//! `term()`, which raft-rs calls constantly and cannot take an error from (it panics on anything
//! but `Compacted`/`Unavailable`), never touches the disk. All of it is loaded and checked at
//! open; `entries()` reads sled.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use protobuf::Message;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use sled::Batch;

use super::LogStore;
use super::mem::{Bounds, hard_state_after_snapshot, new_snapshot, snapshot_for};
use crate::StoreError;

/// Name of the sled tree holding the log and the metadata.
pub(super) const TREE: &str = "raft";
/// Name of the sled tree holding snapshot data, keyed by the snapshot's big-endian index.
pub(super) const SNAPSHOTS_TREE: &str = "snapshots";
/// sled 0.34's data file and its directory of large values, inside the store's dir.
pub(super) const DB_FILE: &str = "db";
pub(super) const BLOBS_DIR: &str = "blobs";
/// Prefix of log entry keys; the index follows as 8 big-endian bytes, so keys sort by index.
pub(super) const LOG_PREFIX: &[u8] = b"log/";
pub(super) const HARD_STATE_KEY: &[u8] = b"meta/hard_state";
pub(super) const CONF_STATE_KEY: &[u8] = b"meta/conf_state";
pub(super) const SNAPSHOT_KEY: &[u8] = b"meta/snapshot";
pub(super) const APPLIED_KEY: &[u8] = b"meta/applied";
/// Written when the store is created; a tree without it was not written by this store.
pub(super) const FORMAT_KEY: &[u8] = b"meta/format";
const FORMAT: &[u8] = b"causeway raft log v2";
/// The first layout: snapshot data inline in `meta/snapshot`, no `snapshots` tree.
pub(super) const FORMAT_V1: &[u8] = b"causeway raft log v1";
/// A file beside sled's, written once the tree holds [`FORMAT_KEY`]. sled opens a `db` file of
/// random bytes as an empty database; a member that came back empty would forget its votes and
/// log, so a store that has this file but an empty tree refuses to open.
pub(super) const SENTINEL: &str = "CAUSEWAY_RAFT_LOG";

/// A [`LogStore`] in a sled database; every write is durable when it returns.
pub struct SledStore {
    path: PathBuf,
    db: sled::Db,
    tree: sled::Tree,
    snapshots: sled::Tree,
    /// sled's data file, `fdatasync`ed after every flush.
    db_file: File,
    /// Blob files already synced (pruned to what exists at every sync).
    synced_blobs: HashSet<OsString>,
    /// How many times the data file was synced: a test hook.
    syncs: u64,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// `terms[i]` is the term of entry `snapshot index + 1 + i`; its length is the log's.
    terms: VecDeque<u64>,
    applied: u64,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore")
            .field("path", &self.path)
            .field("bounds", &self.bounds())
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl SledStore {
    /// Opens (creating if needed) the store in `dir`, loading and checking everything it caches.
    ///
    /// Data that does not decode, or a log that does not fit its snapshot and hard state, is
    /// [`StoreError::Corrupt`] naming the key; sled's own files failing to load is `Corrupt`
    /// (sled found corruption), `Io` or `Sled`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let io_error = |source| StoreError::Io {
            path: dir.display().to_string(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io_error)?;
        let sentinel = dir.join(SENTINEL);
        let created_before = sentinel.try_exists().map_err(io_error)?;
        let open_error = |error| match error {
            sled::Error::Io(source) => io_error(source),
            sled::Error::Corruption { at, .. } => StoreError::Corrupt {
                what: format!("sled database at {}", dir.display()),
                reason: match at {
                    Some(at) => format!("sled found corrupt data at {at}"),
                    None => "sled found corrupt data".to_owned(),
                },
            },
            other => StoreError::Sled(other),
        };
        let db = open_db(dir).map_err(open_error)?;
        let tree = db.open_tree(TREE).map_err(open_error)?;
        let snapshots = db.open_tree(SNAPSHOTS_TREE).map_err(open_error)?;
        let db_file = File::open(dir.join(DB_FILE)).map_err(io_error)?;
        let mut store = SledStore {
            path: dir.to_owned(),
            db,
            tree,
            snapshots,
            db_file,
            synced_blobs: HashSet::new(),
            syncs: 0,
            hard_state: HardState::default(),
            conf_state: ConfState::default(),
            snapshot: Snapshot::default(),
            terms: VecDeque::new(),
            applied: 0,
        };
        store
            .check_format(created_before)
            .and_then(|v1| store.load(v1))
            .map_err(|error| match error {
                StoreError::Sled(error) => open_error(error),
                other => other,
            })?;
        if !created_before {
            // sled writes its `conf` file once, without syncing it.
            let conf = dir.join("conf");
            if conf.try_exists().map_err(io_error)? {
                File::open(conf)
                    .and_then(|f| f.sync_all())
                    .map_err(io_error)?;
            }
            write_sentinel(dir, &sentinel).map_err(io_error)?;
        }
        tracing::debug!(store = ?store, "opened raft log");
        Ok(store)
    }

    /// Checks the tree was written by this store, or makes it so if it is new. `Ok(true)` is a
    /// store in the `v1` layout.
    fn check_format(&mut self, created_before: bool) -> Result<bool, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            what: format!("sled database at {}", self.path.display()),
            reason,
        };
        match self.tree.get(FORMAT_KEY)? {
            Some(format) if format == FORMAT => Ok(false),
            Some(format) if format == FORMAT_V1 => Ok(true),
            Some(format) => Err(corrupt(format!(
                "unknown format {:?}",
                String::from_utf8_lossy(&format)
            ))),
            None if !self.tree.is_empty() => {
                Err(corrupt("it holds data but no format marker".to_owned()))
            }
            None if created_before => Err(corrupt(format!(
                "it is empty, but {SENTINEL} says this store was written before: \
                 sled's files are lost or corrupt"
            ))),
            None => {
                self.tree.insert(FORMAT_KEY, FORMAT)?;
                self.flush()?;
                Ok(false)
            }
        }
    }

    /// Fills the caches from the tree: the metadata first, then every key in order (the log's
    /// sort first), checking the log against the snapshot it follows. The snapshot's data comes
    /// from the `snapshots` tree (inline in `v1`), whose other keys are removed.
    fn load(&mut self, v1: bool) -> Result<(), StoreError> {
        if let Some(bytes) = self.tree.get(SNAPSHOT_KEY)? {
            self.snapshot = decode(&bytes, "snapshot")?;
            let index = self.snapshot.get_metadata().index;
            if !v1 {
                if !self.snapshot.data.is_empty() {
                    return Err(StoreError::Corrupt {
                        what: "snapshot".to_owned(),
                        reason: "holds data inline, which only a v1 store does".to_owned(),
                    });
                }
                let data = self.snapshots.get(snapshot_key(index))?.ok_or_else(|| {
                    StoreError::Corrupt {
                        what: format!("snapshot data at index {index}"),
                        reason: format!("missing from the {SNAPSHOTS_TREE} tree"),
                    }
                })?;
                self.snapshot.data = data.to_vec().into();
            }
        }
        // Data a crash left behind (a newer snapshot whose metadata was never written, or an
        // older one not yet removed); removed lazily, with the next flushed write.
        let keep = (!v1 && self.tree.contains_key(SNAPSHOT_KEY)?)
            .then(|| snapshot_key(self.snapshot.get_metadata().index));
        for key in self.snapshots.iter().keys() {
            let key = key?;
            if keep.as_ref().is_none_or(|keep| key != keep[..]) {
                tracing::info!(key = ?key, "removing snapshot data a crash left behind");
                self.snapshots.remove(key)?;
            }
        }
        if let Some(bytes) = self.tree.get(HARD_STATE_KEY)? {
            self.hard_state = decode(&bytes, "hard_state")?;
        }
        if let Some(bytes) = self.tree.get(CONF_STATE_KEY)? {
            self.conf_state = decode(&bytes, "conf_state")?;
        }
        if let Some(bytes) = self.tree.get(APPLIED_KEY)? {
            self.applied = decode_u64(&bytes).ok_or_else(|| StoreError::Corrupt {
                what: "applied".to_owned(),
                reason: format!("{} bytes, expected 8", bytes.len()),
            })?;
        }
        let snapshot_index = self.snapshot.get_metadata().index;
        if snapshot_index == u64::MAX {
            return Err(StoreError::Corrupt {
                what: "snapshot".to_owned(),
                reason: "index is u64::MAX".to_owned(),
            });
        }

        for item in self.tree.iter() {
            let (key, value) = item?;
            let Some(index_bytes) = key.strip_prefix(LOG_PREFIX) else {
                if [
                    FORMAT_KEY,
                    HARD_STATE_KEY,
                    CONF_STATE_KEY,
                    SNAPSHOT_KEY,
                    APPLIED_KEY,
                ]
                .contains(&&*key)
                {
                    continue;
                }
                return Err(StoreError::Corrupt {
                    what: format!("key {}", String::from_utf8_lossy(&key)),
                    reason: "not a key this store writes".to_owned(),
                });
            };
            let index = decode_u64(index_bytes).ok_or_else(|| StoreError::Corrupt {
                what: format!("log key {key:?}"),
                reason: format!("{} index bytes, expected 8", index_bytes.len()),
            })?;
            let what = || format!("log entry {index}");
            let expected = snapshot_index + 1 + self.terms.len() as u64;
            if index != expected {
                return Err(StoreError::Corrupt {
                    what: what(),
                    reason: if self.terms.is_empty() {
                        format!(
                            "the log must start at {expected}, after the snapshot at {snapshot_index}"
                        )
                    } else {
                        format!("gap in the log: expected entry {expected}")
                    },
                });
            }
            let entry: Entry = decode(&value, &what())?;
            if entry.index != index {
                return Err(StoreError::Corrupt {
                    what: what(),
                    reason: format!("stored under index {index} but holds entry {}", entry.index),
                });
            }
            self.terms.push_back(entry.term);
        }

        let bounds = self.bounds();
        if self.hard_state.commit < bounds.snapshot_index || self.hard_state.commit > bounds.last {
            return Err(StoreError::Corrupt {
                what: "hard_state".to_owned(),
                reason: format!(
                    "commit {} lies outside the log [{}, {}]",
                    self.hard_state.commit, bounds.snapshot_index, bounds.last
                ),
            });
        }
        Ok(())
    }

    fn bounds(&self) -> Bounds {
        let snapshot_index = self.snapshot.get_metadata().index;
        Bounds {
            snapshot_index,
            last: snapshot_index + self.terms.len() as u64,
            commit: self.hard_state.commit,
        }
    }

    /// Applies `batch` atomically and returns once it is on disk. The caches are updated by the
    /// caller after this returns `Ok`; on `Err` the store must not be used again (the batch may
    /// or may not be durable).
    fn commit(&mut self, batch: Batch) -> Result<(), StoreError> {
        self.tree.apply_batch(batch)?;
        self.flush()
    }

    /// Makes everything written so far durable: sled's flush, which ends in `sync_file_range`
    /// and so leaves the data in the disk's write-back cache, then `fdatasync` of new blob files
    /// (and their directory) and of the data file.
    fn flush(&mut self) -> Result<(), StoreError> {
        self.db.flush()?;
        self.sync_blobs()?;
        self.db_file.sync_data().map_err(|source| StoreError::Io {
            path: self.path.join(DB_FILE).display().to_string(),
            source,
        })?;
        self.syncs += 1;
        Ok(())
    }

    /// Syncs the blob files not synced yet, before the data file that points at them.
    fn sync_blobs(&mut self) -> Result<(), StoreError> {
        let dir = self.path.join(BLOBS_DIR);
        let io_error = |path: &Path, source| StoreError::Io {
            path: path.display().to_string(),
            source,
        };
        let listing = match std::fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(io_error(&dir, error)),
        };
        let mut present = HashSet::new();
        let mut synced_new = false;
        for item in listing {
            let name = item.map_err(|e| io_error(&dir, e))?.file_name();
            if !self.synced_blobs.contains(&name) {
                let path = dir.join(&name);
                match File::open(&path).and_then(|file| file.sync_data()) {
                    Ok(()) => synced_new = true,
                    // sled removed it (garbage collection) since the listing.
                    Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(error) => return Err(io_error(&path, error)),
                }
            }
            present.insert(name);
        }
        if synced_new {
            File::open(&dir)
                .and_then(|dir| dir.sync_all())
                .map_err(|e| io_error(&dir, e))?;
        }
        self.synced_blobs = present;
        Ok(())
    }

    /// Step (1) of a snapshot write: its data, under its index, before the metadata names it.
    fn insert_snapshot_data(&self, snapshot: &Snapshot) -> Result<(), StoreError> {
        let index = snapshot.get_metadata().index;
        self.snapshots
            .insert(snapshot_key(index), &snapshot.data[..])?;
        Ok(())
    }

    /// Step (4): data of snapshots older than the one now recorded; durable with a later flush.
    fn remove_snapshot_data_before(&self, index: u64) -> Result<(), StoreError> {
        for key in self.snapshots.range(..snapshot_key(index)).keys() {
            self.snapshots.remove(key?)?;
        }
        Ok(())
    }

    /// How many times the data file has been synced.
    #[cfg(test)]
    pub(super) fn syncs(&self) -> u64 {
        self.syncs
    }

    /// How many blob files are known to be synced.
    #[cfg(test)]
    pub(super) fn synced_blobs(&self) -> usize {
        self.synced_blobs.len()
    }

    /// The indexes the `snapshots` tree holds data for.
    #[cfg(test)]
    pub(super) fn stored_snapshot_indexes(&self) -> Vec<u64> {
        self.snapshots
            .iter()
            .keys()
            .map(|key| decode_u64(&key.expect("read key")).expect("8-byte key"))
            .collect()
    }
}

impl raft::Storage for SledStore {
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
        self.bounds().check_range(low, high)?;
        // `raft::util::limit_size`, applied while reading so a large range stops at the limit.
        let max_size = max_size.into().filter(|&max| max != raft::NO_LIMIT);
        let mut entries = Vec::with_capacity(usize::try_from(high - low).unwrap_or(0).min(1024));
        let mut size = 0u64;
        let mut limited = false;
        for item in self.tree.range(log_key(low)..log_key(high)) {
            let (_, value) = item.map_err(read_error)?;
            let expected = low + entries.len() as u64;
            let entry = Entry::parse_from_bytes(&value)
                .map_err(|e| read_error(format!("log entry {expected} does not decode: {e}")))?;
            if entry.index != expected {
                return Err(read_error(format!(
                    "expected log entry {expected}, found {}",
                    entry.index
                )));
            }
            size += u64::from(entry.compute_size());
            if max_size.is_some_and(|max| size > max) && !entries.is_empty() {
                limited = true;
                break;
            }
            entries.push(entry);
        }
        if !limited && entries.len() as u64 != high - low {
            return Err(read_error(format!(
                "log entry {} is missing",
                low + entries.len() as u64
            )));
        }
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
        Ok(self.terms[(idx - bounds.first()) as usize])
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

impl LogStore for SledStore {
    fn append(
        &mut self,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StoreError> {
        let bounds = self.bounds();
        bounds.check_append(entries, hard_state)?;
        let mut batch = Batch::default();
        if let Some(tail) = entries.last() {
            // The conflicting suffix: entries from `head.index` on are replaced. Inserts
            // overwrite the keys up to `tail.index`; what lies beyond is removed.
            for index in tail.index + 1..=bounds.last {
                batch.remove(&log_key(index));
            }
            for entry in entries {
                batch.insert(&log_key(entry.index), encode(entry)?);
            }
        }
        if let Some(hard_state) = hard_state {
            batch.insert(HARD_STATE_KEY, encode(hard_state)?);
        }
        self.commit(batch)?;

        if let Some(head) = entries.first() {
            self.terms.truncate((head.index - bounds.first()) as usize);
            self.terms.extend(entries.iter().map(|entry| entry.term));
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    fn set_hard_state(&mut self, hard_state: &HardState) -> Result<(), StoreError> {
        self.bounds().check_hard_state(hard_state)?;
        let mut batch = Batch::default();
        batch.insert(HARD_STATE_KEY, encode(hard_state)?);
        self.commit(batch)?;
        self.hard_state = hard_state.clone();
        Ok(())
    }

    fn set_conf_state(&mut self, conf_state: &ConfState) -> Result<(), StoreError> {
        let mut batch = Batch::default();
        batch.insert(CONF_STATE_KEY, encode(conf_state)?);
        self.commit(batch)?;
        self.conf_state = conf_state.clone();
        Ok(())
    }

    fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<(), StoreError> {
        let bounds = self.bounds();
        let meta = snapshot.get_metadata();
        bounds.check_snapshot(meta)?;
        let hard_state = hard_state_after_snapshot(&self.hard_state, meta);
        let conf_state = meta.get_conf_state().clone();

        self.insert_snapshot_data(&snapshot)?;
        let mut batch = Batch::default();
        for index in bounds.first()..=bounds.last {
            batch.remove(&log_key(index));
        }
        batch.insert(SNAPSHOT_KEY, encode(&metadata_only(&snapshot))?);
        batch.insert(HARD_STATE_KEY, encode(&hard_state)?);
        batch.insert(CONF_STATE_KEY, encode(&conf_state)?);
        batch.insert(FORMAT_KEY, FORMAT);
        self.commit(batch)?;
        self.remove_snapshot_data_before(meta.index)?;

        self.terms.clear();
        self.snapshot = snapshot;
        self.hard_state = hard_state;
        self.conf_state = conf_state;
        Ok(())
    }

    fn compact(&mut self, index: u64, data: Vec<u8>) -> Result<(), StoreError> {
        let bounds = self.bounds();
        if !bounds.check_compact(index)? {
            return Ok(());
        }
        let dropped = (index + 1 - bounds.first()) as usize;
        let term = self.terms[dropped - 1];
        let snapshot = new_snapshot(index, term, &self.conf_state, data);

        self.insert_snapshot_data(&snapshot)?;
        let mut batch = Batch::default();
        for index in bounds.first()..=index {
            batch.remove(&log_key(index));
        }
        batch.insert(SNAPSHOT_KEY, encode(&metadata_only(&snapshot))?);
        batch.insert(FORMAT_KEY, FORMAT);
        self.commit(batch)?;
        self.remove_snapshot_data_before(index)?;

        self.terms.drain(..dropped);
        self.snapshot = snapshot;
        Ok(())
    }

    /// Not flushed: durable with the next flushed write (see the trait).
    fn set_applied(&mut self, index: u64) -> Result<(), StoreError> {
        self.tree.insert(APPLIED_KEY, &index.to_be_bytes())?;
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

/// How long `open` waits for sled's lock on the data dir.
const LOCK_WAIT: Duration = Duration::from_secs(1);

/// Opens sled, waiting up to [`LOCK_WAIT`] for its file lock: a `Db` dropped in this process
/// releases the lock only when sled's deferred cleanup runs (sled issue #1234), so a restart in
/// the same process would otherwise fail at random. A second live store on the same dir still
/// fails, after the wait.
fn open_db(dir: &Path) -> sled::Result<sled::Db> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        match sled::Config::new().path(dir).open() {
            // sled reports lock contention only in the message of an `ErrorKind::Other`.
            Err(sled::Error::Io(error))
                if error.to_string().contains("could not acquire lock")
                    && started.elapsed() < LOCK_WAIT =>
            {
                tracing::debug!(dir = %dir.display(), "waiting for sled's lock");
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            result => return result,
        }
    }
}

/// Creates the sentinel durably: the file and the directory entry naming it.
fn write_sentinel(dir: &Path, sentinel: &Path) -> std::io::Result<()> {
    std::fs::write(
        sentinel,
        "This directory holds a Causeway Raft log in sled. If sled's files go missing or \
         become unreadable, the store refuses to start empty rather than forget its votes.\n",
    )?;
    std::fs::File::open(sentinel)?.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

pub(super) fn log_key(index: u64) -> [u8; 12] {
    let mut key = [0; 12];
    key[..4].copy_from_slice(LOG_PREFIX);
    key[4..].copy_from_slice(&index.to_be_bytes());
    key
}

/// Key of a snapshot's data in the `snapshots` tree.
pub(super) fn snapshot_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// What the main tree stores of a snapshot: everything but the data.
fn metadata_only(snapshot: &Snapshot) -> Snapshot {
    let mut stored = Snapshot::default();
    stored.set_metadata(snapshot.get_metadata().clone());
    stored
}

fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

fn decode<M: Message>(bytes: &[u8], what: &str) -> Result<M, StoreError> {
    M::parse_from_bytes(bytes).map_err(|error| StoreError::Corrupt {
        what: what.to_owned(),
        reason: error.to_string(),
    })
}

fn encode<M: Message>(message: &M) -> Result<Vec<u8>, StoreError> {
    message
        .write_to_bytes()
        .map_err(|error| StoreError::Raft(raft::Error::CodecError(error)))
}

/// A failed read in `raft::Storage`: raft-rs treats it as fatal, which is right for a disk that
/// fails or holds something the store did not write.
fn read_error(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> raft::Error {
    raft::Error::Store(StorageError::Other(error.into()))
}
