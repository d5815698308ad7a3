"""Multi-process tests: separate interpreters sharing one broker directory.

Producers append to one partition at once; a consumer blocked in
Topic.wait() is woken by another process's append; two processes create the
same topic at the same moment.  Children are started clean (not forked) and
released together through their stdin, so they really run at once.
"""

from __future__ import annotations

import json
import os
import platform
import zlib

import pyqueue

SEGMENT = 64 * 1024

PAYLOAD_SRC = r'''
import zlib

def value_of(producer, seq):
    n = 20 + (seq * 131 + producer * 17) % 600
    head = b"p%d:%d:" % (producer, seq)
    body = (head * (n // len(head) + 1))[:n]
    return body + zlib.crc32(body).to_bytes(4, "little")
'''
exec(PAYLOAD_SRC)

# Sends `count` messages once "go" arrives on stdin: single sends for even
# producer ids, send_batch of 1..23 messages for odd ones; then prints its
# receipts' offsets as one JSON line.  argv: path producer count
PRODUCER = PAYLOAD_SRC + r'''
import json, sys, pyqueue
path, producer, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
broker = pyqueue.open(path, fsync="never")
topic = broker.topic("mp")
key = b"producer-%d" % producer
print("ready", flush=True)
assert sys.stdin.readline() == "go\n"
offsets = []
seq = 0
while seq < count:
    if producer % 2 == 0:
        offsets.append(topic.send(value_of(producer, seq), key=key).offset)
        seq += 1
    else:
        n = min(1 + seq % 23, count - seq)
        br = topic.send_batch([value_of(producer, s) for s in range(seq, seq + n)], key=key)
        assert br.partition == 0 and len(br.offsets) == n
        offsets.extend(br.offsets)
        seq += n
broker.close()
print(json.dumps(offsets), flush=True)
'''


def test_four_producers_share_one_partition(broker_path, children):
    """Four processes append to one partition at the same time (two with
    send, two with send_batch, segments rolling under them).  Afterwards the
    offsets are dense, every message is there exactly once with its exact
    bytes at the offset its receipt named, and each producer's messages are
    in the order it sent them."""
    count = 3000
    with pyqueue.open(broker_path) as broker:
        broker.topic("mp", partitions=1, segment_bytes=SEGMENT, max_message_bytes=4096)
    producers = [children.spawn(PRODUCER, broker_path, p, count) for p in range(4)]
    for child in producers:
        assert child.line() == "ready"
    for child in producers:
        child.send("go\n")
    receipts = {}
    for p, child in enumerate(producers):
        assert child.wait() == 0, child.describe()
        receipts[p] = json.loads(child.lines[-1])
        assert len(receipts[p]) == count
        assert receipts[p] == sorted(receipts[p]), f"producer {p}: receipts out of order"

    total = 4 * count
    with pyqueue.open(broker_path) as broker:
        topic = broker.topic("mp")
        assert topic.offsets(0) == (0, total)
        found: dict[tuple[int, int], int] = {}
        offset = 0
        while offset < total:
            for msg in topic.read(0, offset, 1000):
                assert msg.offset == offset, f"offsets not dense: {msg.offset} at {offset}"
                body = msg.value[:-4]
                assert zlib.crc32(body).to_bytes(4, "little") == msg.value[-4:], f"offset {offset} damaged"
                producer, seq = (int(x) for x in body[1:].split(b":", 2)[:2])
                assert msg.value == value_of(producer, seq)
                assert msg.key == b"producer-%d" % producer
                assert (producer, seq) not in found, f"{(producer, seq)} at {found.get((producer, seq))} and {offset}"
                found[(producer, seq)] = offset
                offset += 1
        assert topic.read(0, total, 1) == []
    assert len(found) == total
    for p in range(4):
        offsets = [found[(p, s)] for s in range(count)]
        assert offsets == receipts[p], f"producer {p}: receipts differ from where its messages are"
    # Interleaving really happened: no producer wrote all its messages in one run.
    assert any(found[(p, count - 1)] - found[(p, 0)] >= count for p in range(4))


WAITER = r'''
import sys, pyqueue
broker = pyqueue.open(sys.argv[1], fsync="never")
topic = broker.topic("events")
print("waiting", flush=True)
woke = topic.wait(0, 0, timeout=60.0)
msg = topic.read(0, 0, 1)
print("woke %s %r" % (woke, msg[0].value if msg else None), flush=True)
broker.close()
'''


def blocked_in_futex_wait(pid: int) -> bool:
    """True if the main thread of `pid` sleeps in a shared FUTEX_WAIT (the
    cross-process wake word), as /proc/<pid>/task/<pid>/syscall shows; raises
    OSError if /proc does not tell."""
    with open(f"/proc/{pid}/task/{pid}/syscall") as f:
        fields = f.read().split()
    futex, futex_wait = 202, 0       # x86_64; FUTEX_WAIT without FUTEX_PRIVATE_FLAG
    return len(fields) > 2 and fields[0] == str(futex) and int(fields[2], 16) == futex_wait


def test_waiter_in_another_process_is_woken_by_append(broker_path, children):
    """A consumer process blocked in topic.wait() (asleep on the shared futex,
    not polling) is woken by an append from another process, long before its
    60 s timeout, and then reads the record."""
    with pyqueue.open(broker_path) as broker:
        broker.topic("events", segment_bytes=SEGMENT, max_message_bytes=1024)
    waiter = children.spawn(WAITER, broker_path)
    assert waiter.line() == "waiting"
    # Make sure it is asleep before the append, where /proc shows it (x86_64
    # Linux); elsewhere the append may simply find it not yet asleep.
    if platform.machine() == "x86_64":
        try:
            for _ in range(100000):
                if blocked_in_futex_wait(waiter.pid):
                    break
                os.sched_yield()
            else:
                raise AssertionError("the waiter never went to sleep on the futex")
        except OSError:
            pass
    with pyqueue.open(broker_path, fsync="never") as broker:
        broker.topic("events").send(b"wake up")
    assert waiter.line(timeout=30) == "woke True b'wake up'"
    assert waiter.wait() == 0, waiter.describe()


# Opens (creating) the broker and the topic once "go" arrives, then sends one
# message.  argv: path name
CREATOR = r'''
import json, sys, pyqueue
path, name = sys.argv[1:3]
print("ready", flush=True)
assert sys.stdin.readline() == "go\n"
broker = pyqueue.open(path, fsync="never")
topic = broker.topic("shared", partitions=3, segment_bytes=65536, max_message_bytes=2048)
r = topic.send(name.encode(), key=name.encode())
print(json.dumps([topic.config.partitions, topic.config.segment_bytes, r.partition, r.offset]), flush=True)
broker.close()
'''


def test_two_processes_create_the_same_topic_at_once(tmp_path, children):
    """Two processes open a broker directory that does not exist yet and
    create the same topic at the same moment (ten times over): both succeed,
    the broker holds one topic.json with one config, no temporary files are
    left, and both messages are there."""
    for attempt in range(10):
        path = str(tmp_path / f"broker{attempt}")
        pair = [children.spawn(CREATOR, path, f"c{i}") for i in range(2)]
        for child in pair:
            assert child.line() == "ready"
        for child in pair:
            child.send("go\n")
        results = []
        for child in pair:
            assert child.wait() == 0, child.describe()
            results.append(json.loads(child.lines[-1]))
        assert [r[:2] for r in results] == [[3, 65536]] * 2

        tdir = os.path.join(path, "topics", "shared")
        assert {"0", "1", "2", "topic.json"} <= set(os.listdir(tdir))
        assert not any(n.isdigit() and int(n) > 2 for n in os.listdir(tdir))
        assert os.listdir(os.path.join(path, "topics")) == ["shared"]
        leftovers = [n for _, _, names in os.walk(path) for n in names if n.endswith(".tmp")]
        assert not leftovers, f"temporary files left behind: {leftovers}"
        with open(os.path.join(tdir, "topic.json")) as f:
            stored = json.load(f)
        assert stored["partitions"] == 3 and stored["segment_bytes"] == 65536
        with pyqueue.open(path) as broker:
            assert broker.topics() == ["shared"]
            topic = broker.topic("shared")
            got = {}
            for p in range(3):
                start, end = topic.offsets(p)
                for msg in topic.read(p, start, end - start):
                    got[msg.value.decode()] = (p, msg.offset)
        assert got == {f"c{i}": (results[i][2], results[i][3]) for i in range(2)}
