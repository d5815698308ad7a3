"""`pyqueue bench`: a quick side-by-side run of pyqueue and SQLite (the
standard library's sqlite3) on this machine's disk, with ratios.

Like is compared with like: pyqueue with fsync="interval" against SQLite in
WAL mode with synchronous=NORMAL (neither fsyncs each message; both keep a
message whose call returned through a process crash); one message per call
against one transaction per message; batches of 1000 against one
transaction of 1000 rows; reads of 1000 against SELECTs of 1000 in id order;
a queue-mode take of 100 with an ack per message against a transaction that
selects 100 rows and deletes them.  Each case runs for a time budget (or a
message cap) in a fresh temporary directory; the figure is messages per
second of that one run, so it is a quick look, not a measurement to quote
(bench/compare.py repeats, interleaves and records).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
import time
from typing import Any, Callable, Optional

import click

import pyqueue
from pyqueue.commands.common import ByteSize, console, embedded_only, human_bytes

BATCH = 1000
TAKE = 100


def _run(budget: float, cap: int, step: Callable[[int], int]) -> tuple[int, float]:
    """Call step(room) until it returns 0, `cap` messages are done or `budget`
    seconds have passed; (messages, seconds)."""
    n = 0
    t0 = time.perf_counter()
    while n < cap:
        k = step(cap - n)
        if k == 0:
            break
        n += k
        if time.perf_counter() - t0 >= budget:
            break
    return n, time.perf_counter() - t0


class PyQueueSide:
    def __init__(self, path: str, value: bytes) -> None:
        self.broker = pyqueue.open(path, fsync="interval")
        self.topic = self.broker.topic("bench")
        self.value = value
        self.batch = [value] * BATCH
        self.pos = 0
        self.consumer: Any = None

    def send_each(self, _room: int) -> int:
        self.topic.send(self.value, partition=0)
        return 1

    def send_batch(self, room: int) -> int:
        return len(self.topic.send_batch(self.batch[:room], partition=0).offsets)

    def read_batch(self, room: int) -> int:
        got = self.topic.read(0, self.pos, min(BATCH, room))
        self.pos += len(got)
        return len(got)

    def take_and_ack(self, room: int) -> int:
        if self.consumer is None:
            self.consumer = self.topic.consumer("bench", mode="queue")
        msgs = self.consumer.poll_batch(min(TAKE, room), timeout=0)
        for m in msgs:
            m.ack()
        return len(msgs)

    def close(self) -> None:
        if self.consumer is not None:
            self.consumer.close()
        self.broker.close()


class SQLiteSide:
    def __init__(self, path: str, value: bytes) -> None:
        self.con = sqlite3.connect(os.path.join(path, "queue.db"), isolation_level=None)   # autocommit
        self.con.execute("PRAGMA journal_mode=WAL")
        self.con.execute("PRAGMA synchronous=NORMAL")
        self.con.execute("CREATE TABLE q (id INTEGER PRIMARY KEY, value BLOB NOT NULL)")
        self.value = value
        self.rows = [(value,)] * BATCH
        self.last = 0

    def send_each(self, _room: int) -> int:
        self.con.execute("INSERT INTO q (value) VALUES (?)", (self.value,))
        return 1

    def send_batch(self, room: int) -> int:
        rows = self.rows[:room]
        self.con.execute("BEGIN")
        self.con.executemany("INSERT INTO q (value) VALUES (?)", rows)
        self.con.execute("COMMIT")
        return len(rows)

    def read_batch(self, room: int) -> int:
        rows = self.con.execute("SELECT id, value FROM q WHERE id > ? ORDER BY id LIMIT ?",
                                (self.last, min(BATCH, room))).fetchall()
        if rows:
            self.last = rows[-1][0]
        return len(rows)

    def take_and_ack(self, room: int) -> int:
        self.con.execute("BEGIN IMMEDIATE")
        rows = self.con.execute("SELECT id, value FROM q ORDER BY id LIMIT ?", (min(TAKE, room),)).fetchall()
        if rows:
            self.con.execute("DELETE FROM q WHERE id <= ?", (rows[-1][0],))
        self.con.execute("COMMIT")
        return len(rows)

    def close(self) -> None:
        self.con.close()


CASES = [
    ("send, one per call", "send()", "INSERT, one transaction each", "send_each"),
    ("send, batches of 1000", "send_batch()", "executemany, one transaction", "send_batch"),
    ("read, 1000 per call", "read() by offset", "SELECT ... LIMIT 1000", "read_batch"),
    ("take 100 and ack each", "queue-mode poll_batch + ack", "SELECT + DELETE, one transaction", "take_and_ack"),
]


@click.command()
@click.option("--seconds", type=click.FloatRange(min=0.01, max=60), default=0.5, show_default=True,
              help="Time budget of each case and side.")
@click.option("--size", type=ByteSize(), default=100, show_default=True, help="Value size in bytes.")
@click.option("--messages", type=click.IntRange(min=1000), default=500_000, show_default=True,
              help="At most this many messages per case and side.")
@click.option("--dir", "where", type=click.Path(file_okay=False, exists=True), default=None,
              help="Where to make the temporary directory (default: the system's).")
def bench(seconds: float, size: int, messages: int, where: Optional[str]) -> None:
    """Run pyqueue and SQLite side by side for a few seconds and print
    messages per second with the ratio pyqueue / SQLite."""
    # Only the group's --path is looked at: $PYQUEUE_PATH plays no part in a bench.
    embedded_only("bench", "it measures pyqueue against sqlite3 on this machine's disk", from_env=False)
    if not 1 <= size <= 1 << 20:
        raise click.BadParameter("must be 1 B .. 1 MiB", param_hint="--size")
    value = os.urandom(size)
    root = tempfile.mkdtemp(prefix="pyqueue-bench-", dir=where)
    err = console(stderr=True)
    results: list[tuple[str, str, str, float, float]] = []
    try:
        os.makedirs(os.path.join(root, "pyqueue"))
        os.makedirs(os.path.join(root, "sqlite"))
        pq = PyQueueSide(os.path.join(root, "pyqueue"), value)
        sq = SQLiteSide(os.path.join(root, "sqlite"), value)
        try:
            written = {"pq": 0, "sq": 0}
            with err.status("") as status:
                for label, pq_what, sq_what, method in CASES:
                    status.update(f"bench: {label}")
                    cap = messages
                    if method in ("read_batch", "take_and_ack"):
                        cap = min(messages, written["pq"], written["sq"])   # the same messages on both sides
                    n_pq, t_pq = _run(seconds, cap, getattr(pq, method))
                    n_sq, t_sq = _run(seconds, cap, getattr(sq, method))
                    if method.startswith("send"):
                        written["pq"] += n_pq
                        written["sq"] += n_sq
                    results.append((label, pq_what, sq_what, n_pq / t_pq if t_pq else 0.0,
                                    n_sq / t_sq if t_sq else 0.0))
        finally:
            pq.close()
            sq.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    _print(results, size, seconds)


def _print(results: list[tuple[str, str, str, float, float]], size: int, seconds: float) -> None:
    from rich.table import Table
    table = Table("case", "pyqueue msgs/s", "sqlite3 msgs/s", "pyqueue / sqlite3", "pyqueue", "sqlite3",
                  title=f"pyqueue against sqlite3 {sqlite3.sqlite_version}: {human_bytes(size)} values, "
                        f"{seconds:g} s per case, one run", title_justify="left")
    for col in table.columns[1:4]:
        col.justify = "right"
    for label, pq_what, sq_what, r_pq, r_sq in results:
        ratio = f"{r_pq / r_sq:,.1f}x" if r_sq else "-"
        table.add_row(label, f"{r_pq:,.0f}", f"{r_sq:,.0f}", ratio, pq_what, sq_what)
    out = console()
    out.print(table)
    out.print("pyqueue fsync=\"interval\"; SQLite WAL, synchronous=NORMAL: neither fsyncs each message. "
              "A quick look on a possibly busy machine; bench/compare.py measures properly.")
