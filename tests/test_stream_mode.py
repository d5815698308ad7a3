"""Stream mode (Kafka semantics) within one process: fan-out, commits,
replay, assignment, auto-ack, bad input.
The cases every backend shares are in tests/conformance (run on this engine too)."""

import time

import pytest

import pyqueue


@pytest.fixture
def broker(tmp_path):
    b = pyqueue.open(tmp_path / "b", fsync="never")
    yield b
    b.close()


def fill(topic, n, keys=10):
    for i in range(n):
        topic.send(b"%d" % i, key=b"k%d" % (i % keys))


def drain(consumer, timeout=0.2, ack=True):
    out = []
    while True:
        msgs = consumer.poll_batch(1000, timeout=timeout)
        if not msgs:
            return out
        for m in msgs:
            if ack:
                m.ack()
        out.extend(msgs)


def test_committed_messages_do_not_come_back_and_seek_replays(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 100)
    c = t.consumer("g")
    first = drain(c)
    c.commit()
    c.close()
    c = t.consumer("g")
    assert c.poll(timeout=0.1) is None
    fill(t, 10)
    again = drain(c)
    assert len(again) == 10 and all(m.value in {b"%d" % i for i in range(10)} for m in again)
    c.seek(0, 0)
    replay = drain(c)
    assert [m.offset for m in replay if m.partition == 0] == list(range(t.offsets(0)[1]))
    assert len(first) == 100


def test_unacked_messages_come_again_after_restart(broker):
    t = broker.topic("t")
    fill(t, 20)
    c = t.consumer("g", auto_commit_interval=0)
    msgs = c.poll_batch(20, timeout=1)
    for m in msgs[:5]:
        m.ack()
    for m in msgs[7:9]:      # acked out of order: the committed floor stays at 5
        m.ack()
    c.commit()
    c.close()
    c = t.consumer("g")
    assert [m.offset for m in drain(c)] == list(range(5, 20))


def test_assignment_splits_partitions_between_members(broker):
    t = broker.topic("t", partitions=5)
    a = t.consumer("g")
    assert a.assignment() == [0, 1, 2, 3, 4]
    b = t.consumer("g")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (len(a.assignment()) != 3 or len(b.assignment()) != 2):
        a.poll(timeout=0.05)
        b.poll(timeout=0.05)
    assert sorted(a.assignment() + b.assignment()) == [0, 1, 2, 3, 4]
    assert (len(a.assignment()), len(b.assignment())) == (3, 2)
    b.close()
    while time.monotonic() < deadline and len(a.assignment()) != 5:
        a.poll(timeout=0.05)
    assert a.assignment() == [0, 1, 2, 3, 4]


def test_poll_wakes_on_append_from_another_thread(broker):
    import threading
    t = broker.topic("t")
    c = t.consumer("g")
    threading.Timer(0.05, lambda: t.send(b"late")).start()
    start = time.monotonic()
    m = c.poll(timeout=5)
    assert m is not None and m.value == b"late" and time.monotonic() - start < 4


def test_bad_consumer_arguments(broker):
    t = broker.topic("t", partitions=2)
    with pytest.raises(pyqueue.ConfigError, match="mode"):
        t.consumer("g", mode="fanout")
    with pytest.raises(pyqueue.InvalidName):
        t.consumer("../g")
    with pytest.raises(pyqueue.InvalidName):
        t.consumer("")
    with pytest.raises(pyqueue.ConfigError, match="start"):
        t.consumer("g", start="middle")
    with pytest.raises(pyqueue.ConfigError, match="session_timeout"):
        t.consumer("g", session_timeout=-1)
    with pytest.raises(TypeError):
        t.consumer("g", unknown_option=1)
    c = t.consumer("g")
    with pytest.raises(pyqueue.ConfigError, match="timeout"):
        c.poll(timeout=-1)
    with pytest.raises(pyqueue.ConfigError):
        c.poll_batch(0)
    with pytest.raises(pyqueue.PartitionOutOfRange):
        c.seek(5, 0)
    with pytest.raises(pyqueue.OffsetOutOfRange):
        c.seek(0, 10)
    with pytest.raises(pyqueue.ConfigError, match="queue mode"):
        t.consumer("g", mode="queue")        # the group exists in stream mode
    c.close()
    with pytest.raises(pyqueue.Closed):
        c.poll(timeout=0)
