//! The task state machine and the version scheme that fences every write.
//!
//! A version is computed from *what happened*, never read-modify-written, so a replayed record
//! produces exactly the versions it produced the first time (an idempotent no-op in the store) and
//! a zombie consumer working on an older attempt produces lower versions (rejected):
//!
//! ```text
//! version = generation << 32 | attempt << 3 | rank(state)      (CANCELLED: generation << 32 | 0xFFFF_FFFF)
//! ```
//!
//! Every state has its own rank (WAITING 0, SCHEDULED 1 … RETRYING 4, SUCCEEDED 5, DEAD 6,
//! CANCELLED 7), so a
//! version alone tells the state it was written for and whether it is terminal. `generation`
//! counts operator redrives from the DLQ. Which write may replace which stored row is decided in
//! one place, [`crate::version::may_overwrite`], from which the store's SQL is generated.

use dispatch_proto::v1 as pb;

/// A task's version: higher means later.
pub type Version = u64;

/// The version token the gateway returns for an accepted task: every stored state is at least this.
pub const ACCEPTED_VERSION: Version = 1;

/// The lifecycle of a task; see `proto/dispatch/v1/task.proto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// A workflow node waiting for its dependencies; released to SCHEDULED once they finish.
    Waiting,
    /// Waiting for its `run_at`.
    Scheduled,
    /// Waiting to run.
    Pending,
    /// An attempt is executing.
    Running,
    /// Waiting on a retry topic for the next attempt.
    Retrying,
    /// Terminal: success.
    Succeeded,
    /// Terminal: exhausted, expired or permanent failure (on the DLQ).
    Dead,
    /// Terminal: cancelled.
    Cancelled,
}

impl TaskState {
    /// Every state, in lifecycle order.
    pub const ALL: [TaskState; 8] = [
        Self::Waiting,
        Self::Scheduled,
        Self::Pending,
        Self::Running,
        Self::Retrying,
        Self::Succeeded,
        Self::Dead,
        Self::Cancelled,
    ];

    /// SUCCEEDED, DEAD and CANCELLED never change again (except an explicit DLQ redrive).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Dead | Self::Cancelled)
    }

    /// The low bits of a version: how far along one attempt a state is.
    pub(crate) fn rank(self) -> u64 {
        match self {
            Self::Waiting => 0,
            Self::Scheduled => 1,
            Self::Pending => 2,
            Self::Running => 3,
            Self::Retrying => 4,
            Self::Succeeded => 5,
            Self::Dead => 6,
            Self::Cancelled => 7,
        }
    }

    /// Whether the machine allows `self -> next`. Used by tests and debug assertions; the store
    /// enforces the same rule through versions (see [`TaskState::may_overwrite`]).
    pub fn can_transition_to(self, next: TaskState) -> bool {
        use TaskState::*;
        match (self, next) {
            (s, Cancelled) => !s.is_terminal(),
            (Waiting, Scheduled) => true,
            (Scheduled, Pending | Running | Dead) => true,
            (Pending, Running | Dead) => true,
            (Running, Retrying | Succeeded | Dead) => true,
            (Retrying, Running | Dead) => true,
            _ => false,
        }
    }

    /// The version of this state for `attempt` of `generation`.
    pub fn version(self, generation: u32, attempt: u32) -> Version {
        let high = u64::from(generation) << 32;
        match self {
            Self::Cancelled => high | 0xFFFF_FFFF,
            // attempt is bounded by validation (<= 25), far below 2^29.
            s => high | (u64::from(attempt.min(1 << 28)) << 3) | s.rank(),
        }
    }

    /// The store's write fence for writes made without a lease: may a write of
    /// `(self, new_version)` replace a stored `(stored, stored_version)`? See
    /// [`crate::version::may_overwrite`].
    pub fn may_overwrite(
        self,
        new_version: Version,
        stored: TaskState,
        stored_version: Version,
    ) -> bool {
        debug_assert_eq!(crate::version::state_of(new_version), Some(self));
        debug_assert_eq!(crate::version::state_of(stored_version), Some(stored));
        let stamp = |version| crate::version::Stamp { version, epoch: 0 };
        crate::version::may_overwrite(stamp(stored_version), stamp(new_version))
    }

    /// Lower-case name, as stored in MySQL and used in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Scheduled => "scheduled",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Retrying => "retrying",
            Self::Succeeded => "succeeded",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parses [`TaskState::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// To the protobuf enum.
    pub fn to_proto(self) -> pb::TaskState {
        match self {
            Self::Waiting => pb::TaskState::Waiting,
            Self::Scheduled => pb::TaskState::Scheduled,
            Self::Pending => pb::TaskState::Pending,
            Self::Running => pb::TaskState::Running,
            Self::Retrying => pb::TaskState::Retrying,
            Self::Succeeded => pb::TaskState::Succeeded,
            Self::Dead => pb::TaskState::Dead,
            Self::Cancelled => pb::TaskState::Cancelled,
        }
    }

    /// From the protobuf enum; `None` for UNSPECIFIED.
    pub fn from_proto(state: pb::TaskState) -> Option<Self> {
        Some(match state {
            pb::TaskState::Unspecified => return None,
            pb::TaskState::Waiting => Self::Waiting,
            pb::TaskState::Scheduled => Self::Scheduled,
            pb::TaskState::Pending => Self::Pending,
            pb::TaskState::Running => Self::Running,
            pb::TaskState::Retrying => Self::Retrying,
            pb::TaskState::Succeeded => Self::Succeeded,
            pb::TaskState::Dead => Self::Dead,
            pb::TaskState::Cancelled => Self::Cancelled,
        })
    }
}

impl std::fmt::Display for TaskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::TaskState::{self, *};

    /// Walks a whole life: every legal step raises the version.
    #[test]
    fn a_full_lifecycle_only_moves_forward() {
        let steps = [
            (Waiting, 0),
            (Scheduled, 0),
            (Pending, 0),
            (Running, 1),
            (Retrying, 1),
            (Running, 2),
            (Retrying, 2),
            (Running, 3),
            (Succeeded, 3),
        ];
        for pair in steps.windows(2) {
            let ((from, a), (to, b)) = (pair[0], pair[1]);
            assert!(from.can_transition_to(to), "{from} -> {to}");
            assert!(
                to.version(0, b) > from.version(0, a),
                "{from}@{a} -> {to}@{b}"
            );
            assert!(to.may_overwrite(to.version(0, b), from, from.version(0, a)));
        }
    }

    #[test]
    fn no_legal_transition_goes_backwards_in_version() {
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                if !from.can_transition_to(to) {
                    continue;
                }
                // The next state happens at the same attempt or (Retrying -> Running) the next one.
                let next_attempt = if from == Retrying && to == Running {
                    2
                } else if to == Scheduled {
                    0
                } else {
                    1
                };
                let from_attempt = if matches!(from, Waiting | Scheduled | Pending) {
                    0
                } else {
                    1
                };
                assert!(
                    to.version(0, next_attempt) > from.version(0, from_attempt),
                    "{from} -> {to} must raise the version"
                );
            }
        }
    }

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in [Succeeded, Dead, Cancelled] {
            for to in TaskState::ALL {
                assert!(
                    !from.can_transition_to(to),
                    "{from} -> {to} must be illegal"
                );
            }
        }
    }

    #[test]
    fn backwards_transitions_are_illegal() {
        assert!(!Running.can_transition_to(Pending));
        assert!(!Retrying.can_transition_to(Pending));
        assert!(!Pending.can_transition_to(Scheduled));
        assert!(!Scheduled.can_transition_to(Waiting));
        assert!(!Waiting.can_transition_to(Running));
        assert!(!Running.can_transition_to(Scheduled));
        assert!(!Retrying.can_transition_to(Succeeded));
    }

    #[test]
    fn fence_rejects_replays_zombies_and_writes_after_terminal() {
        let done = Succeeded.version(0, 2);
        // A replay writes the same version: no-op.
        assert!(!Succeeded.may_overwrite(done, Succeeded, done));
        // A zombie still on attempt 1.
        assert!(!Retrying.may_overwrite(Retrying.version(0, 1), Running, Running.version(0, 2)));
        // Nothing overwrites a terminal state, even with a higher version...
        assert!(!Running.may_overwrite(Running.version(0, 9), Succeeded, done));
        assert!(!Succeeded.may_overwrite(
            Succeeded.version(0, 9),
            Cancelled,
            Cancelled.version(0, 1)
        ));
        // ...except a redrive of a DEAD task into a later generation.
        let dead = Dead.version(0, 4);
        assert!(Retrying.may_overwrite(Retrying.version(1, 4), Dead, dead));
        assert!(!Retrying.may_overwrite(Retrying.version(0, 9), Dead, dead));
        assert!(!Retrying.may_overwrite(Retrying.version(1, 4), Succeeded, done));
    }

    #[test]
    fn cancel_beats_any_attempt_of_its_generation() {
        let cancel = Cancelled.version(0, 0);
        for attempt in [0, 1, 25, 1 << 20] {
            for st in [Running, Retrying, Succeeded, Dead] {
                assert!(cancel > st.version(0, attempt));
            }
        }
        assert!(Cancelled.may_overwrite(cancel, Running, Running.version(0, 3)));
        assert!(!Cancelled.may_overwrite(cancel, Succeeded, Succeeded.version(0, 3)));
    }

    #[test]
    fn names_and_proto_round_trip() {
        for st in TaskState::ALL {
            assert_eq!(TaskState::parse(st.as_str()), Some(st));
            assert_eq!(TaskState::from_proto(st.to_proto()), Some(st));
        }
        assert_eq!(TaskState::parse("bogus"), None);
    }
}
