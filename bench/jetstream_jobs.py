"""jetstream_jobs.py - jobs (and the scheduler's fires) on the JetStream backend beside the embedded engine.

The workload of bench/jobs.py, on both backends in one run:

  - submit: n no-op jobs submitted from one thread (workers stopped): submits/s.
  - throughput: then a worker (`jobs.work(concurrency=2)`: a supervisor and 2
    child processes) starts; each job returns the time it started, and the
    rate is (n - 1) / (last start - first start), so start-up is not counted.
  - latency: the worker is started and idle; one job at a time is submitted
    and waited for; latency = the job's own start time - its submit time.
  - fires (--fires, 0 to skip): n `at=` schedules, all due at once, added with
    add_many() to a fresh scheduler (on JetStream, a fresh namespace) before it
    starts; the rate is (n - 1) / (last fire's arrival - first's), the arrival
    taken by a consumer in this process as each message lands.

The backends: the embedded engine (a fresh temporary directory, fsync="interval",
the default) and JetStream (one 3-node cluster started here on loopback, unless
--url; replicas 3; a fresh namespace per measurement).  The measurements are
interleaved round robin over the backends, so a noisy moment hits both; the
figures are medians over --repeats, and the ratios are embedded / JetStream of
those medians.

    python bench/jetstream_jobs.py                 # n = 5,000 jobs, 200 latency samples, 3 repeats
    python bench/jetstream_jobs.py --quick         # n = 1,000, 50 samples, 1 repeat
    python bench/jetstream_jobs.py --json jetstream_jobs.json   (--jobs, --samples, --fires, --repeats, --url, --only)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import jobs as jobs_bench  # noqa: E402  (bench/jobs.py: percentiles, rate, stop, wait_until, ENV, WORKERS)
from _common import machine  # noqa: E402

import pyqueue  # noqa: E402  (the checkout's: bench/jobs.py put it first on sys.path)
from pyqueue.jetstream.localcluster import LocalCluster  # noqa: E402

percentiles, rate, stop, wait_until = (jobs_bench.percentiles, jobs_bench.rate, jobs_bench.stop,
                                       jobs_bench.wait_until)
_serial = iter(range(1, 1 << 30))


class Backend:
    """How to open a fresh broker of one backend, here and in a worker process."""

    def __init__(self, name: str, url: str | None) -> None:
        self.name, self.url = name, url

    def fresh(self) -> tuple[str, Callable[[], None]]:
        """An expression opening a fresh, empty broker, and how to remove it."""
        if self.url is None:
            d = tempfile.mkdtemp(prefix="bench-jobs-")
            return f"pyqueue.open({d!r})", lambda: shutil.rmtree(d, ignore_errors=True)
        ns = f"bj{os.getpid()}x{next(_serial)}"
        return f"pyqueue.connect({self.url!r}, namespace={ns!r})", lambda: None


def open_broker(expr: str) -> Any:
    return eval(expr, {"pyqueue": pyqueue})


def worker(expr: str) -> subprocess.Popen:
    code = f"import pyqueue; {expr}.jobs().work(concurrency={jobs_bench.WORKERS})"
    return subprocess.Popen([sys.executable, "-c", code], env=jobs_bench.ENV)


def wait_done(jobs: Any, ids: list[str], n: int) -> None:
    """Until n jobs succeeded: wait for the last one's result (a watch on
    JetStream, nothing polled meanwhile), then count now and then."""
    jobs.result(ids[-1], timeout=600)
    wait_until(lambda: jobs.counts().get("succeeded", 0) >= n or time.sleep(0.2), 600, "the jobs")


def throughput(backend: Backend, n: int) -> tuple[float, float]:
    """(submits/s from one thread, jobs/s of one worker of 2 processes)."""
    expr, remove = backend.fresh()
    try:
        with open_broker(expr) as b:
            jobs = b.jobs()
            jobs.define("stamp", target="jobs_tasks:stamp")
            jobs.submit("stamp")                          # warm up: topic, connection
            t0 = time.perf_counter()
            ids = [jobs.submit("stamp") for _ in range(n)]
            submit_rate = n / (time.perf_counter() - t0)
            w = worker(expr)
            try:
                wait_done(jobs, ids, n + 1)
            finally:
                stop(w)
            starts = [s.result for s in jobs.list(state="succeeded", limit=n + 1)]
            assert len(starts) == n + 1, (len(starts), n + 1)
            return submit_rate, rate(starts)
    finally:
        remove()


def latency(backend: Backend, samples: int) -> list[float]:
    expr, remove = backend.fresh()
    try:
        with open_broker(expr) as b:
            jobs = b.jobs()
            jobs.define("stamp", target="jobs_tasks:stamp")
            w = worker(expr)
            try:
                return jobs_bench.submit_to_start_ms(jobs, samples)
            finally:
                stop(w)
    finally:
        remove()


def fires(backend: Backend, n: int) -> float:
    """Fires/s of n schedules due at once (added before the scheduler starts)."""
    expr, remove = backend.fresh()
    try:
        with open_broker(expr) as b:
            topic = b.topic("fires")
            c = topic.consumer("bench", mode="queue")
            s = b.scheduler(capacity=max(10_000, n), misfire_grace=3600)
            at = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
            s.add_many([dict(id=f"s{i}", topic="fires", value=b"x", at=at) for i in range(n)])
            arrivals: list[float] = []
            s.start()
            try:
                deadline = time.monotonic() + 600
                while len(arrivals) < n:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{backend.name}: {len(arrivals)} of {n} fires arrived")
                    got = c.poll_batch(1000, timeout=1.0)
                    now = time.perf_counter()
                    for m in got:
                        m.ack()
                    arrivals.extend([now] * len(got))
            finally:
                s.stop()
                c.close()
            return rate(arrivals)
    finally:
        remove()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5_000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--fires", type=int, default=2_000, help="schedules due at once (0: skip)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--url", default=None, help="a JetStream cluster to use instead of starting one")
    ap.add_argument("--only", nargs="*", choices=["embedded", "jetstream"], default=None)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.quick:
        args.jobs, args.samples, args.fires, args.repeats = 1_000, 50, min(args.fires, 500), 1
    cluster = None
    url = args.url
    if url is None and (args.only is None or "jetstream" in args.only):
        cluster = LocalCluster(3).start()
        url = cluster.url
    backends = [Backend("embedded", None), Backend("jetstream", url)]
    if args.only:
        backends = [b for b in backends if b.name in args.only]
    runs: dict[str, dict[str, list]] = {b.name: {"submit": [], "jobs": [], "latency": [], "fires": []}
                                         for b in backends}
    try:
        for rep in range(args.repeats):
            for b in backends:
                sub, tp = throughput(b, args.jobs)
                runs[b.name]["submit"].append(sub)
                runs[b.name]["jobs"].append(tp)
                runs[b.name]["latency"].append(percentiles(latency(b, args.samples)))
                if args.fires:
                    runs[b.name]["fires"].append(fires(b, args.fires))
                print(f"repeat {rep + 1}/{args.repeats} {b.name}: {sub:,.0f} submits/s, {tp:,.0f} jobs/s"
                      + (f", {runs[b.name]['fires'][-1]:,.0f} fires/s" if args.fires else ""),
                      file=sys.stderr, flush=True)
    finally:
        if cluster is not None:
            cluster.stop()

    report: dict[str, Any] = {"machine": machine(), "args": vars(args), "backends": {}}
    print(f"\n{'backend':<11}{'submits/s':>11}{'jobs/s':>10}{'start p50 ms':>14}{'p99 ms':>9}"
          f"{'fires/s':>10}")
    for b in backends:
        r = runs[b.name]
        med = {"submits_per_s": statistics.median(r["submit"]), "jobs_per_s": statistics.median(r["jobs"]),
               "p50_ms": statistics.median(x["p50"] for x in r["latency"]),
               "p99_ms": statistics.median(x["p99"] for x in r["latency"]),
               "fires_per_s": statistics.median(r["fires"]) if r["fires"] else None}
        report["backends"][b.name] = {"median": med, "runs": r}
        fires_s = f"{med['fires_per_s']:>10,.0f}" if med["fires_per_s"] is not None else f"{'-':>10}"
        print(f"{b.name:<11}{med['submits_per_s']:>11,.0f}{med['jobs_per_s']:>10,.0f}{med['p50_ms']:>14.2f}"
              f"{med['p99_ms']:>9.2f}{fires_s}")
    if len(backends) == 2:
        e, j = (report["backends"][n]["median"] for n in ("embedded", "jetstream"))
        ratios = {"submits": e["submits_per_s"] / j["submits_per_s"], "jobs": e["jobs_per_s"] / j["jobs_per_s"],
                  "p50": j["p50_ms"] / e["p50_ms"], "p99": j["p99_ms"] / e["p99_ms"]}
        if e["fires_per_s"] and j["fires_per_s"]:
            ratios["fires"] = e["fires_per_s"] / j["fires_per_s"]
        report["embedded_over_jetstream"] = ratios
        print("\nembedded / JetStream: " + ", ".join(
            f"{k} {v:.1f}x" + (" (latency: JetStream / embedded)" if k == "p99" else "")
            for k, v in ratios.items()))
    report["machine"]["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
