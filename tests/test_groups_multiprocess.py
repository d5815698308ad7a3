"""Consumer groups across real processes: partition ownership with a standby
and a SIGKILLed owner; a queue-mode worker SIGKILLed mid-flight; per-key order
across a rebalance.  Children report over stdout, line by line; the parent
waits on those lines (events), never on sleeps."""

import json
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import pyqueue

from conftest import CHILD_CWD, child_env

CHILD_ENV = child_env()


def spawn(code, *args):
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=CHILD_ENV, cwd=CHILD_CWD)


class Lines:
    """Read JSON lines from several children until a condition holds.  Reads
    raw bytes (os.read) so that no line waits in a buffer select() cannot see."""

    def __init__(self, procs):
        self.sel = selectors.DefaultSelector()
        self.partial = {}
        for p in procs:
            self.add(p)

    def add(self, proc):
        self.partial[proc.pid] = b""
        self.sel.register(proc.stdout, selectors.EVENT_READ, proc)

    def remove(self, proc):
        self.sel.unregister(proc.stdout)

    def drain(self, proc, on_line):
        """Everything a finished child still had in its pipe, then forget it."""
        self.sel.unregister(proc.stdout)
        rest = self.partial[proc.pid] + proc.stdout.read()
        for line in rest.split(b"\n"):
            if line.strip():
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue                    # a line cut short by the kill
                on_line(proc, msg)

    def until(self, on_line, done, timeout=120):
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the children"
            for key, _ in self.sel.select(timeout=left):
                proc = key.data
                chunk = os.read(key.fileobj.fileno(), 65536)
                if not chunk:
                    self.sel.unregister(key.fileobj)
                    continue
                *lines, self.partial[proc.pid] = (self.partial[proc.pid] + chunk).split(b"\n")
                for line in lines:
                    on_line(proc, json.loads(line))


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()


MEMBER = """
import json, os, sys, pyqueue
b = pyqueue.open(sys.argv[1])
c = b.topic("t").consumer("g", session_timeout=30)
last = None
while True:
    c.poll(timeout=0.05)
    a = c.assignment()
    if a != last:
        print(json.dumps(a), flush=True)
        last = a
"""


def test_seven_members_six_partitions_standby_takes_over(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        b.topic("t", partitions=6)
    procs = [spawn(MEMBER, path) for _ in range(7)]
    try:
        lines = Lines(procs)
        latest = {}

        def record(proc, assignment):
            latest[proc.pid] = assignment

        def settled():
            live = {pid: a for pid, a in latest.items() if pid in alive}
            owned = [p for a in live.values() for p in a]
            return (len(live) == len(alive) and sorted(owned) == list(range(6))
                    and sum(1 for a in live.values() if not a) == len(alive) - 6)

        alive = {p.pid for p in procs}
        lines.until(record, settled)
        standby = [pid for pid, a in latest.items() if not a]
        assert len(standby) == 1

        victim = next(p for p in procs if latest[p.pid] == [0] or 0 in latest[p.pid])
        lost = latest[victim.pid]
        lines.remove(victim)
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        alive.discard(victim.pid)
        lines.until(record, lambda: settled() and latest[standby[0]] != [])
        assert latest[standby[0]] == lost         # sticky: only the dead owner's partitions moved
    finally:
        stop(procs)


WORKER = """
import json, sys, pyqueue
b = pyqueue.open(sys.argv[1])
c = b.topic("jobs").consumer("workers", mode="queue", visibility_timeout=60)
hold = sys.argv[2] == "hold"
while True:
    msgs = c.poll_batch(5, timeout=0.2)
    if hold and msgs:
        print(json.dumps({"held": [[m.partition, m.offset, m.delivery_count] for m in msgs]}), flush=True)
        sys.stdin.readline()                  # mid-flight until killed
    for m in msgs:
        m.ack()
        print(json.dumps({"acked": [m.partition, m.offset, m.delivery_count]}), flush=True)
"""


def test_queue_worker_killed_mid_flight_loses_nothing(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        t = b.topic("jobs", partitions=3)
        for i in range(300):
            t.send(b"job-%d" % i)
    victim = spawn(WORKER, path, "hold")
    held = []
    acked = {}
    procs = [victim]
    try:
        lines = Lines([victim])

        def on_line(proc, msg):
            if "held" in msg:
                held.extend(tuple(x) for x in msg["held"])
            else:
                p, o, dc = msg["acked"]
                acked.setdefault((p, o), []).append(dc)

        lines.until(on_line, lambda: bool(held))
        lines.remove(victim)
        workers = [spawn(WORKER, path, "work") for _ in range(2)]
        procs += workers
        for w in workers:
            lines.add(w)
        lines.until(on_line, lambda: len(acked) >= 150)       # the survivors are busy...
        victim.send_signal(signal.SIGKILL)                   # ...when the holder dies
        victim.wait()
        lines.until(on_line, lambda: len(acked) == 300)
        stop(workers)
    finally:
        stop(procs)
    assert set(acked) == {(p, o) for p in range(3) for o in range(100)}
    for p, o, _dc in held:
        assert max(acked[(p, o)]) >= 2                    # redelivered after the kill
    with pyqueue.open(path) as b:
        c = b.topic("jobs").consumer("workers", mode="queue")
        assert c.poll(timeout=0.2) is None                # acked messages never return
        assert c.lag() == {0: 0, 1: 0, 2: 0}


STREAM_READER = """
import json, sys, pyqueue
b = pyqueue.open(sys.argv[1])
c = b.topic("events").consumer("readers", auto_commit_interval=0)
n = 0
while True:
    for m in c.poll_batch(50, timeout=0.2):
        print(json.dumps([m.key.decode(), int(m.value)]), flush=True)
        m.ack()
        n += 1
        if n % 100 == 0:
            c.commit()
"""


def test_per_key_order_across_a_rebalance(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        t = b.topic("events", partitions=4)
        for i in range(2000):
            t.send(b"%d" % i, key=b"key-%d" % (i % 25))
    first = spawn(STREAM_READER, path)
    seen = {"first": {}, "second": {}}
    procs = [first]
    try:
        lines = Lines([first])
        count = [0]

        def on_line(proc, msg):
            who = "first" if proc is first else "second"
            seen[who].setdefault(msg[0], []).append(msg[1])
            count[0] += 1

        lines.until(on_line, lambda: count[0] >= 700)
        first.send_signal(signal.SIGKILL)                    # uncommitted work comes again
        first.wait()
        lines.drain(first, on_line)          # what it delivered before the kill, still in the pipe
        second = spawn(STREAM_READER, path)
        procs.append(second)
        lines.add(second)
        lines.until(on_line, lambda: sum(map(len, seen["second"].values())) > 0 and
                    set().union(*[set(v) for d in seen.values() for v in d.values()]) >= set(range(2000)))
    finally:
        stop(procs)
    for who in seen:
        for key, values in seen[who].items():
            assert values == sorted(values), (who, key)       # in order within each reader
    for key, values in seen["second"].items():
        before = seen["first"].get(key, [])
        # the second reader resumes at or before where the first stopped: nothing skipped
        assert not before or values[0] <= before[-1] + 25
