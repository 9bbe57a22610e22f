#!/usr/bin/env bash
# A few seconds of real traffic through the running services (deploy/local/services.sh), so the
# load tooling cannot rot: end-to-end (submit -> processed -> visible on the reader), submit, batch
# and get. Fails on any gRPC error. PROFILE picks the cargo profile of the binaries (default debug);
# SKIP_BUILD=1 uses the built ones.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PROFILE="${PROFILE:-debug}"
LOADGEN="${CARGO_TARGET_DIR:-${REPO}/target}/${PROFILE}/dispatch-loadgen"
OUT="${REPO}/.local/smoke"
mkdir -p "${OUT}"
if [[ "${SKIP_BUILD:-0}" != "1" ]]; then
    (cd "${REPO}" && cargo build -q --locked -p dispatch-loadtest $([[ "${PROFILE}" == "release" ]] && echo --release))
fi

run() {
    local name="$1"; shift
    "${LOADGEN}" run --warmup-s 0.5 --duration-s 2 --json "${OUT}/${name}.json" --label smoke "$@"
    python3 - "${OUT}/${name}.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
if r["errors"] or r["ok"] == 0:
    sys.exit(f"smoke {r['scenario']}: {r['ok']} ok, errors {r['errors_by_code']}")
PY
}

run e2e --scenario e2e --rate 20 --task-type simulate
run submit --scenario submit --rate 200
run batch --scenario batch --rate 5 --batch 100
run get --scenario get --rate 200 --get-set 50
echo "smoke: all scenarios passed"
