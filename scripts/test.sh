#!/usr/bin/env bash
# The test command: on a fresh machine, install what is missing, start the real local stack, then
# run every check: formatting, the dependency policy (cargo deny: licenses, bans, sources), the
# protos (buf lint, buf breaking against HEAD~1), clippy, unit and integration tests (against real
# Kafka, MariaDB, Redis, and the TLS-only ones of stack.sh tls-up), the deploy/observability/k6
# static checks, and a live smoke run of the services (metric names used by dashboards and alerts
# exist, a short load generator run).
# Idempotent. A missing tool stops it at once with one line saying how to install it
# (scripts/preflight.sh).
#
# SKIP_LIVE=1 skips the live stage (services, smoke load, fault scenarios with audits, live metrics);
# SKIP_FAULTS=1 skips only the fault scenarios.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
# shellcheck source=scripts/preflight.sh
source scripts/preflight.sh
preflight test
START=${SECONDS}
stage() { printf '\n=== %s (%ds)\n' "$*" "$((SECONDS - START))"; }

# A fresh clone gains nothing from incremental compilation, and its files more than double the
# target directory (5.9 GiB against 2.5 GiB for a clippy + test build of this workspace).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
# The build, Kafka's log and MariaDB's data need about 4 GiB; say so up front rather than fail
# half way with "No space left on device".
free_kib=$(df -Pk "${REPO}" | awk 'NR == 2 { print $4 }')
if [[ -n "${free_kib}" && "${free_kib}" -lt $((4 * 1024 * 1024)) ]]; then
    echo "warning: only $((free_kib / 1024)) MiB free under ${REPO}; the build and the stack need about 4 GiB" >&2
fi

stage "tools (buf, cargo-deny: pinned, installed when missing)"
scripts/tools.sh

stage "local stack (plain, and the TLS stack beside it: stack.sh tls-up)"
deploy/local/stack.sh up
# The TLS round trip and the bad-certificate tests (dispatch-e2e tls_stack, dispatchctl tls) run
# against it: about 10 s the first time (certificates, a second broker), 0.3 s once up.
deploy/local/stack.sh tls-up
# shellcheck source=deploy/local/env.sh
source deploy/local/env.sh
scripts/clean-test-state.sh

stage "rustfmt"
cargo fmt --all -- --check

stage "dependency policy (cargo deny check licenses bans sources; deny.toml)"
cargo deny --locked check --hide-inclusion-graph licenses bans sources

stage "protos (buf lint, buf breaking against HEAD~1; buf.yaml)"
scripts/check-proto.sh

stage "clippy and tests (unit + integration against the local stack)"
# Clippy runs inside the test build: clippy-driver compiles the workspace's crates (lints, then
# code), as `cargo clippy` does for a check, so the dependencies are compiled once, for the tests,
# not a second time in check mode (a separate `cargo clippy --workspace --all-targets` cost 328 s
# of a cold run; docs/build.md). The workspace has no benches or examples, so the test build's
# targets (lib, bins, unit and integration tests) are clippy's --all-targets. CLIPPY_ARGS holds
# clippy's arguments separated by __CLIPPY_HACKERY__ (what `cargo clippy -- -D warnings` passes).
clippy_driver="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver || true)"
[[ -x "${clippy_driver}" ]] || { echo "clippy-driver not found: run 'rustup component add clippy'" >&2; exit 1; }
# Four tests at a time in each test binary (libtest's default is the core count, 2 here): the
# integration tests mostly wait on the stack (consumer group joins, outages they play, processes
# they kill), not the CPU. Measured on 2 cores (docs/build.md): processor `it` 106 s -> 57 s, 22 s
# of CPU either way; gateway `it` 55 s -> 30 s. RUST_TEST_THREADS from the caller wins.
export RUSTC_WORKSPACE_WRAPPER="${clippy_driver}" CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
cargo test --workspace --locked --no-run
# The deploy manifests' checks (about 50 s, most of it kube-apiserver's dry runs) run beside the
# tests, which mostly wait on the stack; they need the binaries just built (`--print-config`).
deploy_log="${REPO}/.local/check-deploy.log"
mkdir -p "${REPO}/.local"
scripts/check-deploy.sh >"${deploy_log}" 2>&1 &
deploy_pid=$!
RUST_TEST_THREADS="${RUST_TEST_THREADS:-4}" cargo test --workspace --locked
unset RUSTC_WORKSPACE_WRAPPER CLIPPY_ARGS

# The live stages below run the binaries the test stage just built (every service's, dispatchctl's
# and dispatch-loadgen's integration tests make cargo build them), so nothing is rebuilt: a
# `cargo build --workspace --bins` resolves dependency features without the dev-dependencies and
# recompiled ~40 crates (110 s cold). Clippy above has checked every binary target.
stage "binaries (built by the test stage)"
for b in dispatch-gateway dispatch-processor dispatch-reader dispatchctl dispatch-loadgen; do
    [[ -x "${CARGO_TARGET_DIR:-target}/debug/${b}" ]] || { echo "missing binary: ${b}" >&2; exit 1; }
done
export SKIP_BUILD=1

stage "k6 scripts"
scripts/check-k6.sh

stage "observability assets"
scripts/check-observability.sh

stage "deploy manifests (render, schemas, CRD policy, settings; kubectl apply --dry-run=server against a real kube-apiserver; run beside the tests)"
deploy_rc=0
wait "${deploy_pid}" || deploy_rc=$?
cat "${deploy_log}"
((deploy_rc == 0)) || { echo "scripts/check-deploy.sh failed (exit ${deploy_rc})" >&2; exit 1; }

if [[ "${SKIP_LIVE:-0}" != "1" ]]; then
    stage "live smoke: services, metrics, load generator"
    trap 'PROFILE=debug deploy/local/services.sh stop || true' EXIT
    PROFILE=debug deploy/local/services.sh start
    scripts/smoke.sh
    if [[ "${SKIP_FAULTS:-0}" != "1" ]]; then
        stage "fault scenarios (short) with audits"
        PROFILE=debug loadtest/faults/run.sh
    fi
    stage "live metrics: every dashboard/alert metric exported, promtool check metrics"
    scripts/check-observability.sh --live
    PROFILE=debug deploy/local/services.sh stop
    trap - EXIT
fi

stage "all checks passed"
