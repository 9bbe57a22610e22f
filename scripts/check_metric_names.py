#!/usr/bin/env python3
"""Check that dashboards and alert rules only use metrics dispatch really exports.

Sources of metric names checked:
  * every rule expr in the rule files of deploy/prometheus/prometheus.yml (alerts, recording rules);
  * every series and expr in deploy/prometheus/alerts_test.yml;
  * every `expr` in grafana/dashboards/*.json (panels, nested row panels, annotations) and every
    Prometheus query variable (`label_values(metric, label)`, `query_result(expr)`, plain exprs).

Each name must be (i) in the metric catalogue docs/metrics.md (a histogram family also allows its
`_bucket`/`_sum`/`_count` series; `process_*` is a prefix; `up` is always allowed; recording-rule
outputs defined in the rule files are allowed), and (ii) with `--live URL...`, be exported by at
least one of the live /metrics endpoints (`# TYPE` families and sample names). With `--live`,
`promtool check metrics` also runs on every body: a parse error fails, lint findings are printed
as warnings (`--strict-lint` makes them fail).

Structural checks on the way: every alert has `summary`, `description`, a `runbook_url` whose
anchor exists in docs/runbook.md and a `severity` of page|ticket; every alert has a firing and a
not-firing case in alerts_test.yml; dashboards are valid JSON with unique, expected uids and unique
panel ids; every dashboard expr parses as PromQL (via `promtool check rules` on a scratch file,
Grafana variables substituted) when promtool is on PATH.

Exit status: 0 when everything passes, 1 otherwise (with the list of offending names), 2 on usage
or input errors. `--self-test` checks the PromQL name extractor itself.
"""

# Over 400 lines because it carries a small PromQL and Grafana-variable reader and one Checker over
# the rule files, the alert tests, the dashboards and the live exposition, all against the one
# catalogue; the name extraction (PromQL and Grafana variables) would move to a module of its own
# first.

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass, field

try:
    import yaml  # PyYAML (Debian: python3-yaml)
except ImportError:  # pragma: no cover - reported clearly instead of a traceback
    print("check_metric_names: PyYAML is required (apt-get install python3-yaml or pip install pyyaml)",
          file=sys.stderr)
    sys.exit(2)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
ALWAYS_ALLOWED = {"up"}
ALLOWED_PREFIXES = ("process_",)  # documented as `process_*` in docs/metrics.md
EXPECTED_DASHBOARD_UIDS = {"dispatch-overview", "dispatch-kafka", "dispatch-cache", "dispatch-database"}
SEVERITIES = {"page", "ticket"}

# --------------------------------------------------------------------------- PromQL name extraction

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
    "offset", "inf", "nan", "atan2", "start", "end",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_NAME_MATCHER = re.compile(r'__name__\s*(=~|!=|!~|=)\s*("(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`)')
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$__\w+|\$\w+|\[\[[^\]]*\]\]")
_LABEL_LIST = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_TOKEN = re.compile(r"\d[\w.]*|[A-Za-z_:][A-Za-z0-9_:]*|.", re.S)


def _strip_comments(expr: str) -> str:
    out = []
    for line in expr.splitlines():
        # a `#` outside a string starts a comment; strings are blanked first to find it safely
        blank = _STRING.sub(lambda m: "x" * len(m.group(0)), line)
        i = blank.find("#")
        out.append(line if i < 0 else line[:i])
    return "\n".join(out)


def _remove_braces(expr: str) -> str:
    """Drops `{...}` label matcher blocks (strings were already blanked)."""
    out, depth = [], 0
    for ch in expr:
        if ch == "{":
            depth += 1
            out.append(" ")
        elif ch == "}":
            depth = max(0, depth - 1)
            out.append(" ")
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def promql_metric_names(expr: str) -> tuple[set[str], list[str]]:
    """Metric names a PromQL expression selects, and `__name__` regex matchers it could not resolve."""
    names: set[str] = set()
    unresolved: list[str] = []
    expr = _strip_comments(expr)
    for op, lit in _NAME_MATCHER.findall(expr):
        value = lit[1:-1]
        if op == "=":
            names.add(value)
        elif op == "=~":
            unresolved.append(value)
    expr = _GRAFANA_VAR.sub(" ", expr)
    expr = _STRING.sub(" ", expr)
    expr = _remove_braces(expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges, subqueries
    prev = None
    while prev != expr:  # label lists, possibly several
        prev = expr
        expr = _LABEL_LIST.sub(" ", expr)
    tokens = [t for t in _TOKEN.findall(expr) if not t.isspace()]
    for i, tok in enumerate(tokens):
        if not re.match(r"[A-Za-z_:]", tok):
            continue
        nxt = tokens[i + 1] if i + 1 < len(tokens) else ""
        if nxt == "(":  # function or aggregation
            continue
        if tok.lower() in KEYWORDS:
            continue
        names.add(tok)
    return names, unresolved


def grafana_variable_exprs(query: str) -> list[str]:
    """PromQL hidden in a Grafana Prometheus variable query."""
    q = query.strip()
    m = re.fullmatch(r"label_values\s*\((.*)\)", q, re.S)
    if m:
        inner = m.group(1)
        # label_values(label) or label_values(expr, label): split at the last top-level comma
        depth, cut = 0, -1
        for i, ch in enumerate(inner):
            if ch in "({[":
                depth += 1
            elif ch in ")}]":
                depth -= 1
            elif ch == "," and depth == 0:
                cut = i
        return [inner[:cut]] if cut >= 0 else []
    m = re.fullmatch(r"query_result\s*\((.*)\)", q, re.S)
    if m:
        return [m.group(1)]
    if re.fullmatch(r"(label_names|metrics)\s*\(.*\)", q, re.S):
        return []
    return [q] if q else []


# --------------------------------------------------------------------------- catalogue

@dataclass
class Catalogue:
    types: dict[str, str] = field(default_factory=dict)  # name -> type ("" when not given)
    prefixes: list[str] = field(default_factory=list)

    def allows(self, name: str, recorded: set[str]) -> tuple[bool, str]:
        if name in ALWAYS_ALLOWED or name in recorded:
            return True, ""
        if name in self.types:
            if self.types[name] in ("histogram", "summary"):
                return False, f"{self.types[name]} family used without _bucket/_sum/_count"
            return True, ""
        for suffix in HIST_SUFFIXES:
            base = name[: -len(suffix)]
            if name.endswith(suffix) and self.types.get(base) in ("histogram", "summary"):
                if suffix == "_bucket" and self.types[base] == "summary":
                    return False, "summary has no _bucket series"
                return True, ""
        for p in self.prefixes:
            if name.startswith(p):
                return True, ""
        return False, "not in docs/metrics.md"


def load_catalogue(path: str) -> Catalogue:
    cat = Catalogue()
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.lstrip().startswith("|"):
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            m = re.fullmatch(r"`([A-Za-z_:][A-Za-z0-9_:]*\*?)`", cells[0]) if cells else None
            if not m:
                continue
            name = m.group(1)
            if name.endswith("*"):
                cat.prefixes.append(name[:-1])
                continue
            typ = cells[1].lower() if len(cells) > 1 else ""
            if name in cat.types and cat.types[name] and typ and cat.types[name] != typ:
                raise SystemExit(f"docs/metrics.md: {name} listed as both {cat.types[name]} and {typ}")
            cat.types[name] = typ or cat.types.get(name, "")
    if not cat.types:
        raise SystemExit(f"{path}: no metric found in its tables")
    for p in ALLOWED_PREFIXES:
        if p not in cat.prefixes:
            cat.prefixes.append(p)
    return cat


# --------------------------------------------------------------------------- sources

@dataclass
class Use:
    name: str
    where: str


def github_anchor(heading: str) -> str:
    s = heading.strip().lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def runbook_anchors(path: str) -> set[str]:
    anchors: set[str] = set()
    if not os.path.exists(path):
        return anchors
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        in_code = False
        for line in f:
            if line.lstrip().startswith("```"):
                in_code = not in_code
                continue
            if in_code:
                continue
            m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
            if m:
                a = github_anchor(m.group(1))
                n = seen.get(a, 0)
                seen[a] = n + 1
                anchors.add(a if n == 0 else f"{a}-{n}")
            for m in re.finditer(r'<a\s+(?:id|name)="([^"]+)"', line):
                anchors.add(m.group(1))
    return anchors


class Checker:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.errors: list[str] = []
        self.warnings: list[str] = []
        self.uses: list[Use] = []
        self.recorded: set[str] = set()
        self.alerts: dict[str, str] = {}  # alert -> rule file
        self.dashboard_exprs: list[tuple[str, str]] = []  # (where, expr)

    def err(self, msg: str) -> None:
        self.errors.append(msg)

    def add_expr(self, expr: str, where: str) -> None:
        names, unresolved = promql_metric_names(expr)
        if not names and not unresolved:
            self.err(f"{where}: no metric name found in expr {expr!r}")
        for n in sorted(names):
            self.uses.append(Use(n, where))
        for r in unresolved:
            self.err(f"{where}: __name__=~{r!r} cannot be checked; name the metric explicitly")

    # -- rules
    def rule_files(self) -> list[str]:
        cfg_path = self.args.prometheus_config
        with open(cfg_path, encoding="utf-8") as f:
            cfg = yaml.safe_load(f) or {}
        base = os.path.dirname(os.path.abspath(cfg_path))
        files: list[str] = []
        for pattern in cfg.get("rule_files") or []:
            p = pattern if os.path.isabs(pattern) else os.path.join(base, pattern)
            matched = sorted(glob.glob(p))
            if not matched:
                self.err(f"{cfg_path}: rule file {pattern!r} matches nothing")
            files.extend(matched)
        if not files:
            self.err(f"{cfg_path}: no rule_files")
        return files

    def check_rules(self) -> None:
        anchors = runbook_anchors(self.args.runbook)
        if not anchors:
            self.err(f"{rel(self.args.runbook)}: missing or has no headings")
        files = self.rule_files()
        for path in files:  # recording rules first, so that later files may use them
            for g in (yaml.safe_load(open(path, encoding="utf-8")) or {}).get("groups") or []:
                for r in g.get("rules") or []:
                    if "record" in r:
                        self.recorded.add(r["record"])
        for path in files:
            doc = yaml.safe_load(open(path, encoding="utf-8")) or {}
            for g in doc.get("groups") or []:
                for r in g.get("rules") or []:
                    name = r.get("alert") or r.get("record") or "?"
                    where = f"{rel(path)} [{g.get('name')}] {name}"
                    self.add_expr(str(r.get("expr", "")), where)
                    if "alert" not in r:
                        continue
                    if name in self.alerts:
                        self.err(f"{where}: duplicate alert name")
                    self.alerts[name] = path
                    ann = r.get("annotations") or {}
                    for key in ("summary", "description", "runbook_url"):
                        if not str(ann.get(key, "")).strip():
                            self.err(f"{where}: missing annotation {key}")
                    sev = (r.get("labels") or {}).get("severity")
                    if sev not in SEVERITIES:
                        self.err(f"{where}: severity label {sev!r} not in {sorted(SEVERITIES)}")
                    url = str(ann.get("runbook_url", ""))
                    m = re.fullmatch(r"(?:.*/)?docs/runbook\.md#([\w\-]+)", url)
                    if not m:
                        self.err(f"{where}: runbook_url {url!r} does not point to docs/runbook.md#<anchor>")
                    elif m.group(1) not in anchors:
                        self.err(f"{where}: runbook anchor #{m.group(1)} not found in {rel(self.args.runbook)}")
                    elif m.group(1) != name.lower():
                        self.err(f"{where}: runbook anchor #{m.group(1)} should be #{name.lower()}")

    def check_rule_tests(self) -> None:
        path = self.args.rule_tests
        if not os.path.exists(path):
            self.err(f"{rel(path)}: missing")
            return
        doc = yaml.safe_load(open(path, encoding="utf-8")) or {}
        firing: set[str] = set()
        silent: set[str] = set()
        for t in doc.get("tests") or []:
            tname = t.get("name", "?")
            for s in t.get("input_series") or []:
                series = str(s.get("series", ""))
                self.add_expr(series, f"{rel(path)} test {tname!r} input_series")
            for c in t.get("alert_rule_test") or []:
                a = c.get("alertname")
                (firing if c.get("exp_alerts") else silent).add(a)
                if a not in self.alerts:
                    self.err(f"{rel(path)} test {tname!r}: alert {a!r} is not defined in the rule files")
            for c in t.get("promql_expr_test") or []:
                self.add_expr(str(c.get("expr", "")), f"{rel(path)} test {tname!r} promql_expr_test")
        for a in sorted(self.alerts):
            if a not in firing:
                self.err(f"{rel(path)}: alert {a} has no firing test case (non-empty exp_alerts)")
            if a not in silent:
                self.err(f"{rel(path)}: alert {a} has no not-firing test case (empty exp_alerts)")

    # -- dashboards
    def check_dashboards(self) -> None:
        paths = sorted(glob.glob(os.path.join(self.args.dashboards, "*.json")))
        if not paths:
            self.err(f"{rel(self.args.dashboards)}: no dashboards")
        uids: dict[str, str] = {}
        for path in paths:
            try:
                with open(path, encoding="utf-8") as f:
                    d = json.load(f)
            except (OSError, json.JSONDecodeError) as e:
                self.err(f"{rel(path)}: invalid JSON: {e}")
                continue
            uid = d.get("uid")
            if not uid:
                self.err(f"{rel(path)}: no uid")
            elif uid in uids:
                self.err(f"{rel(path)}: uid {uid!r} also used by {rel(uids[uid])}")
            else:
                uids[uid] = path
            if not isinstance(d.get("schemaVersion"), int):
                self.err(f"{rel(path)}: no schemaVersion")
            var_names = {v.get("name") for v in (d.get("templating") or {}).get("list") or []}
            if "datasource" not in var_names:
                self.err(f"{rel(path)}: no $datasource template variable")
            ids: set[int] = set()
            for p in iter_panels(d.get("panels") or []):
                pid = p.get("id")
                if pid in ids:
                    self.err(f"{rel(path)}: duplicate panel id {pid}")
                ids.add(pid)
                for t in p.get("targets") or []:
                    expr = t.get("expr")
                    if expr:
                        where = f"{rel(path)} panel {p.get('title')!r} ref {t.get('refId')}"
                        self.add_expr(expr, where)
                        self.dashboard_exprs.append((where, expr))
                if p.get("type") not in ("row", "text") and not any(t.get("expr") for t in p.get("targets") or []):
                    self.err(f"{rel(path)}: panel {p.get('title')!r} has no query")
            for v in (d.get("templating") or {}).get("list") or []:
                if v.get("type") != "query":
                    continue
                q = v.get("query")
                if isinstance(q, dict):
                    q = q.get("query", "")
                for expr in grafana_variable_exprs(str(q or v.get("definition") or "")):
                    self.add_expr(expr, f"{rel(path)} variable ${v.get('name')}")
            for a in (d.get("annotations") or {}).get("list") or []:
                if a.get("expr"):
                    self.add_expr(a["expr"], f"{rel(path)} annotation {a.get('name')!r}")
        missing = EXPECTED_DASHBOARD_UIDS - set(uids)
        if missing:
            self.err(f"{rel(self.args.dashboards)}: missing dashboards with uid {sorted(missing)}")

    def check_dashboard_syntax(self) -> None:
        promtool = shutil.which("promtool")
        if not promtool:
            self.warnings.append("promtool not on PATH: dashboard PromQL syntax not checked")
            return
        subst = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$__range_s": "3600",
                 "$__interval_ms": "15000", "$__range_ms": "3600000"}
        rules = []
        for i, (where, expr) in enumerate(self.dashboard_exprs):
            e = expr
            for k, v in subst.items():
                e = e.replace(k, v)
            e = _GRAFANA_VAR.sub(".*", e)
            rules.append({"record": f"dashboard:check:{i}", "expr": e})
        if not rules:
            return
        with tempfile.TemporaryDirectory() as tmp:
            for i, r in enumerate(rules):
                p = os.path.join(tmp, f"{i}.yml")
                with open(p, "w", encoding="utf-8") as f:
                    yaml.safe_dump({"groups": [{"name": "g", "rules": [r]}]}, f)
            # one file per expr, so a failure names its panel
            res = subprocess.run([promtool, "check", "rules", *[os.path.join(tmp, f"{i}.yml") for i in range(len(rules))]],
                                 capture_output=True, text=True)
            if res.returncode != 0:
                out = res.stdout + res.stderr
                for i, (where, expr) in enumerate(self.dashboard_exprs):
                    if re.search(rf"{re.escape(tmp)}/{i}\.yml\n\s+FAILED", out) or f"/{i}.yml: " in out:
                        self.err(f"{where}: PromQL does not parse: {expr}")
                if not any("does not parse" in e for e in self.errors):
                    self.err("promtool rejected dashboard expressions:\n" + out)

    # -- names
    def check_catalogue(self, cat: Catalogue) -> dict[str, list[str]]:
        bad: dict[str, list[str]] = {}
        for u in self.uses:
            ok, why = cat.allows(u.name, self.recorded)
            if not ok:
                bad.setdefault(f"{u.name} ({why})", []).append(u.where)
        return bad

    def check_live(self, urls: list[str]) -> dict[str, list[str]]:
        exported: set[str] = set()
        promtool = shutil.which("promtool")
        for url in urls:
            try:
                with urllib.request.urlopen(url, timeout=self.args.timeout) as resp:
                    body = resp.read().decode("utf-8", errors="replace")
            except Exception as e:  # noqa: BLE001 - any fetch failure is reported the same way
                self.err(f"live: cannot fetch {url}: {e}")
                continue
            fams, samples = parse_exposition(body)
            print(f"live: {url}: {len(fams)} families, {len(samples)} sample names")
            exported |= fams | samples
            if not promtool:
                self.warnings.append("promtool not on PATH: `promtool check metrics` skipped")
                continue
            res = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, text=True)
            out = (res.stdout + res.stderr).strip()
            if res.returncode == 0:
                print(f"live: {url}: promtool check metrics: OK")
            elif res.returncode == 3 and not self.args.strict_lint:
                for line in out.splitlines():
                    self.warnings.append(f"promtool check metrics {url}: {line}")
            else:
                self.err(f"live: promtool check metrics {url} failed (exit {res.returncode}):\n    "
                         + out.replace("\n", "\n    "))
        missing: dict[str, list[str]] = {}
        if not exported:
            return missing
        for u in self.uses:
            if u.name in self.recorded or u.name in ALWAYS_ALLOWED:  # `up` is synthesised by Prometheus
                continue
            if u.name not in exported:
                missing.setdefault(f"{u.name} (not exported by any of {', '.join(urls)})", []).append(u.where)
        return missing


def iter_panels(panels: list) -> "list[dict]":
    out = []
    for p in panels:
        out.append(p)
        out.extend(iter_panels(p.get("panels") or []))
    return out


def parse_exposition(body: str) -> tuple[set[str], set[str]]:
    fams: set[str] = set()
    samples: set[str] = set()
    for line in body.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            m = re.match(r"#\s+TYPE\s+(\S+)\s+(\S+)", line)
            if m:
                fams.add(m.group(1))
            continue
        m = re.match(r"([A-Za-z_:][A-Za-z0-9_:]*)", line)
        if m:
            samples.add(m.group(1))
    return fams, samples


def rel(path: str) -> str:
    try:
        return os.path.relpath(path, REPO)
    except ValueError:
        return path


def report(title: str, bad: dict[str, list[str]]) -> None:
    print(f"FAIL: {title}:")
    for name in sorted(bad):
        wheres = sorted(set(bad[name]))
        print(f"  - {name}")
        for w in wheres[:5]:
            print(f"      used in {w}")
        if len(wheres) > 5:
            print(f"      ... and {len(wheres) - 5} more")


# --------------------------------------------------------------------------- self-test

SELF_TESTS = [
    ('sum by (service, method) (rate(dispatch_grpc_requests_total{code=~"A|B", method!="x{y}"}[5m]))',
     {"dispatch_grpc_requests_total"}),
    ("histogram_quantile(0.99, sum without (instance) (rate(a_bucket[$__rate_interval]))) > 1", {"a_bucket"}),
    ("rate(a_total[5m] offset 1h) / on (x) group_left (y) b_info", {"a_total", "b_info"}),
    ("(x and y) or z unless bool_metric", {"x", "y", "z", "bool_metric"}),
    ('label_replace(up, "dst", "$1", "src", "(.*)") == bool 1', {"up"}),
    ("max_over_time(deriv(lag[10m])[30m:1m]) > 1e3 # trailing comment with fake_name", {"lag"}),
    ('{__name__="named_by_matcher", job="j"}', {"named_by_matcher"}),
    ("sum(rate(foo_seconds_count[5m])) by (le) * 100 - -inf", {"foo_seconds_count"}),
    ("topk(5, count_values(\"v\", build_info)) @ start()", {"build_info"}),
    ("avg(sum by (topic) (a) > 100) ignoring (partition) c", {"a", "c"}),
    ("vector(1) + scalar(time())", set()),
]


def self_test() -> int:
    failed = 0
    for expr, want in SELF_TESTS:
        got, _ = promql_metric_names(expr)
        if got != want:
            failed += 1
            print(f"self-test FAIL: {expr!r}: got {sorted(got)}, want {sorted(want)}")
    for q, want in [("label_values(dispatch_build_info, service)", ["dispatch_build_info"]),
                    ("label_values(service)", []),
                    ('label_values(m{a="b,c"}, topic)', ['m{a="b,c"}']),
                    ("query_result(sum(x))", ["sum(x)"])]:
        got = grafana_variable_exprs(q)
        if got != want:
            failed += 1
            print(f"self-test FAIL: variable {q!r}: got {got}, want {want}")
    total = len(SELF_TESTS) + 4
    print(f"self-test OK ({total} cases)" if not failed else f"self-test FAILED ({failed} of {total} cases)")
    return 1 if failed else 0


# --------------------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--live", nargs="+", metavar="URL",
                    help="also check against these /metrics endpoints (e.g. http://127.0.0.1:9601/metrics)")
    ap.add_argument("--strict-lint", action="store_true",
                    help="with --live, fail on `promtool check metrics` lint findings too")
    ap.add_argument("--timeout", type=float, default=5.0, help="HTTP timeout for --live (seconds)")
    ap.add_argument("--catalogue", default=os.path.join(REPO, "docs/metrics.md"))
    ap.add_argument("--prometheus-config", default=os.path.join(REPO, "deploy/prometheus/prometheus.yml"))
    ap.add_argument("--rule-tests", default=os.path.join(REPO, "deploy/prometheus/alerts_test.yml"))
    ap.add_argument("--dashboards", default=os.path.join(REPO, "grafana/dashboards"))
    ap.add_argument("--runbook", default=os.path.join(REPO, "docs/runbook.md"))
    ap.add_argument("--self-test", action="store_true", help="only test the PromQL name extractor")
    ap.add_argument("-v", "--verbose", action="store_true", help="list every metric name found")
    args = ap.parse_args()

    if args.self_test:
        return self_test()

    cat = load_catalogue(args.catalogue)
    c = Checker(args)
    c.check_rules()
    c.check_rule_tests()
    c.check_dashboards()
    c.check_dashboard_syntax()

    used = sorted({u.name for u in c.uses})
    print(f"checked {len(c.uses)} metric references ({len(used)} distinct names) from "
          f"{len(c.alerts)} alerts, {len(c.recorded)} recording rules, rule tests and "
          f"{len(c.dashboard_exprs)} dashboard queries against {len(cat.types)} catalogued metrics")
    if args.verbose:
        for n in used:
            print(f"  {n}")

    failed = False
    bad = c.check_catalogue(cat)
    if bad:
        report(f"metric names not in {rel(args.catalogue)}", bad)
        failed = True
    else:
        print(f"OK: every metric name is in {rel(args.catalogue)}")

    if args.live:
        missing = c.check_live(args.live)
        if missing:
            report("metric names not exported by the live services", missing)
            failed = True
        elif not any(e.startswith("live: cannot fetch") for e in c.errors):
            print("OK: every metric name is exported by at least one live endpoint")
    else:
        print("live checks skipped (no --live URL given)")

    for w in c.warnings:
        print(f"WARN: {w}")
    if c.errors:
        print("FAIL: structural problems:")
        for e in c.errors:
            print(f"  - {e}")
        failed = True
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
