"""scheduler.py - pyqueue's durable scheduler against APScheduler 3.x, side by side in one run.

Questions:
  (a) load: how many interval schedules per second can be added?  pyqueue:
      one add_many() of --n schedules (one SQLite transaction), and add()
      one call at a time for --per-call-n of them (a transaction each).
      APScheduler: BackgroundScheduler.add_job() per call (it has no batch
      call) on a scheduler started paused, so that each job goes straight
      into its job store: the memory store for --ap-n jobs; the SQLAlchemy
      store on SQLite for --sql-add-n jobs only, because it commits (and
      SQLite fsyncs) once per job.
  (b) memory per schedule: pyqueue's active scheduler after it has loaded
      every schedule (the process of (c)): RSS growth from just after
      importing pyqueue.scheduler to just after run_pending(), and, in another process,
      tracemalloc's count of live Python memory (at most --traced-n
      schedules: tracemalloc triples the time).  RSS includes the mapped
      fired table (48 B per slot, 2 slots per schedule: see below) and the
      timer wheel's C nodes; tracemalloc does not.  APScheduler's memory
      store: growth of the process that added the jobs (RSS; tracemalloc in
      another process).  The SQLAlchemy store keeps jobs on disk and reads
      the due ones at each wake-up, so its process memory does not grow with
      the jobs: its row is the restarted process, for reference.  Disk bytes
      per schedule beside.
  (c) restart: a fresh process opens the broker, gets the scheduler and calls
      run_pending() once, which takes the leader lock and loads every
      schedule into the timer wheel (nothing is due: every=1 h).  APScheduler
      with the SQLAlchemy store: a fresh process constructs the scheduler and
      start()s it; the clock stops when its first _process_jobs() pass
      returns (that pass queries the due jobs and the next run time; it does
      not read the others).  The store is filled with --n rows in bulk
      beforehand (the rows add_job() would write, in one transaction), since
      add_job() would take hours.  The memory store keeps nothing across a
      restart: the application adds its jobs again, which (a) times.
  (d) fire lateness at --rate fires/s: rate * every schedules (10,000 with
      every=1.0 s), their start times spread evenly over one interval, so
      that fires arrive at a steady rate; the scheduler runs in its
      background thread (start()) for --duration seconds after a lead time.
      pyqueue fires an every= schedule first at start + every, so its
      starts lie one interval earlier than APScheduler's start_date.
      pyqueue: lateness = the record timestamp of each published message
      (msg.timestamp_ns, taken at append) minus its x-scheduled-for header.
      APScheduler: the job function returns time.time() when it runs; an
      EVENT_JOB_EXECUTED listener pairs it with the event's
      scheduled_run_time.  APScheduler runs with misfire_grace_time=None,
      coalesce=False and max_instances=1000, so that every due time runs and
      is measured however late (its defaults would drop fires more than 1 s
      late); the default thread pool (10 workers).  Fires due in the window
      but not delivered within --margin seconds after it count as infinitely
      late ("inf" in the percentiles).  pyqueue fsync="interval" (default);
      APScheduler's SQLite store as SQLAlchemy opens it (rollback journal,
      synchronous=FULL).

The pyqueue scheduler is created with capacity = 2 * --n: its fired table
holds two entries per schedule once it has fired (the fired record and the
pending record), so capacity=n fills up when about half the schedules have
fired.

Each measurement runs in a fresh child process of this script, in a fresh
temporary directory (the page cache is warm: the files were just written).
Rates are wall-clock; the machine may be shared and noisy: restarts are the
median of --repeats runs; load and lateness run once each.

    python bench/scheduler.py                      # n = 1,000,000
    python bench/scheduler.py --quick              # n = 20,000, 2 s of fires
    python bench/scheduler.py --json scheduler.json --only load restart
    python bench/scheduler.py --profile            # also cProfile / tracemalloc tops of pyqueue's load and restart
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import gc
import io
import json
import os
import pickle
import pstats
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tracemalloc
import _common  # bench/_common.py: the machine's description

# The checkout this script lives in comes first, so that an in-place build
# (python setup.py build_ext --inplace) is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

PQ = "pyqueue"
PQ_ONE = "pyqueue add() per call"
PQ_MANY = "pyqueue add_many()"
AP_MEM = "APScheduler memory store"
AP_SQL = "APScheduler SQLAlchemy store (SQLite)"

TOPIC = "jobs"
PAYLOAD_BYTES = 16          # each schedule carries its own 16-byte payload (pyqueue value, APScheduler arg)
IDLE_EVERY = 3600.0         # load/restart schedules: nothing comes due while measured
SQL_CHUNK = 50_000          # rows per executemany when filling the SQLAlchemy store
PERCENTILES = (50, 90, 99, 99.9)
UTC = datetime.timezone.utc
EPOCH = datetime.datetime(1970, 1, 1, tzinfo=UTC)


def payload(i: int) -> bytes:
    return b"%016d" % i


def ap_job(value: bytes) -> float:
    """The APScheduler job: returns when it ran (the listener pairs it with the due time)."""
    return time.time()


# ---- process helpers ----

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            total += os.stat(os.path.join(root, name)).st_blocks * 512
    return total


def file_bytes(path: str) -> int:
    return os.stat(path).st_blocks * 512 if os.path.exists(path) else 0


def settle() -> None:
    gc.collect()


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def sleep_until(t: float) -> None:
    while True:
        left = t - time.time()
        if left <= 0:
            return
        time.sleep(min(left, 0.5))


def profiled(fn, profile: bool, top: int = 15):
    """fn() under cProfile when asked: (result, text of the top functions by own time)."""
    if not profile:
        return fn(), None
    pr = cProfile.Profile()
    pr.enable()
    out = fn()
    pr.disable()
    buf = io.StringIO()
    pstats.Stats(pr, stream=buf).strip_dirs().sort_stats("tottime").print_stats(top)
    return out, buf.getvalue()


# ---- children: pyqueue ----

def child_pq_load(p: dict) -> dict:
    n = p["n"]
    broker = pyqueue.open(p["dir"])
    broker.topic(TOPIC)
    s = broker.scheduler(capacity=p["capacity"])
    items = [dict(id=f"s{i:08d}", topic=TOPIC, value=payload(i), every=IDLE_EVERY) for i in range(n)]
    settle()
    c0, t0 = cpu_seconds(), time.perf_counter()
    _, prof = profiled(lambda: s.add_many(items), p.get("profile", False))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    items = None                    # let the definitions go before the size checks
    if s.count() != n:
        raise RuntimeError(f"pyqueue holds {s.count()} schedules, expected {n}")
    broker.close()
    sdir = os.path.join(p["dir"], "scheduler")
    return {"seconds": seconds, "per_s": n / seconds, "cpu_s": cpu, "peak_rss_bytes": peak,
            "disk_bytes": dir_bytes(sdir), "db_bytes": file_bytes(os.path.join(sdir, "schedules.db")),
            "wal_bytes": file_bytes(os.path.join(sdir, "schedules.db-wal")),
            "fired_bytes": file_bytes(os.path.join(sdir, "fired")), "profile": prof}


def child_pq_add_one(p: dict) -> dict:
    n = p["n"]
    broker = pyqueue.open(p["dir"])
    broker.topic(TOPIC)
    s = broker.scheduler(capacity=p["capacity"])
    add = s.add
    values = [payload(i) for i in range(n)]
    settle()
    c0, t0 = cpu_seconds(), time.perf_counter()
    for i in range(n):
        add(f"s{i:08d}", topic=TOPIC, value=values[i], every=IDLE_EVERY)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    broker.close()
    return {"seconds": seconds, "per_s": n / seconds, "cpu_s": cpu}


def child_pq_restart(p: dict) -> dict:
    """A fresh process: open, scheduler(), run_pending() (loads everything)."""
    traced = p.get("traced", False)
    import pyqueue.scheduler  # noqa: F401  (its modules, croniter included, before the baseline)
    settle()
    rss0 = rss_bytes()
    if traced:
        tracemalloc.start()
    c0, t0 = cpu_seconds(), time.perf_counter()
    broker = pyqueue.open(p["dir"])
    t1 = time.perf_counter()
    s = broker.scheduler()
    t2 = time.perf_counter()
    fired, prof = profiled(s.run_pending, p.get("profile", False))
    t3, cpu = time.perf_counter(), cpu_seconds() - c0
    loaded = len(s._wheel)          # timers pending in the active scheduler's wheel
    settle()
    out = {"open_s": t1 - t0, "scheduler_s": t2 - t1, "run_pending_s": t3 - t2, "seconds": t3 - t0, "cpu_s": cpu,
           "fired": fired, "loaded": loaded, "rss_bytes": rss_bytes() - rss0, "profile": prof}
    if traced:
        snap = tracemalloc.take_snapshot()
        cur, peak = tracemalloc.get_traced_memory()
        out["traced_bytes"], out["traced_peak_bytes"] = cur, peak
        top = snap.statistics("lineno")[:12]
        out["traced_top"] = [f"{st.size / max(loaded, 1):8.1f} B/schedule  {st.count / max(loaded, 1):5.2f} "
                             f"blocks/schedule  {st.traceback[0].filename.split(os.sep)[-1]}:"
                             f"{st.traceback[0].lineno}" for st in top]
        tracemalloc.stop()
    if loaded != p["n"]:
        raise RuntimeError(f"pyqueue loaded {loaded} schedules, expected {p['n']}")
    return out


def child_pq_late(p: dict) -> dict:
    rate, every, duration = p["rate"], p["every"], p["duration"]
    n_sched = round(rate * every)
    broker = pyqueue.open(p["dir"])
    topic = broker.topic(TOPIC)
    s = broker.scheduler()
    t0 = round(time.time() + p["lead"], 3)
    # An every= schedule fires first at start + every (Schedule.next_after), so the
    # anchors lie one interval before the window; were the first fire at start
    # itself, it would still be in the future at start() and outside the window.
    if time.time() + 0.5 > t0 - every:
        raise RuntimeError("--lead must exceed --every by a second or more")
    s.add_many([dict(id=f"s{i:06d}", topic=TOPIC, value=payload(i), every=every, start=t0 - every + i / rate)
                for i in range(n_sched)])
    end = t0 + duration
    cpu0 = cpu_seconds()
    s.start()
    sleep_until(t0)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_t0 = cpu_seconds()
    sleep_until(end)
    cpu_end = cpu_seconds()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    sleep_until(end + p["margin"])
    s.stop()
    late, lo, hi, coalesced, in_window = [], t0 - 0.5 / rate, end - 0.5 / rate, 0, 0
    first, nxt = topic.offsets(0)
    off = first
    while off < nxt:
        msgs = topic.read(0, off, 10_000)
        for m in msgs:
            due = datetime.datetime.fromisoformat(m.headers["x-scheduled-for"].decode())
            due_us = (due - EPOCH) // datetime.timedelta(microseconds=1)
            if lo <= due_us / 1e6 < hi:
                late.append(m.timestamp_ns / 1e3 - due_us)
                coalesced += "x-coalesced" in m.headers
            in_window += t0 <= m.timestamp_ns / 1e9 < end
        off = msgs[-1].offset + 1
    broker.close()
    return {"late_us": late, "expected": expected_fires(n_sched, rate, every, duration),
            "coalesced": coalesced, "startup_cpu_s": cpu_t0 - cpu0, "window_cpu_s": cpu_end - cpu_t0,
            "ran_in_window": in_window, "involuntary_switches": ru1.ru_nivcsw - ru0.ru_nivcsw}


def expected_fires(n_sched: int, rate: float, every: float, duration: float) -> int:
    total = 0
    for i in range(n_sched):
        phase = i / rate
        if phase < duration:
            total += int((duration - phase - 1e-9) // every) + 1
    return total


# ---- children: APScheduler ----

def ap_scheduler(store: str, url: "str | None", job_defaults: "dict | None" = None):
    from apscheduler.schedulers.background import BackgroundScheduler
    jobstores = {}
    if store == "sql":
        from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
        jobstores["default"] = SQLAlchemyJobStore(url=url)
    return BackgroundScheduler(jobstores=jobstores, timezone=UTC, job_defaults=job_defaults or {})


def child_ap_load(p: dict) -> dict:
    """add_job() per call; memory growth of the process (the memory store holds every job)."""
    n, store, traced = p["n"], p["store"], p.get("traced", False)
    url = f"sqlite:///{os.path.join(p['dir'], 'jobs.sqlite')}" if store == "sql" else None
    import apscheduler.triggers.interval  # noqa: F401  (imported before the baseline, as pyqueue's modules are)
    settle()
    rss0 = rss_bytes()
    if traced:
        tracemalloc.start()
    sched = ap_scheduler(store, url)
    sched.start(paused=True)        # paused: add_job() writes to the store, and nothing runs
    add = sched.add_job
    c0, t0 = cpu_seconds(), time.perf_counter()
    for i in range(n):
        add(ap_job, "interval", seconds=IDLE_EVERY, id=f"s{i:08d}", args=(payload(i),))
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    settle()
    out = {"seconds": seconds, "per_s": n / seconds, "cpu_s": cpu, "rss_bytes": rss_bytes() - rss0}
    if traced:
        out["traced_bytes"], out["traced_peak_bytes"] = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    if store == "sql":
        out["disk_bytes"] = file_bytes(os.path.join(p["dir"], "jobs.sqlite"))
    sched.shutdown(wait=False)
    return out


def ap_sql_fill(sched, store, n: int, trigger_for, next_run_for) -> None:
    """Insert n jobs into a SQLAlchemy job store in one transaction: the rows
    SQLAlchemyJobStore.add_job() writes (id, next_run_time, pickled state),
    without a commit per job."""
    from apscheduler.job import Job
    from apscheduler.util import datetime_to_utc_timestamp
    t = trigger_for(0)
    template = Job(sched, id="template", func=ap_job, trigger=t, executor="default", args=(payload(0),),
                   kwargs={}, name="ap_job", misfire_grace_time=sched._job_defaults["misfire_grace_time"],
                   coalesce=sched._job_defaults["coalesce"], max_instances=sched._job_defaults["max_instances"],
                   next_run_time=next_run_for(0)).__getstate__()
    proto = store.pickle_protocol
    with store.engine.begin() as conn:
        for lo in range(0, n, SQL_CHUNK):
            rows = []
            for i in range(lo, min(n, lo + SQL_CHUNK)):
                state = dict(template, id=f"s{i:08d}", args=(payload(i),), trigger=trigger_for(i),
                             next_run_time=next_run_for(i))
                rows.append({"id": state["id"], "next_run_time": datetime_to_utc_timestamp(state["next_run_time"]),
                             "job_state": pickle.dumps(state, proto)})
            conn.execute(store.jobs_t.insert(), rows)


def child_ap_sql_fill(p: dict) -> dict:
    """Fill a SQLAlchemy store with n idle interval jobs (setup for the restart)."""
    from apscheduler.triggers.interval import IntervalTrigger
    path = os.path.join(p["dir"], "jobs.sqlite")
    sched = ap_scheduler("sql", f"sqlite:///{path}")
    sched.start(paused=True)                     # creates the table
    store = sched._lookup_jobstore("default")
    trigger = IntervalTrigger(seconds=IDLE_EVERY, timezone=UTC)
    first = trigger.get_next_fire_time(None, datetime.datetime.now(UTC))
    t0 = time.perf_counter()
    ap_sql_fill(sched, store, p["n"], lambda i: trigger, lambda i: first)
    seconds = time.perf_counter() - t0
    sched.shutdown(wait=False)
    return {"seconds": seconds, "disk_bytes": file_bytes(path)}


def child_ap_sql_restart(p: dict) -> dict:
    import apscheduler.jobstores.sqlalchemy  # noqa: F401
    import apscheduler.schedulers.background  # noqa: F401
    settle()
    rss0 = rss_bytes()
    c0, t0 = cpu_seconds(), time.perf_counter()
    sched = ap_scheduler("sql", f"sqlite:///{os.path.join(p['dir'], 'jobs.sqlite')}")
    done = threading.Event()
    first_pass = sched._process_jobs

    def process_jobs():
        wait = first_pass()
        done.set()
        return wait
    sched._process_jobs = process_jobs
    sched.start()
    done.wait()
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    settle()
    out = {"seconds": seconds, "cpu_s": cpu, "rss_bytes": rss_bytes() - rss0}
    sched.shutdown(wait=False)
    return out


def child_ap_late(p: dict) -> dict:
    from apscheduler.events import EVENT_JOB_EXECUTED, EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
    from apscheduler.triggers.interval import IntervalTrigger
    rate, every, duration, store = p["rate"], p["every"], p["duration"], p["store"]
    n_sched = round(rate * every)
    path = os.path.join(p["dir"], "jobs.sqlite")
    sched = ap_scheduler(store, f"sqlite:///{path}",
                         {"misfire_grace_time": None, "coalesce": False, "max_instances": 1000})
    runs: list = []
    skipped = [0]

    def on_event(ev) -> None:
        if ev.code == EVENT_JOB_EXECUTED:
            runs.append((ev.scheduled_run_time, ev.retval))
        else:
            skipped[0] += 1
    sched.add_listener(on_event, EVENT_JOB_EXECUTED | EVENT_JOB_MISSED | EVENT_JOB_MAX_INSTANCES)
    t0 = round(time.time() + p["lead"], 3)
    starts = [datetime.datetime.fromtimestamp(t0 + i / rate, UTC) for i in range(n_sched)]
    triggers = [IntervalTrigger(seconds=every, start_date=starts[i], timezone=UTC) for i in range(n_sched)]
    cpu0 = cpu_seconds()
    if store == "sql":
        # add_job() commits once per job (~10 ms each here): fill the store in one transaction instead
        sched.start(paused=True)
        ap_sql_fill(sched, sched._lookup_jobstore("default"), n_sched, triggers.__getitem__, starts.__getitem__)
        sched.resume()
    else:
        for i in range(n_sched):
            sched.add_job(ap_job, triggers[i], id=f"s{i:06d}", args=(payload(i),))
        sched.start()
    if time.time() > t0:
        raise RuntimeError("APScheduler set-up took longer than --lead; raise it")
    sleep_until(t0)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_t0 = cpu_seconds()
    end = t0 + duration
    sleep_until(end)
    cpu_end = cpu_seconds()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    sleep_until(end + p["margin"])
    done = list(runs)
    sched.shutdown(wait=False)
    lo, hi = t0 - 0.5 / rate, end - 0.5 / rate
    late, in_window = [], 0
    for due, ran in done:
        d = due.timestamp()
        if lo <= d < hi:
            late.append((ran - d) * 1e6)
        in_window += t0 <= ran < end
    return {"late_us": late, "expected": expected_fires(n_sched, rate, every, duration), "coalesced": 0,
            "skipped": skipped[0], "startup_cpu_s": cpu_t0 - cpu0, "window_cpu_s": cpu_end - cpu_t0,
            "ran_in_window": in_window, "involuntary_switches": ru1.ru_nivcsw - ru0.ru_nivcsw}


CHILDREN = {"pq-load": child_pq_load, "pq-add-one": child_pq_add_one, "pq-restart": child_pq_restart,
            "pq-late": child_pq_late, "ap-load": child_ap_load, "ap-sql-fill": child_ap_sql_fill,
            "ap-sql-restart": child_ap_sql_restart, "ap-late": child_ap_late}


def run_child(kind: str, params: dict, timeout: float = 7200) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, json.dumps(params)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"child {kind} {params} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def have_apscheduler() -> "tuple[bool, bool]":
    try:
        import apscheduler
        if not apscheduler.__version__.startswith("3."):
            print(f"APScheduler {apscheduler.__version__} is not 3.x: skipped", file=sys.stderr)
            return False, False
    except ImportError:
        print("APScheduler 3.x is not installed (pip install 'apscheduler<4'): skipped", file=sys.stderr)
        return False, False
    try:
        import sqlalchemy  # noqa: F401
    except ImportError:
        print("SQLAlchemy is not installed: the APScheduler SQLAlchemy store is skipped", file=sys.stderr)
        return True, False
    return True, True


# ---- the parts ----

class Workdir:
    """Fresh subdirectories of one temporary directory, removed at the end."""

    def __init__(self, parent: "str | None") -> None:
        self.root = tempfile.mkdtemp(prefix="pq-bench-scheduler-", dir=parent)
        self.count = 0

    def new(self) -> str:
        self.count += 1
        path = os.path.join(self.root, str(self.count))
        os.mkdir(path)
        return path

    def remove(self, path: str) -> None:
        shutil.rmtree(path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def note(msg: str) -> None:
    print(f"  {msg}", file=sys.stderr, flush=True)


def part_load_memory_restart(args, wd: Workdir, parts: list, ap: bool, sql: bool, results: dict) -> None:
    n = args.n
    load, memory, restart, profiles = [], [], [], {}
    pq_dir = wd.new()
    pq = run_child("pq-load", {"n": n, "dir": pq_dir, "capacity": 2 * n})
    pq.pop("profile")
    note(f"pyqueue add_many of {n:,}: {pq['seconds']:.1f} s")
    if args.profile:                # extra runs: cProfile's overhead stays out of the figures
        d = wd.new()
        profiles["pyqueue add_many"] = run_child("pq-load", {"n": n, "dir": d, "capacity": 2 * n,
                                                             "profile": True})["profile"]
        wd.remove(d)
        profiles["pyqueue restart (run_pending)"] = run_child("pq-restart", {"n": n, "dir": pq_dir,
                                                                            "profile": True})["profile"]
    if "load" in parts:
        load.append({"impl": PQ_MANY, "n": n, **pq})
        d = wd.new()
        one = run_child("pq-add-one", {"n": args.per_call_n, "dir": d, "capacity": 2 * args.per_call_n})
        wd.remove(d)
        load.append({"impl": PQ_ONE, "n": args.per_call_n, **one})
        note(f"pyqueue add() x {args.per_call_n:,}: {one['seconds']:.1f} s")
    if "restart" in parts or "memory" in parts:
        runs = []
        for r in range(args.repeats if "restart" in parts else 1):
            runs.append(run_child("pq-restart", {"n": n, "dir": pq_dir}))
            note(f"pyqueue restart {r + 1}: {runs[-1]['seconds']:.2f} s")
        med = statistics.median(x["seconds"] for x in runs)
        best = min(runs, key=lambda x: abs(x["seconds"] - med))
        restart.append({"impl": PQ, "n": n, "seconds": med, "cpu_s": statistics.median(x["cpu_s"] for x in runs),
                        "open_s": best["open_s"],
                        "scheduler_s": best["scheduler_s"], "run_pending_s": best["run_pending_s"],
                        "runs": [x["seconds"] for x in runs], "rss_bytes": runs[0]["rss_bytes"]})
        if "memory" in parts:
            tn = min(n, args.traced_n)
            if tn != n:
                d = wd.new()
                run_child("pq-load", {"n": tn, "dir": d, "capacity": 2 * tn})
            else:
                d = pq_dir
            tr = run_child("pq-restart", {"n": tn, "dir": d, "traced": True})
            if d != pq_dir:
                wd.remove(d)
            profiles["pyqueue restart tracemalloc (top lines)"] = "\n".join(tr["traced_top"])
            memory.append({"impl": PQ + " (active scheduler after load)", "n": n,
                           "rss_per": runs[0]["rss_bytes"] / n, "traced_n": tn,
                           "traced_per": tr["traced_bytes"] / tn, "traced_peak_per": tr["traced_peak_bytes"] / tn,
                           "disk_per": pq["disk_bytes"] / n, "db_per": pq["db_bytes"] / n,
                           "wal_per": pq["wal_bytes"] / n, "fired_per": pq["fired_bytes"] / n})
    wd.remove(pq_dir)
    if ap and ("load" in parts or "memory" in parts):
        an = args.ap_n
        d = wd.new()
        m = run_child("ap-load", {"n": an, "dir": d, "store": "memory"})
        note(f"APScheduler memory store add_job x {an:,}: {m['seconds']:.1f} s")
        if "load" in parts:
            load.append({"impl": AP_MEM, "n": an, "seconds": m["seconds"], "per_s": m["per_s"], "cpu_s": m["cpu_s"]})
        if "memory" in parts:
            tn = min(an, args.traced_n)
            tr = run_child("ap-load", {"n": tn, "dir": d, "store": "memory", "traced": True})
            memory.append({"impl": AP_MEM, "n": an, "rss_per": m["rss_bytes"] / an, "traced_n": tn,
                           "traced_per": tr["traced_bytes"] / tn, "traced_peak_per": tr["traced_peak_bytes"] / tn,
                           "disk_per": None})
        wd.remove(d)
        restart.append({"impl": AP_MEM + " (no persistence: add every job again)", "n": an,
                        "seconds": m["seconds"], "cpu_s": m["cpu_s"], "runs": [m["seconds"]],
                        "rss_bytes": m["rss_bytes"]})
    if sql and "load" in parts:
        d = wd.new()
        s = run_child("ap-load", {"n": args.sql_add_n, "dir": d, "store": "sql"})
        wd.remove(d)
        note(f"APScheduler SQLAlchemy store add_job x {args.sql_add_n:,}: {s['seconds']:.1f} s")
        load.append({"impl": AP_SQL, "n": args.sql_add_n, "seconds": s["seconds"], "per_s": s["per_s"],
                     "cpu_s": s["cpu_s"],
                     "disk_per": s["disk_bytes"] / args.sql_add_n})
    if sql and ("restart" in parts or "memory" in parts):
        d = wd.new()
        fill = run_child("ap-sql-fill", {"n": n, "dir": d})
        note(f"APScheduler SQLAlchemy store filled with {n:,} rows in {fill['seconds']:.1f} s")
        runs = [run_child("ap-sql-restart", {"dir": d}) for _ in range(args.repeats if "restart" in parts else 1)]
        wd.remove(d)
        med = statistics.median(x["seconds"] for x in runs)
        if "restart" in parts:
            restart.append({"impl": AP_SQL, "n": n, "seconds": med, "runs": [x["seconds"] for x in runs],
                            "cpu_s": statistics.median(x["cpu_s"] for x in runs),
                            "rss_bytes": runs[0]["rss_bytes"], "fill_s": fill["seconds"]})
        if "memory" in parts:
            memory.append({"impl": AP_SQL + " (restarted process; jobs stay on disk)", "n": n,
                           "rss_per": runs[0]["rss_bytes"] / n, "traced_n": None, "traced_per": None,
                           "traced_peak_per": None, "disk_per": fill["disk_bytes"] / n})
    for rows, key, better_low in ((load, "per_s", False), (restart, "seconds", True)):
        if rows and rows[0]["impl"].startswith(PQ):
            base = rows[0][key]
            for r in rows:
                r["ratio"] = (r[key] / base) if better_low else (base / r[key])
    if memory and memory[0]["impl"].startswith(PQ):
        for r in memory:
            r["ratio"] = r["rss_per"] / memory[0]["rss_per"] if memory[0]["rss_per"] > 0 else None
    for name, rows in (("load", load), ("memory", memory), ("restart", restart)):
        if name in parts and rows:
            results[name] = rows
    if args.profile:
        results["profiles"] = {k: v for k, v in profiles.items() if v}


def percentile(sorted_values: list, p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def part_lateness(args, wd: Workdir, ap: bool, sql: bool) -> list:
    rows = []
    common = {"rate": args.rate, "every": args.every, "duration": args.duration, "lead": args.lead,
              "margin": args.margin}
    cases = [(PQ, "pq-late", {})]
    if ap:
        cases.append((AP_MEM, "ap-late", {"store": "memory"}))
    if sql:
        cases.append((AP_SQL, "ap-late", {"store": "sql"}))
    for impl, kind, extra in cases:
        d = wd.new()
        r = run_child(kind, {**common, **extra, "dir": d})
        wd.remove(d)
        late = sorted(r.pop("late_us"))
        expected = r["expected"]
        missing = max(0, expected - len(late))
        full = late + [float("inf")] * missing            # undelivered: infinitely late
        row = {"impl": impl, "schedules": round(args.rate * args.every), "expected": expected,
               "delivered": len(late), "missing": missing, **r,
               "achieved_per_s": r["ran_in_window"] / args.duration,
               "cpu_us_per_fire": r["window_cpu_s"] / r["ran_in_window"] * 1e6 if r["ran_in_window"] else None,
               "cpu_share": r["window_cpu_s"] / args.duration,
               "max_ms": (full[-1] / 1e3) if full else float("nan"),
               "early": sum(1 for x in late if x < 0)}
        for p in PERCENTILES:
            row[f"p{p:g}_ms"] = percentile(full, p) / 1e3
        rows.append(row)
        note(f"lateness {impl}: {len(late):,} of {expected:,} fires, p50 {row['p50_ms']:.3f} ms, "
             f"p99 {row['p99_ms']:.3f} ms")
    base = rows[0]["p99_ms"]
    for r in rows:
        r["ratio_p99"] = r["p99_ms"] / base if 0 < base < float("inf") else None
    return rows


# ---- report ----

def targets(results: dict, args) -> list:
    out = []
    scale = args.n / 1_000_000
    at_million = "" if args.n == 1_000_000 else " (1,000,000 in <= {} s)"
    load = [r for r in results.get("load", []) if r["impl"] == PQ_MANY]
    if load:
        lim = 10.0 * scale
        out.append({"goal": f"{args.n:,} interval schedules loaded (add_many) in <= {lim:g} s"
                            + at_million.format(10),
                    "measured": f"{load[0]['seconds']:.1f} s ({load[0]['per_s']:,.0f}/s)",
                    "met": load[0]["seconds"] <= lim})
    mem = [r for r in results.get("memory", []) if r["impl"].startswith(PQ)]
    if mem:
        out.append({"goal": "<= 300 B per schedule in the active scheduler (RSS)",
                    "measured": f"{mem[0]['rss_per']:,.0f} B (tracemalloc {mem[0]['traced_per']:,.0f} B)",
                    "met": mem[0]["rss_per"] <= 300})
    rs = [r for r in results.get("restart", []) if r["impl"] == PQ]
    if rs:
        lim = 5.0 * scale
        out.append({"goal": f"restart with {args.n:,} schedules in <= {lim:g} s" + at_million.format(5),
                    "measured": f"{rs[0]['seconds']:.1f} s", "met": rs[0]["seconds"] <= lim})
    late = [r for r in results.get("lateness", []) if r["impl"] == PQ]
    if late:
        r = late[0]
        out.append({"goal": f"fire lateness p50 <= 1 ms at {args.rate:,.0f} fires/s",
                    "measured": f"{r['p50_ms']:.3f} ms", "met": r["p50_ms"] <= 1.0})
        out.append({"goal": f"fire lateness p99 <= 10 ms at {args.rate:,.0f} fires/s",
                    "measured": f"{r['p99_ms']:.3f} ms", "met": r["p99_ms"] <= 10.0})
    return out


def fr(x: "float | None") -> str:
    if x is None:
        return ""
    if x == float("inf"):
        return "inf"
    return f"{x:.2g}x" if x < 0.1 else f"{x:,.2f}x" if x < 100 else f"{x:,.0f}x"


def fms(x: float) -> str:
    return "inf" if x == float("inf") else f"{x:,.3f}" if x < 100 else f"{x:,.0f}"


def opt(x: "float | None", f: str = "{:,.0f}") -> str:
    return "" if x is None else f.format(x)


def markdown(results: dict, goals: list, args) -> str:
    lines = []
    load = results.get("load")
    if load:
        lines += ["### (a) load: interval schedules added per second", "",
                  "one run; each schedule has its own id and 16-byte payload; seconds and schedules/s in "
                  "wall-clock time, CPU s = the process's CPU time over the same calls (less sensitive to a "
                  "busy machine); ratio = pyqueue add_many()'s rate / this row's, in wall-clock and in CPU "
                  "time (above 1: add_many is faster)", "",
                  "| implementation | schedules | seconds | schedules/s | CPU s | schedules/CPU s | ratio | "
                  "ratio CPU |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        cpu_base = load[0]["n"] / load[0]["cpu_s"] if load[0]["impl"] == PQ_MANY else None
        for r in load:
            per_cpu = r["n"] / r["cpu_s"]
            lines.append(f"| {r['impl']} | {r['n']:,} | {r['seconds']:,.2f} | {r['per_s']:,.0f} | "
                         f"{r['cpu_s']:,.2f} | {per_cpu:,.0f} | {fr(r.get('ratio'))} | "
                         f"{fr(cpu_base / per_cpu if cpu_base else None)} |")
        many = [r for r in load if r["impl"] == PQ_MANY]
        if many:
            lines += ["", f"The add_many() process peaked at {many[0]['peak_rss_bytes'] / 2**20:,.0f} MiB RSS "
                      "(the argument dicts, the Schedule objects, SQLite)."]
        lines.append("")
    mem = results.get("memory")
    if mem:
        lines += ["### (b) memory per schedule", "",
                  "bytes per schedule; RSS = resident growth of the process holding the schedules "
                  "(pyqueue: the restarted process of (c), from after import to after run_pending(); "
                  "everything: SQLite's cache, the mapped fired table, the wheel's C nodes, malloc's "
                  "free lists); tracemalloc = live Python memory at the end and its peak (at "
                  "min(n, --traced-n) schedules); disk = files per schedule; ratio = this row's RSS / "
                  "pyqueue's", "",
                  "| implementation | schedules | RSS B | tracemalloc B | tracemalloc peak B | disk B | ratio |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for r in mem:
            lines.append(f"| {r['impl']} | {r['n']:,} | {r['rss_per']:,.1f} | {opt(r['traced_per'], '{:,.1f}')} | "
                         f"{opt(r['traced_peak_per'], '{:,.1f}')} | {opt(r['disk_per'], '{:,.0f}')} | "
                         f"{fr(r.get('ratio'))} |")
        p = [r for r in mem if r["impl"].startswith(PQ)]
        if p:
            p = p[0]
            lines += ["", f"pyqueue on disk per schedule: schedules.db {p['db_per']:,.0f} B, its WAL "
                      f"{p['wal_per']:,.0f} B, the fired table {p['fired_per']:,.0f} B (capacity 2n x 48 B)."]
        lines.append("")
    rs = results.get("restart")
    if rs:
        lines += ["### (c) restart", "",
                  f"seconds from a fresh process's first call to a scheduler ready to fire, median of "
                  f"{args.repeats} (runs beside); CPU s = the process's CPU time over it (median); RSS = its "
                  "resident growth; ratio = this row's time / pyqueue's (above 1: pyqueue is faster)", "",
                  "| implementation | schedules | seconds | runs | CPU s | RSS MiB | ratio |",
                  "|---|---:|---:|---|---:|---:|---:|"]
        for r in rs:
            lines.append(f"| {r['impl']} | {r['n']:,} | {r['seconds']:,.2f} | "
                         f"{', '.join(f'{x:.2f}' for x in r['runs'])} | {r['cpu_s']:,.2f} | "
                         f"{r['rss_bytes'] / 2**20:,.1f} | {fr(r.get('ratio'))} |")
        p = [r for r in rs if r["impl"] == PQ]
        if p:
            p = p[0]
            lines += ["", f"pyqueue's split: pyqueue.open() {p['open_s']:.3f} s, broker.scheduler() "
                      f"{p['scheduler_s']:.3f} s, run_pending() {p['run_pending_s']:.2f} s."]
        s = [r for r in rs if r["impl"] == AP_SQL]
        if s:
            lines += [f"The SQLAlchemy store was filled in bulk ({s[0]['fill_s']:.1f} s for {s[0]['n']:,} rows in "
                      "one transaction); its first pass reads only the due jobs and the next run time."]
        lines.append("")
    late = results.get("lateness")
    if late:
        r0 = late[0]
        lines += [f"### (d) fire lateness at {args.rate:,.0f} fires/s: {r0['schedules']:,} schedules every "
                  f"{args.every:g} s, phases spread evenly, {args.duration:g} s measured", "",
                  "ms from the due time to the message's record timestamp (pyqueue) or to the job "
                  f"function's start (APScheduler); fires not delivered within {args.margin:g} s after the "
                  "window count as inf; fires/s = fires that ran during the window / its length; CPU = "
                  "process CPU time over the window per fire that ran in it, and CPU time / wall time; "
                  "ratio = this row's p99 / pyqueue's (above 1: pyqueue is less late)", "",
                  "| implementation | delivered / due | " + " | ".join(f"p{p:g}" for p in PERCENTILES) +
                  " | max | fires/s | CPU us/fire | CPU share | ratio p99 |",
                  "|---|---:|" + "---:|" * (len(PERCENTILES) + 5)]
        for r in late:
            vals = " | ".join(fms(r[f"p{p:g}_ms"]) for p in PERCENTILES)
            lines.append(f"| {r['impl']} | {r['delivered']:,} / {r['expected']:,} | {vals} | {fms(r['max_ms'])} | "
                         f"{r['achieved_per_s']:,.0f} | {opt(r['cpu_us_per_fire'], '{:,.1f}')} | "
                         f"{r['cpu_share']:.2f} | {fr(r['ratio_p99'])} |")
        lines.append("")
    if goals:
        lines += ["### targets", "", "| goal | this run | met |", "|---|---:|---|"]
        lines += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |" for g in goals]
        lines.append("")
    for name, text in results.get("profiles", {}).items():
        lines += [f"### profile: {name}", "", "```", text.strip("\n"), "```", ""]
    return "\n".join(lines)


def machine() -> dict:
    versions = {}
    for mod in ("apscheduler", "sqlalchemy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            pass
    return _common.machine(pyqueue=pyqueue.__version__, **versions)


def command_line(argv: list) -> str:
    words = ["scheduler.py"]
    for i, a in enumerate(argv):
        words.append(os.path.basename(a) if i > 0 and argv[i - 1] in ("--json", "--dir") else a)
    return " ".join(words)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        out = CHILDREN[argv[1]](json.loads(argv[2]))
        print(json.dumps(out))
        sys.stdout.flush()
        os._exit(0)                  # no waiting for APScheduler's pool threads at exit
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000,
                        help="schedules for pyqueue's load, memory and restart, and for the APScheduler "
                             "memory store and the SQLAlchemy store's restart (default 1,000,000)")
    parser.add_argument("--ap-n", type=int, help="jobs added to the APScheduler memory store (default --n)")
    parser.add_argument("--sql-add-n", type=int, default=1000,
                        help="add_job() calls timed on the SQLAlchemy store (default 1,000: one commit each)")
    parser.add_argument("--per-call-n", type=int, default=20_000,
                        help="pyqueue add() calls timed one by one (default 20,000)")
    parser.add_argument("--traced-n", type=int, default=200_000,
                        help="at most this many schedules under tracemalloc (default 200,000)")
    parser.add_argument("--repeats", type=int, default=3, help="restart runs; the median is quoted (default 3)")
    parser.add_argument("--rate", type=float, default=10_000, help="fires per second in (d) (default 10,000)")
    parser.add_argument("--every", type=float, default=1.0, help="interval of the (d) schedules (default 1.0 s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of fires measured in (d) (default 5)")
    parser.add_argument("--lead", type=float, default=3.0,
                        help="seconds from set-up to the first fire in (d), for loading (default 3)")
    parser.add_argument("--margin", type=float, default=2.0,
                        help="seconds after the window a fire may still arrive (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help="n = 20,000, 200 SQL add_job calls, 2,000 add() calls, one restart, 2 s of fires")
    parser.add_argument("--only", nargs="+", choices=("load", "memory", "restart", "lateness"),
                        help="run these parts only")
    parser.add_argument("--no-apscheduler", action="store_true", help="pyqueue only")
    parser.add_argument("--no-sqlalchemy", action="store_true", help="skip APScheduler's SQLAlchemy store")
    parser.add_argument("--profile", action="store_true",
                        help="cProfile pyqueue's add_many and run_pending, tracemalloc's top lines of the load")
    parser.add_argument("--dir", help="parent of the temporary directories (default: the system's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.sql_add_n, args.per_call_n, args.repeats, args.duration = 20_000, 200, 2_000, 1, 2.0
    args.ap_n = args.ap_n or args.n
    if min(args.n, args.ap_n, args.sql_add_n, args.per_call_n, args.traced_n, args.repeats) < 1 or \
            min(args.rate, args.every, args.duration, args.lead) <= 0 or args.margin < 0:
        parser.error("counts must be positive; --rate, --every, --duration and --lead above 0")
    parts = args.only or ["load", "memory", "restart", "lateness"]
    ap, sql = (False, False) if args.no_apscheduler else have_apscheduler()
    sql = sql and not args.no_sqlalchemy

    started = datetime.datetime.now(UTC)
    load_before = os.getloadavg()
    results: dict = {}
    wd = Workdir(args.dir)
    try:
        if {"load", "memory", "restart"} & set(parts):
            part_load_memory_restart(args, wd, parts, ap, sql, results)
        if "lateness" in parts:
            results["lateness"] = part_lateness(args, wd, ap, sql)
    finally:
        wd.close()
    goals = targets(results, args)
    info = machine()
    info["load_average_before"] = load_before
    print(f"{started:%Y-%m-%d %H:%M} UTC; {info}")
    print()
    print(markdown(results, goals, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv), "date": started.isoformat(), "machine": info,
                       "args": {k: v for k, v in vars(args).items() if k not in ("json", "dir")},
                       "results": results, "targets": goals}, f, indent=2, default=str)


if __name__ == "__main__":
    main()
