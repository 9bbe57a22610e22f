#!/usr/bin/env bash
# Runs the dispatch services on loopback against the local stack (deploy/local/stack.sh).
#
# Usage: deploy/local/services.sh <command>
#   start [svc...]   build (cargo), migrate, create topics, start services (default: all)
#   stop  [svc...]   SIGTERM each service and wait for its drain (default: all)
#   status   one line per service
#   logs <svc> [-f]
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

admin_port() {
    case "$1" in gateway) echo 9601 ;; reader) echo 9602 ;; processor) echo 9603 ;; esac
}

is_running() {
    local pid_file="${RUN_DIR}/$1.pid"
    [[ -f "${pid_file}" ]] && kill -0 "$(cat "${pid_file}")" 2>/dev/null
}

build() {
    local flags=(--locked -p dispatch-gateway -p dispatch-processor -p dispatch-reader -p dispatchctl)
    [[ "${PROFILE}" == "release" ]] && flags+=(--release)
    log "building services (${PROFILE})"
    (cd "${REPO}" && cargo build "${flags[@]}")
}

start_one() {
    local svc="$1" bin
    bin="$(bin_dir)/dispatch-${svc}"
    if is_running "${svc}"; then
        log "${svc} already running (pid $(cat "${RUN_DIR}/${svc}.pid"))"
        return
    fi
    DISPATCH_CONFIG="${SCRIPT_DIR}/config/${svc}.toml" nohup "${bin}" >>"${RUN_DIR}/${svc}.log" 2>&1 &
    echo $! >"${RUN_DIR}/${svc}.pid"
}

wait_ready() {
    local svc="$1" port deadline
    port="$(admin_port "${svc}")"
    deadline=$((SECONDS + 60))
    until curl -sf "http://127.0.0.1:${port}/readyz" >/dev/null; do
        if ! is_running "${svc}"; then
            log "${svc} exited; last log lines:"; tail -n 20 "${RUN_DIR}/${svc}.log" >&2; return 1
        fi
        if ((SECONDS > deadline)); then
            log "${svc} not ready after 60 s: $(curl -s "http://127.0.0.1:${port}/readyz")"; return 1
        fi
        sleep 0.2
    done
    log "${svc} ready (admin http://127.0.0.1:${port})"
}

cmd_start() {
    local targets=("$@")
    ((${#targets[@]})) || targets=("${SERVICES[@]}")
    mkdir -p "${RUN_DIR}"
    [[ "${SKIP_BUILD:-0}" == "1" ]] || build
    "$(bin_dir)/dispatchctl" migrate --database-url "mysql://dispatch:dispatch@127.0.0.1:3306/dispatch" up >/dev/null
    "$(bin_dir)/dispatchctl" topics create --partitions 6 >/dev/null
    for svc in "${targets[@]}"; do start_one "${svc}"; done
    for svc in "${targets[@]}"; do wait_ready "${svc}"; done
    log "gateway gRPC 127.0.0.1:50051, reader gRPC 127.0.0.1:50052, processor admin gRPC 127.0.0.1:50053"
}

cmd_stop() {
    local svc pid targets=("$@")
    ((${#targets[@]})) || targets=("${SERVICES[@]}")
    for svc in "${targets[@]}"; do
        is_running "${svc}" || continue
        pid="$(cat "${RUN_DIR}/${svc}.pid")"
        kill -TERM "${pid}"
        for _ in $(seq 1 300); do kill -0 "${pid}" 2>/dev/null || break; sleep 0.1; done
        kill -0 "${pid}" 2>/dev/null && kill -KILL "${pid}"
        rm -f "${RUN_DIR}/${svc}.pid"
        log "${svc} stopped"
    done
}

cmd_status() {
    local svc
    for svc in "${SERVICES[@]}"; do
        if is_running "${svc}"; then
            printf '%-10s up    pid %-7s %s\n' "${svc}" "$(cat "${RUN_DIR}/${svc}.pid")" "$(curl -s "http://127.0.0.1:$(admin_port "${svc}")/readyz" || true)"
        else
            printf '%-10s down\n' "${svc}"
        fi
    done
}

case "${1:-}" in
    start) shift; cmd_start "$@" ;;
    stop) shift; cmd_stop "$@" ;;
    restart) shift; cmd_stop "$@"; cmd_start "$@" ;;
    status) cmd_status ;;
    logs) shift; tail -n "${LINES:-50}" "${@:2}" "${RUN_DIR}/${1:?service}.log" ;;
    *) sed -n '2,15p' "$0"; exit 2 ;;
esac
