"""Consumer groups under SIGKILL: real processes, real files, no mocks.

Queue-mode workers, lease/ack/nack hammers, stream-mode members and dedup
producers are killed at random moments and replaced.  A moment is chosen by
the lines a child reports, or by stopping children (SIGSTOP) and reading the
lock words in the shared files until one is caught holding a lock; no sleep
waits for anything.  Afterwards the group's shared state must account for
every message: what was acked never comes back, what was not is delivered
again, the counters of each partition agree with what a fresh poll gets, and
a dedup id with a receipt names exactly one record in the log.

Children report one fact per line on stdout.  Times they report are
time.monotonic_ns(), one clock for every process of the machine, taken on the
safe side of the event they bound (before an ack starts, after a poll
returns), so a comparison between processes never depends on the order in
which the parent happens to read their pipes.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import struct
import threading
import time
from collections import defaultdict
from typing import Callable, Optional

import pyqueue
from pyqueue._native import GROUP_QUEUE

FUTEX_TID_MASK = 0x3FFFFFFF       # robust futex word: owner tid in bits 0..29 (futex(2))
FUTEX_OWNER_DIED = 0x40000000
GROUP_HEADER = 8192               # docs/FORMAT.md, "Consumer group"
GROUP_PART = 128
GROUP_ENTRY = 32
DEDUP_LOCK = 64                   # the dedup table's lock: native/dedup.c header


class Mux:
    """The lines of several children as one stream of events, for waiting on
    "k more lines from this child" or "until this holds".  Every line goes
    through `on_line` as it is taken, whichever wait takes it.  The final
    analysis reads each child's complete `lines` instead: a killed child's
    output is whole once Child.kill() returns."""

    def __init__(self, on_line: Callable[[object, str], None] = lambda c, l: None) -> None:
        self._queue: "queue.Queue[tuple[object, Optional[str]]]" = queue.Queue()
        self.on_line = on_line
        self.ended: set[int] = set()              # pids whose stdout closed

    def add(self, child) -> None:
        def pump() -> None:
            while True:
                try:
                    line = child.line(timeout=3600)
                except AssertionError:          # EOF: killed or exited
                    self._queue.put((child, None))
                    return
                self._queue.put((child, line))
        threading.Thread(target=pump, daemon=True).start()

    def _take(self, deadline: float, what: str) -> tuple[object, Optional[str]]:
        left = deadline - time.monotonic()
        try:
            child, line = self._queue.get(timeout=max(0.0, left))
        except queue.Empty:
            raise AssertionError(f"timed out waiting for {what}") from None
        if line is None:
            self.ended.add(child.pid)
        else:
            self.on_line(child, line)
        return child, line

    def drain(self) -> None:
        """Take every line already read, without waiting."""
        while not self._queue.empty():
            self._take(time.monotonic(), "nothing")

    def until(self, done: Callable[[], bool], timeout: float = 30.0, what: str = "the children") -> None:
        deadline = time.monotonic() + timeout
        while not done():
            self._take(deadline, what)

    def lines_from(self, child, n: int, timeout: float = 30.0) -> None:
        """Wait until `child` wrote n more lines (or ended)."""
        deadline = time.monotonic() + timeout
        while n > 0 and child.pid not in self.ended:
            c, line = self._take(deadline, f"{n} more lines from child {child.pid}")
            if c is child:
                if line is None:
                    return
                n -= 1


def parse(lines: list[str], tag: str) -> list[list[int]]:
    return [[int(x) for x in line.split()[1:]] for line in lines if line.split(" ", 1)[0] == tag]


# ---------------------------------------------------------------- 1. queue-mode workers killed at random

# argv: broker, topic, group, ordered (0/1).  Lines: "up"; per poll one line
# per message "d p o delivery_count t_after_poll"; per ack "a p o count
# t_before_ack"; "lost p o count" for LeaseLost; "bye" after a clean close
# (SIGTERM ends the loop).
QUEUE_WORKER = r'''
import os, signal, sys, time, pyqueue
path, topic, group, ordered = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
def emit(text):
    view = memoryview(text.encode())
    while view:
        view = view[os.write(1, view):]
b = pyqueue.open(path, fsync="never")
c = b.topic(topic).consumer(group, mode="queue", visibility_timeout=60, session_timeout=60,
                            ordered=ordered, max_in_flight=256)
emit("up\n")
while not stop:
    msgs = c.poll_batch(8, timeout=0.1)
    t = time.monotonic_ns()
    emit("".join("d %d %d %d %d\n" % (m.partition, m.offset, m.delivery_count, t) for m in msgs))
    for m in msgs:
        time.sleep(0.001)                         # the handler's work
        t = time.monotonic_ns()
        try:
            m.ack()
        except pyqueue.LeaseLost:
            emit("lost %d %d %d\n" % (m.partition, m.offset, m.delivery_count))
            continue
        emit("a %d %d %d %d\n" % (m.partition, m.offset, m.delivery_count, t))
c.close()
b.close()
emit("bye\n")
'''


def run_queue_workers(broker_path: str, children, topic: str, group: str, *, ordered: bool,
                      batches: list[list[tuple[bytes, Optional[bytes]]]], kills: int, seed: str):
    """Four workers drain `topic` while the parent sends `batches` (the first
    before they start, then one per round) and SIGKILLs a random worker per
    round, replacing it.  Once every message was acked the survivors stop.
    Returns (every worker, the killed ones, {(p, o): key} of what was sent,
    the group's stats, its partition_info per partition, the end offsets,
    what a fresh consumer then polls)."""
    rng = random.Random(seed)
    receipts: dict[tuple[int, int], Optional[bytes]] = {}
    acked: set[tuple[int, int]] = set()

    def on_line(child, line: str) -> None:
        if line.startswith("a "):
            p, o = map(int, line.split()[1:3])
            acked.add((p, o))

    mux = Mux(on_line)

    with pyqueue.open(broker_path, fsync="never") as broker:
        t = broker.topic(topic, partitions=3)
        for value, key in batches[0]:
            r = t.send(value, key=key)
            receipts[(r.partition, r.offset)] = key
        every, live, killed = [], [], []

        def spawn():
            w = children.spawn(QUEUE_WORKER, broker_path, topic, group, int(ordered))
            mux.add(w)
            every.append(w)
            live.append(w)

        for _ in range(4):
            spawn()
        for rnd in range(kills):
            for value, key in batches[1 + rnd] if 1 + rnd < len(batches) else []:
                r = t.send(value, key=key)
                receipts[(r.partition, r.offset)] = key
            victim = rng.choice(live)
            mux.lines_from(victim, rng.randrange(1, 40))    # a random moment of its work
            victim.kill()
            live.remove(victim)
            killed.append(victim)
            spawn()
        for batch in batches[1 + kills:]:
            for value, key in batch:
                r = t.send(value, key=key)
                receipts[(r.partition, r.offset)] = key
        total = len(receipts)
        try:
            mux.until(lambda: len(acked) >= total, timeout=40, what=f"acks of all {total} messages")
        except AssertionError:
            pass                                   # check_queue_history says which and why
        for w in live:
            w.proc.send_signal(signal.SIGTERM)
        for w in live:
            assert w.wait() == 0 and w.lines[-1] == "bye", w.describe()
        stats = broker.stats()["topics"][topic]["groups"][group]
        infos = [t._group(group, GROUP_QUEUE, 256).partition_info(p) for p in range(3)]
        ends = [t.offsets(p)[1] for p in range(3)]
        fresh = t.consumer(group, mode="queue", max_in_flight=256)
        again = fresh.poll(timeout=0.3)
        fresh.close()
    return every, killed, receipts, stats, infos, ends, again


def check_queue_history(every, killed, receipts, stats, infos, ends, again) -> dict[tuple[int, int], list]:
    """The checks common to the unordered and ordered rounds.  Returns the
    reported acks {(p, o): [(count, t_before_ack)]}."""
    deliveries: dict[tuple[int, int], list[int]] = defaultdict(list)   # (p, o) -> counts
    acks: dict[tuple[int, int], list[tuple[int, int]]] = defaultdict(list)
    lost = []
    for w in every:
        for p, o, n, _t in parse(w.lines, "d"):
            deliveries[(p, o)].append(n)
        for p, o, n, t in parse(w.lines, "a"):
            acks[(p, o)].append((n, t))
        lost += parse(w.lines, "lost")
    assert not lost, f"LeaseLost with a 60 s visibility: a live worker was declared dead: {lost[:5]}"
    for key, counts in deliveries.items():
        assert len(counts) == len(set(counts)), f"{key} delivered twice with the same count: {counts}"
    twice = {k: v for k, v in acks.items() if len(v) > 1}
    assert not twice, f"messages acked twice (delivered again after an ack): {list(twice.items())[:5]}"
    after = {k: (acks[k][0][0], max(deliveries[k])) for k in acks if max(deliveries[k]) > acks[k][0][0]}
    assert not after, f"delivered again after the ack was reported (ack count, later count): {list(after.items())[:5]}"

    # What each victim held when it died comes back with a higher count,
    # except at most the one message it was acking (acked, not yet reported).
    unreported = set()
    redelivered = 0
    for v in killed:
        mine = {(p, o): n for p, o, n, _t in parse(v.lines, "d")}
        done = {(p, o) for p, o, _n, _t in parse(v.lines, "a")}
        held = {k: n for k, n in mine.items() if k not in done and max(deliveries[k]) == n}
        back = len(mine) - len(done) - len(held)
        redelivered += back
        assert len(held) <= 1, (f"worker {v.pid} died holding {sorted(held)}; they never came back "
                                f"(only the one being acked may have been finished)")
        unreported |= set(held)
    missing = set(receipts) - set(acks)
    assert missing <= unreported, f"never acked: {sorted(missing - unreported)[:10]}"
    assert redelivered > 0, "no victim died holding a lease: the redelivery path was not exercised"

    assert stats["lag"] == 0 and stats["in_flight"] == 0, stats
    for p, info in enumerate(infos):
        assert info["committed"] == ends[p], (p, info, ends[p])
        assert (info["ready"], info["leased"], info["delayed"], info["done"]) == (0, 0, 0, 0), (p, info)
    assert again is None, f"a fresh consumer got {again!r} after everything was acked"
    return acks


def test_queue_workers_killed_at_random_lose_nothing(broker_path, children):
    """Four queue-mode workers on a 3-partition topic of 3000 messages; eight
    times a random worker is SIGKILLed mid-work and replaced.  Every message
    is acked; no message is acked twice or delivered again once its ack was
    reported; each (message, delivery count) is delivered once; what a victim
    held comes back (its death is found by liveness, not by the 60 s
    visibility timeout); the group ends with lag 0, empty windows, and a fresh
    consumer gets nothing."""
    batches = [[(b"job-%d" % i, None) for i in range(1000)]]
    batches += [[(b"job-%d-%d" % (r, i), None) for i in range(250)] for r in range(8)]
    result = run_queue_workers(broker_path, children, "jobs", "workers", ordered=False,
                               batches=batches, kills=8, seed="queue-kills")
    check_queue_history(*result)


def test_ordered_queue_keeps_each_key_in_order_across_kills(broker_path, children):
    """The same with ordered=True and 25 keys: besides the checks above, a
    key's acks come in offset order, and no message is delivered before every
    earlier message of its key was acked (the ack started before the later
    delivery's poll returned), even when the worker holding a key dies."""
    keys = [b"key-%d" % k for k in range(25)]
    batches = [[(b"m-%d" % i, keys[i % 25]) for i in range(600)]]
    batches += [[(b"m-%d-%d" % (r, i), keys[(i * 7 + r) % 25]) for i in range(150)] for r in range(6)]
    every, killed, receipts, stats, infos, ends, again = run_queue_workers(
        broker_path, children, "fifo", "fifo", ordered=True, batches=batches, kills=6, seed="fifo-kills")
    acks = check_queue_history(every, killed, receipts, stats, infos, ends, again)

    by_key: dict[bytes, list[tuple[int, int]]] = defaultdict(list)   # key -> [(p, o)]
    for (p, o), key in receipts.items():
        by_key[key].append((p, o))
    first_poll: dict[tuple[int, int], int] = {}
    for w in every:
        for p, o, _n, t in parse(w.lines, "d"):
            first_poll[(p, o)] = min(t, first_poll.get((p, o), t))
    for key, msgs in by_key.items():
        msgs.sort()
        assert len({p for p, _ in msgs}) == 1, f"key {key!r} spread over partitions"
        acked = sorted((acks[m][0][1], m[1]) for m in msgs if m in acks)
        offsets = [o for _t, o in acked]
        assert offsets == sorted(offsets), f"key {key!r} acked out of offset order: {offsets}"
        latest_ack, by = 0, None                   # the last ack start among earlier messages
        for m in msgs:
            assert latest_ack < first_poll[m], (
                f"key {key!r}: {m} was delivered before the ack of {by} started")
            if m in acks and acks[m][0][1] > latest_ack:
                latest_ack, by = acks[m][0][1], m


# ---------------------------------------------------------------- 2. killed while holding a partition lock

# argv: broker, seed, ordered.  Leases in batches and acks (25 %), nacks
# (55 %, some with a delay), extends then acks (5 %) or drops (15 %: the lease
# expires) in a tight loop: the windows stay long, and so do the scans of
# them under the partition lock.  Lines: "up"; per poll "a p o count" per
# ack; "bye" after SIGTERM and a clean close.
HAMMER = r'''
import os, random, signal, sys, pyqueue
path, seed, ordered = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
rng = random.Random(seed)
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
b = pyqueue.open(path, fsync="never")
c = b.topic("hot").consumer("g", mode="queue", visibility_timeout=0.5, session_timeout=60,
                            ordered=ordered, max_in_flight=4096)
os.write(1, b"up\n")
while not stop:
    out = []
    for m in c.poll_batch(32, timeout=0.05):
        r = rng.random()
        try:
            if r < 0.55:
                m.nack(delay=0.0 if r < 0.45 else 0.01)
            elif r < 0.85:
                if r >= 0.80:
                    m.extend(1.0)
                m.ack()
                out.append("a %d %d %d\n" % (m.partition, m.offset, m.delivery_count))
            # else dropped: the lease expires
        except pyqueue.LeaseLost:
            pass                              # expired and taken by another: legal here
    if out:
        os.write(1, "".join(out).encode())
c.close()
b.close()
os.write(1, b"bye\n")
'''


def pause(child) -> bool:
    """SIGSTOP the child and wait until it is stopped; False if it had ended
    (its exit status is then handed to its Popen)."""
    try:
        os.kill(child.pid, signal.SIGSTOP)
    except ProcessLookupError:
        return False
    try:
        _pid, status = os.waitpid(child.pid, os.WUNTRACED)
    except ChildProcessError:                 # reaped by its Popen meanwhile
        return False
    if os.WIFSTOPPED(status):
        return True
    child.proc.returncode = os.waitstatus_to_exitcode(status)
    return False


def lock_owners(fd: int, partitions: int, window: int) -> list[int]:
    """The futex word of each partition lock of a group file, read while the
    children are stopped (0 = free; else owner tid and flag bits)."""
    stride = GROUP_PART + GROUP_ENTRY * window
    return [int.from_bytes(os.pread(fd, 4, GROUP_HEADER + p * stride), "little") for p in range(partitions)]


def window_disagrees(fd: int, p: int, window: int) -> bool:
    """Whether partition p's counters (ready, leased, delayed, done) differ
    from a count of the states of its window's entries, read from the group
    file (docs/FORMAT.md, "Consumer group"): its lock holder is mid-update."""
    stride = GROUP_PART + GROUP_ENTRY * window
    block = os.pread(fd, stride, GROUP_HEADER + p * stride)
    committed, nxt = struct.unpack_from("<QQ", block, 64)
    counters = list(struct.unpack_from("<4I", block, 104))
    counted = [0, 0, 0, 0]                         # states 1..4: ready, leased, delayed, done
    for o in range(committed, nxt) if nxt - committed <= window else ():
        state = block[GROUP_PART + (o % window) * GROUP_ENTRY + 26]
        if 1 <= state <= 4:
            counted[state - 1] += 1
    return counted != counters or nxt - committed != sum(counters)


def holds(word: int, child) -> bool:
    """Whether the futex word names a thread of `child` as the lock's owner."""
    return bool(word & FUTEX_TID_MASK) and (word & FUTEX_TID_MASK) in tids_of(child.pid)


def tids_of(pid: int) -> set[int]:
    try:
        return {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    except FileNotFoundError:
        return set()


def test_member_killed_holding_a_partition_lock(broker_path, children):
    """Hammers lease, ack, nack and extend in tight loops on a 2-partition
    queue group (half of them ordered, whose leases scan the whole window
    under the lock).  Again and again all of them are stopped and the group
    file read: a hammer that holds a partition lock is SIGKILLed there (the
    kernel marks the lock owner-died: checked), always when it is caught
    mid-update (its partition's counters disagree with the entries' states:
    a few instructions wide), sometimes otherwise; the rest resume and the
    next locker repairs the lock (EOWNERDEAD: counters recounted).  A few
    hammers are also killed outside the lock.  Afterwards the counters of
    each partition cover its window exactly, a fresh consumer gets exactly
    the unfinished messages they count, no acked message comes back, and
    once those are acked the group has lag 0: nothing was lost."""
    window, parts = 4096, 2
    keys = [b"k%d" % k for k in range(64)]
    rng = random.Random("lock-holder")
    progress = [0]
    up: set[int] = set()

    def on_line(child, line: str) -> None:
        progress[0] += 1
        if line == "up":
            up.add(child.pid)

    mux = Mux(on_line)
    with pyqueue.open(broker_path, fsync="never") as broker:
        t = broker.topic("hot", partitions=parts)
        for i in range(20000):
            t.send(b"v%d" % i, key=keys[i % 64])
        g = t._group("g", GROUP_QUEUE, window)     # held open all along: no sole-opener reset
        gfd = os.open(os.path.join(broker_path, "topics", "hot", "groups", "g.group"), os.O_RDONLY)
        live, every = [], []
        serial = [0]

        def spawn():
            serial[0] += 1
            h = children.spawn(HAMMER, broker_path, f"h{serial[0]}", serial[0] % 2)
            mux.add(h)
            live.append(h)
            every.append(h)
            return h

        try:
            for _ in range(4):
                spawn()
            held_kills, mid_kills, attempts, sent = 0, 0, 0, 20000
            budget = time.monotonic() + 60         # ends early once enough kills were made
            while (held_kills < 10 or mid_kills < 3) and attempts < 4000 and time.monotonic() < budget:
                attempts += 1
                for h in live:
                    assert pause(h), h.describe()
                words = lock_owners(gfd, parts, window)
                holder = next((h for h in live if any(holds(w, h) for w in words)), None)
                held = [p for p, w in enumerate(words) if holder and holds(w, holder)]
                mid = any(window_disagrees(gfd, p, window) for p in held)
                victim = holder if mid or (holder and rng.random() < 0.3) else None
                if victim is None and rng.random() < 0.01:
                    victim, held = rng.choice(live), []
                if victim is not None:
                    victim.kill()
                    live.remove(victim)
                    after = lock_owners(gfd, parts, window)
                    for p in held:
                        assert after[p] & FUTEX_OWNER_DIED, (
                            f"partition {p}: lock word {after[p]:#x} after its owner died")
                    held_kills += bool(held)
                    mid_kills += mid and victim is holder
                for h in live:
                    os.kill(h.pid, signal.SIGCONT)
                if victim is not None:
                    spawn()
                # Keep them busy (idle hammers hold no lock), then let them run.
                backlog = sum(t.offsets(p)[1] - (g.partition_info(p)["committed"] or 0) for p in range(parts))
                if backlog < 10000:                    # never drained between two looks
                    for _ in range(20000 - backlog):
                        t.send(b"v%d" % sent, key=keys[sent % 64])
                        sent += 1
                seen = progress[0] + rng.randrange(1, 6)   # a random moment, counted in their reports
                mux.until(lambda: progress[0] >= seen, timeout=30, what="hammers to make progress")
            assert held_kills >= 3, (f"in {attempts} tries only {held_kills} hammers were caught "
                                     f"holding a partition lock")
            mux.until(lambda: all(h.pid in up for h in live), what="the last hammers to start")
            for h in live:
                h.proc.send_signal(signal.SIGTERM)
            for h in live:
                assert h.wait() == 0 and h.lines[-1] == "bye", h.describe()
        finally:
            os.close(gfd)

        acked: dict[tuple[int, int], int] = {}
        for h in every:
            for p, o, _n in parse(h.lines, "a"):
                assert (p, o) not in acked, f"{(p, o)} acked twice: it came back after an ack"
                acked[(p, o)] = 1
        ends = [t.offsets(p)[1] for p in range(parts)]
        infos = [g.partition_info(p) for p in range(parts)]
        for p, info in enumerate(infos):
            span = info["next"] - info["committed"]
            counted = info["ready"] + info["leased"] + info["delayed"] + info["done"]
            assert counted == span, f"partition {p}: counters {info} cover {counted} of {span} entries"
        want = [infos[p]["next"] - infos[p]["committed"] - infos[p]["done"] + ends[p] - infos[p]["next"]
                for p in range(parts)]

        fresh = t.consumer("g", mode="queue", visibility_timeout=60, max_in_flight=window)
        drained: dict[int, set[int]] = defaultdict(set)
        while True:
            msgs = fresh.poll_batch(4096, timeout=2.0)   # dead leases: reaped; drops: expire in 0.5 s
            if not msgs:
                break
            for m in msgs:
                assert m.offset not in drained[m.partition], f"{(m.partition, m.offset)} leased twice"
                assert (m.partition, m.offset) not in acked, f"{(m.partition, m.offset)} came back after its ack"
                drained[m.partition].add(m.offset)
                m.ack()
        for p in range(parts):
            assert len(drained[p]) == want[p], (
                f"partition {p}: a fresh consumer got {len(drained[p])} messages, the counters said {want[p]} "
                f"({infos[p]}, end {ends[p]})")
            info = g.partition_info(p)
            assert info["committed"] == ends[p], f"partition {p}: stuck at {info} below the end {ends[p]}: lost"
        assert broker.stats()["topics"]["hot"]["groups"]["g"]["lag"] == 0
        fresh.close()


# ---------------------------------------------------------------- 3. stream members joining and dying

# argv: broker.  Lines: "up"; "as t_before_poll t_after_poll rebalanced
# p,p,..." after a poll that changed the assignment or rebalanced (it may
# then have released and claimed a partition again), before that poll's
# deliveries; then "d p o" per delivered message (all acked; commits every
# 0.1 s); "bye" after SIGTERM and a clean close.
STREAM_MEMBER = r'''
import os, signal, sys, time, pyqueue
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
b = pyqueue.open(sys.argv[1], fsync="never")
c = b.topic("events").consumer("readers", session_timeout=60, auto_commit_interval=0.1)
os.write(1, b"up\n")
last, generation = None, c._generation
while not stop:
    t0 = time.monotonic_ns()
    msgs = c.poll_batch(50, timeout=0.05)
    t1 = time.monotonic_ns()
    a = c.assignment()
    rebalanced = c._generation != generation       # set by each rebalance of a poll
    out = []
    if a != last or rebalanced:
        out.append("as %d %d %d %s\n" % (t0, t1, rebalanced, ",".join(map(str, a))))
        last, generation = a, c._generation
    for m in msgs:
        out.append("d %d %d\n" % (m.partition, m.offset))
        m.ack()
    if out:
        os.write(1, "".join(out).encode())
c.close()
b.close()
os.write(1, b"bye\n")
'''


def test_stream_members_join_and_die_while_a_producer_appends(broker_path, children):
    """Stream-mode members of one group on a 4-partition topic join and are
    SIGKILLed again and again (between 1 and 6 alive: standbys included)
    while the parent appends.  From what each member reports: a partition is
    never held by two members at once (each member's certain holding period,
    from the poll that gained it to the poll that lost it or its kill, never
    overlaps another's); a member delivers only partitions it holds, and
    within one holding period a partition's offsets come one by one, in order,
    without gaps; after the churn stops every appended message was delivered
    at least once."""
    rng = random.Random("stream-churn")
    parts = 4
    delivered: dict[int, set[int]] = defaultdict(set)
    up: set[int] = set()
    progress = [0]

    def on_line(child, line: str) -> None:
        progress[0] += 1
        if line.startswith("d "):
            p, o = map(int, line.split()[1:])
            delivered[p].add(o)
        elif line == "up":
            up.add(child.pid)

    mux = Mux(on_line)
    ended_at: dict[int, int] = {}                  # pid -> monotonic_ns before its kill or stop
    every, live = [], []

    def spawn():
        m = children.spawn(STREAM_MEMBER, broker_path)
        mux.add(m)
        every.append(m)
        live.append(m)

    with pyqueue.open(broker_path, fsync="never") as broker:
        t = broker.topic("events", partitions=parts)
        sent = 0
        for _ in range(3):
            spawn()
        for rnd in range(30):
            for _ in range(150):
                t.send(b"%d" % sent)
                sent += 1
            if len(live) > 1 and (len(live) >= 6 or rng.random() < 0.55):
                victim = rng.choice(live)              # standbys write nothing: count anyone's lines
                seen = progress[0] + rng.randrange(1, 60)
                mux.until(lambda: progress[0] >= seen, what="members to deliver the new messages")
                ended_at[victim.pid] = time.monotonic_ns()
                victim.kill()
                live.remove(victim)
            else:
                spawn()
                mux.lines_from(every[-1], 1)          # "up": it joined
        while len(live) < 2:
            spawn()
        for _ in range(200):
            t.send(b"%d" % sent)
            sent += 1
        ends = [t.offsets(p)[1] for p in range(parts)]
        try:
            mux.until(lambda: all(len(delivered[p]) >= ends[p] for p in range(parts)), timeout=40,
                      what="every message to be delivered")
        except AssertionError:
            pass                                   # reported below, after the ownership checks
        mux.until(lambda: all(m.pid in up for m in live), what="the last members to start")
        stopped = time.monotonic_ns()
        for m in live:
            ended_at[m.pid] = stopped
            m.proc.send_signal(signal.SIGTERM)
        for m in live:
            assert m.wait() == 0 and m.lines[-1] == "bye", m.describe()

    periods: dict[int, list[tuple[int, int, int]]] = defaultdict(list)   # p -> [(start, end, pid)]
    for m in every:
        held: dict[int, int] = {}                  # p -> start of the certain holding period
        last: dict[int, int] = {}                  # p -> last offset delivered in this period
        for line in m.lines:
            word, *rest = line.split()
            if word == "as":
                t0, t1, rebalanced = int(rest[0]), int(rest[1]), rest[2] == "1"
                now = {int(x) for x in rest[3].split(",")} if len(rest) > 3 else set()
                for p in set(held) - (set() if rebalanced else now):
                    periods[p].append((held.pop(p), t0, m.pid))    # released during this poll:
                    last.pop(p, None)                              # held until t0 for certain
                for p in now - set(held):          # claimed during this poll: held from t1
                    held[p] = t1
            elif word == "d":
                p, o = int(rest[0]), int(rest[1])
                assert p in held, f"member {m.pid} delivered {p}:{o} outside its assignment"
                assert p not in last or o == last[p] + 1, (
                    f"member {m.pid}, partition {p}: offset {o} after {last[p]} in one holding period")
                last[p] = o
        for p, start in held.items():
            periods[p].append((start, ended_at[m.pid], m.pid))
    for p, spans in periods.items():
        spans.sort()
        for (s1, e1, pid1), (s2, e2, pid2) in zip(spans, spans[1:]):
            assert s2 >= e1, (f"partition {p} held by member {pid1} until {e1} and by member {pid2} "
                              f"from {s2}: {(e1 - s2) / 1e6:.3f} ms of double ownership")
    assert len({pid for spans in periods.values() for _s, _e, pid in spans}) > parts, \
        "partitions never moved between members"
    for p in range(parts):
        never = sorted(set(range(ends[p])) - delivered[p])
        assert not never, f"partition {p}: {len(never)} messages never delivered: {never[:10]}"


# ---------------------------------------------------------------- 4. dedup under kill

# argv: broker, tag, n_ids, n_send, value size.  Sends n_send ids drawn from
# id-0 .. id-(n_ids-1) (so producers share some) as dedup_id, the id also in a
# header and the producer's tag at the start of the value; "r id p o" per
# receipt; "done" at the end.
DEDUP_PRODUCER = r"""
import os, random, sys, pyqueue
path, tag, n_ids, n_send, size = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
ids = ["id-%d" % i for i in random.Random(tag).sample(range(n_ids), n_send)]
b = pyqueue.open(path, fsync="never")
t = b.topic("pay")
os.write(1, b"up\n")
for i in ids:
    value = (b"%-6s %-10s" % (tag.encode(), i.encode())) * (size // 17)
    r = t.send(value, headers={"id": i.encode()}, dedup_id=i)
    os.write(1, b"r %s %d %d\n" % (i.encode(), r.partition, r.offset))
b.close()
os.write(1, b"done\n")
"""


def test_dedup_ids_survive_killed_producers(broker_path, children):
    """Producers send dedup ids drawn from one pool (so they share some; the
    id also in a header; no key: round robin over 3 partitions) and are
    SIGKILLed, each at a random point of its run, and replaced.  Each victim
    is stopped again and again until it is caught holding the dedup table's
    lock (read from the file; the lock is held from the lookup, across the
    append, to the insert), on alternate kills only once its own record is
    already the last of a partition, i.e. between the append and the insert.
    After a reopen every id of the pool is sent once more: an id that is in
    the log must get back the receipt of that record and write nothing.  In
    the end every id is in the log exactly once, and every receipt any
    producer got names that record."""
    n_ids, n_send, parts, value_bytes = 30000, 2000, 3, 1024
    rng = random.Random("dedup-kills")
    with pyqueue.open(broker_path, fsync="never") as broker:
        broker.topic("pay", partitions=parts, dedup_window=600, segment_bytes=16 << 20)
    dedup_path = os.path.join(broker_path, "topics", "pay", "dedup")
    mux = Mux()
    live, every = [], []

    def spawn():
        c = children.spawn(DEDUP_PRODUCER, broker_path, f"p{len(every)}", n_ids, n_send, value_bytes)
        c.tag = f"p{len(every)}".encode()
        mux.add(c)
        live.append(c)
        every.append(c)

    for _ in range(3):
        spawn()
    kills, held_kills, window_kills = 0, 0, []
    dedup_fd = None
    watcher = pyqueue.open(broker_path, fsync="never")
    try:
        t = watcher.topic("pay")
        for k in range(40):
            if kills >= 12:
                break
            running = [c for c in live if c.pid not in mux.ended]
            if not running:
                spawn()
                continue
            victim = rng.choice(running)
            mux.lines_from(victim, rng.randrange(1, n_send // 2))
            live.remove(victim)
            appended, caught = None, False
            for _try in range(500):
                if not pause(victim):
                    break
                if dedup_fd is None and os.path.exists(dedup_path):
                    dedup_fd = os.open(dedup_path, os.O_RDONLY)
                if dedup_fd is not None and holds(int.from_bytes(os.pread(dedup_fd, 4, DEDUP_LOCK), "little"), victim):
                    # Nobody else appends while it holds the table lock.
                    last = [t.read(p, end - 1, 1)[0] for p in range(parts) if (end := t.offsets(p)[1])]
                    mine = [m for m in last if m.value.startswith(victim.tag + b" ")
                            and f"r {m.headers['id'].decode()} " not in "".join(victim.lines[-3:])]
                    if mine:
                        appended = mine[0].headers["id"].decode()
                    if mine or k % 2:
                        caught = True
                        break
                os.kill(victim.pid, signal.SIGCONT)
                resume = time.perf_counter_ns() + rng.randrange(0, 200_000)
                while time.perf_counter_ns() < resume:   # a random moment, not a wait for anything
                    pass
            if victim.returncode is None:
                victim.proc.send_signal(signal.SIGKILL)    # stopped or running: it dies here
            if victim.wait() == -signal.SIGKILL:
                kills += 1
                held_kills += caught
                if appended and not any(line.startswith(f"r {appended} ") for line in victim.lines):
                    window_kills.append(appended)          # appended, the send never returned
            else:                                          # it had finished first
                assert victim.returncode == 0 and victim.lines[-1] == "done", victim.describe()
            spawn()
    finally:
        watcher.close()
        if dedup_fd is not None:
            os.close(dedup_fd)
    for c in live:
        assert c.wait() == 0 and c.lines[-1] == "done", c.describe()
    assert kills >= 8, f"only {kills} producers were killed before they finished"
    assert held_kills >= 4, f"only {held_kills} producers were caught holding the dedup lock"

    receipts: dict[str, set[tuple[int, int]]] = defaultdict(set)
    for c in every:
        for line in c.lines:
            if line.startswith("r "):
                _r, i, p, o = line.split()
                receipts[i].add((int(p), int(o)))

    def log_ids(t) -> dict[str, list[tuple[int, int]]]:
        where: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for p in range(parts):
            start, end = t.offsets(p)
            o = start
            while o < end:
                msgs = t.read(p, o, 500)
                for m in msgs:
                    where[m.headers["id"].decode()].append((p, m.offset))
                o += len(msgs)
        return where

    with pyqueue.open(broker_path, fsync="never") as broker:
        t = broker.topic("pay")
        before = log_ids(t)
        resent = {}
        for n in range(n_ids):
            i = "id-%d" % n
            r = t.send(b"again", headers={"id": i.encode()}, dedup_id=i)
            resent[i] = (r.partition, r.offset)
        after = log_ids(t)
    note = (f" ({kills} kills, {held_kills} holding the dedup lock, {len(window_kills)} between the "
            f"append and the insert: {window_kills[:4]})")
    twice = {i: w for i, w in before.items() if len(w) > 1}
    assert not twice, f"{len(twice)} dedup ids written twice by the producers: {sorted(twice.items())[:5]}" + note
    for i, got in receipts.items():
        assert [got] == [set(before[i])], f"{i}: receipts {sorted(got)}, in the log at {before[i]}" + note
    wrote_again = sorted((i, before[i], after[i]) for i in before if after[i] != before[i])
    assert not wrote_again, (f"{len(wrote_again)} ids already in the log were written again by a "
                             f"resend after the reopen: {wrote_again[:5]}" + note)
    for i in before:
        assert resent[i] == before[i][0], f"{i}: resend got {resent[i]}, the record is at {before[i]}"
    assert all(len(after["id-%d" % n]) == 1 for n in range(n_ids))
    assert window_kills, "no producer was killed between the append and the dedup insert"
