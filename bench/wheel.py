"""wheel.py - timers: pyqueue.TimerWheel against heapq, sched and asyncio, side by side.

Questions, every one through the Python API:
  (a) throughput: how many timers per second can be added, cancelled and
      expired?  n timers with seeded delays uniform over 0..--horizon seconds
      (60 s: levels 0 and 1 of the wheel), all pending at once.
        add      n adds, the handles kept in a list (a timer that cannot be
                 cancelled is of little use to a lease or a retry);
        cancel   the n handles cancelled in a seeded random order;
        add + cancel   2n / (add time + cancel time): each call is one op;
        expire   the n timers fired by advancing a fake clock to the horizon,
                 each expired timer's callback called once (a no-op C
                 callable), so that every implementation does the same work
                 per timer.  TimerWheel and heapq are polled: expire(t) for
                 every 1 ms tick t up to the horizon; sched runs run() and
                 asyncio runs its loop, both with a clock that jumps straight
                 to the next deadline instead of sleeping (their own loops,
                 no empty ticks).
  (b) memory per pending timer: n pending (1,000,000; also 10,000,000 with
      --full), each measured in a fresh child process.  RSS growth counts
      everything (for TimerWheel the C node array too); tracemalloc (1,000,000
      only) counts Python objects only, so for TimerWheel it leaves out the
      C node array, which is what the RSS column adds.  Payloads are one
      shared object, so only the timer machinery is counted.
  (c) expiry lateness in real time: ~100,000 timers spread over 3 s, one
      loop firing them as they come due: TimerWheel at a 1 ms tick (sleep to
      next_deadline(), then expire()), heapq (sleep to the head's time, pop
      what is due), sched.run() and an asyncio loop (call_at).  Lateness =
      the monotonic time at which the timer was handed to the application
      minus its requested time.  TimerWheel rounds a deadline up to the next
      1 ms tick (it never fires early), so up to 1 ms of its lateness is the
      tick itself; the others fire at the exact time plus the sleep's overshoot.
      The polled loops also report how late the OS woke them (overshoot) and
      their longest expire() call; sched.run() calls time.sleep(0) after
      every event, which is what its figures show.

Peers:
  - heapq with lazy-deletion cancel (the heapq documentation's idiom): the
    entry [when, seq, item] is the handle; cancel marks it removed; expiry
    pops and skips removed entries.  A small class, so that each add, cancel
    and expire is one method call, as for TimerWheel.
  - sched.scheduler: enter() and cancel().  cancel() is O(n) (list.remove +
    heapify), so its rate is measured on as many cancels as fit in
    SCHED_CANCEL_SECONDS out of the n pending, and its add + cancel uses that
    rate.
  - asyncio: loop.call_at(loop.time() + delay, cb) and TimerHandle.cancel()
    on a loop that is not running (scheduling cost only; cancelled handles
    are dropped lazily when the loop runs).  Expiry runs the loop on a fake
    clock (a selector whose select() advances the clock by its timeout).

The cyclic garbage collector stays on, as in an application: the containers
that heapq, sched and asyncio allocate per timer are tracked by it; the
wheel's handles are ints.  Throughput is timed in the thread's CPU time
(time.thread_time: page faults and garbage collection count, time lost to
other processes on a shared machine does not); the ratio of wall time to CPU
time over the section is printed with it.  The machine may be shared and
noisy: every figure is the median of --repeats runs (lateness: the runs of
the four taken in turns, so that noise falls on all alike; max is the worst
run's).  Lateness depends on the OS waking the loop on time: on a busy
machine the overshoot column, not the timer structure, sets its tail.

    python bench/wheel.py                    # n = 1,000,000, 3 runs, memory at 1,000,000
    python bench/wheel.py --quick            # n = 100,000, one run, 20,000 timers over 1 s for lateness
    python bench/wheel.py --full             # also memory at 10,000,000 pending (needs ~8 GiB free)
    python bench/wheel.py --json wheel.json --only throughput memory lateness
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import heapq
import itertools
import json
import os
import random
import resource
import sched
import statistics
import subprocess
import sys
import time
import tracemalloc
import _common  # bench/_common.py: the machine's description

# The checkout this script lives in comes first, so that an in-place build
# (python setup.py build_ext --inplace) is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

SEED = 20261130
TICK = 0.001
FAKE_START = 1000.0            # the fake clocks start here (seconds)
SCHED_CANCEL_SECONDS = 2.0     # time budget for sched.cancel (O(n) per call)
LATENESS_LEAD = 0.5            # seconds between the end of the adds and the first due time
PERCENTILES = (50, 99, 99.9)
MEMORY_SIZES = (1_000_000,)
FULL_MEMORY_SIZES = (1_000_000, 10_000_000)
TRACEMALLOC_MAX = 1_000_000    # tracemalloc's own bookkeeping makes larger runs costly

cpu_clock = time.thread_time    # throughput is timed in this thread's CPU time (see the docstring)

PQ = "pyqueue.TimerWheel"
HEAPQ = "heapq + lazy-deletion cancel"
SCHED = "sched.scheduler"
ASYNCIO = "asyncio loop.call_at"
IMPLS = (PQ, HEAPQ, SCHED, ASYNCIO)


# ---- peers ----

class HeapTimers:
    """heapq timers with lazy deletion: the entry is the handle, cancel marks it."""

    REMOVED = object()

    def __init__(self, clock=time.monotonic) -> None:
        self.heap: list[list] = []
        self.seq = itertools.count()
        self.clock = clock

    def add(self, delay: float, item: object = None) -> list:
        entry = [self.clock() + delay, next(self.seq), item]
        heapq.heappush(self.heap, entry)
        return entry

    def add_at(self, when: float, item: object = None) -> list:
        entry = [when, next(self.seq), item]
        heapq.heappush(self.heap, entry)
        return entry

    def cancel(self, entry: list) -> bool:
        if entry[2] is self.REMOVED:
            return False
        entry[2] = self.REMOVED
        return True

    def expire(self, now: "float | None" = None) -> list:
        if now is None:
            now = self.clock()
        heap, out, removed = self.heap, [], self.REMOVED
        while heap and heap[0][0] <= now:
            item = heapq.heappop(heap)[2]
            if item is not removed:
                out.append(item)
        return out

    def next_deadline(self) -> "float | None":
        heap = self.heap
        while heap and heap[0][2] is self.REMOVED:
            heapq.heappop(heap)
        return heap[0][0] if heap else None


class FakeClock:
    def __init__(self, start: float = FAKE_START) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop whose clock jumps: select(timeout) advances time by the
    timeout and polls without waiting."""

    def __init__(self, start: float = FAKE_START) -> None:
        super().__init__()
        self.fake_now = start
        real_select = self._selector.select

        def select(timeout=None):
            if timeout is not None and timeout > 0:
                self.fake_now += timeout
            return real_select(0)

        self._selector.select = select

    def time(self) -> float:
        return self.fake_now


# ---- (a) throughput ----

def seeded_delays(n: int, horizon: float) -> list[float]:
    rng = random.Random(SEED)
    return [rng.random() * horizon for _ in range(n)]


def shuffled(handles: list, seed: int) -> list:
    out = list(handles)
    random.Random(seed).shuffle(out)
    return out


def run_add_cancel(impl: str, delays: list[float], seed: int) -> dict:
    """Seconds for n adds and for n cancels (sched: a timed sample of cancels)."""
    n = len(delays)
    gc.collect()
    loop = None
    if impl == PQ:
        w = pyqueue.TimerWheel(tick=TICK)
        add = w.add
        t0 = cpu_clock()
        handles = [add(d, None) for d in delays]
        t_add = cpu_clock() - t0
        order = shuffled(handles, seed)
        cancel = w.cancel
        t0 = cpu_clock()
        for h in order:
            cancel(h)
        t_cancel = cpu_clock() - t0
        cancelled, left = n, len(w)
    elif impl == HEAPQ:
        w = HeapTimers()
        add = w.add
        t0 = cpu_clock()
        handles = [add(d, None) for d in delays]
        t_add = cpu_clock() - t0
        order = shuffled(handles, seed)
        cancel = w.cancel
        t0 = cpu_clock()
        for h in order:
            cancel(h)
        t_cancel = cpu_clock() - t0
        cancelled, left = n, sum(e[2] is not HeapTimers.REMOVED for e in w.heap)
    elif impl == SCHED:
        s = sched.scheduler()
        enter, action = s.enter, noop
        t0 = cpu_clock()
        handles = [enter(d, 0, action) for d in delays]
        t_add = cpu_clock() - t0
        order = shuffled(handles, seed)
        cancel = s.cancel
        cancelled = 0
        t0 = cpu_clock()
        budget_end = time.perf_counter() + SCHED_CANCEL_SECONDS
        for h in order:
            cancel(h)
            cancelled += 1
            if cancelled >= 3 and time.perf_counter() >= budget_end:
                break
        t_cancel = cpu_clock() - t0
        left = len(s.queue) - (n - cancelled)
    elif impl == ASYNCIO:
        loop = asyncio.new_event_loop()
        call_at, now, cb = loop.call_at, loop.time, noop
        t0 = cpu_clock()
        handles = [call_at(now() + d, cb) for d in delays]
        t_add = cpu_clock() - t0
        order = shuffled(handles, seed)
        t0 = cpu_clock()
        for h in order:
            h.cancel()
        t_cancel = cpu_clock() - t0
        cancelled, left = n, sum(not h.cancelled() for h in loop._scheduled)
    else:
        raise ValueError(impl)
    if left:
        raise RuntimeError(f"{impl}: {left} timers still pending after cancelling")
    del handles, order
    if loop is not None:
        loop.close()
    return {"t_add": t_add, "t_cancel": t_cancel, "cancelled": cancelled}


def noop() -> None:
    pass


def run_expire(impl: str, delays: list[float], horizon: float) -> dict:
    """Seconds to fire n pending timers by advancing a fake clock to the horizon."""
    n = len(delays)
    gc.collect()
    fired = itertools.count()
    cb = fired.__next__              # the callback: a C callable counting its calls
    clock = FakeClock()
    ticks = int(horizon / TICK) + 2
    if impl in (PQ, HEAPQ):
        w = pyqueue.TimerWheel(tick=TICK, clock=clock.time) if impl == PQ else HeapTimers(clock.time)
        add = w.add
        for d in delays:
            add(d, cb)
        expire = w.expire
        t0 = cpu_clock()
        for k in range(1, ticks + 1):
            for f in expire(FAKE_START + k * TICK):
                f()
        t = cpu_clock() - t0
    elif impl == SCHED:
        s = sched.scheduler(timefunc=clock.time, delayfunc=clock.sleep)
        enter = s.enter
        for d in delays:
            enter(d, 0, cb)
        t0 = cpu_clock()
        s.run()
        t = cpu_clock() - t0
    elif impl == ASYNCIO:
        loop = FakeTimeLoop()
        call_at, start = loop.call_at, loop.time()
        for d in delays:
            call_at(start + d, cb)
        loop.call_at(start + horizon + 1.0, loop.stop)
        t0 = cpu_clock()
        loop.run_forever()
        t = cpu_clock() - t0
        loop.close()
    else:
        raise ValueError(impl)
    got = next(fired)
    if got != n:
        raise RuntimeError(f"{impl}: {got} of {n} timers fired")
    return {"t_expire": t}


def throughput(args) -> list[dict]:
    delays = seeded_delays(args.n, args.horizon)
    rows = []
    wall0, cpu0 = time.perf_counter(), cpu_clock()
    for impl in IMPLS:
        runs = [run_add_cancel(impl, delays, SEED + r) for r in range(args.repeats)]
        exp = [run_expire(impl, delays, args.horizon) for _ in range(args.repeats)]
        t_add = statistics.median(r["t_add"] for r in runs)
        cancel_rate = statistics.median(r["cancelled"] / r["t_cancel"] for r in runs)
        t_cancel = args.n / cancel_rate         # sched: extrapolated from its sample
        t_exp = statistics.median(r["t_expire"] for r in exp)
        rows.append({
            "impl": impl, "n": args.n,
            "add_per_s": args.n / t_add,
            "cancel_per_s": cancel_rate,
            "cancel_sample": min(r["cancelled"] for r in runs),
            "add_cancel_ops_per_s": 2 * args.n / (t_add + t_cancel),
            "add_cancel_pairs_per_s": args.n / (t_add + t_cancel),
            "expire_per_s": args.n / t_exp,
        })
        print(f"  throughput: {impl} done", file=sys.stderr)
    wall_over_cpu = (time.perf_counter() - wall0) / (cpu_clock() - cpu0)
    base = rows[0]
    for r in rows:
        r["wall_over_cpu"] = wall_over_cpu
        for k in ("add_per_s", "cancel_per_s", "add_cancel_ops_per_s", "expire_per_s"):
            r[k.replace("_per_s", "_ratio")] = base[k] / r[k]
    return rows


# ---- (b) memory ----

def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def memory_child(impl: str, n: int, horizon: float, keep: bool, traced: bool) -> dict:
    """In a fresh process: n pending timers; RSS growth or tracemalloc's count."""
    rng = random.Random(SEED)
    rand = rng.random
    cb = noop
    gc.collect()
    if traced:
        tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    handles = [None] * n if keep else None
    if impl == PQ:
        w = pyqueue.TimerWheel(tick=TICK)
        add = w.add
        if keep:
            for i in range(n):
                handles[i] = add(rand() * horizon, cb)
        else:
            for i in range(n):
                add(rand() * horizon, cb)
        pending = len(w)
    elif impl == HEAPQ:
        w = HeapTimers()
        add = w.add
        for i in range(n):
            handles[i] = add(rand() * horizon, cb)
        pending = len(w.heap)
    elif impl == SCHED:
        w = sched.scheduler()
        enter = w.enter
        for i in range(n):
            handles[i] = enter(rand() * horizon, 0, cb)
        pending = len(w._queue)
    elif impl == ASYNCIO:
        w = asyncio.new_event_loop()
        call_at, now = w.call_at, w.time
        for i in range(n):
            handles[i] = call_at(now() + rand() * horizon, cb)
        pending = len(w._scheduled)
    else:
        raise ValueError(impl)
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if traced else rss_bytes()
    if pending != n:
        raise RuntimeError(f"{impl}: {pending} of {n} pending")
    return {"bytes": after - before}


def run_child(impl: str, n: int, horizon: float, keep: bool, traced: bool) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", impl, str(n), str(horizon),
           "1" if keep else "0", "1" if traced else "0"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"memory child {impl} n={n} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def mem_available() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def memory(args) -> list[dict]:
    rows = []
    cases = [(PQ, True), (PQ, False), (HEAPQ, True), (SCHED, True), (ASYNCIO, True)]
    for n in (FULL_MEMORY_SIZES if args.full else MEMORY_SIZES if not args.quick else (args.n,)):
        for impl, keep in cases:
            # ~400 B per timer is the most any of them needs; leave half the machine free
            if 400 * n > mem_available() // 2:
                print(f"  memory: skipping {impl} at n={n:,}: not enough free memory", file=sys.stderr)
                continue
            rss = run_child(impl, n, args.horizon, keep, False)["bytes"]
            traced = run_child(impl, n, args.horizon, keep, True)["bytes"] if n <= TRACEMALLOC_MAX else None
            rows.append({"impl": impl, "handles_kept": keep, "n": n,
                         "rss_bytes_per_timer": rss / n,
                         "traced_bytes_per_timer": None if traced is None else traced / n})
            print(f"  memory: {impl} n={n:,} done", file=sys.stderr)
    for r in rows:
        base = [b for b in rows if b["impl"] == PQ and b["handles_kept"] and b["n"] == r["n"]]
        r["ratio"] = r["rss_bytes_per_timer"] / base[0]["rss_bytes_per_timer"] if base else None
    return rows


# ---- (c) lateness ----

def due_times(n: int, spread: float, start: float) -> list[float]:
    rng = random.Random(SEED + 1)
    return [start + rng.random() * spread for _ in range(n)]


def lateness_polled(impl: str, n: int, spread: float) -> tuple[list[float], dict]:
    """TimerWheel or heapq: one loop sleeping to the next deadline, then expiring.
    Also the wake-up overshoot (woken after the deadline slept to) and the
    longest expire() call."""
    w = pyqueue.TimerWheel(tick=TICK) if impl == PQ else HeapTimers()
    due = due_times(n, spread, time.monotonic() + LATENESS_LEAD)
    for d in due:
        w.add_at(d, d)
    lat: list[float] = []
    overshoot: list[float] = []
    longest = 0.0
    mono, sleep, expire, next_deadline = time.monotonic, time.sleep, w.expire, w.next_deadline
    while len(lat) < n:
        nd = next_deadline()
        now = mono()
        if nd is not None and nd > now:
            sleep(nd - now)
            now = mono()
            overshoot.append(now - nd)
        items = expire()
        t = mono()
        longest = max(longest, t - now)
        lat.extend([t - d for d in items])
    overshoot.sort()
    return lat, {"wakeups": len(overshoot), "overshoot_p99_ms": percentile(overshoot, 99) * 1e3,
                 "longest_expire_ms": longest * 1e3}


def lateness_sched(n: int, spread: float) -> tuple[list[float], dict]:
    s = sched.scheduler(time.monotonic, time.sleep)
    lat: list[float] = []
    mono = time.monotonic

    def record(d: float) -> None:
        lat.append(mono() - d)

    for d in due_times(n, spread, time.monotonic() + LATENESS_LEAD):
        s.enterabs(d, 0, record, (d,))
    s.run()
    return lat, {}


def lateness_asyncio(n: int, spread: float) -> tuple[list[float], dict]:
    loop = asyncio.new_event_loop()
    lat: list[float] = []
    mono = time.monotonic          # what loop.time() returns on Linux

    def record(d: float) -> None:
        lat.append(mono() - d)
        if len(lat) == n:
            loop.stop()

    for d in due_times(n, spread, loop.time() + LATENESS_LEAD):
        loop.call_at(d, record, d)
    loop.run_forever()
    loop.close()
    return lat, {}


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def lateness_once(impl: str, args) -> dict:
    gc.collect()
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    w0 = time.monotonic()
    if impl in (PQ, HEAPQ):
        lat, diag = lateness_polled(impl, args.late_n, args.late_spread)
    elif impl == SCHED:
        lat, diag = lateness_sched(args.late_n, args.late_spread)
    else:
        lat, diag = lateness_asyncio(args.late_n, args.late_spread)
    wall = time.monotonic() - w0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    if len(lat) != args.late_n:
        raise RuntimeError(f"{impl}: {len(lat)} of {args.late_n} timers fired")
    lat.sort()
    row = {"early": sum(x < 0 for x in lat), "max_ms": lat[-1] * 1e3,
           "involuntary_switches": r1.ru_nivcsw - r0.ru_nivcsw,
           "cpu_share": ((r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)) / wall, **diag}
    for p in PERCENTILES:
        row[f"p{p:g}_ms"] = percentile(lat, p) * 1e3
    return row


def lateness(args) -> list[dict]:
    """--repeats runs per implementation, taken in turns so that the machine's
    noise falls on all of them alike; the median run's figures per column,
    the worst run's max."""
    runs: dict[str, list[dict]] = {impl: [] for impl in IMPLS}
    for r in range(args.repeats):
        for impl in IMPLS:
            runs[impl].append(lateness_once(impl, args))
            print(f"  lateness: {impl} run {r + 1} done", file=sys.stderr)
    rows = []
    for impl in IMPLS:
        row = {"impl": impl, "n": args.late_n, "spread_s": args.late_spread, "runs": runs[impl]}
        for k, v in runs[impl][0].items():
            if k == "max_ms":
                row[k] = max(x[k] for x in runs[impl])
            else:
                row[k] = statistics.median(x[k] for x in runs[impl])
        rows.append(row)
    return rows


# ---- report ----

def targets(results: dict) -> list[dict]:
    out = []
    thr = [r for r in results.get("throughput", []) if r["impl"] == PQ]
    if thr:
        v = thr[0]["add_cancel_ops_per_s"]
        out.append({"goal": "add + cancel >= 2,000,000 ops/s through the Python API",
                    "measured": f"{v:,.0f} ops/s ({thr[0]['add_cancel_pairs_per_s']:,.0f} pairs/s)",
                    "met": v >= 2e6})
    for r in results.get("memory", []):
        if r["impl"] == PQ:
            kept = "handles kept" if r["handles_kept"] else "handles not kept"
            out.append({"goal": f"{r['n']:,} pending timers in <= 64 B each (RSS, Python API, {kept})",
                        "measured": f"{r['rss_bytes_per_timer']:.1f} B", "met": r["rss_bytes_per_timer"] <= 64})
    late = [r for r in results.get("lateness", []) if r["impl"] == PQ]
    if late:
        out.append({"goal": "expiry lateness p99 <= 2 ms at a 1 ms tick",
                    "measured": f"{late[0]['p99_ms']:.3f} ms (max {late[0]['max_ms']:.2f} ms)",
                    "met": late[0]["p99_ms"] <= 2.0})
    return out


def fmt_ratio(x: "float | None") -> str:
    return "" if x is None else f"{x:,.2f}x"


def markdown(results: dict, goals: list[dict], args) -> str:
    lines = []
    thr = results.get("throughput")
    if thr:
        lines += [f"### (a) throughput, n = {args.n:,} pending, delays uniform over 0..{args.horizon:g} s",
                  "",
                  "timers per second of CPU time (median of runs; wall time / CPU time over the section: "
                  f"{thr[0]['wall_over_cpu']:.2f}); add + cancel counts each call as one op; "
                  "ratio = pyqueue.TimerWheel / this row (above 1: TimerWheel is faster)",
                  "",
                  "| implementation | add/s | cancel/s | add + cancel ops/s | expire/s | ratio add | "
                  "ratio cancel | ratio add + cancel | ratio expire |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in thr:
            note = f" ({r['cancel_sample']:,} cancels sampled)" if r["impl"] == SCHED else ""
            lines.append(f"| {r['impl']}{note} | {r['add_per_s']:,.0f} | {r['cancel_per_s']:,.0f} | "
                         f"{r['add_cancel_ops_per_s']:,.0f} | {r['expire_per_s']:,.0f} | "
                         f"{fmt_ratio(r['add_ratio'])} | {fmt_ratio(r['cancel_ratio'])} | "
                         f"{fmt_ratio(r['add_cancel_ops_ratio'])} | {fmt_ratio(r['expire_ratio'])} |")
        lines += ["", "expire: TimerWheel and heapq polled at every 1 ms tick of a fake clock; sched.run() "
                  "and the asyncio loop on a clock that jumps to the next deadline; one no-op callback "
                  "call per timer for all.", ""]
    mem = results.get("memory")
    if mem:
        lines += ["### (b) memory per pending timer", "",
                  "bytes per timer; RSS = resident set growth of a fresh process (everything, C included); "
                  "tracemalloc = Python objects only (for TimerWheel: the item list and the handles, "
                  "not the C node array); ratio = this row's RSS / TimerWheel's (handles kept)",
                  "",
                  "| implementation | pending | handles kept | RSS B/timer | tracemalloc B/timer | ratio |",
                  "|---|---:|---|---:|---:|---:|"]
        for r in mem:
            tm = "" if r["traced_bytes_per_timer"] is None else f"{r['traced_bytes_per_timer']:,.1f}"
            lines.append(f"| {r['impl']} | {r['n']:,} | {'yes' if r['handles_kept'] else 'no'} | "
                         f"{r['rss_bytes_per_timer']:,.1f} | {tm} | {fmt_ratio(r['ratio'])} |")
        lines.append("")
    late = results.get("lateness")
    if late:
        r0 = late[0]
        lines += [f"### (c) expiry lateness, {r0['n']:,} timers due uniformly over {r0['spread_s']:g} s, "
                  f"real time, median of {args.repeats} runs", "",
                  "ms after the requested time at which the timer reached the application (max: the worst "
                  "run); TimerWheel at a 1 ms tick rounds up to the next tick (never early); early = timers "
                  "handed out before their time; wake-ups and overshoot (how long after the deadline it slept "
                  "to the loop was running again: the OS's share) and the longest expire() call are for the "
                  "two polled loops; preempted = involuntary context switches; CPU = process CPU time / wall "
                  "time; ratio = this row's p99 / TimerWheel's p99 (above 1: TimerWheel is less late)", "",
                  "| implementation | " + " | ".join(f"p{p:g}" for p in PERCENTILES) +
                  " | max | early | wake-ups | overshoot p99 | longest expire() | preempted | CPU | ratio p99 |",
                  "|---|" + "---:|" * (len(PERCENTILES) + 8)]
        for r in late:
            vals = " | ".join(f"{r[f'p{p:g}_ms']:.3f}" for p in PERCENTILES)
            polled = (f"{r['wakeups']:,.0f} | {r['overshoot_p99_ms']:.3f} | {r['longest_expire_ms']:.3f}"
                      if "wakeups" in r else " | | ")
            lines.append(f"| {r['impl']} | {vals} | {r['max_ms']:.3f} | {r['early']:,.0f} | {polled} | "
                         f"{r['involuntary_switches']:,.0f} | {r['cpu_share']:.2f} | "
                         f"{fmt_ratio(r['p99_ms'] / r0['p99_ms'] if r0['p99_ms'] > 0 else None)} |")
        lines.append("")
    if goals:
        lines += ["### targets", "", "| goal | this run | met |", "|---|---:|---|"]
        lines += [f"| {g['goal']} | {g['measured']} | {'yes' if g['met'] else 'no'} |" for g in goals]
        lines.append("")
    return "\n".join(lines)


def machine() -> dict:
    return _common.machine()


def command_line(argv: list[str]) -> str:
    words = ["wheel.py"]
    for i, a in enumerate(argv):
        words.append(os.path.basename(a) if i > 0 and argv[i - 1] == "--json" else a)
    return " ".join(words)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-child"]:
        impl, n, horizon, keep, traced = argv[1], int(argv[2]), float(argv[3]), argv[4] == "1", argv[5] == "1"
        print(json.dumps(memory_child(impl, n, horizon, keep, traced)))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="timers per throughput run (default 1,000,000)")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs per measurement; the median is quoted")
    parser.add_argument("--horizon", type=float, default=60.0, help="delays are uniform over 0..horizon s (default 60)")
    parser.add_argument("--late-n", type=int, default=100_000, help="timers in the lateness run (default 100,000)")
    parser.add_argument("--late-spread", type=float, default=3.0, help="seconds they are spread over (default 3)")
    parser.add_argument("--quick", action="store_true",
                        help="n = 100,000, one run, memory at n only, 20,000 timers over 1 s for lateness")
    parser.add_argument("--full", action="store_true", help="memory at 1,000,000 and 10,000,000 pending timers")
    parser.add_argument("--only", nargs="+", choices=("throughput", "memory", "lateness"), help="run these parts only")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats, args.late_n, args.late_spread = 100_000, 1, 20_000, 1.0
    if args.n < 1 or args.late_n < 1 or args.repeats < 1 or args.horizon <= 0 or args.late_spread <= 0:
        parser.error("--n, --late-n and --repeats must be positive, --horizon and --late-spread above 0")
    parts = args.only or ["throughput", "memory", "lateness"]

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    results: dict = {}
    if "throughput" in parts:
        results["throughput"] = throughput(args)
    if "memory" in parts:
        results["memory"] = memory(args)
    if "lateness" in parts:
        results["lateness"] = lateness(args)
    goals = targets(results)
    info = machine()
    info["load_average_before"] = load_before
    print(f"pyqueue {pyqueue.__version__}; tick {TICK * 1e3:g} ms; median of {args.repeats}; "
          f"{started:%Y-%m-%d %H:%M} UTC; {info}")
    print()
    print(markdown(results, goals, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv), "date": started.isoformat(), "machine": info,
                       "n": args.n, "repeats": args.repeats, "horizon": args.horizon,
                       "results": results, "targets": goals}, f, indent=2)


if __name__ == "__main__":
    main()
