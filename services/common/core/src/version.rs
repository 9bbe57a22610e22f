//! The write fence: which write may replace which stored row. The one place the rule lives; the
//! store's SQL is generated from it ([`sql_may_overwrite`]) and a property test against MariaDB
//! checks that the two agree on every pair.
//!
//! A task row carries a [`Stamp`]: its version (see [`crate::state`]: generation, attempt and
//! the state's rank, computed from what happened) and the *lease epoch* of the processor that
//! claimed the attempt. A lease epoch is allocated per partition assignment and grows with every
//! new owner of the partition, so it orders the owners of one attempt's record.
//!
//! A write replaces the stored row when
//! 1. it raises the version, the stored state is not terminal (a DEAD task revived by a redrive
//!    into a later generation excepted), and, when both belong to the same attempt, its epoch is
//!    not below the stored one: a partition's old owner never commits over its new owner; or
//! 2. it is a RUNNING of the same attempt with a higher epoch: the partition's new owner takes
//!    over an attempt whose outcome was never committed.
//!
//! Writes without a lease (cancel commands, the scheduler) carry epoch 0 and skip the epoch test.
//! An equal version never replaces anything else: a committed terminal state never changes.

use crate::state::{TaskState, Version};

/// What fences a write: its version and the lease epoch it was made under (0: none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Stamp {
    /// The version (`TaskState::version`).
    pub version: Version,
    /// The lease epoch of the owner that made the write; 0 for writes made without a lease.
    pub epoch: u64,
}

/// Rank of a terminal state's lowest value (SUCCEEDED); DEAD and CANCELLED rank above it.
const TERMINAL_RANK: u64 = 5;
const RUNNING_RANK: u64 = 3;
const DEAD_RANK: u64 = 6;

/// The state rank a version carries (its low three bits).
pub fn rank(v: Version) -> u64 {
    v & 7
}

/// The redrive generation of a version.
pub fn generation(v: Version) -> u32 {
    (v >> 32) as u32
}

/// The (generation, attempt) slot of a version: two versions of one attempt share it.
pub fn slot(v: Version) -> u64 {
    v >> 3
}

/// Whether a version is of a terminal state (SUCCEEDED, DEAD, CANCELLED).
pub fn is_terminal(v: Version) -> bool {
    rank(v) >= TERMINAL_RANK
}

/// Whether nothing may ever replace a row carrying this version: SUCCEEDED and CANCELLED (a DEAD
/// task can be redriven into a later generation). An event that carried such a version is the
/// task's last one for good, so a publisher has nothing to check after its acknowledgement.
pub fn is_final(v: Version) -> bool {
    is_terminal(v) && rank(v) != DEAD_RANK
}

/// The state a version was computed for.
pub fn state_of(v: Version) -> Option<TaskState> {
    TaskState::ALL.into_iter().find(|s| s.rank() == rank(v))
}

/// The fence: may `new` replace the stored `stored`? See the module doc.
pub fn may_overwrite(stored: Stamp, new: Stamp) -> bool {
    let (s, n) = (stored.version, new.version);
    if cfg!(feature = "fault-equal-version") && n == s {
        return true;
    }
    let raises = n > s;
    let open = !is_terminal(s) || (rank(s) == DEAD_RANK && generation(n) > generation(s));
    if cfg!(feature = "fault-no-epoch") {
        return raises && open;
    }
    let owner_ok = new.epoch == 0 || slot(n) != slot(s) || new.epoch >= stored.epoch;
    let takeover = n == s && rank(n) == RUNNING_RANK && new.epoch > stored.epoch;
    (raises && open && owner_ok) || takeover
}

/// [`may_overwrite`] as a SQL expression over four SQL operands (column names or expressions,
/// all BIGINT UNSIGNED).
pub fn sql_may_overwrite(
    stored_version: &str,
    stored_epoch: &str,
    new_version: &str,
    new_epoch: &str,
) -> String {
    let (s, se, n, ne) = (stored_version, stored_epoch, new_version, new_epoch);
    let equal = if cfg!(feature = "fault-equal-version") {
        format!("{n} = {s} OR ")
    } else {
        String::new()
    };
    if cfg!(feature = "fault-no-epoch") {
        return format!(
            "({equal}{n} > {s} AND (({s} & 7) < {TERMINAL_RANK} OR (({s} & 7) = {DEAD_RANK} AND ({n} >> 32) > ({s} >> 32))))"
        );
    }
    format!(
        "({equal}({n} > {s} \
          AND (({s} & 7) < {TERMINAL_RANK} OR (({s} & 7) = {DEAD_RANK} AND ({n} >> 32) > ({s} >> 32))) \
          AND ({ne} = 0 OR ({n} >> 3) <> ({s} >> 3) OR {ne} >= {se})) \
         OR ({n} = {s} AND ({n} & 7) = {RUNNING_RANK} AND {ne} > {se}))"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;
    use proptest::prelude::*;

    fn st(state: TaskState, g: u32, a: u32, epoch: u64) -> Stamp {
        Stamp {
            version: state.version(g, a),
            epoch,
        }
    }

    #[test]
    fn every_state_has_its_own_rank() {
        for s in TaskState::ALL {
            assert_eq!(state_of(s.version(3, 2)), Some(s), "{s}");
            assert_eq!(is_terminal(s.version(0, 1)), s.is_terminal(), "{s}");
            assert_eq!(
                is_final(s.version(0, 1)),
                matches!(s, Succeeded | Cancelled),
                "{s}"
            );
        }
    }

    #[test]
    fn an_equal_version_never_replaces_a_terminal_state() {
        for s in [Succeeded, Dead, Cancelled] {
            let stored = st(s, 0, 2, 7);
            assert!(!may_overwrite(stored, stored), "{s} replay");
            assert!(!may_overwrite(stored, st(s, 0, 2, 9)), "{s} other owner");
        }
        // The two outcomes of one attempt never replace each other.
        assert!(!may_overwrite(st(Succeeded, 0, 1, 1), st(Dead, 0, 1, 1)));
        assert!(!may_overwrite(st(Dead, 0, 1, 1), st(Succeeded, 0, 1, 1)));
    }

    #[test]
    fn the_old_owner_never_commits_over_the_new_one() {
        // Owner 1 claimed attempt 1, owner 2 took it over.
        assert!(may_overwrite(st(Running, 0, 1, 1), st(Running, 0, 1, 2)));
        assert!(!may_overwrite(st(Running, 0, 1, 2), st(Running, 0, 1, 1)));
        assert!(!may_overwrite(st(Running, 0, 1, 2), st(Succeeded, 0, 1, 1)));
        assert!(!may_overwrite(st(Running, 0, 1, 2), st(Dead, 0, 1, 1)));
        assert!(may_overwrite(st(Running, 0, 1, 2), st(Succeeded, 0, 1, 2)));
        // Owner 2 committed a retry of attempt 1; owner 1's success of attempt 1 is late.
        assert!(!may_overwrite(
            st(Retrying, 0, 1, 2),
            st(Succeeded, 0, 1, 1)
        ));
        // The next attempt is another slot: its owner's epoch is of another partition.
        assert!(may_overwrite(st(Retrying, 0, 1, 9), st(Running, 0, 2, 1)));
        // A RUNNING coalesced into its outcome (never written) leaves an older slot stored.
        assert!(may_overwrite(st(Retrying, 0, 1, 9), st(Succeeded, 0, 2, 1)));
    }

    #[test]
    fn cancels_and_redrives() {
        assert!(may_overwrite(st(Running, 0, 3, 5), st(Cancelled, 0, 0, 0)));
        assert!(!may_overwrite(
            st(Succeeded, 0, 3, 5),
            st(Cancelled, 0, 0, 0)
        ));
        assert!(may_overwrite(st(Dead, 0, 4, 5), st(Running, 1, 1, 1)));
        assert!(!may_overwrite(st(Dead, 0, 4, 5), st(Running, 0, 5, 9)));
        assert!(!may_overwrite(st(Succeeded, 0, 4, 5), st(Running, 1, 1, 9)));
        assert!(!may_overwrite(st(Cancelled, 0, 0, 0), st(Running, 1, 1, 9)));
        // A cancel of the current generation beats its attempts; an old generation's does not.
        assert!(may_overwrite(st(Retrying, 1, 2, 5), st(Cancelled, 1, 0, 0)));
        assert!(!may_overwrite(
            st(Retrying, 1, 2, 5),
            st(Cancelled, 0, 0, 0)
        ));
    }

    fn any_stamp() -> impl Strategy<Value = Stamp> {
        (
            proptest::sample::select(TaskState::ALL.to_vec()),
            0u32..3,
            0u32..4,
            0u64..4,
        )
            .prop_map(|(s, g, a, e)| st(s, g, a, e))
    }

    proptest! {
        /// A committed terminal state is only ever replaced by a later generation of a DEAD task.
        #[test]
        fn terminal_rows_stay_terminal(stored in any_stamp(), new in any_stamp()) {
            if is_terminal(stored.version) && may_overwrite(stored, new) {
                prop_assert_eq!(rank(stored.version), DEAD_RANK);
                prop_assert!(generation(new.version) > generation(stored.version));
            }
        }

        /// A final version is never replaced, by any write of any owner (the fault builds that
        /// break the fence excepted).
        #[test]
        fn final_rows_are_never_replaced(stored in any_stamp(), new in any_stamp()) {
            if is_final(stored.version) && !cfg!(feature = "fault-equal-version") {
                prop_assert!(!may_overwrite(stored, new), "{:?} <- {:?}", stored, new);
            }
        }

        /// Applying writes never lowers the version.
        #[test]
        fn versions_never_go_down(stored in any_stamp(), new in any_stamp()) {
            if may_overwrite(stored, new) {
                prop_assert!(new.version >= stored.version);
            }
        }
    }
}
