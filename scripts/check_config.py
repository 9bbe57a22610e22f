#!/usr/bin/env python3
"""Cross-checks the settings and ports the rendered manifests give each service.

Static (always), for every container running dispatch-gateway / -processor / -reader / dispatchctl:
  - every DISPATCH_* variable (env and envFrom ConfigMaps) is DISPATCH_CONFIG or a settings key
    DISPATCH_<SECTION>__<KEY>; with the binaries, each key (and each key of the DISPATCH_CONFIG
    file) names a field of the service's settings, as `<bin> --print-config=json` lists them with
    their defaults (JSON also lists the optional keys left unset, as null): the binaries say what
    they accept, nothing here re-reads the Rust structs
  - every secret/configmap reference resolves (Secrets: rendered, else k8s/base/secret.example.yaml)
  - DISPATCH_CONFIG names a file a ConfigMap/Secret volume provides, and that file is valid TOML;
    every admin key in its [auth] has an id ([[auth.admin_keys]] with a unique id of 1 to 64
    [A-Za-z0-9._-] and a hex SHA-256): the single `auth.admin_key_sha256` (no id) fails, since
    rotations overlap only with ids and admin actions are logged by key id
  - grpc.listen and admin.listen are set, not loopback, and use the contract ports; container ports,
    probes, Service targetPorts and NetworkPolicy ingress ports all match them
  - preStop sleep + shutdown.drain_timeout_ms < terminationGracePeriodSeconds
  - limits.replicas (DISPATCH_LIMITS__REPLICAS) of every gateway and reader Deployment equals the
    most pods of that service that can share a tenant's quota at once: in each render holding the
    Deployment (same namespace and name; a canary render holds prod's), the sum over that
    service's Deployments of the HPA's maxReplicas (else spec.replicas), and the largest such sum
    over those renders. Each pod admits rate / limits.replicas while Redis is down: fewer than the
    pods that run admits more than the quota, more admits less (docs/deploy.md, "Rate limits
    without Redis")
With the binaries (default; --skip-binaries turns it off), from target/debug (or --bin-dir):
  - `<bin> --print-config=json` with an empty environment gives the defaults; again with the manifest's
    environment (DISPATCH_CONFIG pointing to a temp copy of the mounted file) gives the effective
    settings, and must exit 0 (unknown keys make it fail)
  - every DISPATCH_<SECTION>__<KEY> set in a manifest names a key path present in that output
  - the effective grpc.listen / admin.listen ports equal the manifest's ports
  - the migration Job's command (`dispatchctl migrate up`) exists, and reads every DISPATCH_* variable
    the Job sets (clap lists them in --help)

Usage: check_config.py RENDERED.yaml... [--skip-binaries] [--bin-dir DIR] [-v]
"""

# Over 400 lines because the static checks of the manifests (variables, references, ports, grace
# periods, limits x replicas) and the check that runs each binary's --print-config share one
# Workload model and Report; the binary check (`check_binaries`, `print_config`) would move to a
# module of its own first.

from __future__ import annotations

import ipaddress
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib

from deploy_manifests import (
    REPO, SERVICES, Report, containers, example_secrets, labels, load, mounted_file, name, of_kind,
    pod_labels, pod_spec, resolve_env, selector_matches, service_workloads, verbose_flag,
)

DEFAULT_DRAIN_MS = 20_000
KEY_RE = re.compile(r"^DISPATCH_[A-Z0-9]+(?:_[A-Z0-9]+)*(?:__[A-Z0-9]+(?:[_.-][A-Z0-9]+)*)+$")
RUN_TIMEOUT_S = 30
ADMIN_KEY_ID_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
SHA256_HEX_RE = re.compile(r"^[0-9a-fA-F]{64}$")


def split_listen(value: str) -> tuple[str, int] | None:
    m = re.match(r"^\[?([^\]]*?)\]?:(\d+)$", value.strip())
    return (m.group(1), int(m.group(2))) if m else None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_ABSENT = object()


def _walk(doc: dict | None, path: list[str]):
    """The value at `path` in nested tables, or `_ABSENT` where a segment is missing."""
    cur = doc
    for seg in path:
        if not isinstance(cur, dict) or seg not in cur:
            return _ABSENT
        cur = cur[seg]
    return cur


def toml_get(doc: dict, path: list[str]):
    v = _walk(doc, path)
    return None if v is _ABSENT else v


def has_path(doc: dict | None, path: list[str]) -> bool:
    """Optional settings (None) and map entries are absent from the defaults; the caller also
    looks in the effective output, where the manifest's value makes them appear."""
    return _walk(doc, path) is not _ABSENT


class Workload:
    """One container running a dispatch binary, with its resolved environment."""

    def __init__(self, render: str, docs: list[dict], w: dict, c: dict, b: str, secrets: list[dict]):
        self.render, self.docs, self.w, self.c, self.bin = render, docs, w, c, b
        self.where = f"[{render}] {w['kind']} {name(w)}/{c.get('name')}"
        self.env = resolve_env(docs, c, secrets)
        self.config_text: str | None = None
        self.config: dict = {}
        self.secrets = secrets

    def setting(self, section: str, key: str):
        var = f"DISPATCH_{section.upper()}__{key.upper()}"
        if var in self.env and self.env[var].value is not None:
            return self.env[var].value, var
        v = toml_get(self.config, [section, key])
        return (str(v), f"{section}.{key} in DISPATCH_CONFIG") if v is not None else (None, None)


def check_admin_keys(r: Report, wl: Workload, src: str) -> None:
    """Every admin key of the DISPATCH_CONFIG file's [auth] has an id: keys with ids can overlap
    during a rotation (docs/deploy.md, "Rotating keys") and name the key in admin action logs."""
    auth = wl.config.get("auth")
    if not isinstance(auth, dict):
        return
    where = f"{wl.where}: DISPATCH_CONFIG ({src})"
    r.check("admin_key_sha256" not in auth, f"{where}: no admin key without an id",
            f"{where}: auth.admin_key_sha256 is an admin key without an id; use [[auth.admin_keys]] "
            f"entries with id and key_sha256 (docs/deploy.md, \"Rotating keys\")")
    keys = auth.get("admin_keys", [])
    if not r.check(isinstance(keys, list), f"{where}: auth.admin_keys is a list",
                   f"{where}: auth.admin_keys is not an array of tables ([[auth.admin_keys]])"):
        return
    seen: set[str] = set()
    for i, k in enumerate(keys):
        k = k if isinstance(k, dict) else {}
        kid = k.get("id")
        if not r.check(isinstance(kid, str) and ADMIN_KEY_ID_RE.match(kid),
                       f"{where}: auth.admin_keys[{i}] has id {kid!r}",
                       f"{where}: auth.admin_keys[{i}] has no id (or not 1 to 64 of [A-Za-z0-9._-]: {kid!r}); "
                       f"every admin key needs one"):
            continue
        r.check(kid not in seen, f"{where}: auth.admin_keys id {kid!r} is unique",
                f"{where}: auth.admin_keys id {kid!r} is used twice")
        seen.add(kid)
        r.check(isinstance(k.get("key_sha256"), str) and SHA256_HEX_RE.match(k["key_sha256"]),
                f"{where}: auth.admin_keys[{i}] ({kid}) key_sha256 is a SHA-256 hex digest",
                f"{where}: auth.admin_keys[{i}] ({kid}) key_sha256 is not 64 hex digits")


def key_known(schema: dict, path: list[str]) -> bool:
    """`path` (section, key[, map key]) names a setting in `schema` (`--print-config=json`'s defaults):
    a third segment only under a map or a nested section."""
    fields = schema.get(path[0])
    if not isinstance(fields, dict) or len(path) < 2 or path[1] not in fields:
        return False
    return len(path) == 2 or (len(path) == 3 and isinstance(fields[path[1]], dict))


def check_env(r: Report, wl: Workload, schema: dict | None) -> None:
    """`schema`: the service's settings with their defaults (None: keys not checked)."""
    for var, ev in wl.env.items():
        if var.startswith("<envFrom"):
            r.fail(f"{wl.where}: {var} does not resolve")
            continue
        if ev.missing:
            r.fail(f"{wl.where}: {var} from {ev.source} does not resolve (not rendered, not in secret.example.yaml)")
        if not var.startswith("DISPATCH_"):
            continue
        if var == "DISPATCH_CONFIG":
            content, src = mounted_file(wl.docs, wl.w, wl.c, ev.value or "", wl.secrets)
            if not r.check(content is not None, f"{wl.where}: DISPATCH_CONFIG {ev.value} from {src}",
                           f"{wl.where}: DISPATCH_CONFIG={ev.value}: {src} (start-up would fail: file missing)"):
                continue
            try:
                wl.config = tomllib.loads(content)
                wl.config_text = content
                r.ok(f"{wl.where}: DISPATCH_CONFIG file is valid TOML")
            except tomllib.TOMLDecodeError as e:
                r.fail(f"{wl.where}: DISPATCH_CONFIG file ({src}) is not valid TOML: {e}")
                continue
            check_admin_keys(r, wl, src)
            if schema is None:
                continue
            for sec, body in wl.config.items():
                if not r.check(isinstance(body, dict) and isinstance(schema.get(sec), dict),
                               f"{wl.where}: [{sec}] in DISPATCH_CONFIG is a section of {wl.bin}",
                               f"{wl.where}: [{sec}] in the DISPATCH_CONFIG file is not a section of {wl.bin}"):
                    continue
                for key in body:
                    r.check(key in schema[sec], f"{wl.where}: {sec}.{key} in DISPATCH_CONFIG is a known key",
                            f"{wl.where}: {sec}.{key} in the DISPATCH_CONFIG file is not a field of [{sec}]")
            continue
        if not r.check(KEY_RE.match(var), f"{wl.where}: {var} is a settings key",
                       f"{wl.where}: {var} is not DISPATCH_<SECTION>__<KEY> (the loader ignores it)"):
            continue
        if schema is None:
            continue
        path = [s.lower() for s in var[len("DISPATCH_"):].split("__")]
        section = path[0]
        r.check(key_known(schema, path), f"{wl.where}: {var} -> {'.'.join(path)}",
                f"{wl.where}: {var}: {'.'.join(path)} is not a key of {wl.bin}'s settings "
                f"([{section}] has {sorted(schema.get(section) or {})})")


def resolve_port(container: dict, port) -> int | None:
    if isinstance(port, int):
        return port
    if isinstance(port, str) and port.isdigit():
        return int(port)
    return next((p["containerPort"] for p in container.get("ports") or [] if p.get("name") == port), None)


def check_ports(r: Report, wl: Workload) -> tuple[int | None, int | None]:
    want_grpc, want_admin = SERVICES[wl.bin]
    listen: dict[str, int | None] = {}
    for section, want in (("grpc", want_grpc), ("admin", want_admin)):
        value, src = wl.setting(section, "listen")
        if not r.check(value, f"{wl.where}: {section}.listen set ({src})",
                       f"{wl.where}: {section}.listen is not set: the default binds 127.0.0.1 on a random port"):
            listen[section] = None
            continue
        hp = split_listen(value)
        if not r.check(hp, f"{wl.where}: {section}.listen {value}", f"{wl.where}: {section}.listen {value!r} is not host:port"):
            listen[section] = None
            continue
        host, port = hp
        r.check(not is_loopback(host), f"{wl.where}: {section}.listen not loopback",
                f"{wl.where}: {section}.listen {value} is loopback: unreachable from probes and Services")
        r.check(port == want, f"{wl.where}: {section}.listen port {port} (contract {want})",
                f"{wl.where}: {section}.listen port {port}, the contract says {want}")
        listen[section] = port
    grpc, admin = listen["grpc"], listen["admin"]
    allowed = {p for p in (grpc, admin) if p}
    ports = {p.get("name"): p.get("containerPort") for p in wl.c.get("ports") or []}
    r.check(ports.get("grpc") == grpc, f"{wl.where}: containerPort grpc {grpc}",
            f"{wl.where}: containerPort named grpc is {ports.get('grpc')}, grpc.listen port is {grpc}")
    r.check(ports.get("metrics") == admin, f"{wl.where}: containerPort metrics {admin}",
            f"{wl.where}: containerPort named metrics is {ports.get('metrics')}, admin.listen port is {admin}")
    for n, p in ports.items():
        r.check(p in allowed, f"{wl.where}: containerPort {n}={p} is listened on",
                f"{wl.where}: containerPort {n}={p} matches neither grpc.listen nor admin.listen")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        spec = wl.c.get(probe)
        if not spec:
            continue
        if "grpc" in spec:
            r.check(spec["grpc"].get("port") == grpc, f"{wl.where}: {probe} gRPC port {grpc}",
                    f"{wl.where}: {probe} gRPC port {spec['grpc'].get('port')} != grpc.listen port {grpc}")
        for kind in ("httpGet", "tcpSocket"):
            if kind in spec:
                p = resolve_port(wl.c, spec[kind].get("port"))
                r.check(p in allowed, f"{wl.where}: {probe} {kind} port {p}",
                        f"{wl.where}: {probe} {kind} port {spec[kind].get('port')} is not a listen port")
    ns = wl.w.get("metadata", {}).get("namespace")
    plabels = pod_labels(wl.w)
    for svc in of_kind(wl.docs, "Service"):
        spec = svc.get("spec") or {}
        if svc.get("metadata", {}).get("namespace") != ns or not spec.get("selector"):
            continue
        if not selector_matches({"matchLabels": spec["selector"]}, plabels):
            continue
        for p in spec.get("ports") or []:
            target = resolve_port(wl.c, p.get("targetPort", p.get("port")))
            r.check(target in allowed, f"{wl.where}: Service {name(svc)} port {p.get('name')} -> {target}",
                    f"{wl.where}: Service {name(svc)} port {p.get('name')} targets {p.get('targetPort')} = {target}, "
                    f"not a listen port of {wl.bin} ({sorted(allowed)})")
            r.check(p.get("port") == target, f"{wl.where}: Service {name(svc)} port {p.get('port')} == targetPort",
                    f"{wl.where}: Service {name(svc)} port {p.get('port')} differs from its target {target} (contract ports)")
    for np in of_kind(wl.docs, "NetworkPolicy"):
        spec = np.get("spec") or {}
        if np.get("metadata", {}).get("namespace") != ns or not selector_matches(spec.get("podSelector"), plabels):
            continue
        for rule in spec.get("ingress") or []:
            for p in rule.get("ports") or []:
                port = resolve_port(wl.c, p.get("port"))
                r.check(port in allowed, f"{wl.where}: NetworkPolicy {name(np)} opens {port}",
                        f"{wl.where}: NetworkPolicy {name(np)} opens port {p.get('port')}, not a listen port {sorted(allowed)}")
    return grpc, admin


def check_grace(r: Report, wl: Workload) -> None:
    pod = pod_spec(wl.w)
    grace = pod.get("terminationGracePeriodSeconds", 30)
    pre = ((wl.c.get("lifecycle") or {}).get("preStop") or {})
    sleep = (pre.get("sleep") or {}).get("seconds", 0)
    if "exec" in pre:
        m = re.search(r"sleep\s+(\d+)", " ".join(pre["exec"].get("command") or []))
        sleep = int(m.group(1)) if m else 0
    value, _ = wl.setting("shutdown", "drain_timeout_ms")
    drain_ms = int(value) if value and str(value).isdigit() else DEFAULT_DRAIN_MS
    total = sleep + drain_ms / 1000
    r.check(total < grace, f"{wl.where}: preStop {sleep}s + drain {drain_ms / 1000:g}s < grace {grace}s",
            f"{wl.where}: preStop {sleep}s + drain {drain_ms / 1000:g}s >= terminationGracePeriodSeconds {grace}: "
            f"the kubelet kills the pod mid-drain")


# ---- limits.replicas -------------------------------------------------------------------------
# Services whose rate limits fall back to `rate / limits.replicas` per pod while Redis is down.
RATE_LIMITED = ("dispatch-gateway", "dispatch-reader")


def max_pods(docs: list[dict], w: dict) -> tuple[int, str]:
    """The most pods `w` runs: its HPA's maxReplicas, else spec.replicas (default 1)."""
    ns = w.get("metadata", {}).get("namespace")
    for h in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = (h.get("spec") or {}).get("scaleTargetRef") or {}
        if (h.get("metadata", {}).get("namespace") == ns and ref.get("kind") == "Deployment"
                and ref.get("name") == name(w)):
            return int(h["spec"].get("maxReplicas", 1)), f"HPA {name(h)} maxReplicas"
    return int((w.get("spec") or {}).get("replicas", 1)), "spec.replicas"


def check_limit_replicas(r: Report, workloads: list[Workload]) -> None:
    limited = [wl for wl in workloads if wl.bin in RATE_LIMITED and wl.w.get("kind") == "Deployment"]
    # (render, binary) -> the pods of that service in that render, and how they add up
    totals: dict[tuple[str, str], int] = {}
    parts: dict[tuple[str, str], list[str]] = {}
    # (namespace, Deployment, binary) -> the renders holding it
    holders: dict[tuple, set[str]] = {}
    for wl in limited:
        n, how = max_pods(wl.docs, wl.w)
        key = (wl.render, wl.bin)
        totals[key] = totals.get(key, 0) + n
        parts.setdefault(key, []).append(f"{name(wl.w)} {n} ({how})")
        holders.setdefault((wl.w.get("metadata", {}).get("namespace"), name(wl.w), wl.bin), set()).add(wl.render)
    for wl in limited:
        renders = holders[(wl.w.get("metadata", {}).get("namespace"), name(wl.w), wl.bin)]
        want_render = max(sorted(renders), key=lambda rn: totals[(rn, wl.bin)])
        want = totals[(want_render, wl.bin)]
        why = f"[{want_render}] " + " + ".join(parts[(want_render, wl.bin)])
        value, src = wl.setting("limits", "replicas")
        if not r.check(value is not None, f"{wl.where}: limits.replicas set ({src})",
                       f"{wl.where}: DISPATCH_LIMITS__REPLICAS is not set (default 1) but up to {want} pod(s) "
                       f"share a tenant's quota ({why}): while Redis is down they would admit {want}x it"):
            continue
        got = int(value) if str(value).isdigit() else None
        if got == want:
            r.ok(f"{wl.where}: limits.replicas {got} = the most pods sharing the quota ({why})")
        elif got is not None and got < want:
            r.fail(f"{wl.where}: limits.replicas is {got} ({src}) but up to {want} pod(s) share a tenant's quota "
                   f"({why}): while Redis is down they would admit up to {want}/{got} of it; set {want}")
        else:
            r.fail(f"{wl.where}: limits.replicas is {value} ({src}) but at most {want} pod(s) share a tenant's "
                   f"quota ({why}): while Redis is down they would admit at most {want}/{value} of it; set {want}")


# ---- binaries --------------------------------------------------------------------------------
def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess | None:
    base = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR") if k in os.environ}
    try:
        return subprocess.run(cmd, env={**base, **env}, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return None


def print_config(r: Report, path: str, env: dict[str, str], what: str) -> dict | None:
    res = run([path, "--print-config=json"], env)
    b = os.path.basename(path)
    if res is None:
        r.fail(f"{what}: `{b} --print-config=json` did not exit within {RUN_TIMEOUT_S}s")
        return None
    if res.returncode != 0:
        err = (res.stderr.strip() or res.stdout.strip()).splitlines()
        r.fail(f"{what}: `{b} --print-config=json` exited {res.returncode}: {' | '.join(err[-3:]) or '(no output)'}")
        return None
    try:
        settings = json.loads(res.stdout)
    except json.JSONDecodeError as e:
        r.fail(f"{what}: `{b} --print-config=json` did not print JSON ({e}); first line: {res.stdout[:80]!r}")
        return None
    if not settings:
        r.fail(f"{what}: `{b} --print-config=json` exited 0 but printed no settings (not implemented yet?)")
        return None
    return settings


def service_defaults(r: Report, workloads: list[Workload], bin_dir: str) -> dict[str, dict | None] | None:
    """Each service's settings with their defaults (`--print-config=json`, empty environment); None
    when a binary is missing (reported)."""
    needed = sorted({wl.bin for wl in workloads} | set(SERVICES))
    missing = [b for b in needed if not os.access(os.path.join(bin_dir, b), os.X_OK)]
    if missing:
        r.fail(f"binaries not built: {', '.join(os.path.join(os.path.relpath(bin_dir, REPO), b) for b in missing)} "
               f"(build them with `cargo build -p dispatch-gateway -p dispatch-processor -p dispatch-reader "
               f"-p dispatchctl`, or pass --skip-binaries)")
        return None
    defaults: dict[str, dict | None] = {}
    for b in SERVICES:
        defaults[b] = print_config(r, os.path.join(bin_dir, b), {}, f"{b} (defaults)")
        if defaults[b] is not None:
            r.ok(f"{b} --print-config=json prints the defaults")
    return defaults


def check_binaries(r: Report, workloads: list[Workload], bin_dir: str,
                   defaults: dict[str, dict | None]) -> None:
    for wl in workloads:
        if wl.bin != "dispatchctl":
            continue
        # The Job's own command line with --help: it must exist. clap lists the environment variable
        # each option reads ([env: DISPATCH_...]) in the help of the (sub)command that owns the
        # option, so every one the Job sets must appear in the help of the command or a parent.
        exe = os.path.join(bin_dir, "dispatchctl")
        words = [*(wl.c.get("command") or [])[1:], *(wl.c.get("args") or [])]
        shown = " ".join(words)
        res = run([exe, *words, "--help"], {})
        out = (res.stdout + res.stderr) if res is not None else ""
        if not r.check(res is not None and res.returncode == 0 and "usage" in out.lower(),
                       f"{wl.where}: `dispatchctl {shown}` prints its usage",
                       f"{wl.where}: `dispatchctl {shown}` did not print a usage (exit "
                       f"{res.returncode if res else 'timeout'}): the Job's command does not exist"):
            continue
        for i in range(len(words)):
            if words[i].startswith("-"):
                break
            parent = run([exe, *words[:i], "--help"], {})
            out += (parent.stdout + parent.stderr) if parent is not None else ""
        for var in wl.env:
            if var.startswith("DISPATCH_"):
                r.check(var in out, f"{wl.where}: dispatchctl reads {var}",
                        f"{wl.where}: {var} is set but `dispatchctl {shown}` reads no such variable")
    with tempfile.TemporaryDirectory() as tmp:
        for i, wl in enumerate(workloads):
            if wl.bin not in SERVICES or defaults.get(wl.bin) is None:
                continue
            env = {k: (v.value if v.value is not None else "placeholder") for k, v in wl.env.items()
                   if k.startswith("DISPATCH_")}
            if "DISPATCH_CONFIG" in env:
                if wl.config_text is None:
                    continue  # reported by the static check
                cfg = os.path.join(tmp, f"{i}.toml")
                with open(cfg, "w") as f:
                    f.write(wl.config_text)
                env["DISPATCH_CONFIG"] = cfg
            effective = print_config(r, os.path.join(bin_dir, wl.bin), env, f"{wl.where} (manifest environment)")
            if effective is None:
                continue
            r.ok(f"{wl.where}: starts with the manifest's settings (--print-config exit 0)")
            for var in env:
                if var == "DISPATCH_CONFIG" or not KEY_RE.match(var):
                    continue
                path = [s.lower() for s in var[len("DISPATCH_"):].split("__")]
                r.check(has_path(defaults[wl.bin], path) or has_path(effective, path),
                        f"{wl.where}: {var} -> {'.'.join(path)} in --print-config",
                        f"{wl.where}: {var}: {'.'.join(path)} is not in `{wl.bin} --print-config`")
            for section, want in zip(("grpc", "admin"), SERVICES[wl.bin]):
                hp = split_listen(str(toml_get(effective, [section, "listen"]) or ""))
                r.check(hp and hp[1] == want and not is_loopback(hp[0]),
                        f"{wl.where}: effective {section}.listen {hp} matches the manifest port {want}",
                        f"{wl.where}: effective {section}.listen is {toml_get(effective, [section, 'listen'])}, "
                        f"the manifest's ports say {want} on a non-loopback address")


def main() -> int:
    args = sys.argv[1:]
    skip = "--skip-binaries" in args
    bin_dir = os.path.join(REPO, "target", "debug")
    if "--bin-dir" in args:
        bin_dir = os.path.abspath(args[args.index("--bin-dir") + 1])
    renders = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] != "--bin-dir")]
    if not renders:
        print(__doc__)
        return 2
    r = Report("settings/ports cross-check", verbose=verbose_flag())
    secrets = example_secrets()
    workloads: list[Workload] = []
    for path in renders:
        render = os.path.splitext(os.path.basename(path))[0]
        docs = load(path)
        found = service_workloads(docs)
        bins = {b for _, _, b in found}
        r.check(bins >= set(SERVICES), f"[{render}] runs {sorted(bins)}",
                f"[{render}] does not run {sorted(set(SERVICES) - bins)}")
        workloads += [Workload(render, docs, w, c, b, secrets) for w, c, b in found]
    defaults = None if skip else service_defaults(r, workloads, bin_dir)
    if defaults is None:
        r.note("without the binaries the settings keys, service-specific or shared, are not checked")
    for wl in workloads:
        check_env(r, wl, (defaults or {}).get(wl.bin))
        if wl.bin in SERVICES:
            check_ports(r, wl)
            check_grace(r, wl)
    check_limit_replicas(r, workloads)
    if skip:
        r.note("--skip-binaries: settings keys and effective settings not checked")
    elif defaults is not None:
        check_binaries(r, workloads, bin_dir, defaults)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
