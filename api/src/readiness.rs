//! Readiness as named blockers: `/readyz` turns green only when every blocker was released.
//!
//! Each startup task (identity, listeners, later the store catching up) takes a [`Blocker`]
//! and calls [`Blocker::ready`] when done. Dropping a blocker without that keeps blocking, so
//! a task that dies early never leaves the gateway falsely ready.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<BTreeSet<String>>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    /// Blocks readiness until [`Blocker::ready`] is called on the returned blocker.
    pub fn block(&self, name: &str) -> Blocker {
        self.lock().insert(name.to_string());
        Blocker {
            readiness: self.clone(),
            name: name.to_string(),
        }
    }

    /// Names still blocking, sorted.
    pub fn pending(&self) -> Vec<String> {
        self.lock().iter().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // The set stays consistent even if a holder panicked: inserts and removes are atomic.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub struct Blocker {
    readiness: Readiness,
    name: String,
}

impl Blocker {
    /// Marks this part ready.
    pub fn ready(self) {
        self.readiness.lock().remove(&self.name);
        tracing::debug!(component = %self.name, "ready");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_blocker_is_released() {
        let r = Readiness::new();
        let a = r.block("identity");
        let b = r.block("listeners");
        assert_eq!(r.pending(), ["identity", "listeners"]);
        a.ready();
        assert_eq!(r.pending(), ["listeners"]);
        drop(b);
        assert_eq!(
            r.pending(),
            ["listeners"],
            "a dropped blocker must keep blocking"
        );
        r.block("store").ready();
        assert_eq!(r.pending(), ["listeners"]);
    }
}
