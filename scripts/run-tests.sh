#!/usr/bin/env bash
# Builds the workspace's tests once (`cargo test --no-run`, with whatever RUSTC_WORKSPACE_WRAPPER
# and CLIPPY_ARGS the caller set) and runs the test binaries TEST_JOBS (default 3) at a time,
# then the doc tests. `cargo test` runs its binaries one after another, and ours mostly wait on
# Kafka, MariaDB and timers (processor `it` 109 s and gateway `it` 88 s of 270 s, docs/build.md),
# so two cores run three of them side by side in little more than the longest one's time. Each
# test env has its own database, topic prefix, Redis prefix and consumer group (testkit), so
# binaries do not see each other's work.
#
# `run-tests.sh -- CMD...` also runs CMD (checks that need the binaries but not the stack) beside
# the test binaries once the build is done; its output goes to .local/tests/beside.log, printed
# after the tests, and its failure fails the run.
#
# A binary runs as cargo runs it: from its package's directory, with CARGO_MANIFEST_DIR set.
# Its output goes to .local/tests/<package>-<target>.log, printed only when it fails. Exit
# status: non-zero when the build or any binary failed.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${REPO}"
OUT="${REPO}/.local/tests"
JOBS="${TEST_JOBS:-3}"
BESIDE=()
if [[ "${1:-}" == "--" ]]; then shift; BESIDE=("$@"); fi
rm -rf "${OUT}"
mkdir -p "${OUT}"

cargo test --workspace --locked --no-run --message-format=json-render-diagnostics >"${OUT}/build.jsonl"

beside_pid=""
if ((${#BESIDE[@]})); then
    echo "beside the tests: ${BESIDE[*]}"
    "${BESIDE[@]}" >"${OUT}/beside.log" 2>&1 &
    beside_pid=$!
fi

# One line per test binary: log name, package directory, executable. The integration suites
# (`it`, the longest) go first so the slowest binary starts at once.
python3 - "${OUT}/build.jsonl" >"${OUT}/binaries.tsv" <<'EOF'
import json, os, sys
rows = []
for line in open(sys.argv[1]):
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    t = m["target"]
    pkg = m["package_id"].split("#")[-1].split("@")[0].rsplit("/", 1)[-1]
    name = f"{pkg}-{t['name']}"
    rows.append((0 if t["name"] == "it" else 1, name, os.path.dirname(m["manifest_path"]), m["executable"]))
for _, name, d, exe in sorted(set(rows)):
    print(f"{name}\t{d}\t{exe}")
EOF
echo "test binaries: $(wc -l <"${OUT}/binaries.tsv"), ${JOBS} at a time"

# run_one NAME DIR EXE: one binary; prints PASS/FAIL with its time.
run_one() {
    local name="$1" dir="$2" exe="$3" start=${SECONDS} rc=0
    (cd "${dir}" && CARGO_MANIFEST_DIR="${dir}" "${exe}") >"${OUT}/${name}.log" 2>&1 || rc=$?
    if ((rc == 0)); then
        printf 'PASS %s (%ds): %s\n' "${name}" "$((SECONDS - start))" "$(grep -E '^test result:' "${OUT}/${name}.log" | tail -1)"
    else
        printf 'FAIL %s (%ds, exit %d)\n' "${name}" "$((SECONDS - start))" "${rc}"
        sed 's/^/    /' "${OUT}/${name}.log"
        echo "${name}" >>"${OUT}/FAILED"
    fi
}
export -f run_one
export OUT

# xargs -P runs NAME DIR EXE triples; `|| true` because failures are collected in FAILED.
tr '\t' '\n' <"${OUT}/binaries.tsv" |
    xargs -d '\n' -n 3 -P "${JOBS}" bash -c 'run_one "$@"' _ || true

echo "doc tests"
cargo test --workspace --locked --doc 2>&1 | tee "${OUT}/doc.log" | grep -E '^(test result:|error|failures)' || true
if ! grep -q '^test result:' "${OUT}/doc.log" || grep -qE '^test result: FAILED|^error' "${OUT}/doc.log"; then
    sed 's/^/    /' "${OUT}/doc.log"
    echo "doc tests" >>"${OUT}/FAILED"
fi

if [[ -n "${beside_pid}" ]]; then
    rc=0
    wait "${beside_pid}" || rc=$?
    echo "--- ${BESIDE[*]} (exit ${rc}):"
    cat "${OUT}/beside.log"
    ((rc == 0)) || echo "${BESIDE[*]}" >>"${OUT}/FAILED"
fi

if [[ -e "${OUT}/FAILED" ]]; then
    echo "failed: $(paste -sd ' ' "${OUT}/FAILED") (their output is above and in ${OUT})" >&2
    exit 1
fi
echo "every test binary passed"
