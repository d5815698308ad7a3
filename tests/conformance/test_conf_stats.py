"""Topic.stats() and broker.stats() on every backend: the same keys, and the
same values for what both can tell (offsets, depth, a group's committed
position, lag, in flight, dead letters, the oldest unacked message's age).
The keys a backend cannot fill are None there (the README lists them)."""

import time

from conformance.support import until


def settled(t, check):
    """t.stats() once check(stats) holds (an ack reaches the server's
    consumer state a moment after ack() returns on JetStream)."""
    return until(lambda: (lambda st: st if check(st) else None)(t.stats()), timeout=10,
                 step=lambda: time.sleep(0.02))

PART_KEYS = {"start", "end", "messages", "segments", "bytes", "synced", "depth"}
GROUP_KEYS = {"mode", "members", "lag", "in_flight", "dead_letters", "oldest_unacked_age", "partitions"}
GROUP_PART_KEYS = {"committed", "lag", "in_flight", "delayed", "dead_letters", "oldest_unacked_age", "damaged"}
TOPIC_KEYS = {"partitions", "groups", "depth", "config"}

# Keys that are None on a backend whatever the state (per group partition: by mode).
NONE_ON = {
    "embedded": {"partition": set(), "queue": {"damaged"}, "stream": {"damaged"}},
    "jetstream": {"partition": {"segments", "synced"}, "queue": {"delayed", "damaged"}, "stream": {"damaged"}},
}


def check_keys(backend, st):
    assert TOPIC_KEYS <= set(st)
    none = NONE_ON[backend.name]
    for part in st["partitions"].values():
        assert set(part) == PART_KEYS
        assert {k for k in PART_KEYS if part[k] is None} == none["partition"]
    for g in st["groups"].values():
        assert set(g) == GROUP_KEYS
        for v in g["partitions"].values():
            assert set(v) == GROUP_PART_KEYS
            assert none[g["mode"]] <= {k for k in GROUP_PART_KEYS if v[k] is None}


def test_a_queue_group_with_one_acked_and_one_leased_message(backend, broker):
    t = broker.topic("t")
    for i in range(3):
        t.send(b"m%d" % i)
    w = t.consumer("w", mode="queue")
    first = w.poll(timeout=5)
    first.ack()
    leased = w.poll(timeout=5)
    assert (first.offset, leased.offset) == (0, 1)
    time.sleep(0.05)                        # the leased message is measurably old
    st = settled(t, lambda st: st["groups"]["w"]["partitions"][0]["committed"] == 1)
    check_keys(backend, st)
    assert {k: st["partitions"][0][k] for k in ("start", "end", "messages")} == {"start": 0, "end": 3,
                                                                                 "messages": 3}
    assert st["partitions"][0]["bytes"] > 0
    g = st["groups"]["w"]
    p = g["partitions"][0]
    assert (g["mode"], g["lag"], g["in_flight"], g["dead_letters"]) == ("queue", 2, 1, 0)
    assert (p["committed"], p["lag"], p["in_flight"], p["dead_letters"]) == (1, 2, 1, 0)
    assert 0.05 <= p["oldest_unacked_age"] < 60 and g["oldest_unacked_age"] == p["oldest_unacked_age"]
    assert st["partitions"][0]["depth"] == st["depth"] == 2      # after the group's committed position
    if backend.name == "embedded":
        assert g["members"] == 1 and p["delayed"] == 0
    else:
        assert g["members"] is None                               # pull consumers have no membership
    leased.ack()
    st = settled(t, lambda st: st["groups"]["w"]["in_flight"] == 0)
    g = st["groups"]["w"]
    assert (g["lag"], g["in_flight"], st["depth"]) == (1, 0, 1)
    w.close()


def test_nothing_unacked_has_no_age(broker):
    t = broker.topic("t")
    t.send(b"x")
    w = t.consumer("w", mode="queue")
    w.poll(timeout=5).ack()
    g = settled(t, lambda st: st["groups"]["w"]["in_flight"] == 0)["groups"]["w"]
    assert (g["lag"], g["in_flight"], g["oldest_unacked_age"]) == (0, 0, None)
    assert g["partitions"][0]["committed"] == 1
    w.close()


def test_a_stream_group_and_the_slowest_group_sets_depth(backend, broker):
    t = broker.topic("t", partitions=2)
    t.send_batch([b"a", b"b", b"c", b"d"], partition=0)
    t.send(b"e", partition=1)
    assert t.stats()["depth"] == 5                                # no group: every retained message
    fast = t.consumer("fast", mode="stream")
    got = []
    while len(got) < 5:
        got += fast.poll_batch(10, timeout=5)
    for x in got:
        x.ack()
    fast.commit()
    slow = t.consumer("slow", mode="stream")
    m = slow.poll(timeout=5)
    m.ack()
    slow.commit()                                                  # one message of one partition
    st = t.stats()
    check_keys(backend, st)
    f, s = st["groups"]["fast"], st["groups"]["slow"]
    assert f["mode"] == s["mode"] == "stream"
    assert {p: v["committed"] for p, v in f["partitions"].items()} == {0: 4, 1: 1}
    assert (f["lag"], f["in_flight"], f["oldest_unacked_age"]) == (0, 0, None)
    committed = {p: v["committed"] for p, v in s["partitions"].items()}
    assert sum(committed.values()) == 1 and committed[m.partition] == 1
    assert s["lag"] == 4 and s["oldest_unacked_age"] > 0
    assert st["depth"] == 4 and {p: v["depth"] for p, v in st["partitions"].items()} == {
        p: (4 if p == 0 else 1) - committed[p] for p in (0, 1)}
    assert f["members"] == s["members"] == 1                      # one live member each
    fast.close()
    slow.close()


def test_dead_letters_are_counted_per_group(broker):
    t = broker.topic("t")
    broker.topic("t.dlq")
    t.send(b"bad")
    t.send(b"good")
    w = t.consumer("w", mode="queue", max_deliveries=1, dead_letter="t.dlq")
    handled = []

    def handler(m):
        handled.append(m.value)
        if len(handled) == 2:
            w.stop()
        if m.value == b"bad":
            raise ValueError("bad")

    w.run(handler, install_signal_handlers=False)
    w.close()
    g = t.stats()["groups"]["w"]
    assert (g["dead_letters"], g["partitions"][0]["dead_letters"], g["lag"]) == (1, 1, 0)
    assert broker.topic("t.dlq").offsets(0) == (0, 1)


def test_broker_stats_has_every_topic_and_the_common_keys(backend, broker):
    broker.topic("a").send(b"x")
    broker.topic("b", partitions=2)
    st = broker.stats()
    assert {"path", "fsync", "topics"} <= set(st)
    assert set(st["topics"]) == {"a", "b"}
    assert st["topics"]["a"]["partitions"][0]["end"] == 1 and len(st["topics"]["b"]["partitions"]) == 2
    if backend.name == "jetstream":
        assert st["path"] is None and st["fsync"] is None and st["namespace"] == backend.namespace


def test_a_queue_group_counts_from_where_it_started_or_was_moved(broker):
    t = broker.topic("t")
    for i in range(3):
        t.send(b"old%d" % i)
    w = t.consumer("late", mode="queue", start="latest")
    t.send(b"new0")
    t.send(b"new1")
    m = w.poll(timeout=5)
    assert m.offset == 3
    p = t.stats()["groups"]["late"]["partitions"][0]
    assert (p["committed"], p["lag"], p["in_flight"]) == (3, 2, 1)
    w.seek(0, 4)                                # the group moves on: its first unacked message is 4
    m = w.poll(timeout=5)
    assert m.offset == 4
    p = t.stats()["groups"]["late"]["partitions"][0]
    assert (p["committed"], p["lag"], p["in_flight"]) == (4, 1, 1) and p["oldest_unacked_age"] > 0
    m.ack()
    p = settled(t, lambda st: st["groups"]["late"]["in_flight"] == 0)["groups"]["late"]["partitions"][0]
    assert (p["committed"], p["lag"], p["in_flight"], p["oldest_unacked_age"]) == (5, 0, 0, None)
    w.close()
