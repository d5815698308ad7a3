"""Stream mode on every backend: fan-out, commits, replay, restarts,
ordering, time seeks, lag, assignment and rebalancing, a member killed
with SIGKILL, and bad input."""

import pytest

import pyqueue

from conformance.support import drain, until


def fill(topic, n, keys=10):
    for i in range(n):
        topic.send(b"%d" % i, key=b"k%d" % (i % keys))


def test_two_groups_fan_out(broker):
    t = broker.topic("t", partitions=3)
    fill(t, 120)
    a, b = t.consumer("billing"), t.consumer("audit")
    got_a, got_b = drain(a), drain(b)
    assert len(got_a) == len(got_b) == 120
    assert {(m.partition, m.offset) for m in got_a} == {(m.partition, m.offset) for m in got_b}
    assert a.lag() == {0: 0, 1: 0, 2: 0}
    assert set(t.groups()) == {"billing", "audit"}


def test_committed_messages_do_not_come_back_and_seek_replays(broker):
    t = broker.topic("t", partitions=2)
    fill(t, 50)
    c = t.consumer("g")
    first = drain(c)
    c.commit()
    c.close()
    c = t.consumer("g")
    assert c.poll(timeout=0.3) is None
    fill(t, 10)
    again = drain(c)
    assert len(again) == 10 and {m.value for m in again} == {b"%d" % i for i in range(10)}
    c.seek(0, 0)
    replay = drain(c)
    assert [m.offset for m in replay if m.partition == 0] == list(range(t.offsets(0)[1]))
    assert len(first) == 50


def test_unacked_messages_come_again_after_restart(broker, reopen):
    t = broker.topic("t")
    fill(t, 20)
    c = t.consumer("g", auto_commit_interval=0)
    msgs = c.poll_batch(20, timeout=2)
    assert len(msgs) == 20
    for m in msgs[:5]:
        m.ack()
    for m in msgs[7:9]:                 # acked out of order: the committed floor stays at 5
        m.ack()
    c.commit()
    c.close()
    c = reopen().topic("t").consumer("g")
    assert [m.offset for m in drain(c)] == list(range(5, 20))


def test_auto_ack_is_at_most_once(broker):
    t = broker.topic("t")
    fill(t, 10)
    c = t.consumer("g", auto_ack=True)
    assert len(c.poll_batch(10, timeout=2)) == 10
    c.close()                           # close commits
    assert t.consumer("g").poll(timeout=0.3) is None


def test_start_latest(broker):
    t = broker.topic("t")
    fill(t, 10)
    c = t.consumer("new", start="latest")
    assert c.poll(timeout=0.3) is None
    t.send(b"after")
    assert c.poll(timeout=5).value == b"after"


def test_in_order_per_partition(broker):
    t = broker.topic("t", partitions=3)
    for i in range(200):
        t.send(b"%d" % i, key=b"user-%d" % (i % 7))
    seen = {}
    for m in drain(t.consumer("g")):
        seen.setdefault(m.key, []).append(int(m.value))
    assert all(v == sorted(v) for v in seen.values()) and sum(map(len, seen.values())) == 200


def test_seek_to_time_and_lag(broker):
    t = broker.topic("t")
    fill(t, 10)
    t0 = t.read(0, 9, 1)[0].timestamp
    fill(t, 5)
    mark = t.read(0, 10, 1)[0].timestamp
    c = t.consumer("g")
    assert c.lag() == {0: 15}
    drain(c)
    assert c.lag() == {0: 0}
    c.seek_to_time(max(mark, t0 + 1e-6))
    assert [m.offset for m in drain(c)] == list(range(10, 15))


def test_assignment_splits_partitions_between_members(broker):
    t = broker.topic("t", partitions=5)
    a = t.consumer("g")
    assert a.assignment() == [0, 1, 2, 3, 4]
    b = t.consumer("g")

    def step():
        a.poll(timeout=0.05)
        b.poll(timeout=0.05)

    until(lambda: (len(a.assignment()), len(b.assignment())) == (3, 2), timeout=10, step=step)
    assert sorted(a.assignment() + b.assignment()) == [0, 1, 2, 3, 4]
    b.close()
    until(lambda: a.assignment() == [0, 1, 2, 3, 4], timeout=10, step=lambda: a.poll(timeout=0.05))


def test_a_member_killed_hands_its_partitions_over_from_the_committed_offset(backend, children):
    b = backend.open()
    t = b.topic("t", partitions=2)
    for p in range(2):
        t.send_batch([b"%d-%d" % (p, i) for i in range(10)], partition=p)
    child = children.spawn(backend.child_open_code() + """
c = broker.topic("t").consumer("g", session_timeout=1.0, auto_commit_interval=0)
got = c.poll_batch(100, timeout=10)
while len(got) < 20:
    got += c.poll_batch(100, timeout=10)
for m in got:
    if m.offset < 4:
        m.ack()
c.commit()
print("committed", flush=True)
import time
time.sleep(3600)
""")
    assert child.line(timeout=60) == "committed"
    child.kill()
    c = t.consumer("g", session_timeout=1.0)
    got = []
    until(lambda: len(got) >= 12, timeout=30, step=lambda: got.extend(m for m in c.poll_batch(100, timeout=0.2)))
    assert sorted((m.partition, m.offset) for m in got) == [(p, o) for p in range(2) for o in range(4, 10)]


def test_extra_members_stand_by(broker):
    t = broker.topic("t")
    a = t.consumer("g")
    b = t.consumer("g")
    for _ in range(4):
        a.poll(timeout=0.05)
        b.poll(timeout=0.05)
    assert a.assignment() == [0] and b.assignment() == []
    t.send(b"x")
    assert a.poll(timeout=5).value == b"x"
    a.close()
    until(lambda: b.assignment() == [0], timeout=10, step=lambda: b.poll(timeout=0.05))


def test_stream_message_cannot_be_nacked(broker):
    t = broker.topic("t")
    t.send(b"x")
    m = t.consumer("g").poll(timeout=5)
    with pytest.raises(pyqueue.PyQueueError, match="queue mode"):
        m.nack()
    with pytest.raises(pyqueue.PyQueueError, match="queue mode"):
        m.extend(5)


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
    with pytest.raises(pyqueue.ConfigError, match="queue mode|stream mode"):
        t.consumer("g", mode="queue")            # the group exists in stream mode
    c.close()
    with pytest.raises(pyqueue.Closed):
        c.poll(timeout=0)


def test_delete_group_forgets_positions(broker):
    t = broker.topic("t")
    fill(t, 5)
    c = t.consumer("g")
    drain(c)
    c.commit()
    c.close()
    t.delete_group("g")
    assert "g" not in t.groups()
    assert len(drain(t.consumer("g"))) == 5
    with pytest.raises(pyqueue.UnknownTopic):
        t.delete_group("never")
