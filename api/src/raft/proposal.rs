//! A proposal's outcome on the wire: [`store::ProposeError`] ⇄ `Proposed`, one for one.

use store::ProposeError;

use super::proto::{ProposeFailure, Proposed};

/// What the leader answers for `outcome`, its node's answer to the proposal.
pub(super) fn to_wire(outcome: Result<(u64, Vec<u8>), ProposeError>) -> Proposed {
    let failed = |failure: ProposeFailure| Proposed {
        failure: failure.into(),
        ..Proposed::default()
    };
    match outcome {
        Ok((index, result)) => Proposed {
            index,
            result,
            ..Proposed::default()
        },
        Err(ProposeError::NotLeader { leader }) => Proposed {
            leader: leader.unwrap_or(0),
            ..failed(ProposeFailure::NotLeader)
        },
        Err(ProposeError::Dropped) => failed(ProposeFailure::Dropped),
        Err(ProposeError::LeaderChanged { leader }) => Proposed {
            leader: leader.unwrap_or(0),
            ..failed(ProposeFailure::LeaderChanged)
        },
        Err(ProposeError::Rejected { reason }) => Proposed {
            reason,
            ..failed(ProposeFailure::Rejected)
        },
        Err(ProposeError::Stopped) => failed(ProposeFailure::Stopped),
    }
}

/// The outcome the leader's answer stands for. A failure this build does not know (a newer
/// leader's) counts as [`ProposeError::Dropped`], like a call that failed.
pub(super) fn from_wire(proposed: Proposed) -> Result<(u64, Vec<u8>), ProposeError> {
    // Raft node id 0 means "none".
    let leader = (proposed.leader != 0).then_some(proposed.leader);
    // Not `proposed.failure()`: prost turns an unknown value into the default, which is success.
    match ProposeFailure::try_from(proposed.failure) {
        Ok(ProposeFailure::None) => Ok((proposed.index, proposed.result)),
        Ok(ProposeFailure::NotLeader) => Err(ProposeError::NotLeader { leader }),
        Ok(ProposeFailure::Dropped) | Err(_) => Err(ProposeError::Dropped),
        Ok(ProposeFailure::LeaderChanged) => Err(ProposeError::LeaderChanged { leader }),
        Ok(ProposeFailure::Rejected) => Err(ProposeError::Rejected {
            reason: proposed.reason,
        }),
        Ok(ProposeFailure::Stopped) => Err(ProposeError::Stopped),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_survives_the_wire() {
        let outcomes = [
            Ok((7, b"result".to_vec())),
            Ok((8, Vec::new())),
            Err(ProposeError::NotLeader { leader: Some(3) }),
            Err(ProposeError::NotLeader { leader: None }),
            Err(ProposeError::Dropped),
            Err(ProposeError::LeaderChanged { leader: Some(2) }),
            Err(ProposeError::LeaderChanged { leader: None }),
            Err(ProposeError::Rejected {
                reason: "no".to_owned(),
            }),
            Err(ProposeError::Stopped),
        ];
        for outcome in outcomes {
            assert_eq!(from_wire(to_wire(outcome.clone())), outcome);
        }
    }

    #[test]
    fn an_unknown_failure_is_not_taken_for_success() {
        let proposed = Proposed {
            index: 5,
            failure: 99,
            ..Proposed::default()
        };
        assert_eq!(from_wire(proposed), Err(ProposeError::Dropped));
    }
}
