#!/usr/bin/env python3
"""Checks a rendered kustomize output (one file) for what kubernetes-validate cannot see.

CRD resources (no schema offline):
  KafkaTopic     kafka.strimzi.io/v1beta2; strimzi.io/cluster label; partitions; replicas == 3;
                 min.insync.replicas == 2; retention.ms; cleanup.policy (compact,delete for events);
                 exactly the dispatch topic set when any topic is rendered
  ScaledObject   keda.sh/v1alpha1; scaleTargetRef names a rendered Deployment; kafka triggers with
                 bootstrapServers (== the target's DISPATCH_KAFKA__BROKERS), consumerGroup
                 (dispatch-processor for the processor), topic (a rendered topic), lagThreshold;
                 min <= max; maxReplicaCount <= partitions of every trigger topic
  ServiceMonitor monitoring.coreos.com/v1; selects exactly one rendered Service, which has every
                 endpoint port
Policy across kinds:
  - no HorizontalPodAutoscaler targets the processor; HPA/ScaledObject targets exist and have no
    spec.replicas; without an autoscaler a Deployment sets spec.replicas
  - each PDB selects pods, and minAvailable < the minimum replica count of what it selects
  - every dispatch workload: resources requests+limits, securityContext (runAsNonRoot,
    readOnlyRootFilesystem, allowPrivilegeEscalation false, drop ALL, seccomp RuntimeDefault), and
    for services a native gRPC readiness probe, startup/liveness on /healthz (alive, not the
    dependencies), a preStop hook and a grace period

Usage: check_crds.py RENDERED.yaml [-v]
"""

from __future__ import annotations

import sys

from deploy_manifests import (
    EVENTS_TOPIC, PROCESSOR, PROCESSOR_GROUP, SERVICES, TOPICS, Report, binary, containers, find,
    labels, load, name, of_kind, pod_labels, pod_spec, resolve_env, example_secrets,
    selector_matches, service_workloads, verbose_flag,
)


def as_int(v) -> int | None:
    try:
        return int(str(v))
    except (TypeError, ValueError):
        return None


def check_topics(r: Report, docs: list[dict]) -> dict[str, int]:
    """Returns Kafka topic name -> partitions."""
    partitions: dict[str, int] = {}
    topics = of_kind(docs, "KafkaTopic")
    for t in topics:
        n = name(t)
        spec = t.get("spec") or {}
        topic = spec.get("topicName") or n
        where = f"KafkaTopic {n} ({topic})"
        r.check(t.get("apiVersion") == "kafka.strimzi.io/v1beta2", f"{where}: apiVersion kafka.strimzi.io/v1beta2",
                f"{where}: apiVersion is {t.get('apiVersion')}, want kafka.strimzi.io/v1beta2")
        r.check(n, f"{where}: metadata.name", f"{where}: metadata.name missing")
        r.check(labels(t).get("strimzi.io/cluster"), f"{where}: strimzi.io/cluster label",
                f"{where}: no strimzi.io/cluster label (the Topic Operator ignores it)")
        p = as_int(spec.get("partitions"))
        if r.check(p is not None and p > 0, f"{where}: partitions {p}", f"{where}: spec.partitions missing or not positive"):
            partitions[topic] = p
        r.check(as_int(spec.get("replicas")) == 3, f"{where}: replicas 3", f"{where}: spec.replicas is {spec.get('replicas')}, want 3")
        config = spec.get("config") or {}
        r.check(as_int(config.get("min.insync.replicas")) == 2, f"{where}: min.insync.replicas 2",
                f"{where}: config min.insync.replicas is {config.get('min.insync.replicas')}, want 2")
        r.check(as_int(config.get("retention.ms")) is not None, f"{where}: retention.ms",
                f"{where}: config retention.ms missing")
        policy = str(config.get("cleanup.policy", "")).replace(" ", "")
        want = "compact,delete" if topic == EVENTS_TOPIC else "delete"
        r.check(set(policy.split(",")) == set(want.split(",")), f"{where}: cleanup.policy {policy}",
                f"{where}: cleanup.policy is {policy or 'unset'}, want {want}")
        r.check(topic in TOPICS, f"{where}: a dispatch topic", f"{where}: {topic} is not one of {TOPICS}")
    if topics:
        names = [(t.get("spec") or {}).get("topicName") or name(t) for t in topics]
        missing = sorted(set(TOPICS) - set(names))
        dupes = sorted({n for n in names if names.count(n) > 1})
        r.check(not missing, "every dispatch topic has a KafkaTopic", f"no KafkaTopic for {missing}")
        r.check(not dupes, "no topic declared twice", f"topics declared twice: {dupes}")
    return partitions


def deployment_brokers(docs: list[dict], deployment: dict) -> str | None:
    secrets = example_secrets()
    for c in containers(deployment):
        env = resolve_env(docs, c, secrets)
        if "DISPATCH_KAFKA__BROKERS" in env:
            return env["DISPATCH_KAFKA__BROKERS"].value
    return None


def check_scaledobjects(r: Report, docs: list[dict], partitions: dict[str, int]) -> None:
    for so in of_kind(docs, "ScaledObject"):
        n = name(so)
        where = f"ScaledObject {n}"
        spec = so.get("spec") or {}
        r.check(so.get("apiVersion") == "keda.sh/v1alpha1", f"{where}: apiVersion keda.sh/v1alpha1",
                f"{where}: apiVersion is {so.get('apiVersion')}, want keda.sh/v1alpha1")
        ref = spec.get("scaleTargetRef") or {}
        target = find(docs, ref.get("kind", "Deployment"), ref.get("name", ""))
        r.check(target is not None, f"{where}: target {ref.get('name')} is rendered",
                f"{where}: scaleTargetRef {ref} names no rendered workload")
        lo, hi = as_int(spec.get("minReplicaCount", 0)), as_int(spec.get("maxReplicaCount"))
        r.check(hi is not None and hi >= 1, f"{where}: maxReplicaCount {hi}", f"{where}: maxReplicaCount missing")
        r.check(lo is not None and hi is not None and lo <= hi, f"{where}: minReplicaCount {lo} <= maxReplicaCount {hi}",
                f"{where}: minReplicaCount {lo} > maxReplicaCount {hi}")
        triggers = spec.get("triggers") or []
        r.check(triggers, f"{where}: has triggers", f"{where}: no triggers")
        is_processor = target is not None and any(binary(c) == PROCESSOR for c in containers(target))
        brokers = deployment_brokers(docs, target) if target is not None else None
        for i, trig in enumerate(triggers):
            tw = f"{where} trigger {trig.get('name', i)}"
            if trig.get("type") != "kafka":
                r.note(f"{tw}: type {trig.get('type')} not checked")
                continue
            md = trig.get("metadata") or {}
            for key in ("bootstrapServers", "consumerGroup", "topic", "lagThreshold"):
                r.check(md.get(key) not in (None, ""), f"{tw}: {key}", f"{tw}: metadata.{key} missing")
            r.check(isinstance(md.get("lagThreshold"), str) and (as_int(md.get("lagThreshold")) or 0) > 0,
                    f"{tw}: lagThreshold {md.get('lagThreshold')}",
                    f"{tw}: lagThreshold must be a quoted positive integer, got {md.get('lagThreshold')!r}")
            if is_processor:
                r.check(md.get("consumerGroup") == PROCESSOR_GROUP, f"{tw}: consumerGroup {PROCESSOR_GROUP}",
                        f"{tw}: consumerGroup {md.get('consumerGroup')}, the processor's group is {PROCESSOR_GROUP}")
            if brokers is not None:
                r.check(md.get("bootstrapServers") == brokers, f"{tw}: bootstrapServers == DISPATCH_KAFKA__BROKERS",
                        f"{tw}: bootstrapServers {md.get('bootstrapServers')} != the target's DISPATCH_KAFKA__BROKERS {brokers}")
            topic = md.get("topic")
            if partitions:
                if r.check(topic in partitions, f"{tw}: topic {topic} is rendered",
                           f"{tw}: topic {topic} has no rendered KafkaTopic"):
                    r.check(hi is not None and hi <= partitions[topic],
                            f"{tw}: maxReplicaCount {hi} <= {partitions[topic]} partitions of {topic}",
                            f"{tw}: maxReplicaCount {hi} > {partitions[topic]} partitions of {topic} (idle consumers)")
            elif topic not in TOPICS:
                r.fail(f"{tw}: topic {topic} is not a dispatch topic")
            else:
                r.note(f"{where}: no KafkaTopics rendered, partition bound not checked")


def check_servicemonitors(r: Report, docs: list[dict]) -> None:
    services = of_kind(docs, "Service")
    for sm in of_kind(docs, "ServiceMonitor"):
        where = f"ServiceMonitor {name(sm)}"
        spec = sm.get("spec") or {}
        r.check(sm.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion monitoring.coreos.com/v1",
                f"{where}: apiVersion is {sm.get('apiVersion')}, want monitoring.coreos.com/v1")
        sel = spec.get("selector")
        if not r.check(sel and (sel.get("matchLabels") or sel.get("matchExpressions")), f"{where}: selector",
                       f"{where}: spec.selector missing or empty (would select every Service)"):
            continue
        matched = [s for s in services if selector_matches(sel, labels(s))]
        r.check(len(matched) == 1, f"{where}: selects Service {[name(s) for s in matched]}",
                f"{where}: selects {len(matched)} Services {[name(s) for s in matched]}, want exactly 1 (double scrapes)")
        endpoints = spec.get("endpoints") or []
        r.check(endpoints, f"{where}: endpoints", f"{where}: no endpoints")
        for ep in endpoints:
            port = ep.get("port")
            r.check(port, f"{where}: endpoint port {port}", f"{where}: endpoint without a port name")
            for s in matched:
                names = [p.get("name") for p in (s.get("spec") or {}).get("ports") or []]
                r.check(port in names, f"{where}: Service {name(s)} has port {port}",
                        f"{where}: Service {name(s)} has no port named {port} (ports {names})")


def min_replicas(docs: list[dict], deployment: dict) -> tuple[int | None, str]:
    """Lowest replica count the deployment can run at, and what decides it."""
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("name") == name(deployment):
            return as_int(hpa["spec"].get("minReplicas", 1)), f"HPA {name(hpa)}"
    for so in of_kind(docs, "ScaledObject"):
        ref = (so.get("spec") or {}).get("scaleTargetRef") or {}
        if ref.get("name") == name(deployment):
            return as_int(so["spec"].get("minReplicaCount", 0)), f"ScaledObject {name(so)}"
    return as_int((deployment.get("spec") or {}).get("replicas", 1)), "spec.replicas"


def check_autoscaling(r: Report, docs: list[dict]) -> None:
    deployments = of_kind(docs, "Deployment")
    scalers = [(h, "HPA") for h in of_kind(docs, "HorizontalPodAutoscaler")] + \
              [(s, "ScaledObject") for s in of_kind(docs, "ScaledObject")]
    targeted: dict[str, list[str]] = {}
    for obj, kind in scalers:
        ref = (obj.get("spec") or {}).get("scaleTargetRef") or {}
        targeted.setdefault(ref.get("name", ""), []).append(f"{kind} {name(obj)}")
        target = find(docs, ref.get("kind", "Deployment"), ref.get("name", ""))
        if kind == "HPA":
            spec = obj.get("spec") or {}
            r.check(target is not None, f"HPA {name(obj)}: target {ref.get('name')} rendered",
                    f"HPA {name(obj)}: scaleTargetRef {ref.get('name')} is not rendered")
            r.check(as_int(spec.get("minReplicas", 1)) <= as_int(spec.get("maxReplicas", 0)),
                    f"HPA {name(obj)}: minReplicas <= maxReplicas", f"HPA {name(obj)}: minReplicas > maxReplicas")
            if target is not None:
                r.check(not any(binary(c) == PROCESSOR for c in containers(target)),
                        f"HPA {name(obj)} does not target the processor",
                        f"HPA {name(obj)} targets the processor ({name(target)}): it scales on lag through KEDA only")
    for d in deployments:
        n = name(d)
        by = targeted.get(n, [])
        has_replicas = "replicas" in (d.get("spec") or {})
        r.check(len(by) <= 1, f"Deployment {n}: at most one autoscaler", f"Deployment {n}: several autoscalers {by}")
        if by:
            r.check(not has_replicas, f"Deployment {n}: no spec.replicas under {by[0]}",
                    f"Deployment {n}: spec.replicas set while {by[0]} scales it (every apply would reset it)")
        else:
            r.check(has_replicas, f"Deployment {n}: spec.replicas without an autoscaler",
                    f"Deployment {n}: neither an autoscaler nor spec.replicas")


def check_pdbs(r: Report, docs: list[dict]) -> None:
    deployments = of_kind(docs, "Deployment")
    for pdb in of_kind(docs, "PodDisruptionBudget"):
        where = f"PDB {name(pdb)}"
        spec = pdb.get("spec") or {}
        matched = [d for d in deployments if selector_matches(spec.get("selector"), pod_labels(d))]
        if not r.check(matched, f"{where}: selects {[name(d) for d in matched]}", f"{where}: selects no Deployment's pods"):
            continue
        total, why = 0, []
        for d in matched:
            n, src = min_replicas(docs, d)
            total += n or 0
            why.append(f"{name(d)}={n} ({src})")
        if "minAvailable" in spec:
            m = as_int(spec["minAvailable"])
            if m is None:
                r.note(f"{where}: minAvailable {spec['minAvailable']} (percentage) not checked")
            else:
                r.check(m < total, f"{where}: minAvailable {m} < minimum replicas {total}",
                        f"{where}: minAvailable {m} >= minimum replicas {total} ({', '.join(why)}): drains would block")
        elif "maxUnavailable" in spec:
            m = as_int(spec["maxUnavailable"])
            r.check(m is None or m >= 1, f"{where}: maxUnavailable {spec['maxUnavailable']}",
                    f"{where}: maxUnavailable 0 blocks every voluntary disruption")


def check_workloads(r: Report, docs: list[dict]) -> None:
    for w, c, b in service_workloads(docs):
        where = f"{w['kind']} {name(w)}/{c.get('name')}"
        pod = pod_spec(w)
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for kind in ("cpu", "memory"):
                r.check((res.get(part) or {}).get(kind), f"{where}: {part}.{kind}", f"{where}: resources.{part}.{kind} missing")
        r.check(csc.get("runAsNonRoot") or psc.get("runAsNonRoot"), f"{where}: runAsNonRoot", f"{where}: runAsNonRoot not set")
        r.check(csc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem",
                f"{where}: readOnlyRootFilesystem not true")
        r.check(csc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation false",
                f"{where}: allowPrivilegeEscalation not false")
        r.check("ALL" in ((csc.get("capabilities") or {}).get("drop") or []), f"{where}: drops ALL capabilities",
                f"{where}: capabilities.drop lacks ALL")
        seccomp = (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        r.check(seccomp == "RuntimeDefault", f"{where}: seccomp RuntimeDefault", f"{where}: seccompProfile is {seccomp}")
        r.check(pod.get("automountServiceAccountToken") is False, f"{where}: no service account token",
                f"{where}: automountServiceAccountToken not false")
        if b not in SERVICES:
            continue
        ready = c.get("readinessProbe") or {}
        r.check("grpc" in ready and as_int((ready.get("grpc") or {}).get("port")),
                f"{where}: readinessProbe is a native gRPC probe", f"{where}: readinessProbe missing or not a gRPC probe")
        # Liveness must not follow the dependencies (gRPC health does): /healthz only says "alive".
        for probe in ("startupProbe", "livenessProbe"):
            p = c.get(probe) or {}
            r.check((p.get("httpGet") or {}).get("path") == "/healthz",
                    f"{where}: {probe} on /healthz",
                    f"{where}: {probe} missing or not httpGet /healthz (a dependency outage would restart pods)")
        r.check(((c.get("lifecycle") or {}).get("preStop")), f"{where}: preStop hook", f"{where}: no preStop hook")
        r.check(as_int(pod.get("terminationGracePeriodSeconds")), f"{where}: terminationGracePeriodSeconds",
                f"{where}: terminationGracePeriodSeconds not set")


def main() -> int:
    paths = [a for a in sys.argv[1:] if not a.startswith("-")]
    if len(paths) != 1:
        print(__doc__)
        return 2
    docs = load(paths[0])
    r = Report(f"CRD/policy checks {paths[0]}", verbose=verbose_flag())
    partitions = check_topics(r, docs)
    check_scaledobjects(r, docs, partitions)
    check_servicemonitors(r, docs)
    check_autoscaling(r, docs)
    check_pdbs(r, docs)
    check_workloads(r, docs)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
