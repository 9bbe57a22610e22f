#!/usr/bin/env bash
# Checks dashboards and alert rules against the live /metrics of a running local stack
# (gateway 9601, reader 9602, processor 9603) and the catalogue docs/metrics.md.
# Thin wrapper around scripts/check-observability.sh --live; extra arguments (URLs,
# --strict-lint) are passed through.
set -euo pipefail
exec "$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/scripts/check-observability.sh" --live "$@"
