#!/usr/bin/env bash
# Fault scenarios: start the services as real processes on loopback, drive load through the
# gateway, inject a fault, recover, then audit (no task lost, none regressed, none re-run after its
# terminal commit, per-key order) with `dispatch-loadgen audit`.
#
# Usage: loadtest/faults/run.sh [scenario...]      (default: all, short versions)
# Scenarios: kill-processor kafka-restart redis-stop mariadb-stop db-proxy rebalance
# SOAK=1 runs the long versions (minutes; see docs/reliability.md). PROFILE=debug|release.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${REPO}"
export PROFILE="${PROFILE:-debug}"
BIN="${CARGO_TARGET_DIR:-${REPO}/target}/${PROFILE}"
OUT="${REPO}/.local/faults"
SOAK="${SOAK:-0}"
SVC="deploy/local/services.sh"
STACK="deploy/local/stack.sh"
mkdir -p "${OUT}"

if [[ "${SOAK}" == "1" ]]; then RATE=500; DURATION=120; DOWN=30; else RATE=150; DURATION=16; DOWN=8; fi

AUDIT_EXTRA=()
log() { printf '\n[faults] %s\n' "$*" >&2; }

# Starts the load in the background: simulate tasks (2 ms, 5% retryable failures) on 200 keys,
# recording every accepted id. Errors (UNAVAILABLE while a dependency is down) are expected and
# counted; only accepted tasks are audited.
start_load() {
    local name="$1"; shift
    rm -f "${OUT}/${name}.ids"
    "${BIN}/dispatch-loadgen" run --scenario submit --task-type simulate --sim-latency-ms 2 --sim-fail-rate 0.05 \
        --keys 200 --rate "${RATE}" --duration-s "${DURATION}" --warmup-s 0 --timeout-ms 5000 \
        --record-ids "${OUT}/${name}.ids" --json "${OUT}/${name}.load.json" --label "${LABEL:-${name}}" "$@" \
        2>"${OUT}/${name}.load.log" &
    LOAD_PID=$!
}

audit() {
    local name="$1"
    wait "${LOAD_PID}" || true
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('load:', r['ok'], 'accepted,', r['errors'], 'rejected', r['errors_by_code'])" "${OUT}/${name}.load.json"
    "${BIN}/dispatch-loadgen" audit --ids "${OUT}/${name}.ids" "${AUDIT_EXTRA[@]}" --wait-s 180 \
        --json "${OUT}/${name}.audit.json" | tee "${OUT}/${name}.verdict"
}

restart_dead_services() { SKIP_BUILD=1 "${SVC}" start >/dev/null; }

scenario_kill_processor() {
    start_load kill-processor
    local i
    for i in 1 2 3; do
        sleep $((DURATION / 4))
        log "kill -9 processor (${i}/3)"
        local victim
        victim="$(cat .local/services/processor.pid)"
        kill -KILL "${victim}"
        # A killed process can take a moment to disappear; restart only once it has.
        while kill -0 "${victim}" 2>/dev/null; do sleep 0.1; done
        SKIP_BUILD=1 "${SVC}" start processor >/dev/null
    done
    audit kill-processor
}

scenario_kafka_restart() {
    start_load kafka-restart
    sleep $((DURATION / 4))
    log "stopping kafka for ${DOWN}s"
    "${STACK}" stop kafka
    sleep "${DOWN}"
    "${STACK}" start kafka
    audit kafka-restart
    restart_dead_services
}

scenario_redis_stop() {
    # Idempotent submits, each sent twice (the second run resubmits the same keys while Redis is
    # down): every id must execute once. Idempotency keys are `<label>-<seq>`: the label is unique
    # per run, or a run's task ids would be those of every earlier run on the same database (and
    # the audit would read their old executions).
    local label
    label="redis-stop-$(date +%s)"
    LABEL="${label}" start_load redis-stop --idempotency
    sleep $((DURATION / 4))
    log "stopping redis for ${DOWN}s"
    "${STACK}" stop redis
    rm -f "${OUT}/redis-stop-resubmit.ids"
    "${BIN}/dispatch-loadgen" run --scenario submit --task-type simulate --sim-latency-ms 2 --keys 200 \
        --rate "${RATE}" --duration-s "$((DURATION / 2))" --warmup-s 0 --idempotency --label "${label}" \
        --record-ids "${OUT}/redis-stop-resubmit.ids" >/dev/null 2>&1 || true
    "${STACK}" start redis
    AUDIT_EXTRA=(--ids "${OUT}/redis-stop-resubmit.ids")
    audit redis-stop
    AUDIT_EXTRA=()
    python3 - "${OUT}/redis-stop.audit.json" <<'PY'
import json, sys
v = json.load(open(sys.argv[1]))
if v["duplicate_runs_before_commit"]:
    sys.exit(f"redis-stop: {v['duplicate_runs_before_commit']} duplicate executions of idempotent submits")
print("redis-stop: idempotent resubmits executed once each")
PY
}

scenario_mariadb_stop() {
    start_load mariadb-stop
    sleep $((DURATION / 4))
    log "stopping mariadb for ${DOWN}s"
    "${STACK}" stop mariadb
    sleep "${DOWN}"
    "${STACK}" start mariadb
    audit mariadb-stop
    restart_dead_services
}

scenario_db_proxy() {
    # The processor talks to MariaDB through a proxy that, while the load runs, adds 200 ms to every
    # chunk and resets 0.2% of connections after a chunk; then it heals and the backlog drains.
    "${BIN}/dispatch-loadgen" fault-proxy --listen 127.0.0.1:13306 --upstream 127.0.0.1:3306 \
        --latency-ms 200 --reset-probability 0.002 --fault-s "${DURATION}" --duration-s $((DURATION + 300)) \
        2>"${OUT}/db-proxy.proxy.log" &
    local proxy=$!
    "${SVC}" stop processor
    DISPATCH_DATABASE__URL="mysql://dispatch:dispatch@127.0.0.1:13306/dispatch" SKIP_BUILD=1 "${SVC}" start processor
    start_load db-proxy
    audit db-proxy
    kill "${proxy}" 2>/dev/null || true
    "${SVC}" stop processor
    SKIP_BUILD=1 "${SVC}" start processor
}

scenario_rebalance() {
    # A second processor joins and leaves the group every few seconds.
    start_load rebalance
    local end=$((SECONDS + DURATION)) second
    while ((SECONDS < end)); do
        DISPATCH_CONFIG="deploy/local/config/processor.toml" DISPATCH_ADMIN__LISTEN=127.0.0.1:9613 \
            DISPATCH_GRPC__LISTEN=127.0.0.1:50063 "${BIN}/dispatch-processor" >>"${OUT}/rebalance.second.log" 2>&1 &
        second=$!
        sleep 4
        kill -TERM "${second}"; wait "${second}" || true
        sleep 1
    done
    audit rebalance
}

SCENARIOS=("$@")
((${#SCENARIOS[@]})) || SCENARIOS=(kill-processor kafka-restart redis-stop mariadb-stop db-proxy rebalance)
"${STACK}" up >/dev/null
"${SVC}" start
failed=()
for s in "${SCENARIOS[@]}"; do
    log "scenario ${s} (rate ${RATE}/s, ${DURATION}s)"
    rm -f "${OUT}/${s}.verdict"
    # A scenario fails when it errs or when its audit did not pass (functions called from `if`
    # run without errexit, so a failed audit followed by a recovery step would look fine).
    if ! "scenario_${s//-/_}" || ! grep -q '^audit PASS' "${OUT}/${s}.verdict" 2>/dev/null; then
        failed+=("${s}")
    fi
done
log "verdicts:"
for s in "${SCENARIOS[@]}"; do printf '  %-15s %s\n' "${s}" "$(cat "${OUT}/${s}.verdict" 2>/dev/null || echo 'no verdict')"; done
if ((${#failed[@]})); then log "FAILED: ${failed[*]}"; exit 1; fi
