"""recovery.py - reopen time after SIGKILL, and resident memory against log size.

Questions:
  1. A producer process fills one partition (segment_bytes 64 MiB,
     fsync="never") to about --sizes-mib MiB and is killed with SIGKILL while
     it keeps sending.  How long does a fresh process take to run
     pyqueue.open() + broker.topic() + topic.offsets()?  (The goal is a
     cost proportional to the unflushed tail, not to the log: < 1 s at 1 GiB.)
  2. A fresh process opens that partition and reads all of it, with read()
     (Message objects) and with read_batch().  Does its resident memory grow
     with the size of the log?  VmRSS is sampled from /proc/self/status every
     1000 messages; RssFile is the mapped log, RssAnon the heap.

The page cache is warm (the killed producer's pages are still in memory):
this measures a process crash, not a power cut.  A third reopen runs after
deleting the partition's state file, which makes open validate the tail
segment frame by frame, as it does after a reboot (still from a warm cache).  Every repetition starts from
an empty temporary directory; medians are quoted.

    python bench/recovery.py                        # 256 MiB and 1 GiB, 3 runs each
    python bench/recovery.py --sizes-mib 64 --repeats 1
    python bench/recovery.py --json recovery.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # no idle BLAS threads spinning beside the timed loops
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

MiB = 1 << 20
SEGMENT_BYTES = 64 * MiB
VALUE_BYTES = 1024
SEED = 20261130


def proc_status() -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, in KiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[name] = int(rest.split()[0])
    return out


# ---- child processes (run as: recovery.py --child WHAT PATH [MiB]) ----

def child_fill(path: str, target_mib: int) -> None:
    """Fill partition 0 with target_mib of values, say so on stdout, then keep sending until killed."""
    import numpy as np
    rng = np.random.default_rng(SEED)
    rows = rng.integers(0, 256, size=(1000, VALUE_BYTES), dtype=np.uint8)
    broker = pyqueue.open(path, fsync="never")
    topic = broker.topic("bench", partitions=1, segment_bytes=SEGMENT_BYTES)
    target_messages = target_mib * MiB // VALUE_BYTES   # values totalling target_mib
    while topic.offsets(0)[1] < target_messages:
        topic.send_batch(rows, partition=0)
    print(json.dumps({"filled": topic.offsets(0)[1], "status": proc_status()}), flush=True)
    value = rows[0].tobytes()
    while True:   # the parent kills us in here, most likely inside an append
        topic.send(value, partition=0)


def child_reopen(path: str) -> None:
    t0 = time.perf_counter()
    broker = pyqueue.open(path, fsync="never")
    topic = broker.topic("bench")
    start, end = topic.offsets(0)
    seconds = time.perf_counter() - t0
    info = topic._logs[0].recovery_info()   # not public API: what recovery did
    broker.close()
    print(json.dumps({"seconds": seconds, "start": start, "end": end, "recovery": info}), flush=True)


def child_read(path: str, how: str) -> None:
    before_open = proc_status()
    broker = pyqueue.open(path, fsync="never")
    topic = broker.topic("bench")
    start, end = topic.offsets(0)
    after_open = proc_status()
    peak = dict(after_open)
    offset = start
    nbytes = 0
    t0 = time.perf_counter()
    while offset < end:
        if how == "read":
            messages = topic.read(0, offset, 1000)
            for m in messages:
                nbytes += len(m.value)
            offset += len(messages)
        else:
            batch = topic.read_batch(0, offset, 1000)
            nbytes += int(batch.lengths.sum())
            offset = batch.next_offset
        now = proc_status()
        for k in ("VmRSS", "RssAnon", "RssFile"):
            peak[k] = max(peak[k], now[k])
    seconds = time.perf_counter() - t0
    broker.close()
    print(json.dumps({"messages": end - start, "bytes": nbytes, "seconds": seconds,
                      "before_open": before_open, "after_open": after_open, "peak": peak,
                      "end": proc_status()}), flush=True)


# ---- the parent ----

def run_child(*args: str) -> dict:
    """Run a child; its last stdout line is JSON.  A child that dies is reported, not raised."""
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", *args],
                         capture_output=True, text=True)
    if out.returncode != 0:
        how = (f"killed by {signal.Signals(-out.returncode).name}" if out.returncode < 0
               else f"exit status {out.returncode}")
        print(f"  child {' '.join(args[:1] + args[2:])} failed: {how}\n{out.stderr[-2000:]}",
              file=sys.stderr, flush=True)
        return {"error": how}
    return json.loads(out.stdout.strip().splitlines()[-1])


def fill_and_kill(path: str, size_mib: int) -> dict:
    """Start a producer, wait until it has filled size_mib, SIGKILL it mid-send."""
    producer = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", "fill", path,
                                 str(size_mib)], stdout=subprocess.PIPE, text=True)
    line = producer.stdout.readline()
    if not line:
        producer.wait()
        raise RuntimeError(f"producer exited with {producer.returncode} before filling")
    filled = json.loads(line)
    time.sleep(0.02)
    os.kill(producer.pid, signal.SIGKILL)
    producer.wait()
    producer.stdout.close()
    return filled


def one_run(size_mib: int, parent: str | None) -> dict:
    path = tempfile.mkdtemp(prefix="pyqueue-recovery-", dir=parent)
    try:
        filled = fill_and_kill(path, size_mib)
        reopen = run_child("reopen", path)
        reopen_again = run_child("reopen", path)
        # The partition's state file is derived data; without it, open
        # validates the tail segment frame by frame (as after a reboot).
        os.unlink(os.path.join(path, "topics", "bench", "0", "state"))
        reopen_rebuild = run_child("reopen", path)
        read = run_child("read", path, "read")
        read_batch = run_child("read", path, "read_batch")
        return {"size_mib": size_mib, "filled": filled, "reopen": reopen, "reopen_again": reopen_again,
                "reopen_rebuild": reopen_rebuild,
                "read": read, "read_batch": read_batch}
    finally:
        shutil.rmtree(path, ignore_errors=True)


def median(records: list[dict], *keys: str) -> float:
    values = []
    for v in records:
        for k in keys:
            v = v[k]
        values.append(v)
    return statistics.median(values)


def failures(records: list[dict]) -> str:
    errors = sorted({r["error"] for r in records if "error" in r})
    return f"failed in {sum('error' in r for r in records)} of {len(records)} runs: {', '.join(errors)}"


def markdown(by_size: dict[int, list[dict]]) -> str:
    lines = ["### reopen after SIGKILL of the producer (fresh process: open + topic + offsets)", "",
             "| log | messages | reopen after the kill | bytes scanned | bytes cut | reopen again | "
             "reopen, state file deleted | bytes scanned |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for size, runs in by_size.items():
        first = [r["reopen"] for r in runs]
        again = [r["reopen_again"] for r in runs]
        rebuild = [r["reopen_rebuild"] for r in runs]
        if any("error" in r for r in first + again + rebuild):
            lines.append(f"| {size} MiB | | {failures(first + again + rebuild)} | | | | | |")
            continue
        lines.append(f"| {size} MiB | {median(first, 'end'):,.0f} | {median(first, 'seconds') * 1e3:,.2f} ms | "
                     f"{median(first, 'recovery', 'scanned_bytes'):,.0f} | "
                     f"{median(first, 'recovery', 'truncated_bytes'):,.0f} | "
                     f"{median(again, 'seconds') * 1e3:,.2f} ms | {median(rebuild, 'seconds') * 1e3:,.2f} ms | "
                     f"{median(rebuild, 'recovery', 'scanned_bytes'):,.0f} |")
    lines += ["", "### resident memory against log size (MiB, medians)", "",
              "| log | process | msgs/s | RSS after open | peak RSS | peak RssFile (mapped log) | "
              "peak RssAnon (heap) |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for size, runs in by_size.items():
        filled = [r["filled"]["status"] for r in runs]
        lines.append(f"| {size} MiB | producer, when filled (send_batch) | | | "
                     f"{median(filled, 'VmRSS') / 1024:,.1f} | {median(filled, 'RssFile') / 1024:,.1f} | "
                     f"{median(filled, 'RssAnon') / 1024:,.1f} |")
        for how in ("read", "read_batch"):
            records = [r[how] for r in runs]
            if any("error" in r for r in records):
                lines.append(f"| {size} MiB | reader, {how}() of everything | {failures(records)} | | | | |")
                continue
            rates = [{"rate": r["messages"] / r["seconds"]} for r in records]
            lines.append(f"| {size} MiB | reader, {how}() of everything | {median(rates, 'rate'):,.0f} | "
                         f"{median(records, 'after_open', 'VmRSS') / 1024:,.1f} | "
                         f"{median(records, 'peak', 'VmRSS') / 1024:,.1f} | "
                         f"{median(records, 'peak', 'RssFile') / 1024:,.1f} | "
                         f"{median(records, 'peak', 'RssAnon') / 1024:,.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[256, 1024],
                        help="partition sizes to fill, MiB (default 256 1024)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per size; the median is quoted")
    parser.add_argument("--dir", default=None, help="parent of the temporary directories (default: the system's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        what, path, *rest = args.child
        if what == "fill":
            child_fill(path, int(rest[0]))
        elif what == "reopen":
            child_reopen(path)
        elif what == "read":
            child_read(path, rest[0])
        return

    started = datetime.datetime.now(datetime.timezone.utc)
    by_size: dict[int, list[dict]] = {}
    for size in args.sizes_mib:
        for i in range(args.repeats):
            r = one_run(size, args.dir)
            by_size.setdefault(size, []).append(r)
            print(f"  {size} MiB run {i + 1} done", file=sys.stderr, flush=True)
    print(f"pyqueue {pyqueue.__version__}; segment_bytes 64 MiB, {VALUE_BYTES} B values, fsync=never; "
          f"median of {args.repeats}; {started:%Y-%m-%d %H:%M} UTC; {os.cpu_count()} CPUs")
    print()
    print(markdown(by_size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:]),
                       "date": started.isoformat(), "runs": by_size}, f, indent=2)


if __name__ == "__main__":
    main()
