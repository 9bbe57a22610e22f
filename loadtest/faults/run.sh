#!/usr/bin/env bash
# Fault scenarios: start the services as real processes on loopback (3 processors, 2 gateways, 2
# readers), drive a mixed load through both gateways, inject the fault, recover, then audit every
# accepted task with `dispatch-loadgen audit` (see loadtest/src/audit.rs: nothing lost, no
# committed terminal state changed, no execution after a terminal commit or re-run after its
# commit, no task run twice at once, the last event equals MySQL, per-key order on both the Kafka
# and the outbox path, idempotency, tenants, and enough accepted work).
#
# Usage: loadtest/faults/run.sh [scenario...|all]   (default: the ones the test command runs)
# Scenarios (short versions; SOAK=1 runs the long ones, see docs/reliability.md):
#   kill-processor          SIGKILL each processor in turn during the run, restart it
#   kafka-restart           stop the broker mid-run, start it again (outbox path)
#   redis-stop              stop Redis while the same idempotency keys are submitted again
#   mariadb-stop            stop MariaDB mid-run
#   db-proxy                the processors reach MariaDB through a slow, resetting proxy
#   rebalance               a fourth processor joins and leaves (SIGTERM or SIGKILL) every 5 s,
#                           while some handlers run longer than the 5 s rebalance drain
#   long-handler-rebalance  handlers of 6-12 s, rebalance_drain_ms 5 s; processors SIGSTOPped
#                           past their session timeout (then SIGCONT), SIGKILLed and SIGTERMed
#   handler-panic           a share of simulate payloads panic on every attempt
#   cancel-storm            cancels of queued, running, retrying and redriven tasks, and
#                           cross-tenant cancels of ids another tenant's idempotency keys produce
#   idempotency-conflicts   one idempotency key with another business key, priority or payload,
#                           inside one SubmitTasks call and across both gateways; Redis stopped
#                           for part of the run (REDIS_STOP=0 skips the Redis stop)
#   scheduled-burst         2,000 tasks due in the same second, some cancelled
#   redrive-under-load      DLQ redrives of a few thousand tasks while new load flows
# Every scenario ends with `audit PASS` or `audit FAIL (reasons)`; the run fails if any did not
# pass. Environment: SOAK=1 (long versions), PROFILE=debug|release, GATEWAYS/READERS/PROCESSORS
# (default 2/2/3), SKIP_BUILD=1 (use the built binaries), STACK_UP=0 (do not run stack.sh up: the
# stack is already up, e.g. started from another checkout), COMMIT (named in the verdicts when
# the tree is not a git checkout).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${REPO}"

KNOWN=(kill-processor kafka-restart redis-stop mariadb-stop db-proxy rebalance
    long-handler-rebalance handler-panic cancel-storm idempotency-conflicts scheduled-burst
    redrive-under-load)
# What `scripts/test.sh` runs (no arguments). A scenario joins this list with the fix that makes
# it pass.
# redis-stop is out of the default list until its floor holds on a loaded host (docs/reliability.md,
# "Open": keyed submits refused while Redis is down); run it by name.
DEFAULT=(kill-processor kafka-restart mariadb-stop db-proxy rebalance)

SCENARIOS=("$@")
((${#SCENARIOS[@]})) || SCENARIOS=("${DEFAULT[@]}")
if [[ "${SCENARIOS[*]}" == "all" ]]; then SCENARIOS=("${KNOWN[@]}"); fi
for s in "${SCENARIOS[@]}"; do
    if [[ " ${KNOWN[*]} " != *" ${s} "* ]]; then
        printf 'unknown scenario: %s\nknown scenarios: %s (or all)\n' "${s}" "${KNOWN[*]}" >&2
        exit 2
    fi
done

export PROFILE="${PROFILE:-debug}"
export GATEWAYS="${GATEWAYS:-2}" READERS="${READERS:-2}" PROCESSORS="${PROCESSORS:-3}"
BIN="${CARGO_TARGET_DIR:-${REPO}/target}/${PROFILE}"
OUT="${REPO}/.local/faults"
SOAK="${SOAK:-0}"
SVC="deploy/local/services.sh"
STACK="deploy/local/stack.sh"
RUN_DIR="${REPO}/.local/services"
mkdir -p "${OUT}"

if [[ "${SOAK}" == "1" ]]; then RATE=500; DURATION=120; DOWN=30; WAIT=600; else RATE=150; DURATION=16; DOWN=8; WAIT=90; fi

GW=""
for ((k = 1; k <= GATEWAYS; k++)); do GW+="${GW:+,}http://127.0.0.1:$((50051 + 10 * (k - 1)))"; done

log() { printf '\n[faults] %s\n' "$*" >&2; }
now_us() { date +%s%6N; }

# Per scenario: the load runs, their files, background fault jobs.
LOAD_PIDS=(); IDS=(); LOADS=(); CANCELS=(); JOBS=()
reset_scenario() { LOAD_PIDS=(); IDS=(); LOADS=(); CANCELS=(); JOBS=(); FLOOR=0.9; FROZEN="${OUT}/$1.frozen"; rm -f "${FROZEN}"; }

# The mixed load (acme): noop and simulate tasks (2-40 ms, 5% retryable failures, 2% permanent),
# 10% with an idempotency key, 5% with a run_at 3 s out, 5% cancelled within 0.5 s of the accept,
# 200 keys, alternating between the gateways.
MIX=(--scenario submit --task-type simulate --noop-share 0.2 --sim-latency-ms 2 --sim-latency-max-ms 40
    --sim-fail-rate 0.05 --sim-permanent-share 0.02 --idempotency-share 0.1 --run-at-share 0.05
    --run-at-ms 3000 --cancel-share 0.05 --cancel-delay-max-ms 500 --keys 200)

# load NAME [flags...]: a background load run recording ids, cancels and its report as NAME.*.
# Later flags override the mix. Errors (UNAVAILABLE while a dependency is down) are expected and
# counted by the audit's floor; only accepted tasks are audited.
load() {
    local name="$1"; shift
    rm -f "${OUT}/${name}.ids" "${OUT}/${name}.cancels" "${OUT}/${name}.load.json"
    "${BIN}/dispatch-loadgen" run "${MIX[@]}" --gateway "${GW}" --tenant acme --api-key dev-key-acme \
        --rate "${RATE}" --duration-s "${DURATION}" --warmup-s 0 --timeout-ms 5000 \
        --label "${name}-$(date +%s)" --record-ids "${OUT}/${name}.ids" \
        --record-cancels "${OUT}/${name}.cancels" --json "${OUT}/${name}.load.json" "$@" \
        2>"${OUT}/${name}.load.log" &
    LOAD_PIDS+=($!); IDS+=(--ids "${OUT}/${name}.ids"); LOADS+=(--load "${OUT}/${name}.load.json")
    CANCELS+=("${OUT}/${name}.cancels")
}

# A slow load next to the mix: simulate handlers of MIN..MAX ms on the same keys, each attempt
# failing permanently with probability 1/2, so two runs of one attempt often disagree (SUCCEEDED
# against DEAD), which is what a late commit of a zombie would show.
slow_load() {
    local name="$1" rate="$2" min="$3" max="$4"; shift 4
    load "${name}" --rate "${rate}" --noop-share 0 --sim-latency-ms "${min}" --sim-latency-max-ms "${max}" \
        --sim-fail-rate 0.5 --sim-permanent-share 1 --run-at-share 0 --cancel-share 0.05 \
        --cancel-delay-max-ms "${max}" "$@"
}

# The processor instance with the most records in flight (running or waiting on their key),
# excluding the given instances.
busiest_processor() {
    local k best="" max=-1 n name
    for ((k = 1; k <= PROCESSORS; k++)); do
        name="$(inst processor "${k}")"
        [[ " $* " == *" ${name} "* ]] && continue
        n="$(curl -s "http://127.0.0.1:$((9603 + 10 * (k - 1)))/metrics" |
            awk '/^dispatch_consumer_in_flight_records[ {]/ {s += $NF} END {print int(s)}')"
        if ((${n:-0} > max)); then max="${n:-0}"; best="${name}"; fi
    done
    log "busiest processor: ${best} (${max} records in flight)"
    echo "${best}"
}

wait_loads() {
    local p
    for p in "${LOAD_PIDS[@]}"; do wait "${p}" || log "a load run exited non-zero (see ${OUT}/*.load.log)"; done
    LOAD_PIDS=()
}

wait_jobs() {
    local p
    for p in "${JOBS[@]}"; do wait "${p}" || true; done
    JOBS=()
}

audit() {
    local name="$1"
    wait_loads
    wait_jobs
    local f
    for f in "${LOADS[@]}"; do
        [[ "${f}" == --load ]] && continue
        python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print('load', sys.argv[1].split('/')[-1], ':', r['items_accepted'], 'of', r['items_offered'], 'accepted, rejected', r['items_rejected_by_code'], 'cancels', r['cancels'])" "${f}" || true
    done
    local extra=()
    [[ -f "${FROZEN}" ]] && extra+=(--frozen "${FROZEN}")
    for f in "${CANCELS[@]}"; do [[ -f "${f}" ]] && extra+=(--cancels "${f}"); done
    "${BIN}/dispatch-loadgen" audit "${IDS[@]}" "${LOADS[@]}" "${extra[@]}" \
        --floor "${FLOOR}" --wait-s "${WAIT}" --json "${OUT}/${name}.audit.json" \
        2>"${OUT}/${name}.audit.err" | tee "${OUT}/${name}.verdict"
    # An audit that could not run (not a failed guarantee) says why in the verdict.
    if ! grep -q '^audit ' "${OUT}/${name}.verdict"; then
        echo "audit ERROR: $(grep -m1 -v '^\s*$' "${OUT}/${name}.audit.err")" | tee "${OUT}/${name}.verdict"
    fi
    # The machine's load, for reading a floor failure (client deadlines on a saturated host).
    echo "scenario note: load average $(cut -d' ' -f1-3 /proc/loadavg) on $(nproc) cores at the audit" >>"${OUT}/${name}.verdict"
}

# inst SERVICE K: the name of instance K (services.sh takes processor-1 for instance 1 alone).
inst() { echo "$1-$2"; }
# pid_of INSTANCE: its pid (instance 1's files carry the plain service name).
pid_of() { cat "${RUN_DIR}/${1%-1}.pid"; }

# scenario_fail NAME REASON: a failure of the scenario beyond the audit, added to its verdict.
scenario_fail() { echo "scenario FAIL: $2" | tee -a "${OUT}/$1.verdict"; }

# sigkill INSTANCE: kill -9 and restart it once it is gone.
sigkill() {
    local inst="$1" victim
    victim="$(pid_of "${inst}")"
    log "kill -9 ${inst} (pid ${victim})"
    kill -KILL "${victim}"
    while kill -0 "${victim}" 2>/dev/null; do sleep 0.1; done
    SKIP_BUILD=1 "${SVC}" start "${inst}" >/dev/null
}

# sigterm INSTANCE: graceful stop (its partitions move after the rebalance drain), then restart.
sigterm() {
    log "SIGTERM ${1}"
    "${SVC}" stop "$1" >/dev/null
    SKIP_BUILD=1 "${SVC}" start "$1" >/dev/null
}

# freeze INSTANCE SECONDS (background): SIGSTOP, SIGCONT; the window goes to the audit (--frozen).
freeze() {
    local inst="$1" secs="$2" pid from
    pid="$(pid_of "${inst}")"
    (
        from="$(now_us)"
        log "SIGSTOP ${inst} (pid ${pid}) for ${secs}s"
        kill -STOP "${pid}"
        sleep "${secs}"
        kill -CONT "${pid}"
        printf '%s\t%s\t%s\n' "${pid}" "${from}" "$(now_us)" >>"${FROZEN}"
        log "SIGCONT ${inst}"
    ) &
    JOBS+=($!)
}

restart_dead_services() { SKIP_BUILD=1 "${SVC}" start >/dev/null; }

# Restarts every processor with extra environment (e.g. the rebalance drain).
restart_processors() {
    "${SVC}" stop processor >/dev/null
    env "$@" SKIP_BUILD=1 "${SVC}" start processor >/dev/null
}

scenario_kill_processor() {
    load kill-processor
    local k
    for k in 1 2 3; do
        sleep $((DURATION / 4))
        sigkill "$(inst "processor" "$(( (k - 1) % PROCESSORS + 1 ))")"
    done
    audit kill-processor
}


scenario_kafka_restart() {
    FLOOR=0.5 # submits of the outage answer UNAVAILABLE or hit the client's deadline
    load kafka-restart
    sleep $((DURATION / 4))
    log "stopping kafka for ${DOWN}s"
    "${STACK}" stop kafka
    sleep "${DOWN}"
    "${STACK}" start kafka
    audit kafka-restart
    restart_dead_services
}

scenario_redis_stop() {
    # Every submit has an idempotency key, and a second run resubmits the same keys (same label,
    # same sequence numbers, so the same requests) while Redis is down: every id must execute
    # once. The label is unique per run, or a run's task ids would be those of every earlier run
    # on the same database (and the audit would read their old executions). No run_at: a resubmit
    # computes its own.
    local label
    label="redis-stop-$(date +%s)"
    load redis-stop --idempotency --run-at-share 0 --label "${label}"
    sleep $((DURATION / 4))
    log "stopping redis for ${DOWN}s"
    "${STACK}" stop redis
    load redis-stop-resubmit --idempotency --run-at-share 0 --label "${label}" --duration-s "$((DURATION / 2))"
    wait_loads
    "${STACK}" start redis
    audit redis-stop
    local dup
    dup="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["duplicate_runs_before_commit"])' "${OUT}/redis-stop.audit.json")"
    if ((dup > 0)); then
        scenario_fail redis-stop "${dup} duplicate executions of idempotent submits"
        return 1
    fi
    echo "redis-stop: idempotent resubmits executed once each"
}

scenario_mariadb_stop() {
    load mariadb-stop
    sleep $((DURATION / 4))
    log "stopping mariadb for ${DOWN}s"
    "${STACK}" stop mariadb
    sleep "${DOWN}"
    "${STACK}" start mariadb
    audit mariadb-stop
    restart_dead_services
}

scenario_db_proxy() {
    # The processors talk to MariaDB through a proxy that, while the load runs, adds 200 ms to every
    # chunk and resets 0.2% of connections after a chunk; then it heals and the backlog drains.
    "${BIN}/dispatch-loadgen" fault-proxy --listen 127.0.0.1:13306 --upstream 127.0.0.1:3306 \
        --latency-ms 200 --reset-probability 0.002 --fault-s "${DURATION}" --duration-s $((DURATION + 300)) \
        2>"${OUT}/db-proxy.proxy.log" &
    local proxy=$!
    restart_processors DISPATCH_DATABASE__URL="mysql://dispatch:dispatch@127.0.0.1:13306/dispatch"
    load db-proxy
    audit db-proxy
    kill "${proxy}" 2>/dev/null || true
    restart_processors
}

scenario_rebalance() {
    # A fourth processor joins and leaves the group every 5 s, by SIGTERM (a drain of 5 s) and by
    # SIGKILL in turn, while a slow load keeps handlers of 6-8 s running past the drain, and a
    # retrying load of 0.5-2.5 s handlers on 20 of the same keys puts retry records in their key
    # lanes next to first attempts (a retry partition moves on its own: its records leave a lane
    # while the ones ahead of them still wait or run).
    restart_processors DISPATCH_CONSUMER__REBALANCE_DRAIN_MS=5000
    sleep 5 # the group settles
    load rebalance
    slow_load rebalance-slow 5 6000 8000
    load rebalance-retry --rate 3 --keys 20 --noop-share 0 --sim-latency-ms 500 \
        --sim-latency-max-ms 2500 --sim-fail-rate 0.6 --sim-permanent-share 0 --max-attempts 4 \
        --initial-backoff-ms 300 --run-at-share 0 --cancel-share 0
    local end=$((SECONDS + DURATION)) n=0 extra
    extra="$(inst processor $((PROCESSORS + 1)))"
    while ((SECONDS < end)); do
        DISPATCH_CONSUMER__REBALANCE_DRAIN_MS=5000 SKIP_BUILD=1 "${SVC}" start "${extra}" >/dev/null
        sleep 4
        if ((n++ % 2)); then
            log "SIGKILL ${extra}"; kill -KILL "$(pid_of "${extra}")"; rm -f "${RUN_DIR}/${extra}.pid"
        else
            log "SIGTERM ${extra}"; "${SVC}" stop "${extra}" >/dev/null
        fi
        sleep 1
    done
    audit rebalance
    restart_processors
}

scenario_long_handler_rebalance() {
    # Handlers of 6-12 s, a rebalance drain of 5 s: partitions move while handlers run. One
    # processor is frozen past its session timeout (10 s) and resumed, one is killed, one leaves
    # gracefully; the mix flows at a third of the rate next to the slow load.
    # The processor with the most work in flight is frozen for 15 s: after the 10 s session
    # timeout the others take its partitions and run its handlers again, then it resumes. Of
    # those, the busiest is then killed (its partitions move again while their handlers run),
    # and the other leaves by SIGTERM; both come back.
    restart_processors DISPATCH_CONSUMER__REBALANCE_DRAIN_MS=5000
    sleep 5 # the group settles
    load long-handler-rebalance --rate $((RATE / 3))
    slow_load long-handler-rebalance-slow 10 6000 12000
    sleep 7
    local frozen killed
    frozen="$(busiest_processor)"
    freeze "${frozen}" 15
    sleep 12
    killed="$(busiest_processor "${frozen}")"
    DISPATCH_CONSUMER__REBALANCE_DRAIN_MS=5000 sigkill "${killed}"
    sleep 4
    DISPATCH_CONSUMER__REBALANCE_DRAIN_MS=5000 sigterm "$(busiest_processor "${frozen}" "${killed}")"
    audit long-handler-rebalance
    restart_processors
}

scenario_handler_panic() {
    # 5% of simulate payloads panic on every attempt (3 attempts, 200 ms backoff): each must end
    # DEAD while the rest flows on the same partitions.
    load handler-panic --sim-panic-share 0.05 --max-attempts 3 --initial-backoff-ms 200
    audit handler-panic
}

scenario_cancel_storm() {
    # Cancels of 30% of the tasks 0-3 s after the accept (queued, running: handlers of 2 ms-2 s,
    # retrying: 30% failures, 1 s backoff); half of the retrying ones cancelled mid-run through
    # both gateways; 10% of the simulate tasks die at once and are redriven after the load, and
    # half of the redriven ones are cancelled while the redrive runs (racing their new runs on
    # other instances); and globex cancels, just before each submit, the id that acme's
    # idempotency key will produce (half of the 40% idempotent submits).
    local t0=${SECONDS} n=0 redrive
    load cancel-storm --sim-latency-max-ms 2000 --sim-fail-rate 0.3 --sim-redrivable-share 0.1 \
        --cancel-share 0.3 --cancel-delay-max-ms 3000 --idempotency-share 0.4 \
        --foreign-cancel-share 0.5 --foreign-api-key dev-key-globex
    sleep $((DURATION / 2))
    log "cancelling retrying tasks"
    "${BIN}/dispatch-loadgen" cancel --ids "${OUT}/cancel-storm.ids" --select retrying --share 0.5 \
        --gateway "${GW}" --tenant acme --record-cancels "${OUT}/cancel-storm-retrying.cancels" \
        2>>"${OUT}/cancel-storm.cancel.log" || true
    CANCELS+=("${OUT}/cancel-storm-retrying.cancels")
    wait_loads
    sleep 2
    log "redriving, and cancelling half of the redriven tasks while it runs"
    rm -f "${OUT}"/cancel-storm-redriven-*.cancels
    "${BIN}/dispatchctl" --admin-key dev-admin-key --timeout-ms $((WAIT * 1000)) dlq redrive --tenant acme \
        --type simulate --since "$((SECONDS - t0 + 5))s" --max 1000 --rate 1000 \
        >"${OUT}/cancel-storm.redrive.log" 2>&1 &
    redrive=$!
    while kill -0 "${redrive}" 2>/dev/null; do
        sleep 3
        n=$((n + 1))
        "${BIN}/dispatch-loadgen" cancel --ids "${OUT}/cancel-storm.ids" --select redriven --share 0.5 \
            --gateway "${GW}" --tenant acme --record-cancels "${OUT}/cancel-storm-redriven-${n}.cancels" \
            2>>"${OUT}/cancel-storm.cancel.log" || true
        CANCELS+=("${OUT}/cancel-storm-redriven-${n}.cancels")
    done
    wait "${redrive}" || log "the redrive failed: $(cat "${OUT}/cancel-storm.redrive.log")"
    grep -h '^cancel:' "${OUT}/cancel-storm.cancel.log" || true
    audit cancel-storm
}

scenario_idempotency_conflicts() {
    # 20% of submits reuse the previous submit's idempotency key with another business key,
    # priority or payload (or as an exact duplicate): in SubmitTasks calls of 10 (so inside one
    # call) and in single submits alternating between the gateways. A conflicting submit must be
    # refused, so the floor is lower (15% of submits conflict). Redis is stopped for a third of
    # the run.
    FLOOR=0.75
    load idempotency-conflicts-batch --scenario batch --batch 10 --rate $((RATE / 10)) \
        --idempotency-share 0.5 --idem-conflict-share 0.2 --run-at-share 0
    load idempotency-conflicts --idempotency-share 0.5 --idem-conflict-share 0.2 --run-at-share 0
    if [[ "${REDIS_STOP:-1}" == "1" ]]; then
        sleep $((DURATION / 3))
        log "stopping redis for $((DURATION / 3))s"
        "${STACK}" stop redis
        sleep $((DURATION / 3))
        "${STACK}" start redis
    fi
    audit idempotency-conflicts
}

scenario_scheduled_burst() {
    # BURST tasks all due in the same second (DURATION + 4 s from now), submitted over the first
    # half of the run; 10% of them cancelled at a random time up to just after they are due, next
    # to the mixed load.
    local burst=2000 due
    [[ "${SOAK}" == "1" ]] && burst=10000
    due=$(( $(date +%s) * 1000 + (DURATION + 4) * 1000 ))
    load scheduled-burst
    load scheduled-burst-due --rate $((burst * 2 / DURATION)) --duration-s $((DURATION / 2)) \
        --run-at-share 1 --run-at-unix-ms "${due}" --noop-share 0.5 --sim-latency-max-ms 2 \
        --cancel-share 0.1 --cancel-delay-max-ms $(((DURATION + 5) * 1000)) --keys 500
    audit scheduled-burst
}

scenario_redrive_under_load() {
    # First a load in which half of the simulate tasks die at once (permanently, in generation 0
    # only: about 700 in the short version, 24,000 in the long one); then, while a new mixed load
    # flows, 200 of them (5,000 in the long version) are redriven from the DLQ (--rate 1000) and
    # run again in generation 1, where they succeed. The redrive must finish within the audit's
    # wait (90 s; 600 s in the long version).
    local t0=${SECONDS} max=200 rc=0
    [[ "${SOAK}" == "1" ]] && max=5000
    load redrive-under-load-dead --sim-redrivable-share 0.5 --cancel-share 0 --run-at-share 0
    wait_loads
    sleep 3
    load redrive-under-load
    sleep $((DURATION / 4))
    log "redriving up to ${max} dead letters"
    "${BIN}/dispatchctl" --admin-key dev-admin-key --timeout-ms $((WAIT * 1000)) dlq redrive --tenant acme \
        --type simulate --since "$((SECONDS - t0 + 5))s" --max "${max}" --rate 1000 \
        >"${OUT}/redrive-under-load.redrive.log" 2>&1 || rc=$?
    cat "${OUT}/redrive-under-load.redrive.log"
    audit redrive-under-load
    if ((rc != 0)); then
        scenario_fail redrive-under-load "the redrive did not finish: $(grep -m1 -i error "${OUT}/redrive-under-load.redrive.log")"
        return 1
    fi
}

[[ "${STACK_UP:-1}" == "1" ]] && "${STACK}" up >/dev/null
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    cargo build --locked -p dispatch-loadtest $([[ "${PROFILE}" == "release" ]] && echo --release)
fi
"${SVC}" start
failed=()
for s in "${SCENARIOS[@]}"; do
    log "scenario ${s} (rate ${RATE}/s, ${DURATION}s, ${PROCESSORS} processors, ${GATEWAYS} gateways, ${READERS} readers)"
    rm -f "${OUT}/${s}.verdict"
    reset_scenario "${s}"
    started=${SECONDS}
    # A scenario fails when it errs or when its audit did not pass (functions called from `if`
    # run without errexit, so a failed audit followed by a recovery step would look fine).
    if ! "scenario_${s//-/_}" || ! grep -q '^audit PASS' "${OUT}/${s}.verdict" 2>/dev/null; then
        failed+=("${s}")
    fi
    log "scenario ${s} took $((SECONDS - started))s"
done
log "verdicts (${COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo 'commit unknown')}):"
for s in "${SCENARIOS[@]}"; do
    v="$(grep -E '^(audit|scenario) ' "${OUT}/${s}.verdict" 2>/dev/null | paste -sd'|' | sed 's/|/ | /g' || true)"
    printf '  %-23s %s\n' "${s}" "${v:-no verdict}"
done
if ((${#failed[@]})); then log "FAILED: ${failed[*]}"; exit 1; fi
