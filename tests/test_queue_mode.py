"""Queue mode (SQS / RabbitMQ semantics) within one process: leases,
visibility timeouts, acks, nacks, extend, LeaseLost, ordering, the window.
The cases every backend shares are in tests/conformance (run on this engine too)."""

import time

import pytest

import pyqueue


@pytest.fixture
def broker(tmp_path):
    b = pyqueue.open(tmp_path / "b", fsync="never")
    yield b
    b.close()


def test_lease_expiry_redelivers_with_higher_count(broker):
    t = broker.topic("t")
    t.send(b"job")
    c = t.consumer("w", mode="queue", visibility_timeout=0.1)
    m1 = c.poll(timeout=1)
    assert m1.delivery_count == 1
    assert c.poll(timeout=0.0) is None          # invisible while leased
    m2 = c.poll(timeout=5)                     # wakes when the lease expires
    assert (m2.offset, m2.delivery_count) == (m1.offset, 2)
    with pytest.raises(pyqueue.LeaseLost):
        m1.ack()                                # the message went out again
    m2.ack()
    assert c.poll(timeout=0.2) is None
    assert c.lag() == {0: 0}


def test_ack_after_expiry_but_before_redelivery_is_accepted(broker):
    t = broker.topic("t")
    t.send(b"job")
    c = t.consumer("w", mode="queue", visibility_timeout=0.05)
    m = c.poll(timeout=1)
    deadline = time.monotonic() + 0.06
    while time.monotonic() < deadline:
        pass
    m.ack()                                     # nobody else got it: SQS accepts this too
    assert c.poll(timeout=0.2) is None


def test_extend_keeps_the_lease(broker):
    t = broker.topic("t")
    t.send(b"slow")
    c = t.consumer("w", mode="queue", visibility_timeout=0.1)
    m = c.poll(timeout=1)
    m.extend(5.0)
    assert c.poll(timeout=0.3) is None          # would have expired without extend
    m.ack()


def test_nack_now_and_with_delay(broker):
    t = broker.topic("t")
    t.send(b"a")
    c = t.consumer("w", mode="queue")
    m = c.poll(timeout=1)
    m.nack()
    again = c.poll(timeout=1)
    assert (again.offset, again.delivery_count) == (m.offset, 2)
    with pytest.raises(pyqueue.LeaseLost):
        m.ack()
    start = time.monotonic()
    again.nack(delay=0.2)
    assert c.poll(timeout=0.05) is None
    third = c.poll(timeout=5)
    assert third.delivery_count == 3 and time.monotonic() - start >= 0.19
    third.ack()
    with pytest.raises(pyqueue.LeaseLost):
        third.ack()                             # twice


def test_window_bounds_in_flight(broker):
    t = broker.topic("t")
    for i in range(10):
        t.send(b"%d" % i)
    c = t.consumer("w", mode="queue", max_in_flight=4)
    first = c.poll_batch(10, timeout=0.1)
    assert [m.offset for m in first] == [0, 1, 2, 3]
    assert c.poll_batch(10, timeout=0.05) == []
    first[1].ack()                              # not the head: the window stays full
    assert c.poll_batch(10, timeout=0.05) == []
    first[0].ack()
    assert [m.offset for m in c.poll_batch(10, timeout=0.1)] == [4, 5]
    with pytest.raises(pyqueue.ConfigError, match="max_in_flight"):
        t.consumer("w", mode="queue", max_in_flight=8)


def test_ordered_delivers_a_key_one_at_a_time(broker):
    t = broker.topic("t")
    for i in range(6):
        t.send(b"%d" % i, key=b"A" if i % 2 == 0 else b"B")   # A:0,2,4 B:1,3,5
    c = t.consumer("fifo", mode="queue", ordered=True)
    batch = c.poll_batch(10, timeout=0.1)
    assert [m.value for m in batch] == [b"0", b"1"]          # one per key
    assert c.poll_batch(10, timeout=0.05) == []
    batch[1].ack()
    assert [m.value for m in c.poll_batch(10, timeout=0.1)] == [b"3"]
    batch[0].nack()                                          # a retry keeps its place
    assert [m.value for m in c.poll_batch(10, timeout=0.1)] == [b"0"]


def test_delivery_state_survives_restart(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        t = b.topic("t")
        for i in range(10):
            t.send(b"%d" % i)
        c = t.consumer("w", mode="queue", visibility_timeout=60)
        msgs = c.poll_batch(6, timeout=1)
        for m in msgs[:3]:
            m.ack()
        msgs[4].nack(delay=0.0)
        # close without acking the rest: the leases go back to the queue
    with pyqueue.open(path) as b:
        c = b.topic("t").consumer("w", mode="queue")
        got = c.poll_batch(20, timeout=0.2)
        assert sorted(m.offset for m in got) == list(range(3, 10))
        counts = {m.offset: m.delivery_count for m in got}
        assert counts[3] == counts[4] == counts[5] == 2 and counts[6] == 1


def test_bad_queue_arguments(broker):
    t = broker.topic("t")
    for kwargs in ({"visibility_timeout": 0}, {"visibility_timeout": -1},
                   {"max_in_flight": 0}, {"max_in_flight": 10 ** 6}):
        with pytest.raises(pyqueue.ConfigError):
            t.consumer("w", mode="queue", **kwargs)
    with pytest.raises(TypeError):
        t.consumer("w", mode="queue", ordered="yes")
    c = t.consumer("w", mode="queue")
    t.send(b"x")
    m = c.poll(timeout=1)
    with pytest.raises(pyqueue.ConfigError):
        m.nack(delay=-1)
    with pytest.raises(pyqueue.ConfigError):
        m.extend(0)
    with pytest.raises(TypeError):
        m.extend("5")


def test_stats_show_groups(broker):
    t = broker.topic("t", partitions=2)
    for i in range(10):
        t.send(b"%d" % i, partition=i % 2)
    q = t.consumer("w", mode="queue")
    msgs = q.poll_batch(3, timeout=1)
    msgs[0].ack()
    s = t.consumer("s")
    for m in s.poll_batch(10, timeout=1):
        m.ack()
    s.commit()
    groups = broker.stats()["topics"]["t"]["groups"]
    assert groups["w"]["mode"] == "queue" and groups["w"]["in_flight"] == 2
    assert groups["w"]["lag"] == 9 and groups["w"]["members"] == 1
    assert groups["w"]["oldest_unacked_age"] >= 0
    assert groups["s"]["lag"] == 0 and groups["s"]["oldest_unacked_age"] is None
