#!/usr/bin/env python3
"""Every Grafana panel query, evaluated against a live Prometheus, must return data.

For each dashboard in grafana/dashboards/, every target of every panel (rows' nested panels too)
and every Prometheus annotation is run as a range query over the last WINDOW (default 15m, step
30s) with the dashboard variables at "All" (`.*`), `$__rate_interval`/`$__interval` = 1m and
`$__range` = WINDOW. A panel has data when one of its targets returns at least one sample.

Panels that legitimately show nothing on an idle, healthy stack are listed in NO_DATA_OK below,
each with the reason; a listed panel that does have data is fine, a listed title that no longer
exists is an error (so the list cannot rot). Run after load (scripts/test.sh runs it after the
smoke load and the fault scenarios, through `scripts/check-observability.sh --live`).

Usage: scripts/check_panels_live.py [--prometheus URL] [--window 15m] [--verbose]
Exit status: 0 all panels have data (or are allowed not to), 1 otherwise, 2 Prometheus unreachable.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
import time
import urllib.parse
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# (dashboard uid, panel title) -> why it may be empty on an idle healthy stack.
NO_DATA_OK: dict[tuple[str, str], str] = {
    # A ratio of server-error series, which exist only once a server error happened: a healthy
    # run without the fault stage (SKIP_FAULTS=1) has none. Every other panel reads counters and
    # gauges the services create at start (zeros), so "no data" there means a broken query, a
    # renamed metric or a service that did not run.
    ("dispatch-overview", "Server error ratio by method"): "no server-error series on a healthy stack",
    # Counts only non-OK codes: a run in which every call succeeded has none.
    ("dispatch-overview", "Non-OK responses by code"): "every call of the smoke load may succeed",
}

VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def walk(panels):
    for p in panels:
        yield p
        yield from walk(p.get("panels", []))


def substitute(expr: str, window: str) -> str:
    fixed = {"__rate_interval": "1m", "__interval": "1m", "__range": window}

    def rep(m: re.Match) -> str:
        return fixed.get(m.group(1), ".*")

    return VAR.sub(rep, expr)


def seconds(window: str) -> int:
    m = re.fullmatch(r"(\d+)([smhd])", window)
    if not m:
        raise SystemExit(f"check-panels: bad --window {window!r} (e.g. 15m)")
    return int(m.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def query(base: str, expr: str, window: str) -> tuple[int, str | None]:
    end = time.time()
    q = urllib.parse.urlencode(
        {"query": expr, "start": f"{end - seconds(window):.3f}", "end": f"{end:.3f}", "step": "30"}
    )
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query_range?{q}", timeout=30) as r:
            body = json.load(r)
    except urllib.error.HTTPError as e:
        return 0, f"HTTP {e.code}: {e.read().decode(errors='replace')[:300]}"
    samples = sum(
        1
        for s in body.get("data", {}).get("result", [])
        for _, v in s.get("values", [])
        if v not in ("NaN", "+Inf", "-Inf")
    )
    return samples, None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prometheus", default=os.environ.get("PROMETHEUS_URL", "http://127.0.0.1:9090"))
    ap.add_argument("--window", default=os.environ.get("PANELS_WINDOW", "15m"))
    ap.add_argument("--verbose", action="store_true")
    a = ap.parse_args()
    try:
        urllib.request.urlopen(f"{a.prometheus}/-/ready", timeout=5).read()
    except Exception as e:  # noqa: BLE001 - any failure means unreachable
        print(f"check-panels: Prometheus at {a.prometheus} is not ready: {e}", file=sys.stderr)
        return 2
    empty, errors, allowed, seen = [], [], [], set()
    checked = 0
    for path in sorted(glob.glob(os.path.join(REPO, "grafana", "dashboards", "*.json"))):
        d = json.load(open(path))
        uid = d["uid"]
        items = [(p.get("title", ""), p.get("targets", [])) for p in walk(d["panels"]) if p.get("type") != "row"]
        items += [
            (f"annotation: {an['name']}", [an])
            for an in d.get("annotations", {}).get("list", [])
            if an.get("expr")
        ]
        for title, targets in items:
            exprs = [t["expr"] for t in targets if t.get("expr") and not t.get("hide")]
            if not exprs:
                continue
            seen.add((uid, title))
            checked += 1
            total = 0
            for e in exprs:
                n, err = query(a.prometheus, substitute(e, a.window), a.window)
                if err:
                    errors.append(f"{uid} / {title}: {err}\n    {e}")
                total += n
            if a.verbose:
                print(f"  {uid} / {title}: {total} samples")
            if total == 0:
                if (uid, title) in NO_DATA_OK:
                    allowed.append(f"{uid} / {title} ({NO_DATA_OK[(uid, title)]})")
                else:
                    empty.append(f"{uid} / {title}\n    " + "\n    ".join(exprs))
    stale = [f"{u} / {t}" for (u, t) in NO_DATA_OK if (u, t) not in seen]
    print(f"check-panels: {checked} panels and annotations queried on {a.prometheus} over the last {a.window}")
    for x in allowed:
        print(f"  no data, allowed: {x}")
    ok = True
    for title, lst in (("query errors", errors), ("panels without data", empty), ("NO_DATA_OK entries naming no panel", stale)):
        if lst:
            ok = False
            print(f"FAIL: {title}:", file=sys.stderr)
            for x in lst:
                print(f"  - {x}", file=sys.stderr)
    if ok:
        print("check-panels: OK: every panel has data (or is allowed not to)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
