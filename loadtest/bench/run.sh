#!/usr/bin/env bash
# The benchmark suite: dispatch side by side with its baselines, in one invocation, results written
# to docs/benchmarks.md. Builds release binaries and (re)starts the services with them.
#   loadtest/bench/run.sh            full suite (~10 min)
#   QUICK=1 loadtest/bench/run.sh    a short pass (for checking the tooling)
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "${REPO}"
deploy/local/stack.sh up
scripts/clean-test-state.sh
cargo build --release --locked -p dispatch-loadtest
# The asynq peer (figures 6 and 9), from the Go module proxy; GOTOOLCHAIN=local: this Go only.
(cd loadtest/peers/asynq && GOTOOLCHAIN=local go build -o "${REPO}/.local/bin/asynq-peer" .)
# Spans sampled as in production (telemetry.sampling_ratio's default, 5%; the local configs sample
# every request), unless SAMPLING_RATIO says otherwise. run.py reports it with the results.
export DISPATCH_TELEMETRY__SAMPLING_RATIO="${SAMPLING_RATIO:-0.05}"
PROFILE=release deploy/local/services.sh stop || true
PROFILE=release deploy/local/services.sh start
exec python3 loadtest/bench/run.py "$@"
