"""retry.py - the retry path end to end: a queue-mode worker over a topic with poison messages.

Question: how much of a worker's throughput do a few failing messages cost?

A topic of n messages of 100 B (one partition, filled before the clock
starts) is consumed by one queue-mode consumer through run(handler):
  - poisoned: a seeded 1% of the messages are poison: the handler raises for
    them on every delivery, so each is delivered max_deliveries = 3 times,
    waiting Backoff(initial=0.01, maximum=0.05, jitter=0) between deliveries
    (10 ms, then 20 ms), and then goes to the dead-letter topic;
  - clean: the same n messages with no poison, the same consumer options.
The handler does no work besides telling poison from good.  It calls
consumer.stop() itself once every good message has been handled and every
poison message has had its last delivery (the runner dead-letters that
delivery as the handler raises, then returns): no sleep and no timeout ends
a run.  Afterwards the run is checked: the group's lag is 0 and the
dead-letter topic holds exactly the poison messages.

Reported: good messages per second (good messages / the time run() took),
the ratio poisoned / clean (the target is >= 0.8), the time at which the last
good message was handled, handler calls, and CPU time / wall time of the
process during run() ("busy": below 1.00 the worker was waiting, not working).
The "head-of-line bound" column is max_in_flight / (sum of the backoff
delays): a message waiting for its retry keeps the group's committed offset
(the low edge of the in-flight window) from passing it, so while it waits at
most max_in_flight messages can be leased; when that bound is below the clean
rate, the window, not the work, sets the pace.

Every figure is the median of --repeats runs, each in a fresh temporary
directory with seeded values.  fsync="interval" (the default).

    python bench/retry.py                          # n = 100,000, 3 runs, max_in_flight 1024 (the default)
    python bench/retry.py --quick                  # n = 20,000, one run
    python bench/retry.py --max-in-flight 1024 4096 65536 --json retry.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
import _common  # bench/_common.py: the machine's description

# The checkout this script lives in comes first, so that an in-place build
# (python setup.py build_ext --inplace) is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

SEED = 20261130
BATCH = 1000
VALUE_BYTES = 100
POISON_FRACTION = 0.01
MAX_DELIVERIES = 3
BACKOFF = pyqueue.Backoff(initial=0.01, maximum=0.05, jitter=0)
POISON, GOOD = 0x01, 0x00          # the first byte of a value says which it is
TOPIC, DLQ, GROUP = "work", "work.dlq", "workers"


class Poison(Exception):
    pass


def make_values(n: int, poisoned: bool) -> tuple[list[bytes], int]:
    """n seeded values of VALUE_BYTES; with poisoned, exactly round(n * 1%) of them poison."""
    rng = random.Random(SEED)
    body = [rng.randbytes(VALUE_BYTES - 1) for _ in range(1024)]
    poison = set(rng.sample(range(n), round(n * POISON_FRACTION))) if poisoned else set()
    values = [bytes([POISON if i in poison else GOOD]) + body[i % len(body)] for i in range(n)]
    return values, len(poison)


def backoff_total() -> float:
    """Seconds a poison message waits between its deliveries, in all."""
    return sum(BACKOFF.delay(a) for a in range(1, MAX_DELIVERIES))


def one_run(values: list[bytes], n_poison: int, max_in_flight: int, parent: "str | None") -> dict:
    n_good = len(values) - n_poison
    path = tempfile.mkdtemp(prefix="pyqueue-retry-", dir=parent)
    try:
        with pyqueue.open(path) as broker:
            topic = broker.topic(TOPIC)
            for i in range(0, len(values), BATCH):
                topic.send_batch(values[i:i + BATCH])
            dlq = broker.topic(DLQ)
            consumer = topic.consumer(GROUP, mode="queue", max_in_flight=max_in_flight,
                                      max_deliveries=MAX_DELIVERIES, backoff=BACKOFF, dead_letter=DLQ)
            state = {"good": 0, "last": 0, "calls": 0, "t_last_good": 0.0}
            clock = time.perf_counter

            def handler(m) -> None:
                state["calls"] += 1
                if m.value[0] == POISON:
                    if m.delivery_count >= MAX_DELIVERIES:
                        state["last"] += 1           # the runner dead-letters it as this raises
                        if state["last"] == n_poison and state["good"] == n_good:
                            consumer.stop()
                    raise Poison(f"offset {m.offset}")
                state["good"] += 1
                if state["good"] == n_good:
                    state["t_last_good"] = clock()
                    if state["last"] == n_poison:
                        consumer.stop()

            cpu0 = resource.getrusage(resource.RUSAGE_SELF)
            t0 = clock()
            consumer.run(handler, install_signal_handlers=False)
            elapsed = clock() - t0
            cpu1 = resource.getrusage(resource.RUSAGE_SELF)
            lag = consumer.lag()
            dead = dlq.offsets(0)[1]
            consumer.close()
            if state["good"] != n_good or state["last"] != n_poison or any(lag.values()) or dead != n_poison:
                raise RuntimeError(f"run not accounted for: good {state['good']}/{n_good}, last deliveries "
                                   f"{state['last']}/{n_poison}, dead letters {dead}, lag {lag}")
            cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
            return {"seconds": elapsed, "good_per_s": n_good / elapsed, "calls": state["calls"],
                    "last_good_s": state["t_last_good"] - t0, "busy": cpu / elapsed}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def measure(args) -> list[dict]:
    rows = []
    for max_in_flight in args.max_in_flight:
        for label, poisoned in (("clean", False), ("poisoned (1%)", True)):
            values, n_poison = make_values(args.n, poisoned)
            runs = [one_run(values, n_poison, max_in_flight, args.dir) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs)
                   for k in ("seconds", "good_per_s", "calls", "last_good_s", "busy")}
            rows.append({"label": label, "max_in_flight": max_in_flight, "n": args.n, "poison": n_poison,
                         "good": args.n - n_poison, **med,
                         "runs_good_per_s": [r["good_per_s"] for r in runs],
                         "head_of_line_bound": max_in_flight / backoff_total() if poisoned else None})
            print(f"  {label}, max_in_flight {max_in_flight}: {med['good_per_s']:,.0f} good msgs/s",
                  file=sys.stderr)
    for r in rows:
        clean = [c for c in rows if c["label"] == "clean" and c["max_in_flight"] == r["max_in_flight"]][0]
        r["ratio"] = r["good_per_s"] / clean["good_per_s"]
    return rows


def markdown(rows: list[dict], args) -> str:
    lines = [f"### retry path: queue-mode run(handler), n = {args.n:,} messages of {VALUE_BYTES} B, one partition",
             "",
             f"poison: handler raises; max_deliveries={MAX_DELIVERIES}, Backoff(initial={BACKOFF.initial}, "
             f"maximum={BACKOFF.maximum}, jitter={BACKOFF.jitter}), dead_letter topic; good msgs/s = good "
             "messages / run() time (median); ratio = this row / the clean row with the same max_in_flight; "
             "busy = process CPU time / wall time during run()",
             "",
             "| queue | max_in_flight | good msgs | poison | good msgs/s | ratio | run() s | last good at s | "
             "handler calls | busy | head-of-line bound msgs/s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        bound = "" if r["head_of_line_bound"] is None else f"{r['head_of_line_bound']:,.0f}"
        lines.append(f"| {r['label']} | {r['max_in_flight']:,} | {r['good']:,} | {r['poison']:,} | "
                     f"{r['good_per_s']:,.0f} | {r['ratio']:.2f} | {r['seconds']:.3f} | {r['last_good_s']:.3f} | "
                     f"{r['calls']:,.0f} | {r['busy']:.2f} | {bound} |")
    lines.append("")
    goals = [r for r in rows if r["label"] != "clean"]
    if goals:
        lines += ["### targets", "", "| goal | this run | met |", "|---|---:|---|"]
        for r in goals:
            lines.append(f"| poisoned / clean good msgs/s >= 0.8 (max_in_flight {r['max_in_flight']:,}) | "
                         f"{r['ratio']:.2f} | {'yes' if r['ratio'] >= 0.8 else 'no'} |")
        lines.append("")
    return "\n".join(lines)


def machine() -> dict:
    return _common.machine()


def command_line(argv: list[str]) -> str:
    words = ["retry.py"]
    for i, a in enumerate(argv):
        words.append(os.path.basename(a) if i > 0 and argv[i - 1] in ("--json", "--dir") else a)
    return " ".join(words)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="messages in the topic (default 100,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is quoted")
    parser.add_argument("--quick", action="store_true", help="n = 20,000, one run (overrides --n, --repeats)")
    parser.add_argument("--max-in-flight", type=int, nargs="+", default=[1024],
                        help="consumer max_in_flight values to run (default: 1024, the consumer's default)")
    parser.add_argument("--dir", default=None, help="parent of the temporary directories (default: the system's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 20_000, 1
    if args.n < 100 or args.repeats < 1:
        parser.error("--n must be at least 100 (1% of it poison) and --repeats positive")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    rows = measure(args)
    info = machine()
    info["load_average_before"] = load_before
    print(f"pyqueue {pyqueue.__version__}; n={args.n:,}, median of {args.repeats}; "
          f"{started:%Y-%m-%d %H:%M} UTC; {info}")
    print()
    print(markdown(rows, args))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv), "date": started.isoformat(), "machine": info,
                       "n": args.n, "repeats": args.repeats, "results": rows}, f, indent=2)


if __name__ == "__main__":
    main()
