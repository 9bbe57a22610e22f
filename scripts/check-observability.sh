#!/usr/bin/env bash
# Checks the observability assets: Prometheus config, alert rules and their unit tests, Grafana
# dashboards, and that every metric they use is in the catalogue (docs/metrics.md).
#
# Usage: scripts/check-observability.sh [--live [URL...]] [--strict-lint]
#   (no args)      promtool check config / check rules / test rules, then
#                  scripts/check_metric_names.py against docs/metrics.md (live checks skipped)
#   --live         also check against the live /metrics of the running services; without URLs
#                  every instance deploy/local/services.sh runs is scraped (`metrics-urls`), else
#                  the local admin ports 127.0.0.1:9601 (gateway), 9602 (reader), 9603
#                  (processor). Every used name must be exported by at least one of them (a
#                  processor that owns no partition exports no lag series, so all instances
#                  count), and `promtool check metrics` must parse each body (lint findings are
#                  warnings).
#                  Then every Grafana panel's query is run on the local Prometheus
#                  (PROMETHEUS_URL, default http://127.0.0.1:9090) over the last PANELS_WINDOW
#                  (30m) and must return data, bar a commented allow-list
#                  (scripts/check_panels_live.py).
#   --strict-lint  with --live, lint findings of `promtool check metrics` fail too.
#   LIVE_WAIT_S    how long a live check that misses names is retried (default 30 s).
# Read-only and idempotent; exits non-zero on the first failing step's report.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"

die() { printf 'check-observability: %s\n' "$*" >&2; exit 1; }

live=0
strict=()
urls=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --live) live=1 ;;
    --strict-lint) strict=(--strict-lint) ;;
    -h | --help)
        sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed -e '/^set -euo/d' -e 's/^# \{0,1\}//'
        exit 0
        ;;
    http://* | https://*)
        [[ ${live} -eq 1 ]] || die "URL '$1' given without --live"
        urls+=("$1")
        ;;
    *) die "unknown argument '$1' (see --help)" ;;
    esac
    shift
done
if [[ ${live} -eq 1 && ${#urls[@]} -eq 0 ]]; then
    mapfile -t urls < <(deploy/local/services.sh metrics-urls)
fi
if [[ ${live} -eq 1 && ${#urls[@]} -eq 0 ]]; then
    urls=(http://127.0.0.1:9601/metrics http://127.0.0.1:9602/metrics http://127.0.0.1:9603/metrics)
fi

command -v promtool >/dev/null 2>&1 || die "promtool not found (deploy/local/stack.sh install, or apt-get install prometheus)"

# A python3 with PyYAML: the one on PATH, else Debian's.
PY=""
for candidate in python3 /usr/bin/python3; do
    if command -v "${candidate}" >/dev/null 2>&1 && "${candidate}" -c 'import yaml' >/dev/null 2>&1; then
        PY=${candidate}
        break
    fi
done
[[ -n ${PY} ]] || die "need python3 with PyYAML (apt-get install python3-yaml)"

step() { printf '\n== %s\n' "$*"; }

step "promtool check config deploy/prometheus/prometheus.yml"
promtool check config deploy/prometheus/prometheus.yml

step "promtool check rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml

step "promtool test rules deploy/prometheus/alerts_test.yml"
promtool test rules deploy/prometheus/alerts_test.yml

step "dashboards are valid JSON"
for f in grafana/dashboards/*.json grafana/provisioning/*/*.json; do
    [[ -e ${f} ]] || continue
    "${PY}" -m json.tool "${f}" >/dev/null || die "${f}: invalid JSON"
    echo "  ${f}: OK"
done

step "metric-name checker self-test"
"${PY}" scripts/check_metric_names.py --self-test

step "metric names in rules, rule tests and dashboards"
args=()
if [[ ${live} -eq 1 ]]; then
    args=(--live "${urls[@]}" "${strict[@]}")
fi
# Live: some series appear only after a refresh (the processors' lag gauges every
# consumer.lag_interval_ms, 5 s, once they own partitions; the fault stage restarts them just
# before), so a miss is checked again for up to LIVE_WAIT_S (30 s) before it fails.
deadline=$((SECONDS + ${LIVE_WAIT_S:-30}))
until "${PY}" scripts/check_metric_names.py "${args[@]}"; do
    if [[ ${live} -ne 1 || ${SECONDS} -ge ${deadline} ]]; then
        exit 1
    fi
    printf '
(live check: retrying in 5 s, until %s s are over)
' "${LIVE_WAIT_S:-30}"
    sleep 5
done

if [[ ${live} -eq 1 ]]; then
    # Not only "the metric exists": every panel's query must return data on the local
    # Prometheus (PROMETHEUS_URL, 127.0.0.1:9090) over the recent load (PANELS_WINDOW, 30m), with
    # an explicit, commented list of panels allowed to be empty (scripts/check_panels_live.py).
    step "every dashboard panel's query returns data on the live Prometheus"
    "${PY}" scripts/check_panels_live.py --window "${PANELS_WINDOW:-30m}"
fi

printf '\ncheck-observability: all checks passed\n'
