"""Failover: producers, a queue-mode worker and a stream-mode reader run in
their own processes while the nats-server that leads the topic's stream is
killed with SIGKILL.

Sends retry with their dedup id through the election: the stream ends with
every message exactly once.  The worker goes on and processes every message
at least once; the reader reads every message, each producer's in order.
The killed node is started again on its store and catches up (the leader
reports its replica current)."""

import pytest

import pyqueue

from conformance.support import nats_missing, until

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=f"jetstream backend: {nats_missing()}")

PER_PRODUCER = 600
KILL_AFTER = 100

CONNECT = """
import sys, pyqueue
broker = pyqueue.connect(sys.argv[1], namespace="failover", timeout=90.0, request_timeout=1.0)
t = broker.topic("orders")
"""

READER = CONNECT + """
c = t.consumer("audit", mode="stream", session_timeout=3.0)
print("ready", flush=True)
while True:
    for m in c.poll_batch(500, timeout=1.0):
        print("r", m.value.decode(), flush=True)
        m.ack()
"""

PRODUCER = CONNECT + """
name, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    r = t.send(b"%s-%d" % (name.encode(), i), dedup_id=f"{name}-{i}")
    print("sent", i, r.offset, flush=True)
print("done", flush=True)
"""

WORKER = CONNECT + """
w = t.consumer("workers", mode="queue", visibility_timeout=2.0)
print("ready", flush=True)
w.run(lambda m: print("p", m.value.decode(), m.delivery_count, flush=True))
"""


def stream_info(broker, stream):
    return broker._run(broker.client.api_retry(f"STREAM.INFO.{stream}", deadline=broker._deadline(),
                                               what="stream info"))


def test_leader_killed_under_load(children):
    from pyqueue.jetstream.localcluster import LocalCluster
    with LocalCluster(3) as cluster, \
            pyqueue.connect(cluster.url, namespace="failover", timeout=90.0, request_timeout=1.0) as b:
        t = b.topic("orders")
        stream = t._streams[0]
        worker = children.spawn(WORKER, cluster.url)
        reader = children.spawn(READER, cluster.url)
        assert worker.line(timeout=60) == "ready", worker.describe()
        assert reader.line(timeout=60) == "ready", reader.describe()
        producers = [children.spawn(PRODUCER, cluster.url, name, PER_PRODUCER) for name in ("a", "b")]
        for p in producers:
            while not p.line(timeout=60).startswith(f"sent {KILL_AFTER} "):
                pass

        leader = stream_info(b, stream)["cluster"]["leader"]
        victim = int(leader[1:])
        cluster.kill(victim)                       # SIGKILL, mid-stream

        for p in producers:
            while p.line(timeout=120) != "done":
                pass
            assert p.wait(timeout=60) == 0, p.describe()
        expected = {f"{name}-{i}" for name in ("a", "b") for i in range(PER_PRODUCER)}

        # Every send is in the stream exactly once.
        stored = [m.value.decode() for m in t.read(0, 0, max_messages=10 * PER_PRODUCER)]
        assert len(stored) == len(expected) and set(stored) == expected
        assert t.offsets(0) == (0, len(expected))
        assert stream_info(b, stream)["cluster"]["leader"] != leader

        # The worker went on: every message processed at least once.
        processed = set()
        while not expected <= processed:
            kind, value, _count = worker.line(timeout=120).split(" ")
            assert kind == "p"
            processed.add(value)
        assert processed == expected

        # The reader read everything; each producer's messages in their order.
        first_seen: list[str] = []
        seen: set[str] = set()
        while not expected <= seen:
            kind, value = reader.line(timeout=120).split(" ")
            assert kind == "r"
            if value not in seen:
                seen.add(value)
                first_seen.append(value)
        for name in ("a", "b"):
            mine = [int(v.split("-")[1]) for v in first_seen if v.startswith(name + "-")]
            assert mine == list(range(PER_PRODUCER))

        # The killed node comes back on its store and catches up.
        cluster.restart(victim)
        name = cluster.name(victim)

        def caught_up():
            info = stream_info(b, stream)["cluster"]
            peers = {r["name"]: r for r in info.get("replicas", [])}
            peer = peers.get(name)
            return (info.get("leader") == name) or (peer is not None and peer.get("current")
                                                    and not peer.get("offline") and not peer.get("lag"))

        until(caught_up, timeout=60, step=lambda: t.wait(0, len(expected), timeout=0.2))
        assert t.offsets(0) == (0, len(expected))


READ_ALL = """
import sys, pyqueue
broker = pyqueue.connect(sys.argv[1], namespace="failover2", timeout=90.0, request_timeout=1.0)
c = broker.topic("orders").consumer("audit", mode="stream", session_timeout=3.0)
print("ready", flush=True)
while True:
    for m in c.poll_batch(100, timeout=1.0):
        print("r", m.offset, flush=True)
"""


def test_stream_reader_whose_server_is_killed_misses_nothing(children):
    """A stream-mode reader's consumer sends without acks: what was on the
    way when the reader's own server died is lost in transit, and the reader
    must ask for it again after reconnecting to another node."""
    from pyqueue.jetstream.localcluster import LocalCluster
    total = 20000
    with LocalCluster(3) as cluster, \
            pyqueue.connect(cluster.url, namespace="failover2", timeout=90.0, request_timeout=1.0) as b:
        t = b.topic("orders")
        leader = stream_info(b, t._streams[0])["cluster"]["leader"]
        victim = next(i for i in range(3) if cluster.name(i) != leader)
        reader = children.spawn(READ_ALL, cluster.node_url(victim))    # connected to the victim only
        assert reader.line(timeout=60) == "ready", reader.describe()
        t.send(b"first")
        for i in range(0, total, 500):
            t.send_batch([b"%d" % j for j in range(i, i + 500)])
        until(lambda: len(reader.lines) > total // 4, timeout=60, step=lambda: reader.line(timeout=60))
        cluster.kill(victim)                      # mid-backlog: batches are on their way
        offsets = set()
        while len(offsets) < total + 1:
            offsets.add(int(reader.line(timeout=60).split()[1]))
        assert offsets == set(range(total + 1))
