#!/usr/bin/env bash
# Soak: the whole system under steady load for a long time, then two verdicts.
#   1. Memory: the resident set (VmRSS) of the gateway, processor and reader, sampled every
#      SAMPLE_S seconds, must not grow by more than MAX_GROWTH_PCT between the end of the warm-up
#      (median of the samples in the minute after WARMUP_MIN) and the end of the run (median of the
#      last minute's samples).
#   2. The audit (`dispatch-loadgen audit`, loadtest/src/audit.rs) of every accepted task: none
#      lost, no committed terminal state changed, the last event of each equals MySQL, none run
#      after its terminal commit or twice at once, per-key order held, at least 90% of the
#      offered submits accepted.
#
# Usage: loadtest/soak/run.sh
#   SOAK_MIN=30          minutes of load (>= WARMUP_MIN + 2)
#   SUBMIT_RATE=1000     SubmitTask/s (simulate handler, 2 ms, 2% retryable failures, 500 keys);
#                        about half of what the whole system sustains here (2k/s, docs/benchmarks.md)
#   GET_RATE=2000        GetTask/s on the reader, over 5k tasks
#   WARMUP_MIN=5  SAMPLE_S=10  MAX_GROWTH_PCT=10  PROFILE=release
# Output: .local/soak/ (rss.csv, load reports, the audit, summary.json).
set -euo pipefail
SOAK_MIN="${SOAK_MIN:-30}"
SUBMIT_RATE="${SUBMIT_RATE:-1000}"
GET_RATE="${GET_RATE:-2000}"
WARMUP_MIN="${WARMUP_MIN:-5}"
SAMPLE_S="${SAMPLE_S:-10}"
MAX_GROWTH_PCT="${MAX_GROWTH_PCT:-10}"
# shellcheck source=scripts/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/lib.sh" '[soak]'
cd "${REPO}"
cargo_profile release
OUT="${REPO}/.local/soak"
SVC="deploy/local/services.sh"

((SOAK_MIN >= WARMUP_MIN + 2)) || { echo "SOAK_MIN must be at least WARMUP_MIN + 2" >&2; exit 2; }
rm -rf "${OUT}" && mkdir -p "${OUT}"
deploy/local/stack.sh up >/dev/null
"${SVC}" start >/dev/null
trap '"${SVC}" stop >/dev/null 2>&1 || true; kill $(jobs -p) 2>/dev/null || true' EXIT

DURATION=$((SOAK_MIN * 60))
log "load: ${SUBMIT_RATE} submits/s and ${GET_RATE} gets/s for ${SOAK_MIN} min (${PROFILE} binaries)"
"${BIN}/dispatch-loadgen" run --scenario submit --task-type simulate --sim-latency-ms 2 --sim-fail-rate 0.02 \
    --keys 500 --rate "${SUBMIT_RATE}" --duration-s "${DURATION}" --warmup-s 0 --timeout-ms 5000 \
    --tenant acme --record-ids "${OUT}/submit.ids" --json "${OUT}/submit.load.json" --label soak-submit \
    2>"${OUT}/submit.load.log" &
SUBMIT_PID=$!
"${BIN}/dispatch-loadgen" run --scenario get --get-set 5000 --rate "${GET_RATE}" --duration-s "${DURATION}" \
    --warmup-s 0 --json "${OUT}/get.load.json" --label soak-get 2>"${OUT}/get.load.log" &
GET_PID=$!

echo "elapsed_s,gateway_kib,processor_kib,reader_kib" >"${OUT}/rss.csv"
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$(cat ".local/services/$1.pid")/status" 2>/dev/null || echo 0; }
START=${SECONDS}
while kill -0 "${SUBMIT_PID}" 2>/dev/null; do
    echo "$((SECONDS - START)),$(rss gateway),$(rss processor),$(rss reader)" >>"${OUT}/rss.csv"
    sleep "${SAMPLE_S}"
done
wait "${SUBMIT_PID}" || { log "submit load failed: $(tail -3 "${OUT}/submit.load.log")"; exit 1; }
wait "${GET_PID}" || { log "get load failed: $(tail -3 "${OUT}/get.load.log")"; exit 1; }

log "auditing $(wc -l <"${OUT}/submit.ids") accepted tasks"
audit_ok=0
"${BIN}/dispatch-loadgen" audit --ids "${OUT}/submit.ids" --load "${OUT}/submit.load.json" --wait-s 600 \
    --json "${OUT}/audit.json" | tee "${OUT}/audit.verdict" || audit_ok=1

python3 - "${OUT}" "${WARMUP_MIN}" "${SOAK_MIN}" "${MAX_GROWTH_PCT}" "${audit_ok}" <<'PY'
import csv, json, statistics, sys
out, warm, total, max_pct, audit_rc = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
rows = list(csv.DictReader(open(f"{out}/rss.csv")))
def window(lo, hi, col):
    v = [int(r[col]) for r in rows if lo <= int(r["elapsed_s"]) < hi and int(r[col]) > 0]
    return statistics.median(v) if v else None
summary = {"soak_min": total, "warmup_min": warm, "max_growth_pct": max_pct, "services": {}}
ok = audit_rc == 0
for svc in ("gateway", "processor", "reader"):
    col = f"{svc}_kib"
    base = window(warm * 60, (warm + 1) * 60, col)
    end = window((total - 1) * 60, total * 60 + 60, col)
    peak = max(int(r[col]) for r in rows)
    if base is None or end is None:
        print(f"soak: {svc}: not enough RSS samples"); ok = False; continue
    growth = (end / base - 1) * 100
    summary["services"][svc] = {"after_warmup_mib": round(base / 1024, 1), "end_mib": round(end / 1024, 1),
                                "peak_mib": round(peak / 1024, 1), "growth_pct": round(growth, 1)}
    verdict = "ok" if growth <= max_pct else "GREW"
    ok &= growth <= max_pct
    print(f"soak: {svc:9s} RSS {base/1024:7.1f} MiB after warm-up -> {end/1024:7.1f} MiB at the end "
          f"({growth:+.1f}%, peak {peak/1024:.1f} MiB) {verdict}")
for name in ("submit", "get"):
    r = json.load(open(f"{out}/{name}.load.json"))
    summary[name] = {k: r.get(k) for k in ("ok", "errors", "errors_by_code", "achieved_rate", "p50_ms", "p99_ms")}
    print(f"soak: {name}: {r.get('ok')} ok, {r.get('errors')} errors {r.get('errors_by_code')}")
summary["audit"] = open(f"{out}/audit.verdict").readline().strip()
summary["passed"] = ok
json.dump(summary, open(f"{out}/summary.json", "w"), indent=2)
print("soak: PASS" if ok else "soak: FAIL")
sys.exit(0 if ok else 1)
PY
