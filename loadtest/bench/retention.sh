#!/usr/bin/env bash
# Retention under load: the processor's retention purge removes EXPIRED finished tasks (with their
# attempts and ledger rows) and DEAD_LETTERS dead-letter index rows while a steady submit load
# flows through the gateway and the processor, and MariaDB is watched for row-lock waits.
#   loadtest/bench/retention.sh            (~6 min; builds and runs the release binaries)
#   EXPIRED=100000 DEAD_LETTERS=20000 RATE=1000 PHASE_S=60 PURGE_S=150 MAX_WAIT_MS=100
#   (RATE: submits/s, about half of what the whole system sustains on 2 cores; at 2,000/s the CPU
#   is saturated and waits grow long with or without the purge: docs/reliability.md)
#   PURGE=0: the control run, the same with the lock held to the end (nobody purges in phase B)
#   PROCESSOR_ENV="DISPATCH_RETENTION__BATCH_SIZE=200 ...": settings for the processor only
# Two phases under the same load (simulate handler, 2 ms, 2% retryable failures, 500 keys, 1 KiB
# payloads, tenant acme, which the purge works on too):
#   A. baseline, PHASE_S: this script holds the retention leader's MySQL named lock, so nobody purges;
#   B. purge, PURGE_S: 5 s in, the script lets the lock go; the processor takes it within
#      retention.interval_ms (1 s here) and purges in its batches ([retention] settings; by default
#      batch_size 100, batch_pause_ms 20, batch_pause_factor 1) until every seeded row is gone.
# Watched in MariaDB, which the script restarts after seeding (and after InnoDB has purged the
# history of removing an earlier run's rows), so that its counters cover phases A and B only:
#   1. Innodb_row_lock_time_max, the longest InnoDB row-lock wait since the server started (it
#      cannot be reset otherwise; information_schema.INNODB_TRX shows no transactions on this
#      MariaDB 10.11, so waits cannot be sampled there);
#   2. Innodb_row_lock_waits and Innodb_row_lock_time, before and after each phase;
#   3. the slow log at long_query_time 0.1: every statement over 100 ms, whatever the cause (a
#      row-lock wait over 100 ms makes its statement one of them; MariaDB's Lock_time does not
#      count InnoDB row-lock waits, its Engine_time does).
# FAIL when the longest row-lock wait reaches MAX_WAIT_MS, when a seeded row is left after phase
# B, or when the audit of the tasks accepted in phase B fails (the purge must take nothing live).
# Output: .local/bench/retention/ (load reports, slow.log, the audit, summary.txt).
set -euo pipefail
EXPIRED="${EXPIRED:-100000}"
DEAD_LETTERS="${DEAD_LETTERS:-20000}"
RATE="${RATE:-1000}"
PHASE_S="${PHASE_S:-60}"
PURGE_S="${PURGE_S:-150}"
MAX_WAIT_MS="${MAX_WAIT_MS:-100}"
PURGE="${PURGE:-1}"
read -r -a PROCESSOR_ENV <<<"${PROCESSOR_ENV:-}"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh" '[retention-bench]'
cd "${REPO}"
cargo_profile release
OUT="${REPO}/.local/bench/retention"
SOCK="${REPO}/.local/mariadb/mysqld.sock"
METRICS=http://127.0.0.1:9603/metrics
# lib.sh's log, with the load average.
log() { printf '%s %s (load average %s)\n' "${LOG_PREFIX}" "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" >&2; }
root() { mariadb --no-defaults --socket="${SOCK}" -uroot -N --batch "$@"; }

rm -rf "${OUT}" && mkdir -p "${OUT}"
deploy/local/stack.sh up >/dev/null
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --locked --profile "${PROFILE/debug/dev}" -p dispatch-loadtest \
    -p dispatch-gateway -p dispatch-processor -p dispatch-reader -p dispatchctl
export SKIP_BUILD=1
# Started once for the migrations and topics, then stopped while the rows are seeded.
deploy/local/services.sh start >/dev/null
deploy/local/services.sh stop >/dev/null

holder=""
cleanup() {
    root -e "SET GLOBAL slow_query_log = OFF" 2>/dev/null || true
    [[ -z "${holder}" ]] || kill "${holder}" 2>/dev/null || true
    deploy/local/services.sh restart processor >/dev/null 2>&1 || true
}
trap cleanup EXIT

# --- seed: finished 10 days ago (the default retention is 7 days), dead letters 40 days ago -------
log "seeding ${EXPIRED} expired tasks (2 attempts and 1 ledger row each) and ${DEAD_LETTERS} dead letters"
# Finished 10 days ago (the default retention is 7 days); dead letters 40 days ago. Ids as the
# gateway makes them: UUIDv7 (time first, so tasks finished together sit together in the primary
# key), and one in ten random, as for tasks with an idempotency key.
AT_MS=$(( $(date +%s) * 1000 - 10 * 86400 * 1000 ))
id_of() { # column holding the sequence number
    echo "IF($1 % 10 = 0, UNHEX(MD5(CONCAT('retention-bench-', $1))), CONCAT(UNHEX(LPAD(HEX(${AT_MS} + $1 DIV 20), 12, '0')), UNHEX(SUBSTR(MD5(CONCAT('retention-bench-', $1)), 1, 20))))"
}
# What an earlier run left (a control run purges nothing; its ids differ, being made of its time).
root dispatch <<'SQL'
DELETE FROM dead_letters WHERE dlq_partition = -7;
CREATE TEMPORARY TABLE left_over (id BINARY(16) PRIMARY KEY)
    SELECT task_id AS id FROM tasks WHERE tenant = 'acme' AND business_key LIKE 'retention-bench-%';
DELETE a FROM task_attempts a JOIN left_over o ON a.task_id = o.id;
DELETE h FROM handler_executions h JOIN left_over o ON h.task_id = o.id;
DELETE t FROM tasks t JOIN left_over o ON t.task_id = o.id;
SQL
for ((lo = 1; lo <= EXPIRED; lo += 10000)); do
    hi=$((lo + 9999 > EXPIRED ? EXPIRED : lo + 9999))
    root dispatch <<SQL
SET @at = FROM_UNIXTIME(${AT_MS} / 1000);
INSERT IGNORE INTO tasks (task_id, tenant, business_key, task_type, priority, payload, state, attempts,
    max_attempts, initial_backoff_ms, max_backoff_ms, version, created_at, updated_at, finished_at)
SELECT $(id_of seq), 'acme', CONCAT('retention-bench-', seq), 'simulate', 1,
    REPEAT('x', 1024), 'succeeded', 2, 3, 100, 1000, 1, @at, @at, @at FROM seq_${lo}_to_${hi};
INSERT IGNORE INTO task_attempts (task_id, generation, attempt, outcome, started_at, finished_at)
SELECT $(id_of s.seq), 0, a.seq, IF(a.seq = 1, 'retryable', 'succeeded'), @at, @at
FROM seq_${lo}_to_${hi} s JOIN seq_1_to_2 a;
INSERT IGNORE INTO handler_executions (task_id, generation, attempt, executed_at, instance, started_at, outcome)
SELECT $(id_of seq), 0, 2, @at, 'retention-bench', @at, 'ok' FROM seq_${lo}_to_${hi};
SQL
done
if ((DEAD_LETTERS > 0)); then
    root dispatch <<SQL
SET @dead = NOW(6) - INTERVAL 40 DAY;
INSERT INTO dead_letters (task_id, tenant, task_type, business_key, generation, error_class, error, attempts,
    original_topic, original_partition, original_offset, dlq_partition, dlq_offset, dead_at)
SELECT UNHEX(MD5(CONCAT('retention-bench-dl-', seq))), 'acme', 'simulate', CONCAT('retention-bench-dl-', seq), 0,
    'permanent', 'seeded by loadtest/bench/retention.sh', 1, 'dispatch.tasks', 0, seq, -7, seq, @dead
FROM seq_1_to_${DEAD_LETTERS};
SQL
fi
seeded() { # by primary key: every seeded id; the dead letters by their partition
    root dispatch -e "SELECT (SELECT COUNT(*) FROM tasks WHERE task_id IN (SELECT $(id_of seq) FROM seq_1_to_${EXPIRED})), \
        (SELECT COUNT(*) FROM dead_letters WHERE dlq_partition = -7)"
}
log "seeded (tasks, dead letters): $(seeded | tr '\t' ' ')"

# --- MariaDB anew, the leader lock taken before any processor starts -------------------------
hist() { root -e "SELECT COUNT FROM information_schema.INNODB_METRICS WHERE NAME = 'trx_rseg_history_len'"; }
for _ in $(seq 600); do (($(hist) < 1000)) && break; sleep 1; done
log "InnoDB history length $(hist); restarting MariaDB"
deploy/local/stack.sh restart mariadb >/dev/null
root -e "SELECT GET_LOCK('dispatch_retention.dispatch', 30), SLEEP(100000)" >/dev/null 2>&1 &
holder=$!
h=0
for _ in $(seq 100); do
    h=$(root -e "SELECT IFNULL(IS_USED_LOCK('dispatch_retention.dispatch'), 0)")
    [[ "${h}" != 0 ]] && break
    sleep 0.1
done
[[ "${h}" != 0 ]] || { log "could not take the retention lock"; exit 1; }
lock_conn="${h}"
deploy/local/services.sh start gateway reader >/dev/null
env "${PROCESSOR_ENV[@]}" DISPATCH_RETENTION__INTERVAL_MS=1000 deploy/local/services.sh start processor >/dev/null
log "processor settings: ${PROCESSOR_ENV[*]:-defaults} DISPATCH_RETENTION__INTERVAL_MS=1000"

# --- the watchers -------------------------------------------------------------------------------
root -e "SET GLOBAL slow_query_log_file = '${OUT}/slow.log', log_slow_verbosity = 'query_plan,innodb', \
    log_slow_filter = '', long_query_time = 0.1, slow_query_log = ON"

status() { root -e "SHOW GLOBAL STATUS WHERE Variable_name IN ('Innodb_row_lock_waits', 'Innodb_row_lock_time', 'Innodb_row_lock_time_max')" | awk '{printf "%s=%s ", $1, $2}'; }
metric() { curl -fsS "${METRICS}" | awk -v m="$1" '$1 == m {print $2; f=1} END {if (!f) print 0}'; }
snapshot() {
    echo "$(date +%s.%N) $(metric dispatch_tasks_finished_total'{state="succeeded"}') \
$(metric dispatch_db_write_duration_seconds_sum) $(metric dispatch_db_write_duration_seconds_count) $(status)"
}
load() { # phase seconds
    "${BIN}/dispatch-loadgen" run --scenario submit --task-type simulate --sim-latency-ms 2 --sim-fail-rate 0.02 \
        --keys 500 --key-prefix "ret-$1-" --payload-bytes 1024 --rate "${RATE}" --duration-s "$2" --warmup-s 0 \
        --timeout-ms 5000 --tenant acme --record-ids "${OUT}/$1.ids" --json "${OUT}/$1.load.json" --label "retention-$1" \
        2>"${OUT}/$1.load.log"
}

log "phase A: ${RATE} submits/s for ${PHASE_S} s, nobody purging"
snapshot >"${OUT}/A.before"
load A "${PHASE_S}"
snapshot >"${OUT}/A.after"

log "phase B: ${RATE} submits/s for ${PURGE_S} s, $( ((PURGE)) && echo "the purge from 5 s in" || echo "nobody purging (PURGE=0)")"
purged0=$(metric dispatch_retention_purged_rows_total'{table="tasks"}')
dl0=$(metric dispatch_retention_purged_rows_total'{table="dead_letters"}')
# Done when the purge counters have moved by what was seeded (a COUNT over the seeded rows every
# half second would add its own load); checked exactly by primary key afterwards.
purge_done() {
    local t d
    t=$(metric dispatch_retention_purged_rows_total'{table="tasks"}'); d=$(metric dispatch_retention_purged_rows_total'{table="dead_letters"}')
    ((${t%.*} - ${purged0%.*} >= EXPIRED && ${d%.*} - ${dl0%.*} >= DEAD_LETTERS))
}
snapshot >"${OUT}/B.before"
load B "${PURGE_S}" &
load_pid=$!
sleep 5
if ((PURGE)); then
    root -e "KILL CONNECTION ${lock_conn}"
    kill "${holder}" 2>/dev/null || true; holder=""
fi
t_release=$(date +%s.%N)
t_done=""
while kill -0 "${load_pid}" 2>/dev/null; do
    if [[ -z "${t_done}" ]] && purge_done; then t_done=$(date +%s.%N); fi
    sleep 0.5
done
wait "${load_pid}" || { log "phase B load failed: $(tail -3 "${OUT}/B.load.log")"; exit 1; }
snapshot >"${OUT}/B.after"
log "phase B over"
root -e "SET GLOBAL slow_query_log = OFF"
left=$(seeded | tr '\t' ' ')
[[ "${left}" == "0 0" ]] || t_done=""
purged=$(($(metric dispatch_retention_purged_rows_total'{table="tasks"}' | cut -d. -f1) - ${purged0%.*}))
batches=$(curl -fsS "${METRICS}" | awk '/^dispatch_retention_batch_duration_seconds_(sum|count)/ {print $2}' | paste -sd' ')
over_100=$(curl -fsS "${METRICS}" | awk '/^dispatch_retention_batch_duration_seconds_bucket\{le="0.1"\}/ {b=$2} /^dispatch_retention_batch_duration_seconds_count/ {c=$2} END {print c-b}')

log "auditing the $(wc -l <"${OUT}/B.ids") tasks accepted in phase B"
audit_rc=0
"${BIN}/dispatch-loadgen" audit --ids "${OUT}/B.ids" --load "${OUT}/B.load.json" --wait-s 300 \
    --json "${OUT}/B.audit.json" >"${OUT}/B.audit" 2>&1 || audit_rc=$?

python3 - "${OUT}" "${MAX_WAIT_MS}" "${t_release}" "${t_done:-}" "${left}" "${purged}" "${batches}" "${over_100}" "${audit_rc}" "${PURGE}" <<'PY' | tee "${OUT}/summary.txt"
import json, os, re, sys
out, max_wait, t_rel, t_done, left, purged, batches, over, audit_rc, purge = sys.argv[1:11]
max_wait, audit_rc = int(max_wait), int(audit_rc)
ok = True
def snap(name):
    f = open(f"{out}/{name}").read().split()
    t, fin, wsum, wcnt = map(float, f[:4])
    st = {k: int(v) for k, v in (kv.split("=") for kv in f[4:])}
    return t, fin, wsum, wcnt, st
slow = open(f"{out}/slow.log", encoding="latin-1").read() if os.path.exists(f"{out}/slow.log") else ""
entries = [(float(q), eng, int(ts), " ".join(stmt.split())) for q, eng, ts, stmt in re.findall(
    r"# Query_time: ([\d.]+).*?(?:Engine_time: ([\d.]+)\n)?SET timestamp=(\d+);\n(.+?)(?=\n# |\Z)", slow, re.S)]
for ph in "AB":
    t0, f0, s0, c0, st0 = snap(f"{ph}.before")
    t1, f1, s1, c1, st1 = snap(f"{ph}.after")
    r = json.load(open(f"{out}/{ph}.load.json"))
    waits = st1["Innodb_row_lock_waits"] - st0["Innodb_row_lock_waits"]
    wait_ms = st1["Innodb_row_lock_time"] - st0["Innodb_row_lock_time"]
    mine = [e for e in entries if t0 - 1 <= e[2] <= t1 + 1]
    print(f"phase {ph} ({t1 - t0:.0f} s): submits {r.get('ok')} ok, {r.get('errors')} errors {r.get('errors_by_code') or ''}, "
          f"p50 {r.get('p50_ms')} ms, p99 {r.get('p99_ms')} ms; tasks succeeded {(f1 - f0) / (t1 - t0):.0f}/s; "
          f"batch writer commit mean {1000 * (s1 - s0) / max(c1 - c0, 1):.1f} ms over {c1 - c0:.0f} batches; "
          f"InnoDB row-lock waits {waits} ({wait_ms} ms in all); statements over 100 ms {len(mine)}")
    for q, eng, _, stmt in sorted(mine, key=lambda e: -e[0])[:6]:
        print(f"    {q * 1000:7.1f} ms (engine {eng or '-'} ms)  {stmt[:150]}")
longest = snap("B.after")[4]["Innodb_row_lock_time_max"]
print(f"longest InnoDB row-lock wait since MariaDB started (phases A and B): {longest} ms (bound {max_wait} ms)")
if longest >= max_wait:
    ok = False
    print(f"FAIL: a row-lock wait of {longest} ms")
if purge == "0":
    print(f"control run: nobody purged; seeded rows left (tasks, dead letters): {left}")
elif t_done:
    print(f"purge: {purged} tasks (with their attempts and ledger rows) and the dead letters gone "
          f"{float(t_done) - float(t_rel):.1f} s after the lock was let go; retention batches (sum s, count): {batches}; "
          f"batches over 100 ms: {over}")
else:
    ok = False
    print(f"FAIL: seeded rows left after phase B (tasks, dead letters): {left}; purged {purged} tasks")
print(open(f"{out}/B.audit").readline().strip())
if audit_rc != 0:
    ok = False
    print("FAIL: the audit of phase B's tasks")
print("retention under load: PASS" if ok else "retention under load: FAIL")
sys.exit(0 if ok else 1)
PY
