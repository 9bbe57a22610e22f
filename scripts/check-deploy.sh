#!/usr/bin/env bash
# Checks everything under deploy/docker/ and k8s/ without a cluster or a Docker engine.
#
#   scripts/check-deploy.sh [--skip-binaries] [--bin-dir DIR] [-v]
#
# 1. tools     kustomize (pinned, `go install` into .local/bin) and kubernetes-validate (pinned, pip
#              into .local/venv); installed only when missing, so re-runs are fast and offline
# 2. render    kustomize build of k8s/base and every k8s/overlays/* into .local/deploy-check/
# 3. schema    every built-in kind (and k8s/base/secret.example.yaml) against the Kubernetes
#              ${K8S_VERSION} OpenAPI schemas, strict (unknown fields fail), offline
# 4. crds      scripts/check_crds.py: KafkaTopic / ScaledObject / ServiceMonitor required fields and
#              policy (replicas 3, min.insync.replicas 2, KEDA max <= partitions, no processor HPA,
#              PDBs vs replicas, securityContext, probes)
# 5. config    scripts/check_config.py: DISPATCH_* keys and listen ports vs Deployments, Services,
#              probes, NetworkPolicies; with the binaries (target/debug, unless --skip-binaries) also
#              against each service's `--print-config` output
# 6. docker    deploy/docker/check.sh (static Dockerfile checks)
# Exit status 0 only when every step passes.
set -uo pipefail

KUSTOMIZE_VERSION="v5.4.3"
KUBERNETES_VALIDATE_VERSION="1.37.0"
K8S_VERSION="1.30.0"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
local_dir="${repo}/.local"
out="${local_dir}/deploy-check"
venv="${local_dir}/venv"
config_args=()
verbose=()
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-binaries) config_args+=(--skip-binaries) ;;
        --bin-dir) config_args+=(--bin-dir "$2"); shift ;;
        -v|--verbose) verbose=(-v) ;;
        -h|--help) sed -n '2,20p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

declare -a summary=()
failed=0
record() { # record NAME STATUS
    summary+=("$(printf '%-8s %s' "$2" "$1")")
    [ "$2" = "PASS" ] || failed=1
}
step() { printf '\n== %s\n' "$*"; }

# ---- 1. tools ------------------------------------------------------------------------------
step "tools"
kustomize=()
stamp="${local_dir}/bin/.kustomize-version"
if [ -x "${local_dir}/bin/kustomize" ] && [ "$(cat "${stamp}" 2>/dev/null)" = "${KUSTOMIZE_VERSION}" ]; then
    kustomize=("${local_dir}/bin/kustomize" build)
elif command -v go >/dev/null 2>&1; then
    echo "installing kustomize ${KUSTOMIZE_VERSION} into .local/bin (go install)"
    mkdir -p "${local_dir}/bin"
    if GOBIN="${local_dir}/bin" GOFLAGS=-mod=mod go install "sigs.k8s.io/kustomize/kustomize/v5@${KUSTOMIZE_VERSION}"; then
        echo "${KUSTOMIZE_VERSION}" > "${stamp}"
        kustomize=("${local_dir}/bin/kustomize" build)
    fi
fi
if [ ${#kustomize[@]} -eq 0 ] && command -v kubectl >/dev/null 2>&1; then
    echo "note: no Go toolchain to install kustomize ${KUSTOMIZE_VERSION}; using \`kubectl kustomize\`"
    kustomize=(kubectl kustomize)
fi
if [ ${#kustomize[@]} -eq 0 ]; then
    echo "FAIL: kustomize unavailable (needs Go to install it, or kubectl)"
    record "tools: kustomize" FAIL
else
    echo "kustomize: ${kustomize[*]}"
    record "tools: kustomize" PASS
fi

python_ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; }
venv_ok() {
    [ -x "${venv}/bin/python" ] && python_ok "${venv}/bin/python" &&
        "${venv}/bin/python" -c 'import yaml, importlib.metadata as m, sys; sys.exit(m.version("kubernetes-validate") != sys.argv[1])' \
            "${KUBERNETES_VALIDATE_VERSION}" 2>/dev/null
}
if ! venv_ok; then
    base_python=""
    for p in python3.13 python3.12 python3.11 python3; do
        if command -v "$p" >/dev/null 2>&1 && python_ok "$(command -v "$p")"; then base_python="$(command -v "$p")"; break; fi
    done
    if [ -z "${base_python}" ]; then
        echo "FAIL: Python >= 3.11 not found (tomllib is needed)"
    else
        echo "installing kubernetes-validate ${KUBERNETES_VALIDATE_VERSION} into .local/venv (${base_python})"
        [ -x "${venv}/bin/python" ] || "${base_python}" -m venv "${venv}"
        "${venv}/bin/python" -m pip install --quiet --disable-pip-version-check \
            "kubernetes-validate==${KUBERNETES_VALIDATE_VERSION}" PyYAML
    fi
fi
if venv_ok; then
    py="${venv}/bin/python"
    echo "python: ${py} ($("${py}" -c 'import sys; print(sys.version.split()[0])')), kubernetes-validate ${KUBERNETES_VALIDATE_VERSION}"
    record "tools: kubernetes-validate venv" PASS
else
    echo "FAIL: could not set up .local/venv with kubernetes-validate ${KUBERNETES_VALIDATE_VERSION}"
    record "tools: kubernetes-validate venv" FAIL
    printf '\n%s\n' "${summary[@]}"
    exit 1
fi

# ---- 2. render -----------------------------------------------------------------------------
step "render"
mkdir -p "${out}"
rm -f "${out}"/*.yaml
targets=("k8s/base")
for d in "${repo}"/k8s/overlays/*/; do targets+=("k8s/overlays/$(basename "$d")"); done
rendered=()
for t in "${targets[@]}"; do
    n="$(basename "$t")"
    if [ ${#kustomize[@]} -gt 0 ] && "${kustomize[@]}" "${repo}/${t}" > "${out}/${n}.yaml" 2> "${out}/${n}.err"; then
        echo "rendered ${t}: $(grep -c '^kind:' "${out}/${n}.yaml") objects -> .local/deploy-check/${n}.yaml"
        rendered+=("${out}/${n}.yaml")
        record "render ${t}" PASS
    else
        echo "FAIL: kustomize build ${t}"; sed 's/^/    /' "${out}/${n}.err" 2>/dev/null
        rm -f "${out}/${n}.yaml"
        record "render ${t}" FAIL
    fi
done

# ---- 3. schema -----------------------------------------------------------------------------
step "schema (Kubernetes ${K8S_VERSION}, strict; CRD kinds are checked in the next step)"
for f in "${rendered[@]}"; do
    n="$(basename "$f" .yaml)"
    if ! (cd "${repo}/scripts" && "${py}" - "$f" "${out}/${n}.builtin" <<'PY'
import sys
import yaml
from deploy_manifests import CRD_GROUPS, load
docs, builtin, bad = load(sys.argv[1]), [], []
for d in docs:
    group = str(d.get("apiVersion", "")).split("/")[0] if "/" in str(d.get("apiVersion", "")) else ""
    if group in CRD_GROUPS:
        continue
    if "." in group and not group.endswith(".k8s.io"):
        bad.append(f"{d.get('kind')} {d.get('metadata', {}).get('name')} ({d.get('apiVersion')})")
    builtin.append(d)
with open(sys.argv[2], "w") as f:
    yaml.safe_dump_all(builtin, f, sort_keys=False)
for b in bad:
    print(f"  FAIL  {b}: API group neither built in nor known to scripts/check_crds.py")
sys.exit(1 if bad else 0)
PY
    ); then
        record "schema ${n}: unknown API groups" FAIL
    fi
    if "${venv}/bin/kubernetes-validate" -k "${K8S_VERSION}" --strict --quiet --no-warn "${out}/${n}.builtin" > "${out}/${n}.schema.log" 2>&1; then
        echo "${n}: $(grep -c '^kind:' "${out}/${n}.builtin") built-in objects valid"
        record "schema ${n}" PASS
    else
        echo "FAIL: ${n}"; sed 's/^/    /' "${out}/${n}.schema.log"
        record "schema ${n}" FAIL
    fi
done
if "${venv}/bin/kubernetes-validate" -k "${K8S_VERSION}" --strict --quiet --no-warn "${repo}/k8s/base/secret.example.yaml" > "${out}/secret-example.schema.log" 2>&1; then
    echo "k8s/base/secret.example.yaml valid"
    record "schema secret.example.yaml" PASS
else
    echo "FAIL: k8s/base/secret.example.yaml"; sed 's/^/    /' "${out}/secret-example.schema.log"
    record "schema secret.example.yaml" FAIL
fi

# ---- 4. CRDs and policy --------------------------------------------------------------------
step "CRD resources and policy (scripts/check_crds.py)"
for f in "${rendered[@]}"; do
    if (cd "${repo}/scripts" && "${py}" check_crds.py "$f" "${verbose[@]}"); then
        record "crds/policy $(basename "$f" .yaml)" PASS
    else
        record "crds/policy $(basename "$f" .yaml)" FAIL
    fi
done

# ---- 5. settings keys and ports ------------------------------------------------------------
step "settings keys and ports (scripts/check_config.py ${config_args[*]})"
if [ ${#rendered[@]} -gt 0 ] && (cd "${repo}/scripts" && "${py}" check_config.py "${rendered[@]}" "${config_args[@]}" "${verbose[@]}"); then
    record "settings/ports" PASS
else
    record "settings/ports" FAIL
fi

# ---- 6. Dockerfile -------------------------------------------------------------------------
step "Dockerfile (deploy/docker/check.sh)"
if PYTHON="${py}" "${repo}/deploy/docker/check.sh" > "${out}/docker.log" 2>&1; then
    tail -n 1 "${out}/docker.log"
    record "dockerfile" PASS
else
    grep -v '^  ok' "${out}/docker.log"
    record "dockerfile" FAIL
fi

# ---- summary -------------------------------------------------------------------------------
printf '\n== summary\n'
printf '%s\n' "${summary[@]}"
pass=0; fail=0
for s in "${summary[@]}"; do case "$s" in PASS*) pass=$((pass + 1)) ;; *) fail=$((fail + 1)) ;; esac; done
echo "deploy: ${pass} passed, ${fail} failed"
exit "${failed}"
