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
                 endpoint with honorLabels: true and a relabeling that sets `service` to the short
                 name the services export (the label scheme of alerts_test.yml); every
                 ServiceMonitor and PrometheusRule of an overlay carries the same selector label
  TriggerAuthentication  every trigger's authenticationRef names a rendered one; Kafka over TLS/SASL
                 in the services' librdkafka properties means tls/sasl and an authenticationRef with
                 username/password (and ca for TLS) in every kafka trigger, and the reverse
  PrometheusRule / dashboards  when ServiceMonitors are rendered: PrometheusRule dispatch-alerts with
                 the groups of deploy/prometheus/alerts.yml and absolute runbook_urls ending in
                 #<alert in lower case>; one ConfigMap per grafana/dashboards/*.json, labelled
                 grafana_dashboard: "1", holding the file byte for byte but for the value of its
                 `runbook` constant (the base of its runbook links); one runbook base URL across
                 alerts and dashboards, and with --kustomization DIR it is the runbookUrl that
                 kustomization configures (its ConfigMap dispatch-values, values.yaml, or that of
                 the kustomization it builds on; none: the sources' placeholder, as in k8s/base)
Kafka topics (--topics TOPICS.yaml, the overlay's kafka-topics/ render):
  - no KafkaTopic in the services' render (the Topic Operator watches the Kafka namespace only)
  - the topics' namespace and strimzi.io/cluster match DISPATCH_KAFKA__BROKERS
    (<cluster>-kafka-bootstrap.<namespace>.svc...); their partitions bound KEDA's maxReplicaCount
Policy across kinds:
  - no HorizontalPodAutoscaler targets the processor; HPA/ScaledObject targets exist and have no
    spec.replicas; without an autoscaler a Deployment sets spec.replicas
  - each PDB selects pods, and minAvailable < the minimum replica count of what it selects
  - every dispatch workload: CPU and memory requests, a memory limit, securityContext (runAsNonRoot,
    readOnlyRootFilesystem, allowPrivilegeEscalation false, drop ALL, seccomp RuntimeDefault), and
    for services no CPU limit (gRPC latency), a native gRPC readiness probe, startup/liveness on
    /healthz (alive, not the dependencies), a preStop hook and a grace period
  - Kafka clients: every service's client.id is its pod name (POD_NAME from the downward API), and
    the processor's group.instance.id too (static membership)
  - the migration Job is named after its release: dispatch-migrate-<image tag> (any tag but
    `latest`), with ttlSecondsAfterFinished
  - values an overlay must set, named when missing: a release tag on every image (renders with a
    namespace), DISPATCH_KAFKA__BROKERS of every service (not unset, not loopback); secret names
    and keys are check_config.py's (every reference must resolve)

Usage: check_crds.py RENDERED.yaml [--topics TOPICS.yaml] [--kustomization DIR] [--monitoring-only] [-v]
  --monitoring-only  only the PrometheusRule / dashboards checks (scripts/check-deploy.sh's probe
                     renders with another runbookUrl per overlay)
"""

# Over 400 lines because each check covers one kind kubernetes-validate cannot see (topics,
# ScaledObjects, ServiceMonitors, autoscaling, PDBs, workloads, the migration job) over the same
# rendered documents and Report; the monitoring-assets check (runbook URLs, dashboards), which reads
# files rather than resources, would move out first.

from __future__ import annotations

import glob
import json
import os
import re
import sys

import yaml

from deploy_manifests import (
    EVENTS_TOPIC, PROCESSOR, PROCESSOR_GROUP, REPO, SERVICES, TOPICS, Report, binary, containers, find,
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
            if target is not None:
                check_trigger_auth(r, docs, so, trig, tw, target)


SASL_MECHANISMS = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512",
                   "OAUTHBEARER": "oauthbearer", "GSSAPI": "gssapi"}


def librdkafka_property(docs: list[dict], deployment: dict, prop: str) -> str | None:
    secrets = example_secrets()
    var = "DISPATCH_KAFKA__LIBRDKAFKA__" + prop.upper()
    for c in containers(deployment):
        env = resolve_env(docs, c, secrets)
        if var in env:
            return env[var].value
    return None


def check_trigger_auth(r: Report, docs: list[dict], so: dict, trig: dict, tw: str, target: dict) -> None:
    """KEDA must reach Kafka the way the services do: TLS and SASL in the trigger, secrets through a
    rendered TriggerAuthentication."""
    md = trig.get("metadata") or {}
    proto = (librdkafka_property(docs, target, "security.protocol") or "PLAINTEXT").upper()
    wants_tls, wants_sasl = proto in ("SSL", "SASL_SSL"), proto.startswith("SASL_")
    tls = str(md.get("tls", "disable")).lower() == "enable"
    sasl = str(md.get("sasl", "none")).lower()
    r.check(tls == wants_tls, f"{tw}: tls {md.get('tls', 'disable')} matches the services' security.protocol {proto}",
            f"{tw}: tls is {md.get('tls', 'disable')!r} but the services' security.protocol is {proto}")
    r.check((sasl != "none") == wants_sasl, f"{tw}: sasl {sasl} matches security.protocol {proto}",
            f"{tw}: sasl is {sasl!r} but the services' security.protocol is {proto}")
    if wants_sasl:
        mech = (librdkafka_property(docs, target, "sasl.mechanism") or "GSSAPI").upper()
        r.check(SASL_MECHANISMS.get(mech) == sasl, f"{tw}: sasl {sasl} == the services' sasl.mechanism {mech}",
                f"{tw}: sasl {sasl!r}, the services use sasl.mechanism {mech} ({SASL_MECHANISMS.get(mech)})")
    ref = (trig.get("authenticationRef") or {}).get("name")
    if not ref:
        r.check(not wants_sasl and not wants_tls, f"{tw}: no authenticationRef for a {proto} listener",
                f"{tw}: the services use {proto} but the trigger has no authenticationRef (KEDA cannot read lag)")
        return
    kind = (trig.get("authenticationRef") or {}).get("kind", "TriggerAuthentication")
    ta = find(docs, kind, ref)
    if not r.check(ta is not None, f"{tw}: {kind} {ref} is rendered", f"{tw}: authenticationRef names {kind} {ref}, which is not rendered"):
        return
    params = {p.get("parameter") for p in (ta.get("spec") or {}).get("secretTargetRef") or []}
    params |= {p.get("parameter") for p in (ta.get("spec") or {}).get("env") or []}
    need = (["username", "password"] if wants_sasl and sasl in ("plaintext", "scram_sha256", "scram_sha512") else []) + \
           (["ca"] if wants_tls and str(md.get("unsafeSsl", "false")).lower() != "true" else [])
    for p in need:
        r.check(p in params, f"{tw}: {kind} {ref} provides {p}", f"{tw}: {kind} {ref} has no `{p}` parameter")


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
        short = {str(labels(s).get("app.kubernetes.io/name", name(s))).removeprefix("dispatch-") for s in matched}
        for ep in endpoints:
            port = ep.get("port")
            r.check(port, f"{where}: endpoint port {port}", f"{where}: endpoint without a port name")
            for s in matched:
                names = [p.get("name") for p in (s.get("spec") or {}).get("ports") or []]
                r.check(port in names, f"{where}: Service {name(s)} has port {port}",
                        f"{where}: Service {name(s)} has no port named {port} (ports {names})")
            r.check(ep.get("honorLabels") is True, f"{where}: honorLabels true",
                    f"{where}: endpoint {port} without honorLabels: true (the services' own `service` label "
                    f"would become exported_service)")
            sets = [rl for rl in ep.get("relabelings") or []
                    if rl.get("targetLabel") == "service" and rl.get("action", "replace") == "replace"]
            r.check(len(short) == 1 and any(rl.get("replacement") in short and not rl.get("sourceLabels") for rl in sets),
                    f"{where}: relabels target label service={sorted(short)}",
                    f"{where}: endpoint {port} does not set the target label service to {sorted(short)} "
                    f"(up and process_* would carry the Service's name, unlike alerts_test.yml and the dashboards)")
    check_selector_labels(r, docs)


def check_selector_labels(r: Report, docs: list[dict]) -> None:
    """Prometheus selects ServiceMonitors and PrometheusRules by a label the overlay adds."""
    objs = of_kind(docs, "ServiceMonitor") + of_kind(docs, "PrometheusRule")
    if not objs:
        return
    extra = {f"{o['kind']} {name(o)}": {k: v for k, v in labels(o).items() if not k.startswith("app.kubernetes.io/")}
             for o in objs}
    distinct = {tuple(sorted(v.items())) for v in extra.values()}
    r.check(len(distinct) == 1, "ServiceMonitors and PrometheusRules carry the same selector labels",
            f"ServiceMonitors/PrometheusRules differ in their selector labels: {extra}")
    namespaced = any(o.get("metadata", {}).get("namespace") for o in objs)
    if namespaced:
        r.check(all(extra.values()), f"selector label {next(iter(extra.values()))}",
                "the overlay adds no label for Prometheus's serviceMonitorSelector/ruleSelector "
                "(kube-prometheus-stack selects `release: <its release>`): nothing would be scraped or alerted")
    else:
        r.note("no namespace (base): the selector label is the overlays' to add")


RUNBOOK_VAR = "runbook"  # the dashboards' constant holding the runbook base URL (scripts/gen-monitoring.py)


def configured_runbook_url(kdir: str) -> tuple[str, str] | None:
    """(runbookUrl, file) of the ConfigMap dispatch-values a kustomization renders with: one of its
    resource files, else one of the kustomizations it builds on (depth first, in order)."""
    kfile = next((os.path.join(kdir, f) for f in ("kustomization.yaml", "kustomization.yml", "Kustomization")
                  if os.path.isfile(os.path.join(kdir, f))), None)
    if kfile is None:
        return None
    with open(kfile, encoding="utf-8") as f:
        k = yaml.safe_load(f) or {}
    resources = [os.path.normpath(os.path.join(kdir, res)) for res in k.get("resources") or [] if "://" not in res]
    for res in [r for r in resources if os.path.isfile(r)] + [r for r in resources if os.path.isdir(r)]:
        if os.path.isdir(res):
            found = configured_runbook_url(res)
            if found:
                return found
            continue
        with open(res, encoding="utf-8") as f:
            for d in yaml.safe_load_all(f):
                if isinstance(d, dict) and d.get("kind") == "ConfigMap" and name(d) == "dispatch-values":
                    return str((d.get("data") or {}).get("runbookUrl", "")), os.path.relpath(res, REPO)
    return None


def dashboard_runbook_base(text: str) -> str | None:
    """The value of a dashboard's `runbook` constant (None: no such constant, or not JSON)."""
    try:
        dash = json.loads(text)
    except (TypeError, ValueError):
        return None
    if not isinstance(dash, dict):
        return None
    for v in (dash.get("templating") or {}).get("list") or []:
        if v.get("name") == RUNBOOK_VAR and v.get("type") == "constant":
            return str(v.get("query", ""))
    return None


def check_monitoring_assets(r: Report, docs: list[dict], kdir: str | None = None) -> None:
    """The PrometheusRule and the dashboards ship with every render that is scraped, equal to their
    single sources (the generated files' drift is scripts/gen-monitoring.py --check), their runbook
    links on one base URL: that of the kustomization (kdir), when given."""
    dash_files = sorted(glob.glob(os.path.join(REPO, "grafana", "dashboards", "*.json")))
    cms = {name(c): c for c in of_kind(docs, "ConfigMap")}
    scraped = bool(of_kind(docs, "ServiceMonitor"))
    want, where = None, ""
    if kdir is not None:
        found = configured_runbook_url(kdir)
        if found:
            want, where = found[0], f"runbookUrl in {found[1]}"
        elif dash_files:
            want = dashboard_runbook_base(open(dash_files[0], encoding="utf-8").read())
            where = "no ConfigMap dispatch-values, so the sources' placeholder"
        r.note(f"runbook base URL {want} ({where})")
    bases: dict[str, set[str]] = {}  # base URL -> what links to it
    if scraped or any(n.startswith("dispatch-dashboard-") for n in cms):
        for path in dash_files:
            base = os.path.splitext(os.path.basename(path))[0]
            cm = cms.get(f"dispatch-dashboard-{base}")
            if not r.check(cm is not None, f"dashboard ConfigMap dispatch-dashboard-{base}",
                           f"no ConfigMap dispatch-dashboard-{base} for grafana/dashboards/{base}.json"):
                continue
            r.check(labels(cm).get("grafana_dashboard") == "1", f"dispatch-dashboard-{base}: grafana_dashboard: \"1\"",
                    f"dispatch-dashboard-{base}: no label grafana_dashboard: \"1\" (the Grafana sidecar ignores it)")
            text = open(path, encoding="utf-8").read()
            data = list((cm.get("data") or {}).values())
            src_url = dashboard_runbook_base(text)
            url = dashboard_runbook_base(data[0]) if len(data) == 1 else None
            if src_url and url is not None:
                bases.setdefault(url, set()).add(f"dispatch-dashboard-{base}")
                if want is not None:
                    r.check(url == want, f"dispatch-dashboard-{base}: runbook links to {url}",
                            f"dispatch-dashboard-{base}: runbook links go to {url}; {where}: {want}")
                text = text.replace(src_url, url)
            r.check(data == [text], f"dispatch-dashboard-{base} holds grafana/dashboards/{base}.json (runbook base aside)",
                    f"dispatch-dashboard-{base} differs from grafana/dashboards/{base}.json other than in its "
                    "runbook base URL (run scripts/gen-monitoring.py)")
    if not scraped:
        r.check(len(bases) <= 1, f"one runbook base URL {sorted(bases)}",
                f"several runbook base URLs: {', '.join(f'{u} ({sorted(w)})' for u, w in sorted(bases.items()))}")
        return
    rule = find(docs, "PrometheusRule", "dispatch-alerts")
    if not r.check(rule is not None, "PrometheusRule dispatch-alerts", "no PrometheusRule dispatch-alerts: no alerts in production"):
        return
    with open(os.path.join(REPO, "deploy", "prometheus", "alerts.yml"), encoding="utf-8") as f:
        src = yaml.safe_load(f)
    got = json.loads(json.dumps((rule.get("spec") or {}).get("groups") or []))
    for g in got:
        for rl in g.get("rules") or []:
            if "alert" not in rl:
                continue
            url = str((rl.get("annotations") or {}).get("runbook_url", ""))
            r.check(re.match(r"^https?://[^/]+/", url) and url.endswith("#" + rl["alert"].lower()),
                    f"{rl['alert']}: runbook_url {url}",
                    f"{rl['alert']}: runbook_url {url!r} is not absolute with #{rl['alert'].lower()}")
            bases.setdefault(url.split("#")[0], set()).add("PrometheusRule dispatch-alerts")
            rl["annotations"]["runbook_url"] = "#" + url.split("#", 1)[-1]
    if want is not None:
        off = sorted(u for u, w in bases.items() if u != want and "PrometheusRule dispatch-alerts" in w)
        r.check(not off, f"PrometheusRule dispatch-alerts: runbook_urls on {want}",
                f"PrometheusRule dispatch-alerts: runbook_urls on {off}; {where}: {want}")
    for g in src.get("groups") or []:
        for rl in g.get("rules") or []:
            if "runbook_url" in (rl.get("annotations") or {}):
                rl["annotations"]["runbook_url"] = "#" + rl["annotations"]["runbook_url"].split("#", 1)[-1]
    r.check(got == src.get("groups"), "PrometheusRule dispatch-alerts == deploy/prometheus/alerts.yml",
            "PrometheusRule dispatch-alerts differs from deploy/prometheus/alerts.yml (run scripts/gen-monitoring.py)")
    r.check(len(bases) <= 1, f"one runbook base URL {sorted(bases)}",
            f"several runbook base URLs: {', '.join(f'{u} ({sorted(w)})' for u, w in sorted(bases.items()))}")


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
        for part, kind in (("requests", "cpu"), ("requests", "memory"), ("limits", "memory")):
            r.check((res.get(part) or {}).get(kind), f"{where}: {part}.{kind}", f"{where}: resources.{part}.{kind} missing")
        if b in SERVICES:
            r.check("cpu" not in (res.get("limits") or {}), f"{where}: no CPU limit (requests only)",
                    f"{where}: resources.limits.cpu set: CFS throttling of a gRPC server is tail latency; "
                    f"request CPU, do not limit it")
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
        check_client_ids(r, w, c, b, where)


def check_required_values(r: Report, docs: list[dict]) -> None:
    """What an overlay must set, named when it is missing: the image tag, the Kafka bootstrap
    servers. (Secret names and keys: check_config.py, which resolves every reference.)"""
    namespaced = any(d.get("metadata", {}).get("namespace") for d in docs)
    for w, c, b in service_workloads(docs):
        where = f"{w['kind']} {name(w)}/{c.get('name')}"
        image = str(c.get("image", ""))
        last = image.rsplit("/", 1)[-1]
        tag = last.split(":", 1)[1] if ":" in last and "@" not in last else ("(digest)" if "@" in last else "")
        if namespaced:
            r.check(tag and tag != "latest", f"{where}: image {image} is pinned",
                    f"{where}: image {image!r} has no release tag (set images: newTag in the overlay)")
        if b in SERVICES:
            env = resolve_env(docs, c, example_secrets())
            brokers = env.get("DISPATCH_KAFKA__BROKERS")
            value = (brokers.value or "").strip() if brokers else ""
            r.check(value and not value.startswith(("127.", "localhost")),
                    f"{where}: Kafka bootstrap {value}",
                    f"{where}: DISPATCH_KAFKA__BROKERS is {'unset' if not value else repr(value)}: set the Kafka "
                    f"bootstrap servers in the overlay's dispatch-common (the default is 127.0.0.1:9092)")


def pod_name_var(c: dict) -> set[str]:
    """Variables of the container that hold its pod's name (downward API metadata.name)."""
    return {e["name"] for e in c.get("env") or []
            if ((e.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath") == "metadata.name"}


def check_client_ids(r: Report, w: dict, c: dict, b: str, where: str) -> None:
    """client.id per pod for every service; group.instance.id = pod name for the processor (static
    membership). `$(VAR)` only expands variables defined earlier in `env`."""
    env = c.get("env") or []
    props = ["client.id"] + (["group.instance.id"] if b == PROCESSOR else [])
    for prop in props:
        var = "DISPATCH_KAFKA__LIBRDKAFKA__" + prop.upper()
        idx = next((i for i, e in enumerate(env) if e.get("name") == var), None)
        if not r.check(idx is not None, f"{where}: {prop} set ({var})",
                       f"{where}: {var} not set: {prop} should be the pod's name"):
            continue
        m = re.fullmatch(r"\$\((\w+)\)", str(env[idx].get("value", "")))
        earlier = pod_name_var({"env": env[:idx]})
        r.check(m and m.group(1) in earlier, f"{where}: {prop} = the pod name",
                f"{where}: {var} is {env[idx].get('value')!r}, want $(VAR) of a variable defined before it "
                f"from fieldRef metadata.name (defined before it: {sorted(earlier) or 'none'})")


def check_migration_job(r: Report, docs: list[dict]) -> None:
    for w, c, b in service_workloads(docs):
        if w.get("kind") != "Job" or b != "dispatchctl":
            continue
        image = str(c.get("image", ""))
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else "latest"
        where = f"Job {name(w)}"
        r.check(as_int((w.get("spec") or {}).get("ttlSecondsAfterFinished")) is not None,
                f"{where}: ttlSecondsAfterFinished", f"{where}: no ttlSecondsAfterFinished (finished Jobs pile up)")
        if tag == "latest":
            r.note(f"{where}: image {image} has no release tag: Job naming not checked")
            continue
        r.check(name(w) == f"dispatch-migrate-{tag}", f"{where}: named after release {tag}",
                f"{where}: named {name(w)}, want dispatch-migrate-{tag} (its image {image}): a Job's pod template is "
                f"immutable, so the next release's apply would fail")
        r.check(re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name(w)) and len(name(w)) <= 63,
                f"{where}: a valid Job name", f"{where}: {name(w)!r} is not a valid Job name (image tag {tag!r})")


BOOTSTRAP_RE = re.compile(r"^([a-z0-9-]+)-kafka-bootstrap(?:\.([a-z0-9-]+))?(?:\.svc(?:\.[a-z0-9.-]+)?)?:\d+$")


def check_topic_placement(r: Report, docs: list[dict], topic_docs: list[dict] | None) -> dict[str, int]:
    """The services' render holds no KafkaTopic; the topics' render sits where Strimzi watches: the
    namespace and cluster of the services' bootstrap address."""
    for t in of_kind(docs, "KafkaTopic"):
        r.fail(f"KafkaTopic {name(t)} is in the services' render (namespace "
               f"{t.get('metadata', {}).get('namespace') or 'unset'}): the Topic Operator watches only the Kafka "
               f"cluster's namespace; put topics in the overlay's kafka-topics/ kustomization")
    if topic_docs is None:
        return {}
    partitions = check_topics(r, topic_docs)
    topics = of_kind(topic_docs, "KafkaTopic")
    app_ns = next((d.get("metadata", {}).get("namespace") for d in docs if d.get("metadata", {}).get("namespace")), None)
    processor = next((w for w, _, b in service_workloads(docs) if b == PROCESSOR and w.get("kind") == "Deployment"), None)
    brokers = deployment_brokers(docs, processor) if processor is not None else None
    first = (brokers or "").split(",")[0].strip()
    m = BOOTSTRAP_RE.match(first)
    if not m:
        r.note(f"DISPATCH_KAFKA__BROKERS {brokers!r} is not a Strimzi bootstrap address: topic namespace not checked")
        return partitions
    cluster, ns = m.group(1), m.group(2) or app_ns
    for t in topics:
        where = f"KafkaTopic {name(t)}"
        tns = t.get("metadata", {}).get("namespace")
        r.check(tns == ns, f"{where}: namespace {tns} = the Kafka cluster's ({first})",
                f"{where}: namespace {tns or 'unset'}, but the services reach Kafka at {first} (namespace {ns or 'unset'}): "
                f"the Topic Operator there would never see it")
        r.check(labels(t).get("strimzi.io/cluster") == cluster, f"{where}: strimzi.io/cluster {cluster}",
                f"{where}: strimzi.io/cluster is {labels(t).get('strimzi.io/cluster')}, the services use cluster {cluster} ({first})")
    return partitions


def main() -> int:
    args = sys.argv[1:]
    valued = ("--topics", "--kustomization")
    topics_path = args[args.index("--topics") + 1] if "--topics" in args else None
    kdir = args[args.index("--kustomization") + 1] if "--kustomization" in args else None
    paths = [a for i, a in enumerate(args) if not a.startswith("-") and (i == 0 or args[i - 1] not in valued)]
    if len(paths) != 1:
        print(__doc__)
        return 2
    docs = load(paths[0])
    if "--monitoring-only" in args:
        r = Report(f"runbook links and monitoring assets {paths[0]}", verbose=verbose_flag())
        check_monitoring_assets(r, docs, kdir)
        return r.finish()
    r = Report(f"CRD/policy checks {paths[0]}", verbose=verbose_flag())
    partitions = check_topic_placement(r, docs, load(topics_path) if topics_path else None)
    check_scaledobjects(r, docs, partitions)
    check_servicemonitors(r, docs)
    check_monitoring_assets(r, docs, kdir)
    check_autoscaling(r, docs)
    check_pdbs(r, docs)
    check_workloads(r, docs)
    check_required_values(r, docs)
    check_migration_job(r, docs)
    return r.finish()


if __name__ == "__main__":
    sys.exit(main())
