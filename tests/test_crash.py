"""Crash tests: producers are killed with SIGKILL at random moments and the
broker directory, reopened, must hold every acknowledged message, byte for
byte, at the offset its receipt named, with dense offsets and nothing invented.

A process crash keeps the page cache, so nothing that was published may be
lost whatever the fsync mode; what varies is where the kill lands (inside a
frame copy, a segment roll, a flush, while holding the append lock).  Some
reopens also drop the partition `state` files first, which is what recovery
sees after a reboot: it must then find the same records by validating frames.
"""

from __future__ import annotations

import random

import pytest

import pyqueue

# Payloads shared with the children (exec'd here and sent to them as source).
# A value names its producer and sequence number and ends with a CRC32 of the
# rest, so a record that is not exactly what was sent cannot pass unnoticed.
PAYLOAD_SRC = r'''
import zlib

def value_of(tag, seq):
    h = (seq * 2654435761 + len(tag) * 40503 + sum(tag.encode())) & 0xFFFFFFFF
    n = 16 + h % 700 if h % 16 else 2000 + h % 9000      # mostly small, some large
    head = ("%s:%d:" % (tag, seq)).encode()
    body = (head * (n // len(head) + 1))[:n]
    return body + zlib.crc32(body).to_bytes(4, "little")

def key_of(tag, seq):
    return None if seq % 5 == 0 else ("k-%s-%d" % (tag, seq % 97)).encode()

def parse(value):
    """(tag, seq) of a payload, or None if it is not an intact one."""
    body, crc = value[:-4], value[-4:]
    if len(value) < 8 or zlib.crc32(body).to_bytes(4, "little") != crc:
        return None
    try:
        tag, seq, _ = body.decode().split(":", 2)
        return tag, int(seq)
    except (UnicodeDecodeError, ValueError):
        return None

def batch_size(start):
    return 1 + (start * 7 + 3) % 40

def row_of(tag, seq):
    """Fixed-size rows (numpy batches): equal frames line up across runs."""
    head = ("%s:%d:" % (tag, seq)).encode()
    body = (head * (196 // len(head) + 1))[:196]
    return body + zlib.crc32(body).to_bytes(4, "little")

def emit(data):
    import os
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
'''
exec(PAYLOAD_SRC)

SEGMENT = 64 * 1024
MAX_MESSAGE = 16 * 1024
TOPIC = "crash"

# Sends forever, reporting "<seq> <offset>" for each receipt as soon as it
# has it.  argv: path fsync tag mode ("send" or "batch").
PRODUCER = PAYLOAD_SRC + r'''
import sys, pyqueue
path, fsync, tag, mode = sys.argv[1:5]
broker = pyqueue.open(path, fsync=fsync, fsync_interval=0.002)
topic = broker.topic("crash", segment_bytes=65536, max_message_bytes=16384)
emit(b"ready\n")
seq = 0
if mode == "send":
    while True:
        r = topic.send(value_of(tag, seq), key=key_of(tag, seq))
        emit(b"%d %d\n" % (seq, r.offset))
        seq += 1
elif mode == "rows":
    import numpy as np
    while True:
        n = batch_size(seq)
        rows = np.frombuffer(b"".join(row_of(tag, seq + j) for j in range(n)), dtype=np.uint8).reshape(n, 200)
        br = topic.send_batch(rows)
        emit(b"".join(b"%d %d\n" % (seq + j, off) for j, off in enumerate(br.offsets)))
        seq += n
else:
    key = ("batch-" + tag).encode()
    while True:
        n = batch_size(seq)
        br = topic.send_batch([value_of(tag, seq + j) for j in range(n)], key=key)
        emit(b"".join(b"%d %d\n" % (seq + j, off) for j, off in enumerate(br.offsets)))
        seq += n
'''


class Round:
    """What one producer run reported before it died."""

    def __init__(self, tag: str, mode: str) -> None:
        self.tag = tag
        self.mode = mode
        self.reported: dict[int, int] = {}   # seq -> offset from its receipt

    def key(self, seq: int):
        if self.mode == "rows":
            return None
        return ("batch-" + self.tag).encode() if self.mode == "batch" else key_of(self.tag, seq)

    def value(self, seq: int) -> bytes:
        return row_of(self.tag, seq) if self.mode == "rows" else value_of(self.tag, seq)

    def most_present(self) -> int:
        """An upper bound on how many of its messages may exist: those acked,
        plus the one (send) or the batch (batch) in flight when it died."""
        acked = len(self.reported)
        if self.mode == "send":
            return acked + 1
        start = 0
        while start <= acked:               # the batch holding seq `acked`, if any, is in flight
            start += batch_size(start)
        return start


def read_all(topic: pyqueue.Topic) -> list:
    """Every message of partition 0, read in chunks; raises on any error."""
    start, end = topic.offsets(0)
    assert start == 0, f"log start moved to {start} without retention"
    out = []
    while len(out) < end:
        got = topic.read(0, len(out), 1000)
        assert got, f"read at {len(out)} returned nothing below the end {end}"
        out.extend(got)
    return out


def check_log(path: str, rounds: list[Round], fsync: str) -> dict[str, int]:
    """Open the broker, check it against what the rounds reported; returns
    how many messages of each round are present."""
    with pyqueue.open(path, fsync=fsync) as broker:
        topic = broker.topic(TOPIC)
        msgs = read_all(topic)
        end = len(msgs)
        assert topic.offsets(0) == (0, end)
        assert topic.read(0, end, 10) == []
        with pytest.raises(pyqueue.OffsetOutOfRange):
            topic.read(0, end + 1, 1)
        # The zero-copy path must show the same bytes.
        pos = 0
        while pos < end:
            batch = topic.read_batch(0, pos, 700)
            assert len(batch) > 0
            for j in range(len(batch)):
                assert bytes(batch.value(j)) == msgs[pos + j].value, f"read_batch differs at {pos + j}"
            pos += len(batch)

    by_tag = {r.tag: r for r in rounds}
    counts = {r.tag: 0 for r in rounds}
    order: list[str] = []
    for offset, msg in enumerate(msgs):
        assert msg.offset == offset, f"offsets not dense: {msg.offset} at position {offset}"
        parsed = parse(msg.value)
        assert parsed is not None, f"offset {offset} holds bytes no producer sent: {msg.value[:60]!r}"
        tag, seq = parsed
        assert tag in by_tag, f"offset {offset} holds a message of unknown producer {tag!r}"
        rnd = by_tag[tag]
        assert msg.value == rnd.value(seq) and msg.key == rnd.key(seq), f"offset {offset} altered"
        # Each run's messages form one contiguous run, in order, with no gap:
        # a later run appends after the survivors of an earlier one.
        if not order or order[-1] != tag:
            assert tag not in order, f"producer {tag} resumes at offset {offset} after {order[-1]}"
            order.append(tag)
        assert seq == counts[tag], f"offset {offset}: {tag} seq {seq}, expected seq {counts[tag]}"
        counts[tag] += 1
    assert order == [r.tag for r in rounds if counts[r.tag]], f"runs out of order: {order}"
    for r in rounds:
        for seq, offset in r.reported.items():
            assert seq < counts[r.tag], f"{r.tag}: acked seq {seq} (offset {offset}) is missing"
            assert msgs[offset].value == r.value(seq), f"{r.tag}: receipt offset {offset} wrong"
        assert counts[r.tag] <= r.most_present(), (
            f"{r.tag}: {counts[r.tag]} messages present, but only {len(r.reported)} acked")
    return counts


def assert_stable(before: dict[str, int], after: dict[str, int], rounds: list[Round]) -> None:
    """Messages once present never disappear; only the run at the end of the
    log may gain the frame a killed producer had finished but not published."""
    present = [r.tag for r in rounds if before.get(r.tag)]
    for tag, n in before.items():
        if present and tag == present[-1]:
            assert after[tag] >= n, f"{tag}: {n - after[tag]} visible messages lost"
        else:
            assert after[tag] == n, f"{tag}: had {n} messages, now {after[tag]}"


MODES = ["send", "rows", "rows", "batch"]


@pytest.mark.parametrize("fsync", ["never", "interval"])
def test_producer_killed_at_random_moments(broker_path, children, drop_state, fsync):
    """24 producer runs on one broker directory, each SIGKILLed after a random
    number of receipts: single sends, batches of varied values, and numpy
    batches of equal rows (whose frames line up with a previous run's
    leftovers).  After each kill the log holds every acked message at its
    receipt's offset and nothing else but the in-flight remainder.  After
    half of the runs the check is repeated after a simulated reboot (state
    files dropped, so recovery scans the tail), which must lose nothing and
    may only adopt what the killed producer had fully written."""
    rng = random.Random(f"crash-{fsync}")
    rounds: list[Round] = []
    counts: dict[str, int] = {}
    for n in range(24):
        rnd = Round(f"r{n}", MODES[n % 4])
        rounds.append(rnd)
        child = children.spawn(PRODUCER, broker_path, fsync, rnd.tag, rnd.mode)
        assert child.line() == "ready"
        for _ in range(rng.choice([0, 1, 5, rng.randrange(1, 3000)])):
            seq, offset = map(int, child.line().split())
            rnd.reported[seq] = offset
        child.kill()
        for text in child.lines[1:]:
            seq, offset = map(int, text.split())
            rnd.reported[seq] = offset
        assert sorted(rnd.reported) == list(range(len(rnd.reported)))

        after = check_log(broker_path, rounds, fsync)
        assert_stable(counts, after, rounds)
        counts = after
        if n % 4 in (0, 2):                # not right after the first "rows" run: its leftovers stay
            assert drop_state(broker_path) == 1
            after = check_log(broker_path, rounds, fsync)
            assert_stable(counts, after, rounds)
            counts = after
    assert sum(len(r.reported) for r in rounds) > 1000


# A survivor sends single messages until told to stop on stdin, reporting
# whenever its handle repaired the append lock of a dead owner.  argv: path tag
SURVIVOR = PAYLOAD_SRC + r'''
import sys, threading, pyqueue
path, tag = sys.argv[1:3]
stop = threading.Event()
threading.Thread(target=lambda: (sys.stdin.readline(), stop.set()), daemon=True).start()
broker = pyqueue.open(path, fsync="never")
topic = broker.topic("hot", segment_bytes=65536, max_message_bytes=16384)
log = topic._logs[0]
emit(b"ready\n")
seq = repaired = last = 0
while not stop.is_set():
    r = topic.send(value_of(tag, seq)[:300], key=None)
    assert r.offset > last or seq == 0, (r.offset, last)
    last = r.offset
    seq += 1
    if seq % 16 == 0:
        now = log.recovery_info()["lock_repaired"]
        if now != repaired:
            repaired = now
            emit(b"repaired %d\n" % repaired)
repaired = log.recovery_info()["lock_repaired"]
broker.close()
emit(b"done %d %d\n" % (seq, repaired))
'''

# A victim appends batches of large values (so that it often holds the lock
# while rolling to a new segment), reporting each acked batch.  argv: path tag
VICTIM = PAYLOAD_SRC + r'''
import sys, pyqueue
path, tag = sys.argv[1:3]
broker = pyqueue.open(path, fsync="never")
topic = broker.topic("hot", segment_bytes=65536, max_message_bytes=16384)
seq = 0
while True:
    values = [(value_of(tag, s) * 8)[:6000 + (s * 977) % 8000] for s in range(seq, seq + 12)]
    topic.send_batch(values)
    seq += 12
    emit(b"acked %d\n" % seq)
'''


def expected_value(tag: str, seq: int) -> bytes:
    if tag.startswith("v"):
        return (value_of(tag, seq) * 8)[:6000 + (seq * 977) % 8000]
    return value_of(tag, seq)[:300]


def test_append_lock_owner_killed(broker_path, children):
    """Two processes append in a tight loop while a third, appending large
    batches, is SIGKILLed again and again, often while it holds the append
    lock (mid-copy or mid-roll).  The survivors repair the lock (EOWNERDEAD)
    and go on; afterwards offsets are dense, every record reads back intact,
    each survivor's messages are all there once and in order, and each
    victim left an in-order prefix of what it sent."""
    with pyqueue.open(broker_path) as broker:
        broker.topic("hot", segment_bytes=SEGMENT, max_message_bytes=MAX_MESSAGE)
    survivors = [children.spawn(SURVIVOR, broker_path, f"s{i}") for i in range(2)]
    for s in survivors:
        assert s.line() == "ready"
    rng = random.Random("lock-owner")
    victims: dict[str, int] = {}          # tag -> messages acked
    # A kill lands inside the lock only sometimes, less often on a loaded
    # machine: go on until three did (usually within a dozen kills).
    for k in range(300):
        repaired = sum(max((int(t.split()[1]) for t in s.lines if t.startswith("repaired")), default=0)
                       for s in survivors)
        if repaired >= 3 and k >= 8:
            break
        tag = f"v{k}"
        victim = children.spawn(VICTIM, broker_path, tag)
        for _ in range(rng.randrange(1, 6)):
            victim.line()
        victim.kill()
        victims[tag] = max(int(t.split()[1]) for t in victim.lines)
    totals = {}
    for s in survivors:                   # both at once: neither keeps the lock from the other
        s.send("stop\n")
    for i, s in enumerate(survivors):
        assert s.wait() == 0, s.describe()
        totals[f"s{i}"] = int(s.lines[-1].split()[1])
    repaired = sum(int(s.lines[-1].split()[2]) for s in survivors)
    assert repaired >= 1, "no victim died holding the append lock: the repair path was not exercised"

    with pyqueue.open(broker_path) as broker:
        topic = broker.topic("hot")
        start, end = topic.offsets(0)
        assert start == 0
        seen: dict[str, int] = {}
        offset = 0
        while offset < end:
            msgs = topic.read(0, offset, 1000)
            assert msgs, f"nothing readable at {offset} below the end {end}"
            for m in msgs:
                assert m.offset == offset, f"offsets not dense: {m.offset} at {offset}"
                head = m.value.split(b":", 2)
                tag, seq = head[0].decode(), int(head[1])
                assert m.value == expected_value(tag, seq), f"offset {offset} altered"
                assert seq == seen.get(tag, 0), f"offset {offset}: {tag} seq {seq}, expected {seen.get(tag, 0)}"
                seen[tag] = seq + 1
                offset += 1
        assert topic.read(0, end, 1) == []
    for tag, sent in totals.items():
        assert seen.get(tag, 0) == sent, f"survivor {tag}: sent {sent}, found {seen.get(tag, 0)}"
    for tag, acked in victims.items():
        assert seen.get(tag, 0) >= acked, f"victim {tag}: acked {acked}, found {seen.get(tag, 0)}"
        assert seen.get(tag, 0) <= acked + 12, f"victim {tag}: more than it had in flight"
