//! What the gateways replicate through the store, for now.
//!
//! [`MeshLog`] is a stand-in state machine: it counts applied commands and keeps the last one,
//! enough to prove the Raft group works end to end in a real gateway. The mesh model
//! (`federation`'s `MeshState`) replaces it in the REST/model issue.

/// Counts applied commands and keeps the bytes of the last one.
///
/// Snapshot layout: the count as 8 big-endian bytes, then the last command's bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct MeshLog {
    applied: u64,
    last: Vec<u8>,
}

impl MeshLog {
    pub fn new() -> Self {
        Self::default()
    }
}

impl store::StateMachine for MeshLog {
    fn apply(&mut self, _index: u64, command: &[u8]) -> Vec<u8> {
        self.applied += 1;
        self.last = command.to_vec();
        Vec::new()
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(8 + self.last.len());
        out.extend_from_slice(&self.applied.to_be_bytes());
        out.extend_from_slice(&self.last);
        out
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), String> {
        let (count, last) = snapshot
            .split_first_chunk::<8>()
            .ok_or_else(|| format!("snapshot of {} bytes is too short", snapshot.len()))?;
        self.applied = u64::from_be_bytes(*count);
        self.last = last.to_vec();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::StateMachine;

    #[test]
    fn snapshot_restores_count_and_last_command() {
        let mut log = MeshLog::new();
        log.apply(1, b"first");
        log.apply(2, b"second");
        let mut restored = MeshLog::new();
        restored.restore(&log.snapshot()).unwrap();
        assert_eq!(restored, log);
        assert_eq!(
            (restored.applied, restored.last.as_slice()),
            (2, &b"second"[..])
        );
        assert!(restored.restore(b"short").is_err());
        // The empty machine round-trips too.
        let mut empty = MeshLog::new();
        empty.restore(&MeshLog::new().snapshot()).unwrap();
        assert_eq!(empty, MeshLog::new());
    }
}
