#!/usr/bin/env python3
"""Two builds side by side (loadtest/bench/versus.sh builds them; see its header).

  versus.py drain     RUNS (3) alternations of a processor drain of N (100,000) noop tasks
  versus.py gateway   RUNS alternations of: SubmitTask p99 at 2k/s, SubmitTask at 15k/s and at
                      30k/s offered (ok calls/s), SubmitTasks of 100 at 2,000 calls/s (records/s)
  versus.py priority  AFTER only: backlogs of every priority, time to start per priority and the
                      share of first attempts per priority over the first minute
  versus.py summary   medians and every run from the results file
  versus.py table     the same as a Markdown table (docs/benchmarks.md)
  versus.py clean     drop the two databases

Environment: WORK (clones), BUILDS ("before after"; one name runs that build alone), RUNS (3),
FIRST_RUN (1: later alternations continue the numbering), N (100000 drain tasks), DUR (15 s per
gateway load), LOADS (gateway loads to run: submit_2k submit_15k submit_30k batch_100;
default all), PER_PRIORITY (40000), SIM_LATENCY_MS (250), PRIORITY_RUNS (1), LOADGEN,
VERSUS_OUT (results directory), SINCE_RUN (summary and table: only runs from this number on), STOP_FILE (stop at the next safe point once it exists),
KAFKA_LIBS (for deleting the run's topics).

Alternation: run r takes the builds in the order before, after for odd r and after, before for
even r, so a drift of the machine over the session does not favour one build.

Every run starts the build's gateway and processor (release, the build's own
deploy/local/config, rate limits off) on a fresh database (dispatch_<build>, dropped and migrated
by the build's dispatchctl), a topic prefix, consumer group and Redis key prefix of the run (the
topics are deleted afterwards), and stops them at its end.

Drain (as drain.sh and run.py's figure 6): the processor is stopped (SIGSTOP) once it owns its
partitions, N noop tasks (300 B) are submitted through the gateway (SubmitTasks of 500 at 100
calls/s), then the processor continues (SIGCONT); the drain is timed from SIGCONT to the last
increase of the processor's dispatch_tasks_finished_total{state="succeeded"} (polled every
50 ms; MySQL's count is checked once at the end). CPU: the processor, MariaDB and Kafka from
/proc/<pid>/stat, the whole machine from /proc/stat (every process and the kernel, other work on
the machine included, which is why the CPU of the processes we know is reported beside it).

Gateway (as run.py's figures 1-3): the processor is stopped (SIGSTOP) for the whole run, so the
gateway runs in front of Kafka alone. Each load is 15 s measured after 2 s of warm-up.
"""

# Over 400 lines because the three comparisons (drain, gateway, priority) and their summaries share
# the two builds' services, probes and results file; the priority comparison, measured on one build
# only, would move out first.
import json
import os
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

from ready import wait_ready

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
WORK = os.environ.get("WORK", "/work/bench")
BUILDS = tuple(os.environ.get("BUILDS", "before after").split())  # the clones under WORK
LOADGEN = os.environ.get("LOADGEN", os.path.join(WORK, "after", "target", "release", "dispatch-loadgen"))
OUT = os.environ.get("VERSUS_OUT", os.path.join(REPO, ".local", "bench", "versus"))
RESULTS = os.path.join(OUT, "results.jsonl")
LIBS = os.path.join(os.environ.get("KAFKA_LIBS", os.path.join(REPO, ".local", "kafka", "libs")), "*")
RUNS = int(os.environ.get("RUNS", "3"))
FIRST = int(os.environ.get("FIRST_RUN", "1"))  # run numbers FIRST .. FIRST + RUNS - 1 (more runs later)
N = int(os.environ.get("N", "100000"))
DUR = os.environ.get("DUR", "15")
STOP_FILE = os.environ.get("STOP_FILE", "")
# PERF_S=<seconds>: sample the measured process (the processor in a drain, the gateway under each
# gateway load) with `perf record -F 999` for that long from the start of the measurement, into
# $VERSUS_OUT/perf/<run tag>[-<load>].data (`perf report -i ... --no-children` reads it).
PERF_S = float(os.environ.get("PERF_S", "0"))
# PERF_CALL_GRAPH: perf's --call-graph mode (default fp; dwarf gives whole stacks of a release
# build without frame pointers, at a larger file).
PERF_CALL_GRAPH = os.environ.get("PERF_CALL_GRAPH", "fp")
LOADS = os.environ.get("LOADS", "").split()  # gateway loads to run (default: all four)
GW_GRPC, GW_ADMIN, PR_GRPC, PR_ADMIN = 50281, 9781, 50283, 9783
TICK = os.sysconf("SC_CLK_TCK")
os.makedirs(OUT, exist_ok=True)


class Stop(Exception):
    """STOP_FILE appeared: end at this safe point."""


def check_stop():
    if STOP_FILE and os.path.exists(STOP_FILE):
        raise Stop(STOP_FILE)


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, file=sys.stderr, flush=True)


def rev(build):
    return subprocess.run(["git", "-C", os.path.join(WORK, build), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()


def bin_of(build, name):
    return os.path.join(WORK, build, "target", "release", name)


def root_sql(statements):
    """As MariaDB's root, through the socket of whichever server answers on 3306 (the stack may
    have been started from another clone)."""
    sock = sql("SELECT @@socket").strip()
    subprocess.run(["mariadb", "--no-defaults", f"--socket={sock}", "-uroot", "-e", statements], check=True)


def sql(q):
    return subprocess.run(["mariadb", "-h127.0.0.1", "-udispatch", "-pdispatch", "-N", "-e", q],
                          check=True, capture_output=True, text=True).stdout


def statements():
    """MariaDB's statement counters (every client's: the drain is the only load)."""
    # Com_stmt_prepare: each pooled connection prepares each statement shape once (a new process
    # per run pays them all; docs/benchmarks.md, "Where MariaDB's extra CPU goes").
    names = ("Questions", "Com_select", "Com_insert", "Com_update", "Com_commit", "Com_stmt_prepare")
    rows = sql("SHOW GLOBAL STATUS WHERE Variable_name IN ('" + "','".join(names) + "')")
    return {k: int(v) for k, v in (l.split("\t") for l in rows.splitlines())}


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def machine_busy_s():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / TICK


def children_cpu_s():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def listening_pid(port):
    """The pid of the process listening on a loopback TCP port (MariaDB 3306, Kafka 9092)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"pid=(\d+)", out).group(1))


class Probe:
    """CPU seconds of the known processes, the load generator (children of this process) and the
    whole machine over a window."""

    def __init__(self, pids):
        self.pids = dict(pids, mariadb=listening_pid(3306), kafka=listening_pid(9092))

    def __enter__(self):
        self.t0, self.m0, self.c0 = time.time(), machine_busy_s(), children_cpu_s()
        self.p0 = {k: cpu_s(p) for k, p in self.pids.items()}
        self.l0 = loadavg()
        return self

    def __exit__(self, *exc):
        self.seconds = time.time() - self.t0
        cpu = {k: cpu_s(p) - self.p0[k] for k, p in self.pids.items()}
        cpu["loadgen"] = children_cpu_s() - self.c0
        machine = machine_busy_s() - self.m0
        cpu["other"] = machine - sum(cpu.values())
        self.result = {"seconds": self.seconds, "machine_cpu_s": machine,
                       "cpu_s": {k: round(v, 2) for k, v in cpu.items()},
                       "loadavg_start": self.l0, "loadavg_end": loadavg()}


def metric_sum(port, prefix, match=""):
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines() if l.startswith(prefix) and match in l)


def succeeded():
    return metric_sum(PR_ADMIN, "dispatch_tasks_finished_total{", 'state="succeeded"')


def kafka_topics(*args):
    return subprocess.run(["java", "-cp", LIBS, "org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                           "127.0.0.1:9092", *args], capture_output=True, text=True)


class Services:
    """A build's gateway and processor on a fresh database, topic prefix, group and Redis prefix."""

    def __init__(self, build, tag, processor_env=None, kill_processor=False):
        self.build, self.tag, self.kill_processor = build, tag, kill_processor
        self.db = f"dispatch_{build}"
        self.prefix = f"vs{tag}."
        self.processor_env = processor_env or {}

    def __enter__(self):
        root_sql(f"DROP DATABASE IF EXISTS {self.db}; CREATE DATABASE {self.db}; "
                 f"GRANT ALL PRIVILEGES ON {self.db}.* TO 'dispatch'@'127.0.0.1'; "
                 f"GRANT ALL PRIVILEGES ON {self.db}.* TO 'dispatch'@'localhost';")
        url = f"mysql://dispatch:dispatch@127.0.0.1:3306/{self.db}"
        env = dict(os.environ, DISPATCH_DATABASE__URL=url, DISPATCH_KAFKA__TOPIC_PREFIX=self.prefix,
                   DISPATCH_KAFKA__CREATE_TOPICS="true")
        ctl = bin_of(self.build, "dispatchctl")
        subprocess.run([ctl, "migrate", "--database-url", url, "up"], check=True, capture_output=True, env=env)
        subprocess.run([ctl, "topics", "create", "--partitions", "6"], check=True, capture_output=True, env=env)
        cfg = os.path.join(WORK, self.build, "deploy", "local", "config")
        self.gw = subprocess.Popen(
            [bin_of(self.build, "dispatch-gateway")],
            env=dict(env, DISPATCH_CONFIG=os.path.join(cfg, "gateway.toml"), DISPATCH_LIMITS__TENANT_RPS="0",
                     DISPATCH_REDIS__KEY_PREFIX=f"vs{self.tag}:",
                     DISPATCH_LIMITS__GLOBAL_RPS="0", DISPATCH_GRPC__LISTEN=f"127.0.0.1:{GW_GRPC}",
                     DISPATCH_ADMIN__LISTEN=f"127.0.0.1:{GW_ADMIN}"),
            stdout=open(os.path.join(OUT, f"{self.tag}-gateway.log"), "w"), stderr=subprocess.STDOUT)
        self.pr = subprocess.Popen(
            [bin_of(self.build, "dispatch-processor")],
            env=dict(env, DISPATCH_CONFIG=os.path.join(cfg, "processor.toml"),
                     DISPATCH_CONSUMER__GROUP=f"vs-{self.tag}", DISPATCH_GRPC__LISTEN=f"127.0.0.1:{PR_GRPC}",
                     DISPATCH_ADMIN__LISTEN=f"127.0.0.1:{PR_ADMIN}", **self.processor_env),
            stdout=open(os.path.join(OUT, f"{self.tag}-processor.log"), "w"), stderr=subprocess.STDOUT)
        wait_ready(f"127.0.0.1:{GW_ADMIN}", self.gw, timeout=90)
        wait_ready(f"127.0.0.1:{PR_ADMIN}", self.pr, timeout=90)
        # Until it owns its partitions (their lag series appear), so the drain does not time the
        # group join.
        deadline = time.time() + 60
        while "dispatch_consumer_lag_records{" not in urllib.request.urlopen(
                f"http://127.0.0.1:{PR_ADMIN}/metrics", timeout=5).read().decode():
            if time.time() > deadline:
                log("no lag series after 60 s; going on")
                break
            time.sleep(0.5)
        time.sleep(1)
        return self

    def __exit__(self, *exc):
        if self.kill_processor:  # stopped all along: nothing of its own to finish
            self.pr.kill()
            self.pr.wait()
        for p in (self.pr, self.gw):
            if p.poll() is not None:
                continue
            try:
                os.kill(p.pid, signal.SIGCONT)
                p.terminate()
                p.wait(timeout=60)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                p.kill()
                p.wait()
        kafka_topics("--delete", "--if-exists", "--topic", re.escape(self.prefix) + ".*")
        keys = subprocess.run(["redis-cli", "--scan", "--pattern", f"vs{self.tag}:*"], capture_output=True,
                              text=True).stdout.split()
        for i in range(0, len(keys), 500):
            subprocess.run(["redis-cli", "del", *keys[i:i + 500]], capture_output=True)


def loadgen(name, *args):
    path = os.path.join(OUT, f"{name}.json")
    subprocess.run([LOADGEN, "run", "--api-key", "dev-key-acme", "--json", path, "--label", name,
                    "--gateway", f"http://127.0.0.1:{GW_GRPC}", *args], check=True, capture_output=True, text=True)
    with open(path) as f:
        return json.load(f)


def record(kind, build, run, data):
    row = {"kind": kind, "build": build, "rev": rev(build), "run": run,
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **data}
    with open(RESULTS, "a") as f:
        f.write(json.dumps(row) + "\n")
    log(kind, build, run, json.dumps({k: v for k, v in row.items() if k not in ("kind", "build", "run")})[:400])


def order(r):
    return BUILDS if r % 2 == 1 else tuple(reversed(BUILDS))


def drained(base, accepted, t0, idle_s, poll_s, cap_s):
    """Polls the processor's succeeded count (less `base`) until `accepted` tasks are done, nothing
    moved for `idle_s`, or `cap_s` passed since `t0`; returns the count and when it last grew."""
    done, last = 0.0, time.time()
    while done < accepted and time.time() - last < idle_s and time.time() - t0 < cap_s:
        time.sleep(poll_s)
        c = succeeded() - base
        if c > done:
            done, last = c, time.time()
    return done, last


def perf(pid, name):
    """Starts `perf record` on pid for PERF_S seconds (None when PERF_S is 0)."""
    if PERF_S <= 0:
        return None
    os.makedirs(os.path.join(OUT, "perf"), exist_ok=True)
    return subprocess.Popen(["perf", "record", "-q", "-F", "999", "--call-graph", PERF_CALL_GRAPH, "-p", str(pid), "-o",
                             os.path.join(OUT, "perf", f"{name}.data"), "--", "sleep", str(PERF_S)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def drain_once(build, r):
    tag = f"{build[0]}d{r}{int(time.time()) % 100000}"
    with Services(build, tag) as s:
        base = succeeded()  # before SIGSTOP: a stopped process does not answer
        os.kill(s.pr.pid, signal.SIGSTOP)
        sub = loadgen(f"{tag}-backlog", "--scenario", "batch", "--rate", "100", "--batch", "500",
                      "--duration-s", str(N / 50000), "--warmup-s", "0")
        accepted = sub["items_accepted"]
        probe = Probe({"processor": s.pr.pid, "gateway": s.gw.pid})
        st0 = statements()
        with probe:
            t0 = time.time()
            os.kill(s.pr.pid, signal.SIGCONT)
            sampler = perf(s.pr.pid, tag)
            done, last = drained(base, accepted, t0, idle_s=5.0, poll_s=0.05, cap_s=900)
            if sampler:
                sampler.wait()
        took = last - t0
        st1 = statements()
        # Events per task: what the drain cost Kafka (a republish is a repair of a stale event).
        events = {k: metric_sum(PR_ADMIN, f"dispatch_events_{k}_total")
                  for k in ("published", "republished")}
        in_mysql = int(sql(f"SELECT COUNT(*) FROM {s.db}.tasks WHERE state='succeeded'").strip())
        m = probe.result
        record("drain", build, r, {
            "tasks": int(done), "accepted": accepted, "succeeded_in_mysql": in_mysql, "seconds": round(took, 3),
            "tasks_per_s": round(done / took, 1),
            "processor_cpu_s": m["cpu_s"]["processor"],
            "processor_us_per_task": round(m["cpu_s"]["processor"] / done * 1e6, 1),
            "machine_us_per_task": round(m["machine_cpu_s"] / done * 1e6, 1),
            "events_per_task": round(events["published"] / max(done, 1), 3),
            "republished_per_task": round(events["republished"] / max(done, 1), 3),
            "statements_per_task": {k: round((st1[k] - st0[k]) / max(done, 1), 3) for k in st0},
            "probe": m})


def gateway_once(build, r):
    tag = f"{build[0]}g{r}{int(time.time()) % 100000}"
    with Services(build, tag, kill_processor=True) as s:
        os.kill(s.pr.pid, signal.SIGSTOP)
        out = {}
        for name, args in (
                ("submit_2k", ["--scenario", "submit", "--rate", "2000"]),
                ("submit_15k", ["--scenario", "submit", "--rate", "15000"]),
                ("submit_30k", ["--scenario", "submit", "--rate", "30000"]),
                ("batch_100", ["--scenario", "batch", "--rate", "2000", "--batch", "100", "--concurrency", "64"])):
            if LOADS and name not in LOADS:
                continue
            check_stop()
            probe = Probe({"gateway": s.gw.pid})
            with probe:
                sampler = perf(s.gw.pid, f"{tag}-{name}")
                rep = loadgen(f"{tag}-{name}", *args, "--duration-s", DUR)
                if sampler:
                    sampler.wait()
            m = probe.result
            items = rep["items_accepted"]  # warm-up included, like the CPU
            out[name] = {"ok_rate": round(rep["ok_rate"], 1), "items_per_s": round(rep["items_per_second"], 1),
                         "p50_ms": rep["p50_ms"], "p99_ms": rep["p99_ms"], "errors": rep["errors"],
                         "errors_by_code": rep["errors_by_code"],
                         "gateway_us_per_item": round(m["cpu_s"]["gateway"] / max(items, 1) * 1e6, 2),
                         "probe": m}
            time.sleep(2)
        record("gateway", build, r, out)


def priority_once(r, per_priority, latency_ms):
    build = "after"
    tag = f"ap{r}{int(time.time()) % 100000}"
    with Services(build, tag) as s:
        base = succeeded()
        os.kill(s.pr.pid, signal.SIGSTOP)
        n = 3 * per_priority
        sub = loadgen(f"{tag}-backlog", "--scenario", "batch", "--rate", "100", "--batch", "500",
                      "--duration-s", str(n / 50000), "--warmup-s", "0", "--task-type", "simulate",
                      "--sim-latency-ms", str(latency_ms), "--keys", "10000000", "--key-prefix", f"{tag}-",
                      "--priority-mix", "critical=1,default=1,low=1")
        accepted = sub["items_accepted"]
        probe = Probe({"processor": s.pr.pid, "gateway": s.gw.pid})
        with probe:
            t0 = time.time()
            os.kill(s.pr.pid, signal.SIGCONT)
            done, last = drained(base, accepted, t0, idle_s=10.0, poll_s=0.2, cap_s=1800)
        attempts = sql(
            "SET time_zone = '+00:00'; "
            f"SELECT t.priority, UNIX_TIMESTAMP(t.created_at), UNIX_TIMESTAMP(a.started_at) FROM {s.db}.tasks t "
            f"JOIN {s.db}.task_attempts a ON a.task_id = t.task_id AND a.generation = 0 AND a.attempt = 1")
        per = {1: [], 2: [], 3: []}
        for line in attempts.splitlines():
            p, created, started = line.split("\t")
            per[int(p)].append((float(created), float(started)))
        names = {1: "critical", 2: "default", 3: "low"}
        out = {"per_priority_submitted": per_priority, "accepted": accepted, "finished": int(done),
               "sim_latency_ms": latency_ms, "drain_s": round(last - t0, 1), "resumed_at": t0,
               "tasks_per_s": round(done / (last - t0), 1), "probe": probe.result, "priorities": {}}
        for p, xs in per.items():
            from_submit = sorted(st - cr for cr, st in xs)
            from_resume = sorted(st - t0 for _, st in xs)
            first_min = sum(1 for _, st in xs if st < t0 + 60)
            windows = [sum(1 for _, st in xs if t0 + w <= st < t0 + w + 10) for w in range(0, 120, 10)]
            out["priorities"][names[p]] = {
                "started": len(xs),
                "submit_to_start_p50_s": round(q(from_submit, 0.5), 2),
                "submit_to_start_p99_s": round(q(from_submit, 0.99), 2),
                "resume_to_start_p50_s": round(q(from_resume, 0.5), 2),
                "resume_to_start_p99_s": round(q(from_resume, 0.99), 2),
                "resume_to_start_max_s": round(from_resume[-1] if from_resume else 0, 2),
                "starts_first_minute": first_min, "starts_per_10s": windows}
        total = sum(v["starts_first_minute"] for v in out["priorities"].values()) or 1
        for v in out["priorities"].values():
            v["share_first_minute"] = round(v["starts_first_minute"] / total, 3)
        record("priority", build, r, out)


def q(sorted_values, quantile):
    if not sorted_values:
        return 0.0
    rank = max(1, min(len(sorted_values), int(-(-quantile * len(sorted_values) // 1))))
    return sorted_values[rank - 1]


def rows(kind):
    """The recorded runs of `kind`, from run SINCE_RUN on (a results file may hold runs of
    earlier builds of the after clone)."""
    if not os.path.exists(RESULTS):
        return []
    since = int(os.environ.get("SINCE_RUN", "0"))
    with open(RESULTS) as f:
        return [r for r in map(json.loads, f) if r["kind"] == kind and int(r["run"]) >= since]


def values(kind, build, get):
    """`get` of every run of `kind` by `build`, in run order; runs without the figure (a gateway
    run given a subset of LOADS) are left out."""
    out = []
    for r in rows(kind):
        if r["build"] != build:
            continue
        try:
            out.append(get(r))
        except KeyError:
            pass
    return out


def summary():
    def show(label, kind, get, fmt="{:,.1f}"):
        for build in BUILDS:
            vals = values(kind, build, get)
            if vals:
                print(f"{label:48s} {build:6s} median {fmt.format(statistics.median(vals)):>10s}  runs "
                      + ", ".join(fmt.format(v) for v in vals))
    show("drain tasks/s", "drain", lambda r: r["tasks_per_s"])
    show("drain processor CPU-s", "drain", lambda r: r["processor_cpu_s"], "{:.2f}")
    show("drain processor us/task", "drain", lambda r: r["processor_us_per_task"])
    show("drain machine us/task", "drain", lambda r: r["machine_us_per_task"])
    show("drain other (not ours) CPU-s", "drain", lambda r: r["probe"]["cpu_s"]["other"], "{:.2f}")
    for name, key in (("submit_2k", "p99_ms"), ("submit_15k", "ok_rate"), ("submit_30k", "ok_rate"),
                      ("submit_30k", "p99_ms"), ("batch_100", "items_per_s"), ("submit_15k", "gateway_us_per_item"),
                      ("submit_30k", "gateway_us_per_item"), ("batch_100", "gateway_us_per_item")):
        show(f"{name} {key}", "gateway", lambda r: r[name][key], "{:,.2f}" if "us" in key or "ms" in key else "{:,.1f}")
    for r in rows("priority"):
        print(f"priority run {r['run']} ({r['rev']}): {r['accepted']} tasks, simulate {r['sim_latency_ms']} ms, "
              f"drain {r['drain_s']} s, {r['tasks_per_s']} tasks/s")
        for name, v in r["priorities"].items():
            print(f"  {name:8s} submit->start p50 {v['submit_to_start_p50_s']} s p99 {v['submit_to_start_p99_s']} s; "
                  f"resume->start p50 {v['resume_to_start_p50_s']} p99 {v['resume_to_start_p99_s']} max "
                  f"{v['resume_to_start_max_s']}; first minute {v['starts_first_minute']} ({v['share_first_minute']:.1%}); "
                  f"per 10 s {v['starts_per_10s']}")


def table():
    """The before/after figures as a Markdown table (medians, change, every run in run order)."""
    figures = [
        ("drain, tasks/s (100,000 noop)", "drain", lambda r: r["tasks_per_s"], "{:,.0f}"),
        ("drain, processor CPU-s", "drain", lambda r: r["processor_cpu_s"], "{:.2f}"),
        ("drain, processor CPU µs/task", "drain", lambda r: r["processor_us_per_task"], "{:.1f}"),
        ("drain, whole-machine CPU µs/task", "drain", lambda r: r["machine_us_per_task"], "{:.1f}"),
        ("SubmitTask ok calls/s at 15,000/s offered", "gateway", lambda r: r["submit_15k"]["ok_rate"], "{:,.0f}"),
        ("SubmitTask ok calls/s at 30,000/s offered", "gateway", lambda r: r["submit_30k"]["ok_rate"], "{:,.0f}"),
        ("SubmitTask p99 ms at 2,000/s offered", "gateway", lambda r: r["submit_2k"]["p99_ms"], "{:.2f}"),
        ("SubmitTask gateway CPU µs/call at 15,000/s", "gateway", lambda r: r["submit_15k"]["gateway_us_per_item"], "{:.1f}"),
        ("SubmitTasks (100/call) records/s at 2,000 calls/s", "gateway", lambda r: r["batch_100"]["items_per_s"], "{:,.0f}"),
        ("SubmitTasks gateway CPU µs/record", "gateway", lambda r: r["batch_100"]["gateway_us_per_item"], "{:.2f}"),
    ]
    print("| figure | before median | after median | change | before runs | after runs |")
    print("|---|---:|---:|---:|---|---|")
    for label, kind, get, fmt in figures:
        got = {b: values(kind, b, get) for b in ("before", "after")}
        if not got["before"] or not got["after"]:
            continue
        mb, ma = statistics.median(got["before"]), statistics.median(got["after"])
        change = f"{(ma - mb) / mb * 100:+.1f}%" if mb else "n/a"
        print(f"| {label} | {fmt.format(mb)} | {fmt.format(ma)} | {change} | "
              + " / ".join(fmt.format(v) for v in got["before"]) + " | "
              + " / ".join(fmt.format(v) for v in got["after"]) + " |")


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    try:
        if cmd == "drain":
            for r in range(FIRST, FIRST + RUNS):
                for b in order(r):
                    check_stop()
                    drain_once(b, r)
        elif cmd == "gateway":
            for r in range(FIRST, FIRST + RUNS):
                for b in order(r):
                    check_stop()
                    gateway_once(b, r)
        elif cmd == "priority":
            per = int(os.environ.get("PER_PRIORITY", "40000"))
            latency = int(os.environ.get("SIM_LATENCY_MS", "250"))
            for r in range(1, int(os.environ.get("PRIORITY_RUNS", "1")) + 1):
                check_stop()
                priority_once(r, per, latency)
        elif cmd == "summary":
            summary()
        elif cmd == "table":
            table()
        elif cmd == "clean":
            root_sql("DROP DATABASE IF EXISTS dispatch_before; DROP DATABASE IF EXISTS dispatch_after;")
        else:
            print(__doc__)
            sys.exit(2)
    except Stop as e:
        log(f"stopped: {e} exists")
        sys.exit(3)


if __name__ == "__main__":
    main()
