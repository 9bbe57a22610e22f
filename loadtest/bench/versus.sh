#!/usr/bin/env bash
# Two commits side by side on this machine: the processor drain, SubmitTask and SubmitTasks,
# alternated between the two builds, plus time to start per priority on the second one.
#
#   loadtest/bench/versus.sh build             clone BEFORE and AFTER into $WORK and build them
#   loadtest/bench/versus.sh drain|gateway     alternate the two builds RUNS times (see versus.py)
#   loadtest/bench/versus.sh priority          time to start per priority, AFTER only
#   loadtest/bench/versus.sh summary|table     medians and every run, from the results file
#   loadtest/bench/versus.sh clean             drop the two databases
#
# BEFORE (default 9ea9e0c) and AFTER (default 1b71f19) are commits; WORK (default /work/bench)
# holds one clone of each, built in its own target dir (release, the service packages only, at
# low priority). 9ea9e0c's build needs protoc and the well-known types (`apt-get install
# protobuf-compiler libprotobuf-dev`); protos compile in Rust only from 67a538d on.
#
# Each build runs on a database of its own (dispatch_before, dispatch_after, recreated for every
# run, so every run starts from an empty table; the two commits do not share a migration
# history), a topic prefix, consumer group and Redis key prefix of the run, and ports of its own
# (gateway 50281/9781, processor 50283/9783): the stack's normal services and database are not
# touched. One load generator serves both: $LOADGEN, by default the AFTER clone's (with the
# generator's --priority-mix added when AFTER predates it; the services are AFTER's own).
# Results are appended to .local/bench/versus/results.jsonl (VERSUS_OUT moves the directory).
#
# Needs the local stack (deploy/local/stack.sh up). On a shared machine, run each measurement
# under the fault runs' lock:  flock /tmp/dispatch-faults-o.lock loadtest/bench/versus.sh drain
# With STOP_FILE set, a run stops at the next safe point once that file exists.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export WORK="${WORK:-/work/bench}" BEFORE="${BEFORE:-9ea9e0c}" AFTER="${AFTER:-1b71f19}"
GEN_FLAG=9577648

build() {
    local v rev
    # 9ea9e0c compiles its protos with protoc and the well-known types.
    if ! command -v protoc >/dev/null 2>&1 || [[ ! -d /usr/include/google/protobuf ]]; then
        local sudo=()
        ((EUID == 0)) || sudo=(sudo)
        "${sudo[@]}" apt-get update -qq && "${sudo[@]}" apt-get install -y -qq protobuf-compiler libprotobuf-dev
    fi
    for v in before after; do
        rev="${BEFORE}"; [[ "${v}" == after ]] && rev="${AFTER}"
        if [[ ! -d "${WORK}/${v}" ]]; then
            git clone -q "${REPO}" "${WORK}/${v}"
        fi
        git -C "${WORK}/${v}" fetch -q "${REPO}" HEAD
        git -C "${WORK}/${v}" checkout -q -f "${rev}"
        # The priority run needs the generator's --priority-mix (9577648): a build older than
        # that gets it on top, in the working tree (it touches loadtest/src only, not a service).
        if [[ "${v}" == after ]] && ! git -C "${WORK}/${v}" merge-base --is-ancestor "${GEN_FLAG}" HEAD; then
            git -C "${WORK}/${v}" cherry-pick --no-commit "${GEN_FLAG}"
        fi
        (cd "${WORK}/${v}" && nice -n 19 cargo build --release --locked -p dispatch-gateway \
            -p dispatch-processor -p dispatch-reader -p dispatch-loadtest -p dispatchctl)
    done
}

case "${1:-}" in
    build) build ;;
    drain | gateway | priority | summary | table | clean) exec python3 "${REPO}/loadtest/bench/versus.py" "$@" ;;
    *) sed -n '2,26p' "$0"; exit 2 ;;
esac
