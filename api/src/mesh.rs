//! The mesh state as the store and the REST handlers share it.
//!
//! ```text
//!  store node task ── StateMachine::apply ──► SharedMesh (write lock) ── compile() ──► watch<MeshSnapshot>
//!  REST handlers ───── SharedMesh::read(|state| ..) (read lock, never across an .await)
//! ```
//!
//! The store owns the order of writes; handlers only read. The compiled snapshot goes out
//! through a `watch` channel so the data plane swaps it in whole, never seeing a half-applied
//! write.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use federation::mesh::{MeshSnapshot, MeshState};
use tokio::sync::watch;

/// [`MeshState`] behind a lock, cheap to clone: one clone goes to [`store::start`] as the state
/// machine, the others to the admin API.
#[derive(Clone)]
pub struct SharedMesh {
    state: Arc<RwLock<MeshState>>,
    compiled: Arc<watch::Sender<Arc<MeshSnapshot>>>,
}

impl SharedMesh {
    /// An empty state; every applied entry publishes `state.compile()` to `compiled`.
    pub fn new(compiled: watch::Sender<Arc<MeshSnapshot>>) -> Self {
        Self::with_state(MeshState::new(), compiled)
    }

    /// Starts from `state` (tests use a small retention to reach the `410 Gone` of watches).
    pub fn with_state(state: MeshState, compiled: watch::Sender<Arc<MeshSnapshot>>) -> Self {
        Self {
            state: Arc::new(RwLock::new(state)),
            compiled: Arc::new(compiled),
        }
    }

    /// Runs `f` on the current state under the read lock. Keep `f` short and synchronous: the
    /// store's apply waits for the lock.
    pub fn read<T>(&self, f: impl FnOnce(&MeshState) -> T) -> T {
        f(&self.read_guard())
    }

    /// The latest compiled snapshot, and changes to it.
    pub fn subscribe(&self) -> watch::Receiver<Arc<MeshSnapshot>> {
        self.compiled.subscribe()
    }

    fn read_guard(&self) -> RwLockReadGuard<'_, MeshState> {
        // A panic inside `apply` would have stopped the store (it treats a panic as fatal), and
        // readers never mutate: the state behind a poisoned lock is the last consistent one.
        self.state.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_guard(&self) -> RwLockWriteGuard<'_, MeshState> {
        self.state.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn publish(&self, snapshot: MeshSnapshot) {
        // `send_replace`, not `send`: publishing must not depend on anyone listening yet.
        self.compiled.send_replace(Arc::new(snapshot));
    }
}

impl store::StateMachine for SharedMesh {
    fn apply(&mut self, index: u64, command: &[u8]) -> Vec<u8> {
        // Compiled on every entry: a few hundred resources compile in microseconds, and a
        // snapshot that never lags the state is simpler than tracking what changed.
        let (result, snapshot) = {
            let mut state = self.write_guard();
            let result = state.apply_entry(index, command);
            (result, state.compile())
        };
        self.publish(snapshot);
        result
    }

    fn snapshot(&self) -> Vec<u8> {
        self.read_guard().snapshot()
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let compiled = {
            let mut state = self.write_guard();
            state.restore(snapshot)?;
            state.compile()
        };
        self.publish(compiled);
        Ok(())
    }
}
