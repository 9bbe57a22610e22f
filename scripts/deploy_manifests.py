"""Shared helpers of scripts/check_crds.py and scripts/check_config.py: load a rendered kustomize
output, index it, resolve a container's environment the way the kubelet would, and report results.
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_EXAMPLE = os.path.join(REPO, "k8s", "base", "secret.example.yaml")

# API groups whose kinds are CRDs (not validated by kubernetes-validate).
CRD_GROUPS = ("kafka.strimzi.io", "keda.sh", "monitoring.coreos.com")

# The deploy contract (docs/deploy.md): binary -> (gRPC port, admin HTTP port).
SERVICES: dict[str, tuple[int, int]] = {
    "dispatch-gateway": (50051, 9601),
    "dispatch-reader": (50052, 9602),
    "dispatch-processor": (50053, 9603),
}
PROCESSOR = "dispatch-processor"
PROCESSOR_GROUP = "dispatch-processor"
TOPICS = [
    "dispatch.tasks.critical",
    "dispatch.tasks.default",
    "dispatch.tasks.low",
    "dispatch.retry.1",
    "dispatch.retry.2",
    "dispatch.retry.3",
    "dispatch.dlq",
    "dispatch.task-events",
]
EVENTS_TOPIC = "dispatch.task-events"


def is_crd(doc: dict) -> bool:
    group = str(doc.get("apiVersion", "")).split("/")[0]
    return group in CRD_GROUPS


def load(path: str) -> list[dict]:
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


def name(doc: dict) -> str:
    return str(doc.get("metadata", {}).get("name", ""))


def labels(doc: dict) -> dict:
    return doc.get("metadata", {}).get("labels") or {}


def of_kind(docs: Iterable[dict], kind: str) -> list[dict]:
    return [d for d in docs if d.get("kind") == kind]


def find(docs: Iterable[dict], kind: str, nm: str) -> dict | None:
    return next((d for d in docs if d.get("kind") == kind and name(d) == nm), None)


def selector_matches(selector: dict | None, pod_labels: dict) -> bool:
    """matchLabels + matchExpressions (In/NotIn/Exists/DoesNotExist); an empty selector matches all."""
    selector = selector or {}
    for k, v in (selector.get("matchLabels") or {}).items():
        if pod_labels.get(k) != v:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and pod_labels.get(key) not in values:
            return False
        if op == "NotIn" and pod_labels.get(key) in values:
            return False
        if op == "Exists" and key not in pod_labels:
            return False
        if op == "DoesNotExist" and key in pod_labels:
            return False
    return True


def pod_spec(workload: dict) -> dict:
    return workload.get("spec", {}).get("template", {}).get("spec", {}) or {}


def pod_labels(workload: dict) -> dict:
    return workload.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}


def containers(workload: dict) -> list[dict]:
    return pod_spec(workload).get("containers") or []


def binary(container: dict) -> str:
    cmd = container.get("command") or container.get("args") or []
    return os.path.basename(str(cmd[0])) if cmd else ""


def service_workloads(docs: list[dict]) -> list[tuple[dict, dict, str]]:
    """(workload, container, binary) for every Deployment/Job container running one of our binaries."""
    out = []
    for d in docs:
        if d.get("kind") not in ("Deployment", "Job", "StatefulSet", "DaemonSet"):
            continue
        for c in containers(d):
            b = binary(c)
            if b in SERVICES or b == "dispatchctl":
                out.append((d, c, b))
    return out


def secret_data(doc: dict) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in (doc.get("data") or {}).items()}
    data.update(doc.get("stringData") or {})
    return data


@dataclass
class EnvVar:
    value: str | None
    source: str  # "literal", "configmap <name>", "secret <name>/<key>", ...
    missing: bool = False  # a required reference that cannot be resolved


def resolve_env(docs: list[dict], container: dict, example_secrets: list[dict] | None = None) -> dict[str, EnvVar]:
    """The container's environment: envFrom first, then env (which wins), as the kubelet does.
    Secret values come from the rendered Secret when there is one (dev), else from
    k8s/base/secret.example.yaml; optional references to absent keys are left out."""
    secrets = {name(s): s for s in of_kind(docs, "Secret")}
    for s in example_secrets or []:
        secrets.setdefault(name(s), s)
    configmaps = {name(c): c for c in of_kind(docs, "ConfigMap")}
    env: dict[str, EnvVar] = {}
    for src in container.get("envFrom") or []:
        prefix = src.get("prefix", "")
        for ref_key, kind, objects, data in (
            ("configMapRef", "configMap", configmaps, lambda cm: {k: str(v) for k, v in (cm.get("data") or {}).items()}),
            ("secretRef", "secret", secrets, secret_data),
        ):
            if ref_key not in src:
                continue
            ref = src[ref_key]
            obj = objects.get(ref.get("name"))
            if obj is None:
                if not ref.get("optional"):
                    env[f"<envFrom {kind} {ref.get('name')}>"] = EnvVar(None, kind.lower(), missing=True)
                break
            for k, v in data(obj).items():
                env[prefix + k] = EnvVar(v, f"{kind.lower()} {name(obj)}")
    for e in container.get("env") or []:
        n = e["name"]
        if "value" in e:
            env[n] = EnvVar(str(e["value"]), "literal")
            continue
        vf = e.get("valueFrom") or {}
        if "secretKeyRef" in vf or "configMapKeyRef" in vf:
            is_secret = "secretKeyRef" in vf
            ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
            pool = secrets if is_secret else configmaps
            obj = pool.get(ref.get("name"))
            data = (secret_data(obj) if is_secret else (obj.get("data") or {})) if obj else {}
            src = f"{'secret' if is_secret else 'configmap'} {ref.get('name')}/{ref.get('key')}"
            if ref.get("key") in data:
                env[n] = EnvVar(str(data[ref["key"]]), src)
            elif ref.get("optional"):
                pass  # left unset; an envFrom value of the same name stays, as with the kubelet
            else:
                env[n] = EnvVar(None, src, missing=obj is None or ref.get("key") not in data)
        else:
            env[n] = EnvVar(None, "fieldRef/resourceFieldRef")
    return env


def mounted_file(docs: list[dict], workload: dict, container: dict, path: str,
                 example_secrets: list[dict] | None = None) -> tuple[str | None, str]:
    """Content of the file at `path` inside the container, from its ConfigMap/Secret volume."""
    volumes = {v["name"]: v for v in pod_spec(workload).get("volumes") or []}
    for m in container.get("volumeMounts") or []:
        mount = m["mountPath"].rstrip("/")
        if not path.startswith(mount + "/"):
            continue
        rel = path[len(mount) + 1:]
        if m.get("subPath"):
            rel = os.path.join(m["subPath"], rel)
        vol = volumes.get(m["name"], {})
        for kind, key in (("Secret", "secret"), ("ConfigMap", "configMap")):
            if key not in vol:
                continue
            src = vol[key]
            src_name = src.get("secretName") or src.get("name")
            obj = find(docs, kind, src_name)
            if obj is None and kind == "Secret":
                obj = next((s for s in example_secrets or [] if name(s) == src_name), None)
            if obj is None:
                return None, f"{kind} {src_name} is neither rendered nor in secret.example.yaml"
            data = secret_data(obj) if kind == "Secret" else (obj.get("data") or {})
            items = src.get("items")
            key_for = {i["path"]: i["key"] for i in items} if items else {k: k for k in data}
            if rel not in key_for:
                return None, f"{kind} volume {src_name} does not project {rel}"
            if key_for[rel] not in data:
                return None, f"{kind} {src_name} has no key {key_for[rel]}"
            return data[key_for[rel]], f"{kind} {src_name}/{key_for[rel]}"
        return None, f"volume {m['name']} at {mount} is not a ConfigMap or Secret"
    return None, f"no volumeMount provides {path}"


def example_secrets() -> list[dict]:
    return load(SECRET_EXAMPLE) if os.path.exists(SECRET_EXAMPLE) else []


@dataclass
class Report:
    """Collects results of one checker run and prints them."""

    title: str
    failures: list[str] = field(default_factory=list)
    passed: int = 0
    notes: list[str] = field(default_factory=list)
    verbose: bool = False

    def ok(self, msg: str) -> None:
        self.passed += 1
        if self.verbose:
            print(f"  ok    {msg}")

    def fail(self, msg: str) -> None:
        self.failures.append(msg)
        print(f"  FAIL  {msg}")

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            print(f"  note  {msg}")

    def check(self, cond: Any, ok_msg: str, fail_msg: str | None = None) -> bool:
        if cond:
            self.ok(ok_msg)
        else:
            self.fail(fail_msg or ok_msg)
        return bool(cond)

    def finish(self) -> int:
        print(f"{self.title}: {self.passed} passed, {len(self.failures)} failed")
        return 1 if self.failures else 0


def verbose_flag() -> bool:
    return "-v" in sys.argv or "--verbose" in sys.argv
