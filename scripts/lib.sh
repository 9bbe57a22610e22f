# shellcheck shell=bash
# What the repository's shell scripts share. Sourced, not run, with the prefix of the script's log
# lines as its one argument:
#
#   # shellcheck source=scripts/lib.sh
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh" '[name]'    (from scripts/; adjust the path)
#
# It sets REPO, the repository's root (absolute), and LOG_PREFIX, that prefix, and defines
#   log MSG...              MSG on standard error, behind the prefix
#   cargo_profile DEFAULT   exports PROFILE (as the environment has it, else DEFAULT) and sets BIN,
#                           the directory cargo builds that profile's binaries into (under
#                           CARGO_TARGET_DIR, else target/)
# and nothing else: no shell options, no change of directory (each script keeps its own).

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOG_PREFIX="${1:?scripts/lib.sh is sourced with the prefix of the log lines}"

log() { printf '%s %s\n' "${LOG_PREFIX}" "$*" >&2; }

cargo_profile() {
    export PROFILE="${PROFILE:-$1}"
    # shellcheck disable=SC2034 # BIN is the caller's
    BIN="${CARGO_TARGET_DIR:-${REPO}/target}/${PROFILE}"
}
