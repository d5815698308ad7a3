"""Failover of the cluster's bookkeeping: the node that leads the KV bucket
of group state (ownership, generations, committed offsets) is killed with
SIGKILL while a stream-mode group of two processes reads; one member is
then killed too, and the other must take its partitions over through the
new KV leader.  Then the meta leader (which creates streams and consumers)
is killed, and a new topic and group are made meanwhile.

Nothing is lost: every message is read, the group's committed offsets
reach the end, and the killed nodes rejoin."""

import pytest

import pyqueue

from conformance.support import nats_missing, until

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=f"jetstream backend: {nats_missing()}")

PER_ROUND = 200

CONNECT = """
import sys, pyqueue
broker = pyqueue.connect(sys.argv[1], namespace="kvfail", timeout=90.0, request_timeout=1.0)
t = broker.topic("events")
"""

READER = CONNECT + """
c = t.consumer("audit", mode="stream", session_timeout=3.0, auto_commit_interval=0.2)
print("ready", flush=True)
owned = None
while True:
    for m in c.poll_batch(50, timeout=0.3):
        print("r", m.partition, m.offset, flush=True)
        m.ack()
    a = c.assignment()
    if a != owned:
        owned = a
        print("a", *a, flush=True)
"""


def leader_of(broker, stream):
    info = broker._run(broker.client.api_retry(f"STREAM.INFO.{stream}", deadline=broker._deadline(),
                                               what="stream info"))
    return int(info["cluster"]["leader"][1:])


def read_by(*readers):
    return {tuple(map(int, line.split()[1:])) for r in readers for line in r.lines if line.startswith("r ")}


def test_kv_and_meta_leaders_killed_under_a_stream_group(children):
    from pyqueue.jetstream.localcluster import LocalCluster
    with LocalCluster(3) as cluster, \
            pyqueue.connect(cluster.url, namespace="kvfail", timeout=90.0, request_timeout=1.0) as b:
        t = b.topic("events", partitions=2)

        def send_round(r):
            for i in range(PER_ROUND):
                t.send(b"%d-%d" % (r, i), key=b"k%d" % i, dedup_id=f"{r}-{i}")

        send_round(0)
        a = children.spawn(READER, cluster.url)
        assert a.line(timeout=60) == "ready", a.describe()
        c = children.spawn(READER, cluster.url)
        assert c.line(timeout=60) == "ready", c.describe()
        until(lambda: len(read_by(a, c)) >= PER_ROUND // 2, timeout=60, step=lambda: c.line(timeout=60))

        # 1. The KV leader dies; sends and reads go on.
        kv = leader_of(b, f"KV_{b.names.groups_bucket}")
        cluster.kill(kv)
        send_round(1)
        # 2. ...and so does a member: the other takes over through the new KV leader.
        a.kill()
        expected = {(p, o) for p in range(2) for o in range(t.offsets(p)[1])}
        assert len(expected) == 2 * PER_ROUND
        until(lambda: read_by(a, c) >= expected, timeout=120, step=lambda: c.line(timeout=60))
        until(lambda: "a 0 1" in c.lines, timeout=60, step=lambda: c.line(timeout=60))
        cluster.restart(kv)

        # 3. The meta leader dies: a new topic and group are made meanwhile.
        meta = until(lambda: [cluster.meta_leader()] if cluster.meta_leader() is not None else None,
                     timeout=30, step=lambda: t.wait(0, 1 << 40, timeout=0.2))[0]   # node 0 is falsy
        cluster.kill(meta)
        late = b.topic("late")
        late.send(b"made during the election", dedup_id="late-1")
        m = late.consumer("x", mode="queue").poll(timeout=60)
        assert m is not None and m.value == b"made during the election"
        m.ack()
        send_round(2)
        cluster.restart(meta)

        # Everything read, and committed to the end.
        expected = {(p, o) for p in range(2) for o in range(t.offsets(p)[1])}
        assert len(expected) == 3 * PER_ROUND
        until(lambda: read_by(a, c) >= expected, timeout=120, step=lambda: c.line(timeout=60))
        until(lambda: t.stats()["groups"]["audit"]["lag"] == 0, timeout=60,
              step=lambda: t.wait(0, 1 << 40, timeout=0.2))
