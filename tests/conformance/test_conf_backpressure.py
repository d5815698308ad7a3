"""max_depth on every backend: a send that would pass it waits for room
(an ack, a commit, retention) and raises QueueFull after its timeout.
Depth counts after the slowest group's committed position, or after the
retained start when the topic has no group; stats()["depth"] is the same
figure.  send_batch() is not held back; a dedup_id repeat waits like any
send (the wait comes before the dedup lookup)."""

import threading
import time

import pytest

import pyqueue


class Producer(threading.Thread):
    """One send on a thread of its own; `started` is set just before it."""

    def __init__(self, topic, value=b"fits", timeout=30.0):
        super().__init__(daemon=True)
        self.topic, self.value, self.timeout = topic, value, timeout
        self.started = threading.Event()
        self.receipt = None
        self.error = None

    def run(self):
        self.started.set()
        try:
            self.receipt = self.topic.send(self.value, timeout=self.timeout)
        except BaseException as e:       # reported by finish()
            self.error = e

    def finish(self, timeout=30.0):
        self.join(timeout)
        assert not self.is_alive(), "the send is still waiting"
        if self.error is not None:
            raise self.error
        return self.receipt


def start_blocked(topic, end):
    """A producer whose send waits on a full topic (its end stays `end`)."""
    p = Producer(topic)
    p.start()
    assert p.started.wait(10)
    p.join(0.5)                          # an assertion that it waits, not a synchronisation
    assert p.is_alive(), f"the send did not wait: {p.error or p.receipt}"
    assert topic.offsets(0)[1] == end    # nothing was written while it waits
    return p


def test_a_send_waits_for_a_queue_ack_then_proceeds(broker):
    t = broker.topic("bp", max_depth=3)
    w = t.consumer("w", mode="queue")
    for i in range(3):
        t.send(b"%d" % i)
    assert t.stats()["depth"] == 3
    producer = start_blocked(t, 3)
    m = w.poll(timeout=10)
    assert m.value == b"0"
    m.ack()                              # the committed position moves: room for one
    assert producer.finish().offset == 3
    assert t.stats()["depth"] == 3       # 4 sent, 1 acked
    assert t.offsets(0)[1] == 4


def test_an_ack_in_another_process_wakes_the_send(backend, broker, children):
    t = broker.topic("bp", max_depth=2)
    t.consumer("w", mode="queue").close()
    t.send(b"a")
    t.send(b"b")
    producer = start_blocked(t, 2)
    child = children.spawn(backend.child_open_code() + """
c = broker.topic("bp").consumer("w", mode="queue")
m = c.poll(timeout=20)
m.ack()
c.close()
broker.close()
print(m.value.decode(), flush=True)
""")
    assert child.line(timeout=60) == "a"
    assert producer.finish().offset == 2
    assert t.stats()["depth"] == 2


def test_queue_full_after_the_timeout_and_nothing_written(broker):
    t = broker.topic("bp", max_depth=2)
    t.consumer("w", mode="queue")
    t.send(b"a")
    t.send(b"b")
    start = time.monotonic()
    with pytest.raises(pyqueue.QueueFull, match=r"holds 2 unfinished messages, max_depth=2; waited 0.3s"):
        t.send(b"over", timeout=0.3)
    assert time.monotonic() - start >= 0.3
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"over", timeout=0)
    assert t.offsets(0) == (0, 2)
    assert t.stats()["depth"] == 2


def test_a_nack_does_not_make_room(broker):
    t = broker.topic("bp", max_depth=1)
    w = t.consumer("w", mode="queue")
    t.send(b"a")
    w.poll(timeout=10).nack(delay=0)
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"over", timeout=0.2)
    w.poll(timeout=10).ack()
    assert t.send(b"fits", timeout=10).offset == 1


def test_without_a_group_depth_counts_from_the_retained_start(broker):
    # One 40 kB message per 64 KiB of retention: each send drops the one
    # before it, so the retained depth stays 1 although 6 were sent.
    t = broker.topic("r", segment_bytes=65536, retention_bytes=65536, max_depth=2)
    for _ in range(6):
        t.send(b"x" * 40_000, timeout=0)
    start, end = t.offsets(0)
    assert end == 6 and start > 0
    assert t.stats()["depth"] == end - start < 2


def test_without_a_group_every_message_counts(broker):
    t = broker.topic("bp", max_depth=2, partitions=2)
    t.send(b"a", partition=0)
    t.send(b"b", partition=1)
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"c", partition=0, timeout=0.1)
    assert t.stats()["depth"] == 2


def test_a_stream_group_commit_makes_room(broker):
    t = broker.topic("bp", max_depth=2)
    s = t.consumer("s", auto_commit_interval=0)
    t.send(b"a")
    t.send(b"b")
    producer = start_blocked(t, 2)
    m = s.poll(timeout=10)
    assert m.value == b"a"
    m.ack()
    assert producer.is_alive()           # acked, not committed: the position in the store is unchanged
    s.commit()
    assert producer.finish().offset == 2
    assert t.stats()["depth"] == 2


def test_the_slowest_group_decides(broker):
    t = broker.topic("bp", max_depth=2)
    fast = t.consumer("fast", mode="queue")
    slow = t.consumer("slow", mode="queue")
    t.send(b"a")
    t.send(b"b")
    for m in fast.poll_batch(2, timeout=10):
        m.ack()
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"c", timeout=0.2)
    assert t.stats()["depth"] == 2
    slow.poll(timeout=10).ack()
    assert t.send(b"c", timeout=10).offset == 2


def test_send_batch_is_not_held_back_but_counts(broker):
    t = broker.topic("bp", max_depth=2)
    t.consumer("w", mode="queue")
    assert len(t.send_batch([b"a", b"b", b"c"]).offsets) == 3
    assert t.stats()["depth"] == 3
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"d", timeout=0.1)


def test_a_dedup_repeat_waits_like_any_send(broker):
    t = broker.topic("bp", max_depth=2)
    t.consumer("w", mode="queue")
    first = t.send(b"a", dedup_id="once")
    assert t.send(b"a", dedup_id="once") == first          # room: the repeat returns the first receipt
    t.send(b"b")
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"a", dedup_id="once", timeout=0.1)
    assert t.offsets(0)[1] == 2


def test_max_depth_is_part_of_the_stored_configuration(broker, reopen):
    broker.topic("bp", max_depth=5)
    other = reopen()
    assert other.topic("bp").config.max_depth == 5
    with pytest.raises(pyqueue.ConfigError, match="max_depth"):
        other.topic("bp", max_depth=6)
    with pytest.raises(pyqueue.ConfigError):
        other.topic("zero", max_depth=0)


def test_jetstream_sends_far_from_full_read_nothing_more(backend, broker):
    if backend.name != "jetstream":
        pytest.skip("the cached view of the depth is the JetStream backend's (embedded reads shared memory)")
    t = broker.topic("far", max_depth=1000)
    t.send(b"first")                     # reads the figures once
    bp = t._backpressure
    before = bp.refreshes
    for _ in range(100):
        t.send(b"x")
    assert bp.refreshes == before        # no round trip of the depth check per send
    assert bp.depth() == t.stats()["depth"] == 101
    u = broker.topic("fill", max_depth=64)
    for _ in range(64):
        u.send(b"x", timeout=0)
    assert u._backpressure.refreshes <= 12   # from empty to full: about log2(64) looks
    with pytest.raises(pyqueue.QueueFull):
        u.send(b"x", timeout=0)
