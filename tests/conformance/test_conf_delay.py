"""send(delay=) on every backend: queue groups see a delayed message only
once it is due, with the delivery counts of a message sent without delay;
stream mode ignores the delay; bad delays are refused."""

import time

import pytest

import pyqueue

from conformance.support import drain


def test_delayed_message_is_invisible_until_due(broker):
    t = broker.topic("t")
    sent_at = time.time()
    t.send(b"later", delay=0.5)
    t.send(b"now")
    c = t.consumer("w", mode="queue")
    seen = {}
    for _ in range(2):
        m = c.poll(timeout=5)
        seen[m.value] = (time.time(), m.delivery_count)
        m.ack()
    # "now" usually comes first; either way "later" comes no sooner than due.
    assert seen[b"later"][0] >= sent_at + 0.5
    assert seen[b"later"][1] == seen[b"now"][1] == 1
    assert c.poll(timeout=0.3) is None


def test_delayed_message_keeps_its_offset_and_headers(broker):
    t = broker.topic("t")
    r = t.send(b"later", key=b"k", headers={"h": b"v"}, delay=0.2)
    c = t.consumer("w", mode="queue")
    m = c.poll(timeout=5)
    assert (m.offset, m.key, m.value, m.headers) == (r.offset, b"k", b"later", {"h": b"v"})
    m.ack()


def test_stream_mode_ignores_the_delay(broker):
    t = broker.topic("t")
    t.send(b"later", delay=3600)
    t.send(b"now")
    c = t.consumer("s", mode="stream")
    assert [m.value for m in drain(c, ack=False)] == [b"later", b"now"]


def test_delay_already_due_is_delivered_with_count_one(broker):
    t = broker.topic("t")
    t.send(b"a", delay=0.05)
    time.sleep(0.1)                 # the delay runs out before any consumer exists
    c = t.consumer("w", mode="queue")
    m = c.poll(timeout=5)
    assert (m.value, m.delivery_count) == (b"a", 1)
    m.ack()


def test_delayed_message_counts_deliveries_like_any_other(broker):
    t = broker.topic("t")
    broker.topic("dlq")
    t.send(b"x", delay=0.1)
    c = t.consumer("w", mode="queue", max_deliveries=2, dead_letter="dlq")
    m = c.poll(timeout=5)
    assert m.delivery_count == 1
    m.nack()
    m = c.poll(timeout=5)
    assert m.delivery_count == 2
    m.nack()                        # the last allowed delivery: dead-lettered
    dead = broker.topic("dlq").consumer("d", mode="queue").poll(timeout=5)
    assert dead.value == b"x" and dead.headers["x-delivery-count"] == b"2"
    assert c.poll(timeout=0.3) is None


def test_waiting_delayed_messages_hold_in_flight_slots(broker):
    """A documented limit on both backends: a delayed message waits in its
    partition's max_in_flight window, so a full window of them holds back
    the messages behind until they are due."""
    t = broker.topic("t")
    c = t.consumer("w", mode="queue", max_in_flight=4)
    sent_at = time.time()
    for i in range(4):
        t.send(b"late%d" % i, delay=2.0)
    t.send(b"now")
    assert c.poll(timeout=0.3) is None
    assert time.time() < sent_at + 2.0          # else the machine was too slow to tell
    got = []
    while len(got) < 5:
        m = c.poll(timeout=10)
        assert m is not None and time.time() >= sent_at + 2.0
        got.append(m.value)
        m.ack()
    assert sorted(got) == [b"late0", b"late1", b"late2", b"late3", b"now"]


@pytest.mark.parametrize("bad, error", [(-1, pyqueue.ConfigError), (float("nan"), pyqueue.ConfigError),
                                        (366 * 86400, pyqueue.ConfigError), ("1", TypeError),
                                        (True, TypeError)])
def test_bad_delay_is_refused(broker, bad, error):
    t = broker.topic("t")
    with pytest.raises(error):
        t.send(b"x", delay=bad)
    assert t.offsets(0) == (0, 0)
