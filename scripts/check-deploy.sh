#!/usr/bin/env bash
# Checks everything under deploy/docker/ and k8s/, ending with a dry run against a real API server.
#
#   scripts/check-deploy.sh [--skip-binaries] [--bin-dir DIR] [--skip-server] [-v]
#
# 1. tools     kustomize (pinned, `go install` into .local/bin) and kubernetes-validate (pinned, pip
#              into .local/venv); installed only when missing, so re-runs are fast and offline
# 2. render    kustomize build into .local/deploy-check/ of k8s/base, every k8s/overlays/*, each one's
#              kafka-topics/ (base: k8s/base/kafka-topics), prod with each k8s/components/*, and
#              the kustomizations inside a component (k8s/components/kafka-scram-tls/kafka-user)
# 3. schema    every built-in kind (and k8s/base/secret.example.yaml) against the Kubernetes
#              ${K8S_VERSION} OpenAPI schemas, strict (unknown fields fail), offline
# 4. crds      scripts/check_crds.py: KafkaTopic / ScaledObject / TriggerAuthentication /
#              ServiceMonitor / PrometheusRule fields and policy (topics in the Kafka namespace,
#              replicas 3, min.insync.replicas 2, KEDA max <= partitions and auth = the services'
#              Kafka security, honorLabels and selector labels, rules and dashboards equal to their
#              sources with absolute runbook URLs, alerts' and dashboards' runbook links on the
#              runbookUrl the render's kustomization sets (--kustomization), no processor HPA, PDBs
#              vs replicas, no CPU limits on gRPC pods, client.id / group.instance.id = pod name, the
#              migration Job named per release, securityContext, probes)
# 5. monitoring scripts/gen-monitoring.py --check: k8s/base/monitoring/ equals what
#              deploy/prometheus/alerts.yml and grafana/dashboards/ give; every alert has a section in
#              docs/runbook-k8s.md. Then a probe: a copy of k8s/ in .local/deploy-check/runbook-probe/
#              whose overlays set another runbookUrl each, rendered and checked like step 4's runbook
#              links, so an overlay whose dashboards or alerts do not follow its runbookUrl fails even
#              while that value equals the sources' placeholder
# 6. config    scripts/check_config.py: DISPATCH_* keys and listen ports vs Deployments, Services,
#              probes, NetworkPolicies; admin keys with ids; gateway/reader limits.replicas = the
#              most pods sharing a quota (HPA max or replicas, canary included); with the binaries (target/debug, unless --skip-binaries) also
#              against each service's `--print-config` output
# 7. docker    deploy/docker/check.sh (static Dockerfile checks)
# 8. server    scripts/kube-apiserver.sh start (kube-apiserver + etcd on loopback with the Strimzi,
#              KEDA and prometheus-operator CRDs; built/fetched into .local/kube on first use), then
#              `kubectl apply --dry-run=server --validate=strict` of every render, and a self-test:
#              the same dry run must refuse broken objects (a ScaledObject without triggers, a
#              KafkaTopic with 0 partitions, a ServiceMonitor with a misspelt field); kubectl's own
#              kustomize (`kubectl apply -k`) must render every target like the pinned one. The
#              server is stopped at the end. A pass means schema-valid: the operators' webhooks and
#              controllers do not run, which is why step 4 exists. --skip-server skips this step.
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
skip_server=0
while [ $# -gt 0 ]; do
    case "$1" in
        --skip-binaries) config_args+=(--skip-binaries) ;;
        --bin-dir) config_args+=(--bin-dir "$2"); shift ;;
        --skip-server) skip_server=1 ;;
        -v|--verbose) verbose=(-v) ;;
        -h|--help) sed -n '2,40p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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
# NAME=PATH; the topics' renders are NAME-kafka-topics.
step "render"
mkdir -p "${out}"
rm -f "${out}"/*.yaml
targets=("base=k8s/base" "base-kafka-topics=k8s/base/kafka-topics")
for d in "${repo}"/k8s/overlays/*/; do
    o="$(basename "$d")"
    targets+=("${o}=k8s/overlays/${o}")
    [ -f "${d}kafka-topics/kustomization.yaml" ] && targets+=("${o}-kafka-topics=k8s/overlays/${o}/kafka-topics")
done
# Each component on top of prod, as an overlay enabling it would be: the TLS listener's port in
# DISPATCH_KAFKA__BROKERS, and the triggers following it (as prod's own replacement does).
rm -rf "${out}/targets"
for d in "${repo}"/k8s/components/*/; do
    [ -f "${d}kustomization.yaml" ] || continue
    c="$(basename "$d")"
    mkdir -p "${out}/targets/prod-${c}"
    cat > "${out}/targets/prod-${c}/kustomization.yaml" <<EOF
# generated by scripts/check-deploy.sh: k8s/overlays/prod with k8s/components/${c}
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../../../../k8s/overlays/prod
components:
  - ../../../../k8s/components/${c}
configMapGenerator:
  - name: dispatch-common
    behavior: merge
    literals:
      - DISPATCH_KAFKA__BROKERS=dispatch-kafka-bootstrap.kafka.svc.cluster.local:9093
replacements:
  - source: {kind: ConfigMap, name: dispatch-common, fieldPath: data.DISPATCH_KAFKA__BROKERS}
    targets:
      - select: {kind: ScaledObject, name: dispatch-processor}
        fieldPaths: [spec.triggers.*.metadata.bootstrapServers]
EOF
    targets+=("prod-${c}=.local/deploy-check/targets/prod-${c}")
done
# Kustomizations inside a component for another namespace (kafka-scram-tls/kafka-user: the KafkaUser).
aux=()
for d in "${repo}"/k8s/components/*/*/; do
    [ -f "${d}kustomization.yaml" ] || continue
    a="$(basename "$(dirname "$d")")-$(basename "$d")"
    targets+=("${a}=k8s/components/$(basename "$(dirname "$d")")/$(basename "$d")")
    aux+=("${a}")
done
rendered=()      # every render
app_rendered=()  # the services' renders (not the topics' nor the aux ones)
for nt in "${targets[@]}"; do
    n="${nt%%=*}"; t="${nt#*=}"
    if [ ${#kustomize[@]} -gt 0 ] && "${kustomize[@]}" "${repo}/${t}" > "${out}/${n}.yaml" 2> "${out}/${n}.err"; then
        echo "rendered ${t}: $(grep -c '^kind:' "${out}/${n}.yaml") objects -> .local/deploy-check/${n}.yaml"
        rendered+=("${out}/${n}.yaml")
        case " ${aux[*]} " in *" ${n} "*) ;; *) case "${n}" in *-kafka-topics) ;; *) app_rendered+=("${out}/${n}.yaml") ;; esac ;; esac
        record "render ${t}" PASS
    else
        echo "FAIL: kustomize build ${t}"; sed 's/^/    /' "${out}/${n}.err" 2>/dev/null
        rm -f "${out}/${n}.yaml"
        record "render ${t}" FAIL
    fi
done
# The topics a services' render goes with: its own kafka-topics/, else those of the overlay it
# builds on (prod-<component> -> prod). dev has none: its services create their topics.
topics_for() {
    local cand
    for cand in "$1" "${1%%-*}"; do
        [ -f "${out}/${cand}-kafka-topics.yaml" ] && { echo "${out}/${cand}-kafka-topics.yaml"; return; }
    done
}
# The kustomization a render was built from (its runbookUrl is what the runbook links must use).
target_of() {
    local nt
    for nt in "${targets[@]}"; do
        [ "${nt%%=*}" = "$1" ] && { echo "${repo}/${nt#*=}"; return; }
    done
}

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
for f in "${app_rendered[@]}"; do
    n="$(basename "$f" .yaml)"
    tf="$(topics_for "${n}")"
    topics_args=()
    [ -n "${tf}" ] && topics_args=(--topics "${tf}")
    echo "${n}${tf:+ with $(basename "${tf}")}"
    if (cd "${repo}/scripts" && "${py}" check_crds.py "$f" "${topics_args[@]}" --kustomization "$(target_of "${n}")" "${verbose[@]}"); then
        record "crds/policy ${n}${tf:+ + $(basename "${tf}" .yaml)}" PASS
    else
        record "crds/policy ${n}${tf:+ + $(basename "${tf}" .yaml)}" FAIL
    fi
done

# ---- 5. monitoring assets ------------------------------------------------------------------
step "PrometheusRule and dashboards vs their sources (scripts/gen-monitoring.py --check); runbook links follow runbookUrl (probe)"
if "${py}" "${repo}/scripts/gen-monitoring.py" --check; then
    record "monitoring: k8s/base/monitoring = its sources" PASS
else
    record "monitoring: k8s/base/monitoring = its sources" FAIL
fi
# The probe: every overlay with its own runbookUrl gets a distinct one in a copy of k8s/; each
# overlay's render must carry its (or, like the canary, its parent's) value in every runbook link.
probe="${out}/runbook-probe"
rm -rf "${probe}"; mkdir -p "${probe}"
cp -R "${repo}/k8s" "${probe}/k8s"
for v in "${probe}"/k8s/overlays/*/values.yaml; do
    [ -f "$v" ] || continue
    o="$(basename "$(dirname "$v")")"
    sed -i "s#^\([[:space:]]*runbookUrl:\).*#\1 https://runbooks-${o}.invalid/dispatch/runbook-k8s.md#" "$v"
    grep -q "runbooks-${o}.invalid" "$v" || { echo "FAIL: no runbookUrl line to set in ${v#"${probe}/"}"; record "monitoring: probe sets runbookUrl (${o})" FAIL; }
done
for d in "${probe}"/k8s/overlays/*/; do
    o="$(basename "$d")"
    if [ ${#kustomize[@]} -gt 0 ] && "${kustomize[@]}" "$d" > "${probe}/${o}.yaml" 2> "${probe}/${o}.err" &&
        (cd "${repo}/scripts" && "${py}" check_crds.py "${probe}/${o}.yaml" --kustomization "$d" --monitoring-only "${verbose[@]}"); then
        record "monitoring: runbook links follow runbookUrl (probe ${o})" PASS
    else
        sed 's/^/    /' "${probe}/${o}.err" 2>/dev/null
        record "monitoring: runbook links follow runbookUrl (probe ${o})" FAIL
    fi
done

# ---- 6. settings keys and ports ------------------------------------------------------------
step "settings keys and ports (scripts/check_config.py ${config_args[*]})"
if [ ${#app_rendered[@]} -gt 0 ] && (cd "${repo}/scripts" && "${py}" check_config.py "${app_rendered[@]}" "${config_args[@]}" "${verbose[@]}"); then
    record "settings/ports" PASS
else
    record "settings/ports" FAIL
fi

# ---- 7. Dockerfile -------------------------------------------------------------------------
step "Dockerfile (deploy/docker/check.sh)"
if PYTHON="${py}" "${repo}/deploy/docker/check.sh" > "${out}/docker.log" 2>&1; then
    tail -n 1 "${out}/docker.log"
    record "dockerfile" PASS
else
    grep -v '^  ok' "${out}/docker.log"
    record "dockerfile" FAIL
fi

# ---- 8. a real API server ------------------------------------------------------------------
if [ "${skip_server}" = 1 ]; then
    step "server dry run: skipped (--skip-server)"
else
    step "server dry run (scripts/kube-apiserver.sh: kube-apiserver + etcd, Strimzi/KEDA/prometheus-operator CRDs)"
    kas="${repo}/scripts/kube-apiserver.sh"
    trap '"${kas}" stop >/dev/null 2>&1 || true' EXIT
    t0=${SECONDS}
    if "${kas}" start; then
        echo "API server with CRDs ready after $((SECONDS - t0)) s"
        record "server: kube-apiserver with CRDs" PASS
        dry_run() { "${kas}" kubectl apply --dry-run=server --validate=strict -f "$1"; }
        for f in "${rendered[@]}"; do
            n="$(basename "$f" .yaml)"
            if dry_run "$f" > "${out}/${n}.server.log" 2>&1; then
                echo "${n}: $(grep -c '(server dry run)' "${out}/${n}.server.log") objects accepted"
                grep '^Warning:' "${out}/${n}.server.log" | sort | uniq -c | sed 's/^ */    /'
                record "server dry run ${n}" PASS
            else
                echo "FAIL: ${n}"; grep -v '(server dry run)$' "${out}/${n}.server.log" | sed 's/^/    /'
                record "server dry run ${n}" FAIL
            fi
        done
        # Operators run `kubectl apply -k`, i.e. kubectl's own kustomize: it must render the same.
        same=1
        for nt in "${targets[@]}"; do
            n="${nt%%=*}"; t="${nt#*=}"
            [ -f "${out}/${n}.yaml" ] || continue
            if ! "${kas}" kubectl kustomize "${repo}/${t}" 2>&1 | diff -q - "${out}/${n}.yaml" >/dev/null; then
                echo "FAIL: \`kubectl kustomize ${t}\` differs from kustomize ${KUSTOMIZE_VERSION}'s render"
                same=0
            fi
        done
        if [ "${same}" = 1 ]; then
            echo "kubectl kustomize ($("${kas}" kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: //p')) renders every target like kustomize ${KUSTOMIZE_VERSION}"
            record "server: kubectl apply -k renders the same" PASS
        else
            record "server: kubectl apply -k renders the same" FAIL
        fi
        # Self-test: the same dry run refuses what the schemas forbid, so the passes above mean
        # something.
        rm -rf "${out}/broken"; mkdir -p "${out}/broken"
        cat > "${out}/broken/scaledobject-without-triggers.yaml" <<'EOF'
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata: {name: broken, namespace: dispatch}
spec:
  scaleTargetRef: {name: dispatch-processor}
EOF
        cat > "${out}/broken/kafkatopic-with-0-partitions.yaml" <<'EOF'
apiVersion: kafka.strimzi.io/v1beta2
kind: KafkaTopic
metadata: {name: broken, namespace: kafka, labels: {strimzi.io/cluster: dispatch}}
spec: {topicName: dispatch.broken, partitions: 0, replicas: 3}
EOF
        cat > "${out}/broken/servicemonitor-with-misspelt-field.yaml" <<'EOF'
apiVersion: monitoring.coreos.com/v1
kind: ServiceMonitor
metadata: {name: broken, namespace: dispatch}
spec:
  selector: {matchLabels: {app.kubernetes.io/name: dispatch-gateway}}
  endpoints: [{port: metrics, honourLabels: true}]
EOF
        for f in "${out}"/broken/*.yaml; do
            n="$(basename "$f" .yaml)"
            if dry_run "$f" > "${out}/broken/${n}.log" 2>&1; then
                echo "FAIL: self-test ${n}: the server accepted it"
                record "server self-test: refuses ${n}" FAIL
            else
                why="$(tr '\n' ' ' < "${out}/broken/${n}.log" | grep -o 'unknown field "[^"]*"\|spec[^ ]*: \(Invalid\|Required\) value[^*]*' | head -n 1)"
                echo "self-test ${n}: refused: ${why:-$(head -c 200 "${out}/broken/${n}.log")}"
                record "server self-test: refuses ${n}" PASS
            fi
        done
    else
        echo "FAIL: the API server did not start (scripts/kube-apiserver.sh start; logs in .local/kube/run/)"
        record "server: kube-apiserver with CRDs" FAIL
    fi
    "${kas}" stop
    trap - EXIT
fi

# ---- summary -------------------------------------------------------------------------------
printf '\n== summary\n'
printf '%s\n' "${summary[@]}"
pass=0; fail=0
for s in "${summary[@]}"; do case "$s" in PASS*) pass=$((pass + 1)) ;; *) fail=$((fail + 1)) ;; esac; done
echo "deploy: ${pass} passed, ${fail} failed"
exit "${failed}"
