#!/usr/bin/env bash
# The checks that need the debug binaries but not the running stack, one after another: the k6
# scripts (scripts/check-k6.sh), the observability assets (scripts/check-observability.sh) and
# the deploy manifests (scripts/check-deploy.sh: render, schemas, CRD policy, settings, kubectl
# apply --dry-run=server against a real kube-apiserver). scripts/test.sh runs it beside the test
# binaries (scripts/run-tests.sh -- scripts/check-static.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
for b in dispatch-gateway dispatch-processor dispatch-reader dispatchctl dispatch-loadgen; do
    [[ -x "${CARGO_TARGET_DIR:-target}/debug/${b}" ]] || { echo "missing binary: ${b} (built by the test build)" >&2; exit 1; }
done
export SKIP_BUILD=1
step() { printf '\n--- %s (%ds)\n' "$*" "${SECONDS}"; }
step "k6 scripts"
scripts/check-k6.sh
step "observability assets"
scripts/check-observability.sh
step "deploy manifests"
scripts/check-deploy.sh
step "static checks passed"
