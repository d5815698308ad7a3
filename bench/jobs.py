"""jobs.py - pyqueue jobs against huey (SqliteHuey) and RQ (Redis), side by side in one run.

Questions: how many no-op jobs per second do 2 worker processes complete,
and how long does a job wait between submit() and its start when the
workers are idle?

  - throughput: n no-op jobs are submitted first (workers stopped), then the
    workers start; each job returns the time it started, and the rate is
    (n - 1) / (last start - first start), so worker start-up is not counted.
  - latency: the workers are started and idle; one job at a time is
    submitted, its submit time taken just before the call, and waited for;
    latency = the job's own start time - its submit time (one clock: the
    machine's).  Percentiles over --samples jobs.

The systems, each in a fresh temporary directory (and a fresh Redis):
  - pyqueue: `jobs.work(concurrency=2)` in one process: a supervisor and 2
    child processes; broker fsync="interval" (the default: job states
    survive a process crash, an OS crash loses the last 50 ms) and
    fsync="always" (states and messages on disk before they count; each
    worker batch is one fsync'd transaction).
  - huey: SqliteHuey with its defaults (SQLite synchronous=FULL: a WAL fsync
    per commit, the durability of fsync="always") and SqliteHuey(fsync=False)
    (synchronous=OFF: less durable than pyqueue's default); `huey_consumer
    -w 2 -k process -m 0.1` (2 worker processes; at most 0.1 s between polls
    of an idle queue instead of the default 10 s).
  - RQ on Redis (redis-server on 127.0.0.1, no persistence): 2 `rq worker`
    processes with the default Worker (a fork per job) and, separately,
    with SimpleWorker (no fork).  Skipped when redis-server is absent.

Every figure is the median of --repeats runs.  Commands:

    python bench/jobs.py                       # n = 20,000 (RQ: 2,000), 300 latency samples, 3 runs
    python bench/jobs.py --quick               # n = 5,000 (RQ: 500), 100 samples, 1 run
    python bench/jobs.py --json jobs.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import _common  # bench/_common.py: the machine's description

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)          # the checkout's pyqueue (an in-place build) is what gets measured
sys.path.insert(0, HERE)
import pyqueue  # noqa: E402

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
WORKERS = 2


def percentiles(xs: list[float]) -> dict[str, float]:
    xs = sorted(xs)

    def q(p: float) -> float:
        return xs[min(len(xs) - 1, int(p * len(xs)))]
    return {"p50": q(0.50), "p90": q(0.90), "p99": q(0.99), "max": xs[-1], "n": len(xs)}


def rate(starts: list[float]) -> float:
    return (len(starts) - 1) / (max(starts) - min(starts))


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


# -- pyqueue --

def pyqueue_worker(path: str, fsync: str) -> subprocess.Popen:
    code = f"import pyqueue; pyqueue.open({path!r}, fsync={fsync!r}).jobs().work(concurrency={WORKERS})"
    return subprocess.Popen([sys.executable, "-c", code], env=ENV)


def pyqueue_throughput(n: int, fsync: str) -> float:
    d = tempfile.mkdtemp(prefix="bench-pyqueue-")
    try:
        with pyqueue.open(d, fsync=fsync) as b:
            jobs = b.jobs()
            jobs.define("stamp", target="jobs_tasks:stamp")
            ids = [jobs.submit("stamp") for _ in range(n)]
            w = pyqueue_worker(d, fsync)
            try:
                wait_until(lambda: jobs.counts().get("succeeded", 0) >= n, 600, "pyqueue jobs")
            finally:
                stop(w)
            starts = [s.result for s in jobs.list(state="succeeded", limit=n)]
            assert len(starts) == n and len(ids) == n
            return rate(starts)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def submit_to_start_ms(jobs: "pyqueue.jobs.Jobs", samples: int) -> list[float]:
    """Milliseconds from submit() to the start of a running worker's
    "stamp" job, one job at a time, after 20 to warm up."""
    for _ in range(20):                        # warm up: workers started, targets imported
        jobs.result(jobs.submit("stamp"), timeout=60)
    out = []
    for _ in range(samples):
        t = time.time()
        started = jobs.result(jobs.submit("stamp"), timeout=60)
        out.append((started - t) * 1e3)
    return out


def pyqueue_latency(samples: int, fsync: str) -> list[float]:
    d = tempfile.mkdtemp(prefix="bench-pyqueue-")
    try:
        with pyqueue.open(d, fsync=fsync) as b:
            jobs = b.jobs()
            jobs.define("stamp", target="jobs_tasks:stamp")
            w = pyqueue_worker(d, fsync)
            try:
                return submit_to_start_ms(jobs, samples)
            finally:
                stop(w)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- huey --

def huey_env(d: str, fsync: str) -> dict[str, str]:
    return dict(ENV, BENCH_HUEY_DB=os.path.join(d, "huey.db"), BENCH_HUEY_FSYNC=fsync)


def huey_consumer(env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "huey.bin.huey_consumer", "jobs_tasks.huey", "-w", str(WORKERS),
                             "-k", "process", "-m", "0.1", "-q"], env=env, stderr=subprocess.DEVNULL)


def huey_module(env: dict[str, str]):
    os.environ["BENCH_HUEY_DB"] = env["BENCH_HUEY_DB"]
    os.environ["BENCH_HUEY_FSYNC"] = env["BENCH_HUEY_FSYNC"]
    import importlib
    import jobs_tasks
    return importlib.reload(jobs_tasks)


def huey_throughput(n: int, fsync: str) -> float:
    d = tempfile.mkdtemp(prefix="bench-huey-")
    try:
        env = huey_env(d, fsync)
        mod = huey_module(env)
        results = [mod.huey_stamp() for _ in range(n)]
        w = huey_consumer(env)
        try:
            wait_until(lambda: mod.huey.storage.result_store_size() >= n, 3600, "huey jobs")
        finally:
            stop(w)
        starts = [r.get(preserve=True) for r in results]
        return rate(starts)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def huey_latency(samples: int, fsync: str) -> list[float]:
    d = tempfile.mkdtemp(prefix="bench-huey-")
    try:
        env = huey_env(d, fsync)
        mod = huey_module(env)
        w = huey_consumer(env)
        try:
            for _ in range(3):
                mod.huey_stamp().get(blocking=True, timeout=60)
            out = []
            for _ in range(samples):
                t = time.time()
                r = mod.huey_stamp()
                started = r.get(blocking=True, timeout=60, backoff=1.0, max_delay=0.001)
                out.append((started - t) * 1e3)
            return out
        finally:
            stop(w)
    finally:
        shutil.rmtree(d, ignore_errors=True)


# -- RQ --

class Redis:
    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.proc = subprocess.Popen(["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                                      "--appendonly", "no", "--dir", self.dir], stdout=subprocess.DEVNULL)
        import redis
        self.client = redis.Redis(port=self.port)
        wait_until(self._up, 30, "redis-server")
        self.url = f"redis://127.0.0.1:{self.port}"

    def _up(self) -> bool:
        try:
            return bool(self.client.ping())
        except Exception:
            return False

    def close(self) -> None:
        self.client.close()
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def rq_workers(url: str, worker_class: str, burst: bool) -> list[subprocess.Popen]:
    args = ["rq", "worker", "-u", url, "-w", worker_class, "-q", "bench"] + (["--burst"] if burst else [])
    rq = shutil.which("rq") or os.path.join(os.path.dirname(sys.executable), "rq")
    return [subprocess.Popen([rq] + args[1:], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(WORKERS)]


def rq_throughput(n: int, worker_class: str) -> float:
    from rq import Queue
    from rq.job import Job
    import jobs_tasks
    r = Redis()
    try:
        q = Queue("bench", connection=r.client)
        ids = [q.enqueue(jobs_tasks.stamp, result_ttl=3600).id for _ in range(n)]
        ws = rq_workers(r.url, worker_class, burst=True)
        for w in ws:
            w.wait()
        starts = [j.return_value() for j in Job.fetch_many(ids, connection=r.client)]
        assert all(s is not None for s in starts), "some RQ jobs did not run"
        return rate(starts)
    finally:
        r.close()


def rq_latency(samples: int, worker_class: str) -> list[float]:
    from rq import Queue
    import jobs_tasks
    r = Redis()
    ws = rq_workers(r.url, worker_class, burst=False)
    try:
        q = Queue("bench", connection=r.client)

        def run_one() -> float:
            t = time.time()
            job = q.enqueue(jobs_tasks.stamp)
            while True:
                v = job.return_value(refresh=True)
                if v is not None:
                    return (v - t) * 1e3
                time.sleep(0.0005)
        for _ in range(3):
            run_one()
        return [run_one() for _ in range(samples)]
    finally:
        for w in ws:
            stop(w)
        r.close()


# -- main --

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=20_000)
    ap.add_argument("--rq-jobs", type=int, default=2_000)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--slow-samples", type=int, default=100, help="latency samples of huey and RQ")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.rq_jobs, args.samples, args.slow_samples, args.repeats = 5_000, 500, 100, 30, 1
    have_redis = shutil.which("redis-server") is not None
    if not have_redis:
        print("redis-server not found: RQ is skipped", file=sys.stderr)
    systems = []
    for label, fsync in (("pyqueue", "interval"), ("pyqueue fsync=always", "always")):
        systems.append((label, lambda f=fsync: pyqueue_throughput(args.jobs, f),
                        lambda f=fsync: pyqueue_latency(args.samples, f)))
    for label, fsync in (("huey SqliteHuey (defaults)", "default"), ("huey SqliteHuey(fsync=False)", "off")):
        systems.append((label, lambda f=fsync: huey_throughput(args.jobs, f),
                        lambda f=fsync: huey_latency(args.slow_samples, f)))
    if have_redis:
        for label, cls in (("RQ Worker (fork per job)", "rq.worker.Worker"),
                           ("RQ SimpleWorker", "rq.worker.SimpleWorker")):
            systems.append((label, lambda c=cls: rq_throughput(args.rq_jobs, c),
                            lambda c=cls: rq_latency(args.slow_samples, c)))
    report = {"machine": _common.machine(), "when": datetime.datetime.now(datetime.timezone.utc).isoformat(),
              "args": vars(args), "versions": versions(), "systems": {}}
    for name, tp, lat in systems:
        rates, lats = [], []
        for _ in range(args.repeats):
            rates.append(tp())
            lats.append(percentiles(lat()))
        med = {k: statistics.median(x[k] for x in lats) for k in ("p50", "p90", "p99", "max")}
        report["systems"][name] = {"jobs_per_s": statistics.median(rates), "rates": rates, "latency_ms": med,
                                   "latency_runs": lats}
        print(f"{name:28s} {statistics.median(rates):10,.0f} jobs/s   submit-to-start ms: "
              f"p50 {med['p50']:.3f}  p90 {med['p90']:.3f}  p99 {med['p99']:.3f}  max {med['max']:.3f}", flush=True)
    for mine in ("pyqueue", "pyqueue fsync=always"):
        base = report["systems"][mine]["jobs_per_s"]
        for name, r in report["systems"].items():
            if not name.startswith("pyqueue"):
                print(f"{mine} / {name}: {base / r['jobs_per_s']:.1f}x throughput")
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for pkg in ("huey", "rq", "redis", "msgspec"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "absent"
    try:
        out["redis-server"] = subprocess.run(["redis-server", "--version"], capture_output=True,
                                             text=True).stdout.split()[2]
    except (OSError, IndexError):
        out["redis-server"] = "absent"
    return out


if __name__ == "__main__":
    main()
