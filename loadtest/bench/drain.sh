#!/usr/bin/env bash
# A processor drain: restart the processor (release, with any DISPATCH_* overrides in the
# environment), stop it (SIGSTOP), submit N noop tasks through the gateway, let it go (SIGCONT)
# and time how fast the tasks reach SUCCEEDED in MySQL. Prints tasks/s, the CPU seconds of the
# processor, MariaDB and Kafka, and the batch writer's batch count, mean rows per batch and mean
# transaction time (from /metrics).
#   loadtest/bench/drain.sh LABEL [N]     e.g.  DISPATCH_WRITER__MAX_CONCURRENT_BATCHES=1 loadtest/bench/drain.sh serial 20000
# Needs the stack and the release services running (loadtest/bench/run.sh leaves them up). The
# tasks are offered at 50k/s; the gateway's default tenant limit admits 20k/s, so for N above that
# restart it without limits first:
#   DISPATCH_LIMITS__TENANT_RPS=0 DISPATCH_LIMITS__GLOBAL_RPS=0 PROFILE=release SKIP_BUILD=1 deploy/local/services.sh restart gateway
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${REPO}"
label="${1:?usage: $0 LABEL [N] [extra dispatch-loadgen run flags]}"; n="${2:-20000}"
shift $(($# < 2 ? $# : 2))
PROFILE=release SKIP_BUILD=1 deploy/local/services.sh restart processor >/dev/null 2>&1
sleep 3
sql() { mariadb -h127.0.0.1 -udispatch -pdispatch -N -e "$1"; }
# Counts only what finished since the start, through (tenant, state, updated_at): a COUNT over
# every succeeded row of a multi-million-row table costs MariaDB about a second per poll, which
# it would take from the processor under test.
since=$(sql "SELECT NOW(6)")
q() { sql "SELECT COUNT(*) FROM dispatch.tasks WHERE tenant='acme' AND state='succeeded' AND updated_at >= '${since}'"; }
pid=$(cat .local/services/processor.pid)
before=$(q)
kill -STOP "$pid"
trap 'kill -CONT "$pid" 2>/dev/null || true' EXIT
target/release/dispatch-loadgen run --scenario batch --rate 100 --batch 500 --duration-s "$(echo "$n/50000" | bc -l)" --warmup-s 0 "$@" >/dev/null 2>&1
cpu() { awk '{print $14+$15}' /proc/"$1"/stat; }
mpid=$(cat .local/mariadb/mysqld.pid); kpid=$(cat .local/kafka/kafka.pid)
c0=$(cpu "$pid"); m0=$(cpu "$mpid"); k0=$(cpu "$kpid")
t0=$(date +%s.%N)
kill -CONT "$pid"
# Until n tasks are done, or nothing moved for 5 s (the generator's errors may have kept some
# tasks out): the end is the last time the count grew.
done_n=$(q); t1=$(date +%s.%N); still=0
while (( done_n < before + n && still < 25 )); do
    sleep 0.2
    c=$(q)
    if (( c > done_n )); then done_n=$c; t1=$(date +%s.%N); still=0; else still=$((still + 1)); fi
done
n=$((done_n - before))
c1=$(cpu "$pid"); m1=$(cpu "$mpid"); k1=$(cpu "$kpid")
m=$(curl -s 127.0.0.1:9603/metrics)
rows=$(echo "$m" | awk '/^dispatch_db_batch_size_rows_sum/ {print $2}'); cnt=$(echo "$m" | awk '/^dispatch_db_batch_size_rows_count/ {print $2}')
dur=$(echo "$m" | awk '/^dispatch_db_write_duration_seconds_sum/ {print $2}')
echo "$label: $(echo "$n / ($t1 - $t0)" | bc -l | cut -c1-7) tasks/s, cpu-s processor $(echo "($c1-$c0)/100" | bc -l | cut -c1-5) mariadb $(echo "($m1-$m0)/100" | bc -l | cut -c1-5) kafka $(echo "($k1-$k0)/100" | bc -l | cut -c1-5) in $(echo "$t1 - $t0" | bc -l | cut -c1-5) s, batches $cnt avg rows $(echo "$rows/$cnt" | bc -l | cut -c1-6) avg commit ms $(echo "$dur*1000/$cnt" | bc -l | cut -c1-6)"
