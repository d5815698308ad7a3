"""compare.py - pyqueue against embedded peers, side by side in one run.

Question: how many messages per second does pyqueue produce and consume,
compared with the embedded queues a Python program would otherwise use, on
the same disk, in the same run?  Absolute figures drift on a shared machine,
so every table quotes the ratio pyqueue / peer, and the repetitions of a
table's cases are interleaved so that noise falls on all of them alike.

Like is compared with like:
  - one message per call against one message per call, batches of 1000
    against batches of 1000;
  - pyqueue fsync="interval" (a background flush every 50 ms) against peers
    that do not fsync each message (SQLite WAL with synchronous=NORMAL, files
    written without fsync); pyqueue fsync="always" against peers that fsync
    every message (or every batch);
  - end to end across two processes: pyqueue send() in one process and
    wait() + read() in another, against multiprocessing.Queue.

Consuming differs in kind: pyqueue reads a log (nothing is removed) while the
queue peers pop (each pop also writes).  Both are listed, labelled.

Every measurement runs in a fresh temporary directory with seeded values; the
figure is the median of --repeats runs; only the loop that sends or reads is
timed (open, fill and close are not).  Slow configurations use fewer messages
(the n column).

    python bench/compare.py                 # full run, 100 B and 1 KiB
    python bench/compare.py --quick         # 20,000 messages, one run each
    python bench/compare.py --json out.json --sizes 100
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
import _common  # bench/_common.py: the machine's description

# numpy is only used to build arrays; an idle OpenBLAS thread pool would spin
# on a small machine and steal CPU from the loop being timed.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
import numpy as np  # noqa: E402

# The checkout this script lives in comes first, so that an in-place build
# (python setup.py build_ext --inplace) is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

SEED = 20261130
BATCH = 1000
DISTINCT_VALUES = 1024   # values cycle through a seeded pool of this many


# ---- seeded data ----

def make_values(n: int, size: int) -> list[bytes]:
    """n values of `size` bytes: references into a seeded pool of distinct values."""
    rng = random.Random(SEED + size)
    pool = [rng.randbytes(size) for _ in range(DISTINCT_VALUES)]
    return [pool[i % DISTINCT_VALUES] for i in range(n)]


def batches(values: list[bytes]) -> list[list[bytes]]:
    return [values[i:i + BATCH] for i in range(0, len(values), BATCH)]


def numpy_batches(values: list[bytes]) -> list[np.ndarray]:
    """The same batches as 2-D uint8 arrays, one row per message."""
    size = len(values[0])
    return [np.frombuffer(b"".join(chunk), dtype=np.uint8).reshape(len(chunk), size)
            for chunk in batches(values)]


# ---- pyqueue ----

def pyqueue_send(path, values, fsync):
    with pyqueue.open(path, fsync=fsync) as broker:
        topic = broker.topic("bench")
        send = topic.send
        t0 = time.perf_counter()
        for v in values:
            send(v, partition=0)
        return time.perf_counter() - t0


def pyqueue_send_threads(path, values, fsync, threads):
    """`threads` threads send concurrently (with fsync="always" they share flushes)."""
    with pyqueue.open(path, fsync=fsync) as broker:
        topic = broker.topic("bench")
        shares = [values[i::threads] for i in range(threads)]

        def run(share):
            for v in share:
                topic.send(v, partition=0)

        workers = [threading.Thread(target=run, args=(s,)) for s in shares]
        t0 = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        return time.perf_counter() - t0


def pyqueue_send_batch(path, values, fsync):
    chunks = batches(values)
    with pyqueue.open(path, fsync=fsync) as broker:
        topic = broker.topic("bench")
        t0 = time.perf_counter()
        for chunk in chunks:
            topic.send_batch(chunk, partition=0)
        return time.perf_counter() - t0


def pyqueue_send_batch_numpy(path, values, fsync):
    arrays = numpy_batches(values)
    with pyqueue.open(path, fsync=fsync) as broker:
        topic = broker.topic("bench")
        t0 = time.perf_counter()
        for rows in arrays:
            topic.send_batch(rows, partition=0)
        return time.perf_counter() - t0


def pyqueue_fill(path, values):
    with pyqueue.open(path, fsync="never") as broker:
        topic = broker.topic("bench")
        for chunk in batches(values):
            topic.send_batch(chunk, partition=0)


def pyqueue_read(path, values, per_call):
    """read() returning Message objects, `per_call` at a time; touches every value."""
    pyqueue_fill(path, values)
    n = len(values)
    with pyqueue.open(path, fsync="never") as broker:
        topic = broker.topic("bench")
        read = topic.read
        nbytes = 0
        offset = 0
        t0 = time.perf_counter()
        while offset < n:
            messages = read(0, offset, per_call)
            for m in messages:
                nbytes += len(m.value)
            offset += len(messages)
        elapsed = time.perf_counter() - t0
    assert nbytes == sum(map(len, values))
    return elapsed


def pyqueue_read_batch(path, values):
    """read_batch(): values stay in the mapped log (zero-copy, not touched)."""
    pyqueue_fill(path, values)
    n = len(values)
    with pyqueue.open(path, fsync="never") as broker:
        topic = broker.topic("bench")
        count = 0
        offset = 0
        t0 = time.perf_counter()
        while offset < n:
            batch = topic.read_batch(0, offset, BATCH)
            count += len(batch)
            offset = batch.next_offset
        elapsed = time.perf_counter() - t0
    assert count == n
    return elapsed


def _pyqueue_producer(path, values, fsync, barrier, results):
    with pyqueue.open(path, fsync=fsync) as broker:
        topic = broker.topic("bench")
        barrier.wait()
        results.put(("start", time.perf_counter()))
        for v in values:
            topic.send(v, partition=0)


def _pyqueue_consumer(path, n, barrier, results):
    with pyqueue.open(path, fsync="never") as broker:
        topic = broker.topic("bench")
        barrier.wait()
        offset = 0
        while offset < n:
            if not topic.wait(0, offset, timeout=30.0):
                raise TimeoutError(f"no message {offset} within 30 s")
            messages = topic.read(0, offset, BATCH)
            for m in messages:
                m.value
            offset += len(messages)
        results.put(("end", time.perf_counter()))


def pyqueue_pipe(path, values, fsync):
    """Producer process send() -> consumer process wait() + read(), end to end."""
    with pyqueue.open(path, fsync="never") as broker:   # create the topic before forking
        broker.topic("bench")
    return _run_pipe(_pyqueue_producer, (path, values, fsync), _pyqueue_consumer, (path, len(values)))


def _run_pipe(producer, producer_args, consumer, consumer_args):
    """Start both processes, release them together; seconds from the producer's
    first send to the consumer's last message (perf_counter is system-wide)."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(2)
    results = ctx.SimpleQueue()
    procs = [ctx.Process(target=producer, args=producer_args + (barrier, results)),
             ctx.Process(target=consumer, args=consumer_args + (barrier, results))]
    for p in procs:
        p.start()
    times = dict(results.get() for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"{p.name} exited with {p.exitcode}")
    return times["end"] - times["start"]


# ---- SQLite (a table, WAL) ----

def sqlite_open(path, synchronous):
    con = sqlite3.connect(os.path.join(path, "queue.db"), isolation_level=None)   # autocommit
    con.execute("PRAGMA journal_mode=WAL")
    con.execute(f"PRAGMA synchronous={synchronous}")
    con.execute("CREATE TABLE IF NOT EXISTS q (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
    return con


def sqlite_insert_each(path, values, synchronous):
    """One INSERT, one transaction per message."""
    con = sqlite_open(path, synchronous)
    t0 = time.perf_counter()
    for v in values:
        con.execute("INSERT INTO q (value) VALUES (?)", (v,))
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def sqlite_insert_batch(path, values, synchronous):
    """executemany of 1000 rows in one transaction."""
    rows = [[(v,) for v in chunk] for chunk in batches(values)]
    con = sqlite_open(path, synchronous)
    t0 = time.perf_counter()
    for chunk in rows:
        con.execute("BEGIN")
        con.executemany("INSERT INTO q (value) VALUES (?)", chunk)
        con.execute("COMMIT")
    elapsed = time.perf_counter() - t0
    con.close()
    return elapsed


def sqlite_select_each(path, values):
    """One SELECT by id per message (the log is not consumed)."""
    sqlite_insert_batch(path, values, "NORMAL")
    con = sqlite_open(path, "NORMAL")
    nbytes = 0
    t0 = time.perf_counter()
    for i in range(1, len(values) + 1):
        nbytes += len(con.execute("SELECT value FROM q WHERE id = ?", (i,)).fetchone()[0])
    elapsed = time.perf_counter() - t0
    con.close()
    assert nbytes == sum(map(len, values))
    return elapsed


def sqlite_select_batch(path, values):
    """SELECT 1000 rows per query, in id order (the log is not consumed)."""
    sqlite_insert_batch(path, values, "NORMAL")
    con = sqlite_open(path, "NORMAL")
    nbytes = 0
    last = 0
    t0 = time.perf_counter()
    while True:
        rows = con.execute("SELECT id, value FROM q WHERE id > ? ORDER BY id LIMIT ?",
                           (last, BATCH)).fetchall()
        if not rows:
            break
        for _, v in rows:
            nbytes += len(v)
        last = rows[-1][0]
    elapsed = time.perf_counter() - t0
    con.close()
    assert nbytes == sum(map(len, values))
    return elapsed


# ---- diskcache Deque (SQLite WAL underneath) ----

def diskcache_deque(path, synchronous):
    import diskcache
    cache = diskcache.Cache(path, sqlite_synchronous=synchronous)
    return diskcache.Deque.fromcache(cache), cache


def diskcache_append(path, values, synchronous):
    deque, cache = diskcache_deque(path, synchronous)
    t0 = time.perf_counter()
    for v in values:
        deque.append(v)
    elapsed = time.perf_counter() - t0
    cache.close()
    return elapsed


def diskcache_extend_batch(path, values, synchronous):
    """extend() of 1000 values inside one transact()."""
    chunks = batches(values)
    deque, cache = diskcache_deque(path, synchronous)
    t0 = time.perf_counter()
    for chunk in chunks:
        with deque.transact():
            deque.extend(chunk)
    elapsed = time.perf_counter() - t0
    cache.close()
    return elapsed


def diskcache_popleft(path, values):
    deque, cache = diskcache_deque(path, 1)
    for chunk in batches(values):
        with deque.transact():
            deque.extend(chunk)
    t0 = time.perf_counter()
    for _ in range(len(values)):
        deque.popleft()
    elapsed = time.perf_counter() - t0
    cache.close()
    return elapsed


# ---- persist-queue ----

def persistqueue_put(path, values):
    """File Queue: one pickle write + flush and an info file rewrite per put; no fsync."""
    import persistqueue
    q = persistqueue.Queue(os.path.join(path, "q"), tempdir=path)
    t0 = time.perf_counter()
    for v in values:
        q.put(v)
    return time.perf_counter() - t0


def persistqueue_get(path, values):
    """get() + task_done() per message (task_done persists the read position)."""
    import persistqueue
    q = persistqueue.Queue(os.path.join(path, "q"), tempdir=path)
    for v in values:
        q.put(v)
    t0 = time.perf_counter()
    for _ in range(len(values)):
        q.get()
        q.task_done()
    return time.perf_counter() - t0


def persistqueue_sqlite_ack_put(path, values):
    """SQLiteAckQueue: WAL, synchronous=FULL (SQLite's default), a commit per put."""
    import persistqueue
    q = persistqueue.SQLiteAckQueue(os.path.join(path, "q"))
    t0 = time.perf_counter()
    for v in values:
        q.put(v)
    elapsed = time.perf_counter() - t0
    q.close()
    return elapsed


# ---- litequeue (SQLite WAL, synchronous=NORMAL) ----

def litequeue_put(path, values):
    import litequeue
    q = litequeue.LiteQueue(os.path.join(path, "queue.db"))
    t0 = time.perf_counter()
    for v in values:
        q.put(v)
    elapsed = time.perf_counter() - t0
    q.close()
    return elapsed


def litequeue_pop(path, values):
    """pop() + done() per message."""
    import litequeue
    q = litequeue.LiteQueue(os.path.join(path, "queue.db"))
    with q.transaction():
        for v in values:
            q.put(v)
    t0 = time.perf_counter()
    for _ in range(len(values)):
        q.done(q.pop().message_id)
    elapsed = time.perf_counter() - t0
    q.close()
    return elapsed


# ---- queuelib FifoDiskQueue (index written only at close: not crash-safe) ----

def queuelib_push(path, values):
    from queuelib import FifoDiskQueue
    q = FifoDiskQueue(os.path.join(path, "q"))
    t0 = time.perf_counter()
    for v in values:
        q.push(v)
    elapsed = time.perf_counter() - t0
    q.close()
    return elapsed


def queuelib_pop(path, values):
    from queuelib import FifoDiskQueue
    q = FifoDiskQueue(os.path.join(path, "q"))
    for v in values:
        q.push(v)
    q.close()
    q = FifoDiskQueue(os.path.join(path, "q"))
    t0 = time.perf_counter()
    for _ in range(len(values)):
        q.pop()
    elapsed = time.perf_counter() - t0
    q.close()
    return elapsed


# ---- multiprocessing.Queue (in memory, process to process) ----

def _mp_producer(q, values, barrier, results):
    barrier.wait()
    results.put(("start", time.perf_counter()))
    for v in values:
        q.put(v)


def _mp_consumer(q, n, barrier, results):
    barrier.wait()
    for _ in range(n):
        q.get()
    results.put(("end", time.perf_counter()))


def mp_queue_pipe(path, values):
    q = multiprocessing.get_context("fork").Queue()
    return _run_pipe(_mp_producer, (q, values), _mp_consumer, (q, len(values)))


# ---- the cases ----

# Groups: (title, baseline label).  The ratio column is baseline / row.
GROUPS = {
    "send": ("produce, one message per call, no fsync per message", "pyqueue send(), fsync=interval"),
    "send-sync": ("produce, one message per call, on disk before the call returns",
                  "pyqueue send(), fsync=always"),
    "batch": ("produce, batches of 1000, no fsync per batch", "pyqueue send_batch(list), fsync=interval"),
    "batch-sync": ("produce, batches of 1000, on disk before the call returns",
                   "pyqueue send_batch(list), fsync=always"),
    "read-each": ("consume, one message per call", "pyqueue read(max_messages=1)"),
    "read-batch": ("consume, 1000 messages per call", "pyqueue read(max_messages=1000) -> Message"),
    "pipe": ("end to end, producer process -> consumer process", "pyqueue send() -> wait() + read()"),
}

# (group, label, durability, function, keyword arguments, divisor of n)
CASES = [
    ("send", "pyqueue send(), fsync=interval", "flush every 50 ms", pyqueue_send, {"fsync": "interval"}, 1),
    ("send", "pyqueue send(), fsync=never", "page cache", pyqueue_send, {"fsync": "never"}, 1),
    ("send", "SQLite WAL, one transaction per message", "synchronous=NORMAL",
     sqlite_insert_each, {"synchronous": "NORMAL"}, 1),
    ("send", "diskcache Deque.append", "SQLite WAL, synchronous=NORMAL", diskcache_append, {"synchronous": 1}, 10),
    ("send", "litequeue put", "SQLite WAL, synchronous=NORMAL", litequeue_put, {}, 10),
    ("send", "persist-queue Queue.put", "files, no fsync", persistqueue_put, {}, 20),
    ("send", "queuelib FifoDiskQueue.push", "index at close: not crash-safe", queuelib_push, {}, 1),

    ("send-sync", "pyqueue send(), fsync=always", "fdatasync per message", pyqueue_send, {"fsync": "always"}, 100),
    ("send-sync", "pyqueue send(), fsync=always, 4 threads", "flushes shared",
     pyqueue_send_threads, {"fsync": "always", "threads": 4}, 100),
    ("send-sync", "SQLite WAL, one transaction per message", "synchronous=FULL",
     sqlite_insert_each, {"synchronous": "FULL"}, 100),
    ("send-sync", "diskcache Deque.append", "SQLite WAL, synchronous=FULL", diskcache_append, {"synchronous": 2}, 100),
    ("send-sync", "persist-queue SQLiteAckQueue.put", "SQLite WAL, synchronous=FULL",
     persistqueue_sqlite_ack_put, {}, 100),

    ("batch", "pyqueue send_batch(list), fsync=interval", "flush every 50 ms",
     pyqueue_send_batch, {"fsync": "interval"}, 1),
    ("batch", "pyqueue send_batch(2-D numpy), fsync=interval", "flush every 50 ms",
     pyqueue_send_batch_numpy, {"fsync": "interval"}, 1),
    ("batch", "SQLite WAL, executemany 1000 rows per transaction", "synchronous=NORMAL",
     sqlite_insert_batch, {"synchronous": "NORMAL"}, 1),
    ("batch", "diskcache Deque.extend in one transact()", "SQLite WAL, synchronous=NORMAL",
     diskcache_extend_batch, {"synchronous": 1}, 10),

    ("batch-sync", "pyqueue send_batch(list), fsync=always", "fdatasync per batch",
     pyqueue_send_batch, {"fsync": "always"}, 1),
    ("batch-sync", "SQLite WAL, executemany 1000 rows per transaction", "synchronous=FULL",
     sqlite_insert_batch, {"synchronous": "FULL"}, 1),
    ("batch-sync", "diskcache Deque.extend in one transact()", "SQLite WAL, synchronous=FULL",
     diskcache_extend_batch, {"synchronous": 2}, 10),

    ("read-each", "pyqueue read(max_messages=1)", "log read", pyqueue_read, {"per_call": 1}, 1),
    ("read-each", "SQLite SELECT one row by id", "log read", sqlite_select_each, {}, 1),
    ("read-each", "diskcache Deque.popleft", "pop (a write)", diskcache_popleft, {}, 10),
    ("read-each", "litequeue pop + done", "pop (a write)", litequeue_pop, {}, 50),
    ("read-each", "persist-queue Queue.get + task_done", "pop (a write)", persistqueue_get, {}, 20),
    ("read-each", "queuelib FifoDiskQueue.pop", "pop, not crash-safe", queuelib_pop, {}, 1),

    ("read-batch", "pyqueue read(max_messages=1000) -> Message", "log read", pyqueue_read, {"per_call": BATCH}, 1),
    ("read-batch", "pyqueue read_batch(1000), zero-copy", "log read, values not touched",
     pyqueue_read_batch, {}, 1),
    ("read-batch", "SQLite SELECT 1000 rows per query", "log read", sqlite_select_batch, {}, 1),

    ("pipe", "pyqueue send() -> wait() + read()", "fsync=interval", pyqueue_pipe, {"fsync": "interval"}, 1),
    ("pipe", "multiprocessing.Queue put -> get", "in memory", mp_queue_pipe, {}, 1),
]


def available(function) -> bool:
    """False when the peer's package is not installed."""
    needs = {diskcache_append: "diskcache", diskcache_extend_batch: "diskcache", diskcache_popleft: "diskcache",
             litequeue_put: "litequeue", litequeue_pop: "litequeue",
             persistqueue_put: "persistqueue", persistqueue_get: "persistqueue",
             persistqueue_sqlite_ack_put: "persistqueue",
             queuelib_push: "queuelib", queuelib_pop: "queuelib"}
    name = needs.get(function)
    if name is None:
        return True
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def measure_once(function, kwargs, values, parent) -> float:
    """Seconds of one run, in a fresh directory under `parent`."""
    path = tempfile.mkdtemp(prefix="pyqueue-bench-", dir=parent)
    try:
        return function(path, values, **kwargs)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def selected(args, group: str) -> list[tuple]:
    cases = []
    for case in CASES:
        g, label, _, function, _, _ = case
        if g != group or (args.only and not any(s in f"{g} {label}" for s in args.only)):
            continue
        if not available(function):
            print(f"  skipped (not installed): {label}", file=sys.stderr)
            continue
        cases.append(case)
    return cases


def run(args) -> list[dict]:
    results = []
    for size in args.sizes:
        all_values = make_values(args.n, size)
        for group in GROUPS:
            cases = selected(args, group)
            rows = []
            for _, label, durability, _, _, divisor in cases:
                n = max(args.n // divisor, min(args.n, 1000))
                n -= n % BATCH if n >= BATCH else 0
                rows.append({"size": size, "group": group, "label": label, "durability": durability,
                             "n": n, "seconds": []})
            # Repetitions go round robin over the group's cases, so that a noisy
            # minute on a shared machine hits pyqueue and its peers alike.
            for _ in range(args.repeats):
                for row, (_, _, _, function, kwargs, _) in zip(rows, cases):
                    row["seconds"].append(measure_once(function, kwargs, all_values[:row["n"]], args.dir))
            for row in rows:
                row["msgs_per_s"] = row["n"] / statistics.median(row["seconds"])
                print(f"  {size:>5} B  {group:<10} {row['label']:<52} {row['msgs_per_s']:>13,.0f} msgs/s"
                      f"  (n={row['n']:,})", file=sys.stderr, flush=True)
                results.append(row)
    return results


def add_ratios(results: list[dict]) -> None:
    """ratio = the group's pyqueue baseline / this row (None on the baseline and pyqueue rows)."""
    for r in results:
        baseline = GROUPS[r["group"]][1]
        base = [b for b in results if b["size"] == r["size"] and b["label"] == baseline
                and b["group"] == r["group"]]
        is_pyqueue = r["label"].startswith("pyqueue")
        r["ratio"] = base[0]["msgs_per_s"] / r["msgs_per_s"] if base and not is_pyqueue else None


def size_name(size: int) -> str:
    return f"{size // 1024} KiB" if size % 1024 == 0 else f"{size} B"


def markdown(results: list[dict]) -> str:
    lines = []
    for group, (title, baseline) in GROUPS.items():
        rows = [r for r in results if r["group"] == group]
        if not rows:
            continue
        lines.append(f"### {title}")
        lines.append("")
        lines.append(f"ratio = {baseline} / row")
        lines.append("")
        lines.append("| value | implementation | durability | n | msgs/s (median) | ratio |")
        lines.append("|---|---|---|---:|---:|---:|")
        for r in rows:
            ratio = "" if r["ratio"] is None else f"{r['ratio']:,.1f}x"
            lines.append(f"| {size_name(r['size'])} | {r['label']} | {r['durability']} | {r['n']:,} | "
                         f"{r['msgs_per_s']:,.0f} | {ratio} |")
        lines.append("")
    return "\n".join(lines)


def machine() -> dict:
    return _common.machine(sqlite=sqlite3.sqlite_version)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="messages per measurement (default 200,000)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1024], help="value sizes in bytes")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is quoted")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, one run each")
    parser.add_argument("--only", nargs="+", help="run the cases whose group or label contains one of these")
    parser.add_argument("--dir", default=None, help="parent of the temporary directories (default: the system's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.repeats = 20_000, 1

    started = datetime.datetime.now(datetime.timezone.utc)
    results = run(args)
    add_ratios(results)
    print(f"pyqueue {pyqueue.__version__}; n={args.n:,}, median of {args.repeats}; "
          f"{started:%Y-%m-%d %H:%M} UTC; {machine()}")
    print()
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                       "date": started.isoformat(), "machine": machine(), "n": args.n,
                       "repeats": args.repeats, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
