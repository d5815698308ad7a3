"""`pyqueue demo`: messages through two processes, then a crash and a recovery.

A producer process sends keyed messages to a 4-partition topic while a consumer
process reads them as they land (woken by the appends across processes). Then a
second producer is killed with SIGKILL mid-stream, the broker is reopened, and
every message whose send had returned is checked to be there, intact.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import tempfile
import time
from typing import Callable, Optional

import pyqueue

TOPIC = "demo.events"
PARTITIONS = 4


def _produce(path: str, count: int, ready: "mp.synchronize.Event") -> None:
    with pyqueue.open(path) as broker:
        topic = broker.topic(TOPIC)
        ready.wait()
        for i in range(count):
            topic.send(b"event-%08d" % i, key=b"user-%d" % (i % 97),
                       headers={"sent-ns": str(time.time_ns()).encode()})


def _consume(path: str, count: int, out: "mp.connection.Connection") -> None:
    latencies = []
    with pyqueue.open(path) as broker:
        topic = broker.topic(TOPIC)
        out.send("ready")
        positions = [topic.offsets(p)[1] for p in range(PARTITIONS)]
        got, first_at = 0, None
        while got < count:
            progressed = False
            for p in range(PARTITIONS):
                for m in topic.read(p, positions[p], 1000):
                    latencies.append(time.time_ns() - int(m.headers["sent-ns"]))
                    positions[p] = m.offset + 1
                    got += 1
                    progressed = True
            if not progressed:
                first_at = first_at or time.perf_counter()
                topic.wait(0, positions[0], timeout=0.01)   # woken by an append to partition 0
        out.send((got, latencies))


def _crashing_producer(path: str, conn: "mp.connection.Connection") -> None:
    with pyqueue.open(path, fsync="never") as broker:
        topic = broker.topic(TOPIC)
        i = 0
        while True:
            r = topic.send(b"crash-%08d" % i, key=b"k%d" % (i % 7))
            conn.send((r.partition, r.offset, i))   # acknowledged to the parent
            i += 1


def run(path: Optional[str] = None, messages: int = 20_000, echo: Callable[[str], None] = print) -> dict:
    """Run the demo in `path` (a temporary directory if None); returns a summary."""
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="pyqueue-demo-")
        path = tmp.name
    ctx = mp.get_context("spawn")
    try:
        with pyqueue.open(path) as broker:
            broker.topic(TOPIC, partitions=PARTITIONS)
        echo(f"broker: {path}  topic: {TOPIC} ({PARTITIONS} partitions)")

        # 1. producer -> consumer across processes
        ready = ctx.Event()
        parent, child = ctx.Pipe()
        consumer = ctx.Process(target=_consume, args=(path, messages, child))
        producer = ctx.Process(target=_produce, args=(path, messages, ready))
        consumer.start()
        parent.recv()                                   # consumer is positioned at the end
        producer.start()
        t0 = time.perf_counter()
        ready.set()
        got, latencies = parent.recv()
        elapsed = time.perf_counter() - t0
        producer.join()
        consumer.join()
        lat_us = sorted(x / 1000 for x in latencies)
        pct = {q: lat_us[min(len(lat_us) - 1, int(q / 100 * len(lat_us)))] for q in (50, 99)}
        echo(f"1. {got:,} messages produced by one process and consumed by another in {elapsed:.2f}s "
             f"({got / elapsed:,.0f} msgs/s end to end); send->receive latency "
             f"p50 {pct[50]:.0f} us, p99 {pct[99]:.0f} us")

        # 2. SIGKILL a producer mid-stream, reopen, check every acknowledged send
        parent, child = ctx.Pipe()
        victim = ctx.Process(target=_crashing_producer, args=(path, child))
        victim.start()
        acked: list[tuple[int, int, int]] = []
        while len(acked) < 5000:
            acked.append(parent.recv())
        victim.kill()
        victim.join()
        while parent.poll():
            acked.append(parent.recv())
        t0 = time.perf_counter()
        with pyqueue.open(path) as broker:
            topic = broker.topic(TOPIC)
            reopen = time.perf_counter() - t0
            missing = 0
            for p, off, i in acked:
                msgs = topic.read(p, off, 1)
                if not msgs or msgs[0].value != b"crash-%08d" % i:
                    missing += 1
            total = sum(topic.offsets(p)[1] for p in range(PARTITIONS))
        echo(f"2. producer killed with SIGKILL after {len(acked):,} acknowledged sends; "
             f"reopened in {reopen * 1000:.1f} ms; {len(acked) - missing:,} of {len(acked):,} "
             f"acknowledged messages intact; {total:,} messages in the topic")
        summary = {"messages": got, "seconds": elapsed, "throughput": got / elapsed,
                   "latency_p50_us": pct[50], "latency_p99_us": pct[99],
                   "acked_before_kill": len(acked), "lost_after_kill": missing,
                   "reopen_ms": reopen * 1000, "mean_latency_us": statistics.fmean(lat_us)}
        echo("ok: nothing lost" if missing == 0 else f"FAILED: {missing} acknowledged messages lost")
        return summary
    finally:
        if tmp is not None:
            tmp.cleanup()
