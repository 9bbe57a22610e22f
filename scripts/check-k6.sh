#!/usr/bin/env bash
# Checks the k6 load-test scripts in loadtest/k6/ statically and by a dry run: they parse, call
# rpcs the API has, configure the thresholds a load test needs, send valid requests, and only
# submit task types the processor has a handler for. Needs node (>= 20.6), python3,
# dispatch-loadgen and dispatch-processor (target/debug, built when missing; or LOADGEN=path,
# PROCESSOR=path); k6 itself is not required. The API comes from `dispatch-loadgen proto-schema`
# (services, messages and enums as the binaries have them compiled in), the task types from
# `dispatch-processor --print-task-types=json` with the local config
# (deploy/local/config/processor.toml, or PROCESSOR_CONFIG=path) and the DISPATCH_* environment,
# as at its start-up.
#
#   1. syntax: every script (and lib/ module, and scripts/k6/harness.mjs) parses as an ES module
#      (`node --check`);
#   2. rpc names (scripts/k6/rpcnames.py): every 'pkg.Service/Method' string in the scripts names
#      an rpc of the API's schema, and every '*.proto' literal exists under proto/;
#   3. dry run (scripts/k6/harness.mjs): each script is evaluated with stand-in k6 modules; its
#      `options` must use constant-arrival-rate scenarios and carry grpc_req_duration p95/p99,
#      checks rate>0.99 and dropped_iterations count==0 thresholds; client.load() files must
#      resolve; setup() and every scenario's exec function run against a fake gRPC client
#      (unary calls and server streams) that validates methods, auth metadata and request
#      messages against the proto schema, and every task type against the processor's task types;
#   4. self-test: the harness rejects a task type without a handler (TASK_TYPE=loadtest.noop).
#
# TASK_TYPE=<type> scripts/check-k6.sh dry-runs the scripts as `k6 run -e TASK_TYPE=<type>` would.
#
# Overrides (for testing the checker on a copy): K6_DIR (default loadtest/k6), PROTO_ROOT
# (default proto).
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
k6_dir="$(cd "${K6_DIR:-$repo/loadtest/k6}" && pwd)"
proto_root="$(cd "${PROTO_ROOT:-$repo/proto}" && pwd)"
tools="$repo/scripts/k6"
# Where `cargo build` (run from the repo) puts the binaries.
target="${CARGO_TARGET_DIR:-target}"
[[ "$target" == /* ]] || target="$repo/$target"
processor_config="${PROCESSOR_CONFIG:-$repo/deploy/local/config/processor.toml}"

fail() { echo "check-k6: FAIL: $*" >&2; exit 1; }

command -v node >/dev/null 2>&1 || fail "node is not installed"
command -v python3 >/dev/null 2>&1 || fail "python3 is not installed"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
node_minor="$(node -p 'process.versions.node.split(".")[1]')"
if (( node_major < 20 || (node_major == 20 && node_minor < 6) )); then
  fail "node >= 20.6 is required (module.register), found $(node --version)"
fi
[[ -f "$tools/rpcnames.py" && -f "$tools/harness.mjs" ]] || fail "missing $tools/rpcnames.py or harness.mjs"

shopt -s nullglob
scripts=("$k6_dir"/*.js)
libs=("$k6_dir"/lib/*.js)
shopt -u nullglob
((${#scripts[@]} > 0)) || fail "no k6 scripts (*.js) found in $k6_dir"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

failures=0
note_fail() { echo "check-k6: FAIL: $*" >&2; failures=$((failures + 1)); }
rel() { local p="$1"; echo "${p#"$repo"/}"; }

echo "check-k6: ${#scripts[@]} script(s) in $(rel "$k6_dir"), protos in $(rel "$proto_root")"

# 1. ES module syntax. Without a package.json "type", node parses .js as CommonJS, so check a
#    .mjs copy (imports are not resolved by --check, so 'k6/...' specifiers are fine).
echo "check-k6: [1/4] syntax (node --check as ES modules)"
i=0
for f in "${scripts[@]}" "${libs[@]}" "$tools/harness.mjs"; do
  i=$((i + 1))
  copy="$tmp/syntax-$i-$(basename "${f%.*}").mjs"
  cp "$f" "$copy"
  if out="$(node --check "$copy" 2>&1)"; then
    echo "  ok $(rel "$f")"
  else
    note_fail "$(rel "$f") does not parse as an ES module:"
    echo "${out//$copy/$(rel "$f")}" | sed 's/^/    /' >&2
  fi
done

# 2. RPC names and proto literals against the API's schema, which the binaries carry compiled in.
loadgen="${LOADGEN:-$target/debug/dispatch-loadgen}"
if [[ ! -x "$loadgen" ]]; then
  echo "check-k6: building dispatch-loadgen (for its proto-schema)"
  (cd "$repo" && cargo build --quiet -p dispatch-loadtest --bin dispatch-loadgen) || fail "could not build dispatch-loadgen"
fi
"$loadgen" proto-schema --out "$tmp/schema.json" || fail "$(rel "$loadgen") proto-schema failed"
echo "check-k6: [2/4] rpc names vs the API's schema ($(rel "$loadgen") proto-schema)"
if ! python3 "$tools/rpcnames.py" "$tmp/schema.json" "$proto_root" "$k6_dir" "${scripts[@]}" "${libs[@]}"; then
  note_fail "unknown rpc names or proto files (see above)"
fi

# 3. Options, client.load and dry run of every scenario.
echo "check-k6: [3/4] options, client.load and dry run (stand-in k6 modules, fake gRPC)"
task_types=""
processor="${PROCESSOR:-$target/debug/dispatch-processor}"
if [[ ! -x "$processor" ]]; then
  echo "check-k6: building dispatch-processor (for its --print-task-types)"
  (cd "$repo" && cargo build --quiet -p dispatch-processor --bin dispatch-processor) || fail "could not build dispatch-processor"
fi
if ! "$processor" --config "$processor_config" --print-task-types=json >"$tmp/task-types.json" ||
  ! task_types="$(node -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).join(", ")' "$tmp/task-types.json")" ||
  [[ -z "$task_types" ]]; then
  note_fail "could not read the processor's task types ($(rel "$processor") --config $(rel "$processor_config") --print-task-types=json)"
  task_types=""
else
  echo "  task types with a handler ($(rel "$processor") --print-task-types, $(rel "$processor_config")): $task_types${TASK_TYPE:+ (TASK_TYPE=$TASK_TYPE)}"
  for f in "${scripts[@]}"; do
    if ! (cd "$repo" && node "$tools/harness.mjs" "$tmp/schema.json" "$proto_root" "$f" "$tmp/task-types.json"); then
      note_fail "$(rel "$f") failed the dry run (see above)"
    fi
  done
fi

# 4. The dry run must fail a script whose tasks have no handler: they would all be dead-lettered
#    while every latency threshold passes.
echo "check-k6: [4/4] self-test: a task type without a handler fails the dry run"
if [[ -f "$tmp/schema.json" && -n "$task_types" ]]; then
  probe="$k6_dir/submit.js"
  [[ -f "$probe" ]] || probe="${scripts[0]}"
  if out="$(cd "$repo" && TASK_TYPE=loadtest.noop node "$tools/harness.mjs" "$tmp/schema.json" "$proto_root" "$probe" "$tmp/task-types.json" 2>&1)"; then
    note_fail "the dry run accepted TASK_TYPE=loadtest.noop (no handler) for $(rel "$probe")"
  elif ! grep -q 'has no handler' <<<"$out"; then
    note_fail "the dry run of $(rel "$probe") with TASK_TYPE=loadtest.noop failed for another reason:"
    echo "$out" | sed 's/^/    /' >&2
  else
    echo "  ok TASK_TYPE=loadtest.noop rejected"
  fi
fi

if ((failures > 0)); then
  echo "check-k6: FAILED ($failures problem group(s))" >&2
  exit 1
fi
echo "check-k6: OK"
