#!/usr/bin/env bash
# Runs the dispatch services on loopback against the local stack (deploy/local/stack.sh).
#
# Usage: deploy/local/services.sh <command>
#   start [svc...]   build (cargo), migrate, create topics, start services (default: all)
#   stop  [svc...]   SIGTERM each service and wait for its drain (default: all)
#   status   one line per running instance
#   logs <svc> [-f]
#   pid <svc>        the pid of one instance (e.g. processor-2)
#   metrics-urls     the /metrics URL of every running instance, one per line
#
# A svc is a service (gateway, processor, reader: all its instances) or one instance of it
# (processor-2; processor-1 is the same as instance 1 alone). Instances per service: GATEWAYS, PROCESSORS, READERS (default 1 each). Instance 1
# keeps the plain names and ports; instance k > 1 is <svc>-k, with its own pid and log files and
# ports 10 * (k - 1) above instance 1's (the processor's admin HTTP and gRPC ports included):
#   gateway   gRPC 50051, 50061, ...   admin http 9601, 9611, ...
#   reader    gRPC 50052, 50062, ...   admin http 9602, 9612, ...
#   processor gRPC 50053, 50063, ...   admin http 9603, 9613, ...
#
# Config: deploy/local/config/<service>.toml (DISPATCH_CONFIG); logs and pids under .local/services/.
# PROFILE=release|debug (default release) picks the cargo profile.
#
# Local API keys (hashes in the config files): tenant "acme" = dev-key-acme,
# tenant "globex" = dev-key-globex, admin = dev-admin-key.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "${SCRIPT_DIR}/../.." && pwd)"
RUN_DIR="${REPO}/.local/services"
PROFILE="${PROFILE:-release}"
SERVICES=(gateway processor reader)

log() { printf '[services] %s\n' "$*" >&2; }

bin_dir() {
    if [[ "${PROFILE}" == "release" ]]; then echo "${CARGO_TARGET_DIR:-${REPO}/target}/release"; else echo "${CARGO_TARGET_DIR:-${REPO}/target}/debug"; fi
}

# service of an instance name: processor-2 -> processor
svc_of() { echo "${1%%-[0-9]*}"; }
# number of an instance name: processor -> 1, processor-2 -> 2
num_of() { if [[ "$1" == *-[0-9]* ]]; then echo "${1##*-}"; else echo 1; fi; }
# instance name of (service, number)
inst_name() { if (($2 == 1)); then echo "$1"; else echo "$1-$2"; fi; }

count_of() {
    local n
    case "$1" in
        gateway) n="${GATEWAYS:-1}" ;;
        processor) n="${PROCESSORS:-1}" ;;
        reader) n="${READERS:-1}" ;;
        *) log "unknown service $1 (gateway, processor, reader)"; exit 2 ;;
    esac
    [[ "${n}" =~ ^[1-9][0-9]*$ ]] || { log "instance count of $1 must be a positive number, got ${n}"; exit 2; }
    echo "${n}"
}

base_offset() { case "$1" in gateway) echo 1 ;; reader) echo 2 ;; processor) echo 3 ;; esac; }
admin_port() { local s n; s="$(svc_of "$1")"; n="$(num_of "$1")"; echo $((9600 + $(base_offset "${s}") + 10 * (n - 1))); }
grpc_port() { local s n; s="$(svc_of "$1")"; n="$(num_of "$1")"; echo $((50050 + $(base_offset "${s}") + 10 * (n - 1))); }

# Expands service names to instance names: "processor" -> the configured instances; "processor-2"
# stays itself.
expand() {
    local t k
    for t in "$@"; do
        if [[ "${t}" == *-[0-9]* ]]; then
            count_of "$(svc_of "${t}")" >/dev/null
            inst_name "$(svc_of "${t}")" "$(num_of "${t}")" # processor-1 is processor
        else
            for ((k = 1; k <= $(count_of "${t}"); k++)); do inst_name "${t}" "${k}"; done
        fi
    done
}

# Every instance with a pid file, for stop and status (whatever the counts say now).
known_instances() {
    local s f
    for s in "$@"; do
        for f in "${RUN_DIR}/${s}.pid" "${RUN_DIR}/${s}"-[0-9]*.pid; do
            [[ -f "${f}" ]] && basename "${f}" .pid
        done
    done
}

is_running() {
    local pid_file="${RUN_DIR}/$1.pid"
    [[ -f "${pid_file}" ]] && kill -0 "$(cat "${pid_file}")" 2>/dev/null
}

# Every binary of the workspace, with the flags of the test command's "binaries" stage: another
# package selection unifies dependency features differently and rebuilds ~40 crates.
build() {
    local flags=(--locked --workspace --bins)
    [[ "${PROFILE}" == "release" ]] && flags+=(--release)
    log "building services (${PROFILE})"
    (cd "${REPO}" && cargo build "${flags[@]}")
}

start_one() {
    local inst="$1" svc bin
    svc="$(svc_of "${inst}")"
    bin="$(bin_dir)/dispatch-${svc}"
    if is_running "${inst}"; then
        log "${inst} already running (pid $(cat "${RUN_DIR}/${inst}.pid"))"
        return
    fi
    # A port held by a process this checkout did not start (another clone's services, a
    # leftover of an earlier run) would answer the readiness check for an instance that died
    # on "Address already in use": refuse, naming the holder.
    local port holder
    for port in "$(admin_port "${inst}")" "$(grpc_port "${inst}")"; do
        if (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
            holder="$(ss -ltnpH "sport = :${port}" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true)"
            log "${inst}: port ${port} is already in use${holder:+ by pid ${holder} ($(readlink "/proc/${holder}/exe" 2>/dev/null || echo '?'))}; stop that process (another checkout's services?) and start again"
            return 1
        fi
    done
    if [[ "$(num_of "${inst}")" == 1 ]]; then
        DISPATCH_CONFIG="${SCRIPT_DIR}/config/${svc}.toml" nohup "${bin}" >>"${RUN_DIR}/${inst}.log" 2>&1 &
    else
        DISPATCH_CONFIG="${SCRIPT_DIR}/config/${svc}.toml" \
            DISPATCH_GRPC__LISTEN="127.0.0.1:$(grpc_port "${inst}")" \
            DISPATCH_ADMIN__LISTEN="127.0.0.1:$(admin_port "${inst}")" \
            nohup "${bin}" >>"${RUN_DIR}/${inst}.log" 2>&1 &
    fi
    echo $! >"${RUN_DIR}/${inst}.pid"
}

wait_ready() {
    local inst="$1" port deadline
    port="$(admin_port "${inst}")"
    deadline=$((SECONDS + 60))
    until curl -sf "http://127.0.0.1:${port}/readyz" >/dev/null; do
        if ! is_running "${inst}"; then
            log "${inst} exited; last log lines:"; tail -n 20 "${RUN_DIR}/${inst}.log" >&2; return 1
        fi
        if ((SECONDS > deadline)); then
            log "${inst} not ready after 60 s: $(curl -s "http://127.0.0.1:${port}/readyz")"; return 1
        fi
        sleep 0.2
    done
    log "${inst} ready (gRPC 127.0.0.1:$(grpc_port "${inst}"), admin http://127.0.0.1:${port})"
}

# The gRPC ports (50051 ...) lie inside Linux's ephemeral port range (32768-60999): a client
# connection of any process can hold one as its local port, and the service's bind then fails
# with "Address already in use" (seen in a fault run: a reader restarted 24 s after it stopped).
# Reserve them from ephemeral use where the kernel lets us (root, a writable /proc/sys).
reserve_ports() {
    local f=/proc/sys/net/ipv4/ip_local_reserved_ports want=50050-50099 have
    have="$(cat "${f}" 2>/dev/null)" || return 0
    [[ ",${have}," == *",${want},"* ]] && return 0
    if ! { echo "${have:+${have},}${want}" >"${f}"; } 2>/dev/null; then
        log "note: cannot reserve ports ${want} from ephemeral use (${f} not writable); a start can then fail with 'Address already in use'"
    fi
}

cmd_start() {
    local targets=("$@") instances inst
    ((${#targets[@]})) || targets=("${SERVICES[@]}")
    expand "${targets[@]}" >/dev/null # exits here on a bad name or count
    mapfile -t instances < <(expand "${targets[@]}")
    mkdir -p "${RUN_DIR}"
    [[ "${SKIP_BUILD:-0}" == "1" ]] || build
    "$(bin_dir)/dispatchctl" migrate --database-url "mysql://dispatch:dispatch@127.0.0.1:3306/dispatch" up >/dev/null
    "$(bin_dir)/dispatchctl" topics create --partitions 6 >/dev/null
    reserve_ports
    for inst in "${instances[@]}"; do start_one "${inst}" || exit 1; done
    for inst in "${instances[@]}"; do wait_ready "${inst}"; done
}

cmd_stop() {
    local t pid instances=() targets=("$@")
    ((${#targets[@]})) || targets=("${SERVICES[@]}")
    for t in "${targets[@]}"; do
        if [[ "${t}" == *-[0-9]* ]]; then
            instances+=("$(inst_name "$(svc_of "${t}")" "$(num_of "${t}")")")
        else
            mapfile -t -O "${#instances[@]}" instances < <(known_instances "${t}")
        fi
    done
    for t in "${instances[@]}"; do
        if ! is_running "${t}"; then rm -f "${RUN_DIR}/${t}.pid"; continue; fi
        pid="$(cat "${RUN_DIR}/${t}.pid")"
        # A stopped (SIGSTOP) process cannot drain until it is continued.
        kill -CONT "${pid}" 2>/dev/null || true
        kill -TERM "${pid}"
        for _ in $(seq 1 300); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
        kill -0 "${pid}" 2>/dev/null && kill -KILL "${pid}"
        rm -f "${RUN_DIR}/${t}.pid"
        log "${t} stopped"
    done
}

cmd_status() {
    local inst any=0
    while read -r inst; do
        [[ -n "${inst}" ]] || continue
        any=1
        if is_running "${inst}"; then
            printf '%-12s up    pid %-7s %s\n' "${inst}" "$(cat "${RUN_DIR}/${inst}.pid")" "$(curl -s "http://127.0.0.1:$(admin_port "${inst}")/readyz" || true)"
        else
            printf '%-12s down\n' "${inst}"
        fi
    done < <(known_instances "${SERVICES[@]}")
    if ((any == 0)); then for inst in "${SERVICES[@]}"; do printf '%-12s down\n' "${inst}"; done; fi
}

cmd_metrics_urls() {
    local inst
    while read -r inst; do
        [[ -n "${inst}" ]] && is_running "${inst}" && echo "http://127.0.0.1:$(admin_port "${inst}")/metrics"
    done < <(known_instances "${SERVICES[@]}")
    return 0
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    restart) shift; cmd_stop "$@"; cmd_start "$@" ;;
    status) cmd_status ;;
    metrics-urls) cmd_metrics_urls ;;
    logs) shift; tail -n "${LINES:-50}" "${@:2}" "${RUN_DIR}/${1:?service}.log" ;;
    pid) shift; i="$(inst_name "$(svc_of "${1:?instance}")" "$(num_of "$1")")"; is_running "${i}" && cat "${RUN_DIR}/${i}.pid" ;;
    *) sed -n '2,24p' "$0"; exit 2 ;;
esac
