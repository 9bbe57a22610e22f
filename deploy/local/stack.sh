#!/usr/bin/env bash
# Local dev/test stack for dispatch: Kafka (KRaft, from Maven Central jars),
# MariaDB, Redis and (optionally) Prometheus, all as plain processes bound to
# 127.0.0.1, with every bit of state under <repo>/.local/.
#
# Usage: deploy/local/stack.sh <command> [component...]
#   up                 install what is missing, then start everything
#   install            only install (Debian packages + Kafka jars)
#   missing-packages   print the Debian packages 'install' would apt-get (one line, may be empty)
#   start [comp...]    start components (default: all)
#   stop  [comp...]    stop components (default: all), SIGTERM + wait
#   restart [comp...]  stop then start
#   status             one line per component
#   logs <comp> [-f]   tail a component's log (LINES=n to change the count)
#   reset              stop everything and delete all data (keeps Kafka jars)
#   tls-up             the TLS stack, on other ports (deploy/local/tls.sh): a CA and certificates
#                      in .local/tls/, Kafka SSL :19093 and SASL_SSL (SCRAM) :19094, MariaDB with
#                      TLS required :13306, Redis tls-port :16379
#   tls-stop | tls-status | tls-reset   the same for the TLS stack (reset deletes its certificates)
# Components: kafka mariadb redis prometheus
#
# Environment knobs:
#   KAFKA_VERSION   override the Kafka version pinned in deploy/local/kafka/pom.xml
#   KAFKA_HEAP_OPTS JVM heap flags for the broker (default: -Xms512m -Xmx1g)
#   PROMETHEUS_CONFIG  prometheus config (default: deploy/prometheus/prometheus.yml)
#   MARIADB_BUFFER_POOL InnoDB buffer pool size (default: 1G; MariaDB's own default of 128M makes
#                   every write to a tasks table of a few million rows read index pages from disk)
#
# Over 400 lines because it runs four components the same way (install, start, wait until ready,
# stop, status) with the process helpers at the top; the per-component functions would move to
# files of their own first, Kafka's (install and start) before the others.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${SCRIPT_DIR}/../.." && pwd)"
LOCAL="${REPO}/.local"

KAFKA_SRC="${SCRIPT_DIR}/kafka"
KAFKA_DIR="${LOCAL}/kafka"
KAFKA_LIBS="${KAFKA_DIR}/libs"
KAFKA_DATA="${KAFKA_DIR}/data"
KAFKA_CONF="${KAFKA_DIR}/server.properties"
KAFKA_LOG="${KAFKA_DIR}/kafka.log"
KAFKA_PID="${KAFKA_DIR}/kafka.pid"
KAFKA_CLUSTER_ID="${KAFKA_DIR}/cluster.id"
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093

MARIADB_DIR="${LOCAL}/mariadb"
MARIADB_DATA="${MARIADB_DIR}/data"
MARIADB_SOCK="${MARIADB_DIR}/mysqld.sock"
MARIADB_PID="${MARIADB_DIR}/mysqld.pid"
MARIADB_LOG="${MARIADB_DIR}/error.log"
MARIADB_PORT=3306

REDIS_DIR="${LOCAL}/redis"
REDIS_PID="${REDIS_DIR}/redis.pid"
REDIS_LOG="${REDIS_DIR}/redis.log"
REDIS_PORT=6379

PROM_CONFIG="${PROMETHEUS_CONFIG:-${REPO}/deploy/prometheus/prometheus.yml}"
PROM_DIR="${LOCAL}/prometheus"
PROM_DATA="${PROM_DIR}/data"
PROM_PID="${PROM_DIR}/prometheus.pid"
PROM_LOG="${PROM_DIR}/prometheus.log"
PROM_PORT=9090

ALL_COMPONENTS=(kafka mariadb redis prometheus)

# shellcheck source=deploy/local/tls.sh
source "${SCRIPT_DIR}/tls.sh"

# ---------------------------------------------------------------- helpers ---

log() { printf '[stack] %s\n' "$*" >&2; }
die() { printf '[stack] ERROR: %s\n' "$*" >&2; exit 1; }

now_ms() { date +%s%3N; }

port_open() {
    # true when something accepts TCP connections on 127.0.0.1:$1
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# proc_alive PID: PID is a live, non-zombie process.
proc_alive() {
    local state
    kill -0 "$1" 2>/dev/null || return 1
    state=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null || true)
    [[ -n ${state} && ${state} != Z ]]
}

# pid_alive PIDFILE PATTERN: the pid in PIDFILE is a live (non-zombie) process
# whose command line contains PATTERN (guards against recycled pids).
pid_alive() {
    local pidfile=$1 pattern=$2 pid
    [[ -s ${pidfile} ]] || return 1
    pid=$(tr -dc '0-9' <"${pidfile}")
    [[ -n ${pid} ]] || return 1
    proc_alive "${pid}" || return 1
    tr '\0' ' ' <"/proc/${pid}/cmdline" 2>/dev/null | grep -q -- "${pattern}"
}

read_pid() { tr -dc '0-9' <"$1" 2>/dev/null || true; }

# Who listens on a port (for error messages).
port_owner() {
    if command -v ss >/dev/null 2>&1; then
        ss -ltnpH "sport = :$1" 2>/dev/null | sed 's/^/    /' || true
    fi
}

# start_bg PIDFILE LOGFILE CMD...: run CMD detached (own session, survives this
# shell), stdout+stderr appended to LOGFILE; the wrapper writes its own pid and
# then execs CMD, so the pid file holds CMD's real pid.
start_bg() {
    local pidfile=$1 logfile=$2
    shift 2
    rm -f "${pidfile}"
    # shellcheck disable=SC2016 # $$ / $0 / $@ expand in the inner shell
    nohup setsid bash -c 'echo $$ >"$0"; exec "$@"' "${pidfile}" "$@" \
        >>"${logfile}" 2>&1 </dev/null &
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -s ${pidfile} ]] && return 0
        sleep 0.1
    done
    die "process for ${pidfile} did not start (see ${logfile})"
}

# stop_pid NAME PIDFILE PATTERN TIMEOUT_S: SIGTERM, wait, SIGKILL as last resort.
stop_pid() {
    local name=$1 pidfile=$2 pattern=$3 timeout=$4 pid i
    if ! pid_alive "${pidfile}" "${pattern}"; then
        rm -f "${pidfile}"
        log "${name}: not running"
        return 0
    fi
    pid=$(read_pid "${pidfile}")
    log "${name}: stopping (pid ${pid}, SIGTERM)"
    kill -TERM "${pid}" 2>/dev/null || true
    # Wait on the pid itself: mariadbd/redis remove their pid file before exiting.
    for ((i = 0; i < timeout * 10; i++)); do
        proc_alive "${pid}" || break
        sleep 0.1
    done
    if proc_alive "${pid}"; then
        log "${name}: still alive after ${timeout}s, sending SIGKILL"
        kill -KILL "${pid}" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "${pidfile}"
    log "${name}: stopped"
}

fail_with_log() {
    local name=$1 logfile=$2 msg=$3
    printf '[stack] ERROR: %s: %s\n--- last 40 lines of %s ---\n' "${name}" "${msg}" "${logfile}" >&2
    tail -n 40 "${logfile}" >&2 2>/dev/null || true
    exit 1
}

# Refuse to start when the port is taken by something that is not ours.
check_port_free() {
    local name=$1 port=$2
    if port_open "${port}"; then
        printf '[stack] ERROR: %s: port 127.0.0.1:%s is already in use by another process:\n' \
            "${name}" "${port}" >&2
        port_owner "${port}" >&2
        exit 1
    fi
}

# await_ready NAME LOGFILE PIDFILE SECONDS ALIVE CHECK...: runs CHECK every 0.1 s until it
# succeeds, then logs NAME's pid and how long it took. Fails with the log's tail when ALIVE (a
# command: is the process still there? `true` for a server that daemonizes itself) fails, or
# after SECONDS.
await_ready() {
    local name=$1 logfile=$2 pidfile=$3 seconds=$4 alive=$5 i
    shift 5
    for ((i = 0; i < seconds * 10; i++)); do
        "${alive}" || fail_with_log "${name}" "${logfile}" "process exited during startup"
        if "$@"; then
            log "${name}: up (pid $(read_pid "${pidfile}"), $((i / 10)).$((i % 10))s)"
            return 0
        fi
        sleep 0.1
    done
    fail_with_log "${name}" "${logfile}" "not ready after ${seconds}s"
}

# http_ok URL: URL answers 2xx within 2 s.
http_ok() { curl -fsS -m 2 "$1" >/dev/null 2>&1; }

prometheus_enabled() { [[ -f ${PROM_CONFIG} ]]; }

default_components() {
    local c=(kafka mariadb redis)
    if prometheus_enabled; then
        c+=(prometheus)
    else
        log "prometheus: skipped (${PROM_CONFIG#"${REPO}"/} does not exist yet)"
    fi
    printf '%s\n' "${c[@]}"
}

validate_component() {
    case $1 in
    kafka | mariadb | redis | prometheus) ;;
    *) die "unknown component '$1' (expected: ${ALL_COMPONENTS[*]})" ;;
    esac
}

as_root() {
    if [[ ${EUID} -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root for: $*"
    fi
}

# ---------------------------------------------------------------- install ---

have() { command -v "$1" >/dev/null 2>&1; }

# missing_packages: prints the Debian packages that provide what is missing, space-separated.
missing_packages() {
    local -a pkgs=()
    if ! { have mariadbd || have mysqld || [[ -x /usr/sbin/mariadbd ]]; } || ! have mariadb-install-db; then
        pkgs+=(mariadb-server)
    fi
    if ! have mariadb || ! have mariadb-admin; then pkgs+=(mariadb-client); fi
    if ! have redis-server || ! have redis-cli; then pkgs+=(redis-server); fi
    have kcat || pkgs+=(kcat)
    if ! have prometheus || ! have promtool; then pkgs+=(prometheus); fi
    have curl || pkgs+=(curl)
    have openssl || pkgs+=(openssl) # tls-up makes its CA and certificates with it
    have setsid || pkgs+=(util-linux)
    have java || pkgs+=(openjdk-17-jre-headless)
    have mvn || pkgs+=(maven)
    # librdkafka is compiled from source by the rdkafka crate (cmake-build).
    have cmake || pkgs+=(cmake)
    have pkg-config || pkgs+=(pkg-config)
    if ! have cc || ! have c++ || ! have make; then pkgs+=(build-essential); fi
    local p
    for p in libssl-dev zlib1g-dev; do
        dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed' || pkgs+=("${p}")
    done
    echo "${pkgs[*]}"
}

install_packages() {
    local -a pkgs=()
    read -r -a pkgs <<<"$(missing_packages)"
    if [[ ${#pkgs[@]} -eq 0 ]]; then
        log "install: system packages already present"
        return 0
    fi
    have apt-get || die "missing ${pkgs[*]} and this machine has no apt-get: install them by hand"
    log "install: apt-get install ${pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}"
}

kafka_stamp_value() {
    local sum
    sum=$(sha256sum <"${KAFKA_SRC}/pom.xml" | cut -c1-16)
    printf 'pom=%s version=%s\n' "${sum}" "${KAFKA_VERSION:-default}"
}

# install_kafka [quiet]: resolve the jars unless the stamp says they are current.
install_kafka() {
    local stamp="${KAFKA_LIBS}/.stamp" want
    want=$(kafka_stamp_value)
    if [[ -f ${stamp} && "$(cat "${stamp}")" == "${want}" ]]; then
        [[ ${1:-} == quiet ]] || log "install: kafka jars up to date ($(kafka_version))"
        return 0
    fi
    command -v mvn >/dev/null 2>&1 || die "mvn not found (run: $0 install)"
    log "install: resolving Kafka jars from Maven Central into ${KAFKA_LIBS#"${REPO}"/}"
    mkdir -p "${KAFKA_DIR}"
    local tmp="${KAFKA_DIR}/libs.tmp"
    rm -rf "${tmp}"
    local -a mvn_args=(-q -B -Dstyle.color=never -f "${KAFKA_SRC}/pom.xml" dependency:copy-dependencies
        -DincludeScope=runtime "-DoutputDirectory=${tmp}")
    if [[ -n ${KAFKA_VERSION:-} ]]; then
        mvn_args+=("-Dkafka.version=${KAFKA_VERSION}")
    fi
    if ! mvn "${mvn_args[@]}"; then
        rm -rf "${tmp}"
        die "maven could not resolve the Kafka artifacts (see output above)"
    fi
    rm -rf "${KAFKA_LIBS}"
    mv "${tmp}" "${KAFKA_LIBS}"
    printf '%s' "${want}" >"${stamp}"
    log "install: kafka $(kafka_version) ready ($(find "${KAFKA_LIBS}" -name '*.jar' | wc -l) jars)"
}

kafka_version() {
    local jar
    jar=$(find "${KAFKA_LIBS}" -maxdepth 1 -name 'kafka_2.13-*.jar' -print -quit 2>/dev/null || true)
    if [[ -z ${jar} ]]; then
        echo "not-installed"
        return 0
    fi
    jar=${jar##*/kafka_2.13-}
    echo "${jar%.jar}"
}

cmd_install() {
    install_packages
    install_kafka
}

# ------------------------------------------------------------------ kafka ---

kafka_java() {
    java -Dlog4j2.configurationFile="${KAFKA_SRC}/log4j2.xml" -cp "${KAFKA_LIBS}/*" "$@"
}

kafka_running() { pid_alive "${KAFKA_PID}" kafka.Kafka; }

start_kafka() {
    if kafka_running && port_open "${KAFKA_PORT}"; then
        log "kafka: already up (pid $(read_pid "${KAFKA_PID}"))"
        return 0
    fi
    if kafka_running; then
        # Process exists but port not open yet (still starting): just wait.
        wait_kafka_ready port
        return 0
    fi
    check_port_free kafka "${KAFKA_PORT}"
    check_port_free kafka-controller "${KAFKA_CONTROLLER_PORT}"
    command -v java >/dev/null 2>&1 || die "java not found (run: $0 install)"
    install_kafka quiet
    mkdir -p "${KAFKA_DATA}"
    sed -e "s#@DATA_DIR@#${KAFKA_DATA}#g" "${KAFKA_SRC}/server.properties" >"${KAFKA_CONF}"

    if [[ ! -f ${KAFKA_DATA}/meta.properties ]]; then
        if [[ ! -s ${KAFKA_CLUSTER_ID} ]]; then
            kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1 | tr -d '[:space:]' >"${KAFKA_CLUSTER_ID}"
            [[ -s ${KAFKA_CLUSTER_ID} ]] || die "kafka: could not generate a cluster id"
        fi
        log "kafka: formatting storage (cluster id $(cat "${KAFKA_CLUSTER_ID}"))"
        kafka_java kafka.tools.StorageTool format --ignore-formatted \
            -t "$(cat "${KAFKA_CLUSTER_ID}")" -c "${KAFKA_CONF}" >>"${KAFKA_LOG}" 2>&1 ||
            fail_with_log kafka "${KAFKA_LOG}" "storage format failed"
    fi

    local offset=0
    [[ -f ${KAFKA_LOG} ]] && offset=$(stat -c %s "${KAFKA_LOG}")
    log "kafka: starting $(kafka_version) on 127.0.0.1:${KAFKA_PORT}"
    local -a heap
    read -r -a heap <<<"${KAFKA_HEAP_OPTS:--Xms512m -Xmx1g}"
    (
        cd "${KAFKA_DIR}"
        start_bg "${KAFKA_PID}" "${KAFKA_LOG}" \
            java "${heap[@]}" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
            -Dkafka.logs.dir="${KAFKA_DIR}" \
            -Dlog4j2.configurationFile="${KAFKA_SRC}/log4j2.xml" \
            -cp "${KAFKA_LIBS}/*" kafka.Kafka "${KAFKA_CONF}"
    )
    wait_kafka_ready "${offset}"
}

# kafka_started LOGFILE LOG_OFFSET|port PORT: "Kafka Server started" logged after byte
# LOG_OFFSET (an old line from a previous run does not count) and PORT open; "port" = only the
# port (process started by an earlier run).
kafka_started() {
    local logfile=$1 offset=$2 port=$3
    # Not `tail | grep -q`: under pipefail, grep's early exit on a match kills tail with
    # SIGPIPE once more than a pipe buffer of log follows the line (a broker deleting many
    # old test topics logs megabytes after it), and the pipeline then reads as "not found".
    if [[ ${offset} != port ]] &&
        ! grep -q 'Kafka Server started' < <(tail -c +"$((offset + 1))" "${logfile}" 2>/dev/null); then
        return 1
    fi
    port_open "${port}"
}

# wait_kafka_ready LOG_OFFSET|port: up to 90 s for kafka_started.
wait_kafka_ready() {
    await_ready kafka "${KAFKA_LOG}" "${KAFKA_PID}" 90 kafka_running \
        kafka_started "${KAFKA_LOG}" "$1" "${KAFKA_PORT}"
}

stop_kafka() { stop_pid kafka "${KAFKA_PID}" kafka.Kafka 60; }

# ---------------------------------------------------------------- mariadb ---

mariadb_bin() {
    local b
    for b in mariadbd mysqld /usr/sbin/mariadbd /usr/sbin/mysqld; do
        if command -v "${b}" >/dev/null 2>&1; then
            command -v "${b}"
            return 0
        fi
    done
    die "mariadbd/mysqld not found (run: $0 install)"
}

mariadb_running() { pid_alive "${MARIADB_PID}" "${MARIADB_DATA}"; }

mariadb_root() { mariadb --no-defaults --socket="${MARIADB_SOCK}" -uroot "$@"; }

# mariadb_start NAME DIR PORT NOTE OPTION...: a server on 127.0.0.1:PORT in the background, its
# data dir (initialized on first use), socket, pid file, error log and tmpdir in DIR; NOTE ends
# the "starting" line, OPTIONs are the server's own.
mariadb_start() {
    local name=$1 dir=$2 port=$3 note=$4
    shift 4
    mkdir -p "${dir}"
    if [[ ! -d ${dir}/data/mysql ]]; then
        log "${name}: initializing data dir"
        rm -rf "${dir}/data"
        mariadb-install-db --no-defaults --user=root --datadir="${dir}/data" \
            --auth-root-authentication-method=normal --skip-test-db \
            >>"${dir}/error.log" 2>&1 || fail_with_log "${name}" "${dir}/error.log" "mariadb-install-db failed"
    fi
    log "${name}: starting on 127.0.0.1:${port}${note}"
    start_bg "${dir}/mysqld.pid" "${dir}/error.log" \
        "$(mariadb_bin)" --no-defaults --user=root \
        --datadir="${dir}/data" \
        --socket="${dir}/mysqld.sock" \
        --port="${port}" \
        --bind-address=127.0.0.1 \
        --pid-file="${dir}/mysqld.pid" \
        --log-error="${dir}/error.log" \
        --tmpdir="${dir}" \
        "$@"
}

# mariadb_answers SOCKET PORT: the server answers a ping on SOCKET and listens on PORT.
mariadb_answers() {
    mariadb-admin --no-defaults --socket="$1" -uroot ping >/dev/null 2>&1 && port_open "$2"
}

start_mariadb() {
    if mariadb_running && port_open "${MARIADB_PORT}"; then
        log "mariadb: already up (pid $(read_pid "${MARIADB_PID}"))"
        ensure_mariadb_users
        return 0
    fi
    if ! mariadb_running; then
        check_port_free mariadb "${MARIADB_PORT}"
        mariadb_start mariadb "${MARIADB_DIR}" "${MARIADB_PORT}" "" \
            --innodb_flush_log_at_trx_commit=1 \
            --innodb_buffer_pool_size="${MARIADB_BUFFER_POOL:-1G}" \
            --sync_binlog=1 \
            --max_connections=500 \
            --character-set-server=utf8mb4 \
            --collation-server=utf8mb4_bin
    fi
    await_ready mariadb "${MARIADB_LOG}" "${MARIADB_PID}" 60 mariadb_running \
        mariadb_answers "${MARIADB_SOCK}" "${MARIADB_PORT}"
    ensure_mariadb_users
}

ensure_mariadb_users() {
    mariadb_root --batch -e 'CREATE DATABASE IF NOT EXISTS dispatch;'
    mariadb_grant_dispatch "${MARIADB_SOCK}"
}

# mariadb_grant_dispatch SOCKET: user `dispatch` (password `dispatch`, every privilege) from
# 127.0.0.1 and localhost on the server at SOCKET, and no anonymous user.
mariadb_grant_dispatch() {
    mariadb --no-defaults --socket="$1" -uroot --batch <<'SQL'
CREATE USER IF NOT EXISTS 'dispatch'@'127.0.0.1' IDENTIFIED BY 'dispatch';
CREATE USER IF NOT EXISTS 'dispatch'@'localhost' IDENTIFIED BY 'dispatch';
GRANT ALL PRIVILEGES ON *.* TO 'dispatch'@'127.0.0.1';
GRANT ALL PRIVILEGES ON *.* TO 'dispatch'@'localhost';
DROP USER IF EXISTS ''@'localhost';
FLUSH PRIVILEGES;
SQL
}

stop_mariadb() { stop_pid mariadb "${MARIADB_PID}" "${MARIADB_DATA}" 60; }

# ------------------------------------------------------------------ redis ---

redis_running() { pid_alive "${REDIS_PID}" "redis-server"; }

# redis_pong PORT [REDIS-CLI OPTION...]: the server on 127.0.0.1:PORT answers PING.
redis_pong() {
    local port=$1
    shift
    [[ "$(redis-cli "$@" -h 127.0.0.1 -p "${port}" ping 2>/dev/null)" == PONG ]]
}

start_redis() {
    if redis_running && port_open "${REDIS_PORT}"; then
        log "redis: already up (pid $(read_pid "${REDIS_PID}"))"
        return 0
    fi
    if ! redis_running; then
        check_port_free redis "${REDIS_PORT}"
        command -v redis-server >/dev/null 2>&1 || die "redis-server not found (run: $0 install)"
        mkdir -p "${REDIS_DIR}"
        log "redis: starting on 127.0.0.1:${REDIS_PORT}"
        # redis daemonizes itself (setsid + pidfile).
        redis-server --bind 127.0.0.1 --port "${REDIS_PORT}" --dir "${REDIS_DIR}" \
            --daemonize yes --pidfile "${REDIS_PID}" --logfile "${REDIS_LOG}" \
            --save '' --appendonly no </dev/null >/dev/null 2>&1 ||
            fail_with_log redis "${REDIS_LOG}" "redis-server failed to start"
    fi
    await_ready redis "${REDIS_LOG}" "${REDIS_PID}" 10 true redis_pong "${REDIS_PORT}"
}

stop_redis() { stop_pid redis "${REDIS_PID}" "redis-server" 20; }

# ------------------------------------------------------------- prometheus ---

prom_running() { pid_alive "${PROM_PID}" "prometheus"; }

start_prometheus() {
    if ! prometheus_enabled; then
        log "prometheus: skipped (${PROM_CONFIG#"${REPO}"/} does not exist yet)"
        return 0
    fi
    if prom_running && port_open "${PROM_PORT}"; then
        log "prometheus: already up (pid $(read_pid "${PROM_PID}"))"
        return 0
    fi
    if ! prom_running; then
        check_port_free prometheus "${PROM_PORT}"
        command -v prometheus >/dev/null 2>&1 || die "prometheus not found (run: $0 install)"
        mkdir -p "${PROM_DATA}"
        if command -v promtool >/dev/null 2>&1; then
            promtool check config "${PROM_CONFIG}" >>"${PROM_LOG}" 2>&1 ||
                fail_with_log prometheus "${PROM_LOG}" "promtool check config failed"
        fi
        log "prometheus: starting on 127.0.0.1:${PROM_PORT}"
        start_bg "${PROM_PID}" "${PROM_LOG}" \
            prometheus --config.file="${PROM_CONFIG}" \
            --storage.tsdb.path="${PROM_DATA}" \
            --web.listen-address="127.0.0.1:${PROM_PORT}" \
            --web.enable-lifecycle
    fi
    await_ready prometheus "${PROM_LOG}" "${PROM_PID}" 30 prom_running \
        http_ok "http://127.0.0.1:${PROM_PORT}/-/ready"
}

stop_prometheus() { stop_pid prometheus "${PROM_PID}" "prometheus" 30; }

# --------------------------------------------------------------- commands ---

status_line() {
    local name=$1 pidfile=$2 pattern=$3 port=$4 extra=${5:-} state pid=-
    if pid_alive "${pidfile}" "${pattern}"; then
        pid=$(read_pid "${pidfile}")
        if port_open "${port}"; then state=up; else state=starting; fi
    elif port_open "${port}"; then
        state=foreign # port taken, but not by our process
    else
        state=down
    fi
    printf '%-11s %-9s pid=%-8s 127.0.0.1:%-6s %s\n' "${name}" "${state}" "${pid}" "${port}" "${extra}"
}

cmd_status() {
    status_line kafka "${KAFKA_PID}" kafka.Kafka "${KAFKA_PORT}" \
        "version=$(kafka_version) controller=:${KAFKA_CONTROLLER_PORT}"
    status_line mariadb "${MARIADB_PID}" "${MARIADB_DATA}" "${MARIADB_PORT}" "socket=${MARIADB_SOCK#"${REPO}"/}"
    status_line redis "${REDIS_PID}" redis-server "${REDIS_PORT}"
    if prometheus_enabled; then
        status_line prometheus "${PROM_PID}" prometheus "${PROM_PORT}"
    else
        printf '%-11s %-9s (no deploy/prometheus/prometheus.yml)\n' prometheus disabled
    fi
}

component_log() {
    case $1 in
    kafka) echo "${KAFKA_LOG}" ;;
    mariadb) echo "${MARIADB_LOG}" ;;
    redis) echo "${REDIS_LOG}" ;;
    prometheus) echo "${PROM_LOG}" ;;
    esac
}

cmd_logs() {
    [[ $# -ge 1 ]] || die "usage: $0 logs <component> [-f]"
    validate_component "$1"
    local file
    file=$(component_log "$1")
    [[ -f ${file} ]] || die "$1: no log yet (${file})"
    if [[ ${2:-} == -f ]]; then
        exec tail -n "${LINES:-100}" -F "${file}"
    fi
    tail -n "${LINES:-100}" "${file}"
}

# resolve_components ARGS...: sets COMPONENTS to the arguments (validated) or
# to the defaults when there are none.
COMPONENTS=()
resolve_components() {
    COMPONENTS=()
    if [[ $# -eq 0 ]]; then
        mapfile -t COMPONENTS < <(default_components)
        return 0
    fi
    local c
    for c in "$@"; do
        validate_component "${c}"
        COMPONENTS+=("${c}")
    done
}

cmd_start() {
    resolve_components "$@"
    mkdir -p "${LOCAL}"
    local c
    for c in "${COMPONENTS[@]}"; do
        "start_${c}"
    done
}

cmd_stop() {
    if [[ $# -eq 0 ]]; then
        COMPONENTS=(prometheus kafka redis mariadb)
    else
        resolve_components "$@"
    fi
    local c
    for c in "${COMPONENTS[@]}"; do
        "stop_${c}"
    done
}

cmd_reset() {
    cmd_stop
    log "reset: deleting data under ${LOCAL#"${REPO}"/} (Kafka jars are kept)"
    rm -rf "${KAFKA_DATA}" "${KAFKA_CLUSTER_ID}" "${KAFKA_CONF}" "${KAFKA_LOG}" \
        "${MARIADB_DIR}" "${REDIS_DIR}" "${PROM_DIR}"
}

cmd_up() {
    local start_ms
    start_ms=$(now_ms)
    cmd_install
    cmd_start "$@"
    local ms=$(($(now_ms) - start_ms))
    printf '[stack] up: done in %d.%03ds\n' $((ms / 1000)) $((ms % 1000))
}

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
}

main() {
    local cmd=${1:-}
    [[ $# -gt 0 ]] && shift
    case ${cmd} in
    up) cmd_up "$@" ;;
    install) cmd_install ;;
    missing-packages) missing_packages ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    restart)
        cmd_stop "$@"
        cmd_start "$@"
        ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    reset) cmd_reset ;;
    tls-up) cmd_tls_up ;;
    tls-stop) cmd_tls_stop ;;
    tls-status) cmd_tls_status ;;
    tls-reset) cmd_tls_reset ;;
    -h | --help | help) usage ;;
    *)
        usage >&2
        exit 2
        ;;
    esac
}

main "$@"
