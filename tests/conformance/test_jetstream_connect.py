"""connect() with bad input: an unreachable URL, a wrong scheme, something
that is not a NATS server, a server without JetStream, more replicas than
nodes.  Each gives a clear PyQueueError, and the calls that wait do so in
a child process whose run is bounded, so a hang fails the test."""

import socket

import pytest

import pyqueue

from conformance.support import nats_missing

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=f"jetstream backend: {nats_missing()}")

CONNECT_AND_REPORT = """
import sys, time, pyqueue
start = time.monotonic()
try:
    pyqueue.connect(sys.argv[1], connect_timeout=float(sys.argv[2]))
except pyqueue.PyQueueError as e:
    print(type(e).__name__, "|", e, flush=True)
else:
    print("connected", flush=True)
"""


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.mark.parametrize("url, match", [
    ("http://127.0.0.1:4222", "scheme 'http'"),
    ("127.0.0.1:4222", "no scheme"),
    ("nats://", "no host"),
    ("nats://127.0.0.1:4222,", "empty server address"),
    ("nats://127.0.0.1:99999", "not a URL"),
    ("nats://127.0.0.1:4222/path", "path"),
])
def test_malformed_urls_are_config_errors(url, match):
    with pytest.raises(pyqueue.ConfigError, match=match):
        pyqueue.connect(url)


def test_bad_options():
    with pytest.raises(TypeError):
        pyqueue.connect(b"nats://127.0.0.1:4222")
    with pytest.raises(pyqueue.ConfigError, match="namespace"):
        pyqueue.connect("nats://127.0.0.1:4222", namespace="a_b")
    with pytest.raises(pyqueue.ConfigError, match="replicas"):
        pyqueue.connect("nats://127.0.0.1:4222", replicas=7)
    with pytest.raises(pyqueue.ConfigError, match="connect_timeout"):
        pyqueue.connect("nats://127.0.0.1:4222", connect_timeout=0)


def test_unreachable_url_is_unavailable_within_the_connect_timeout(children):
    url = f"nats://127.0.0.1:{free_port()},nats://127.0.0.1:{free_port()}"
    child = children.run(CONNECT_AND_REPORT, url, 1.0, timeout=60)
    kind, _, message = child.lines[-1].partition(" | ")
    assert kind == "Unavailable", child.describe()
    assert "127.0.0.1" in message and "1 s" in message


def test_something_that_is_not_nats_is_unavailable(children):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)                  # accepts, never speaks the protocol
    try:
        port = listener.getsockname()[1]
        child = children.run(CONNECT_AND_REPORT, f"nats://127.0.0.1:{port}", 1.0, timeout=60)
    finally:
        listener.close()
    assert child.lines[-1].startswith("Unavailable | "), child.describe()


def test_a_server_without_jetstream_is_unavailable(children):
    from pyqueue.jetstream.localcluster import LocalCluster
    with LocalCluster(1, jetstream=False) as plain:
        child = children.run(CONNECT_AND_REPORT, plain.url, 5.0, timeout=60)
    kind, _, message = child.lines[-1].partition(" | ")
    assert kind == "Unavailable", child.describe()
    assert "JetStream disabled" in message


def test_more_replicas_than_nodes_is_a_config_error():
    from pyqueue.jetstream.localcluster import LocalCluster
    with LocalCluster(1) as lone:
        with pyqueue.connect(lone.url) as b:
            assert b.replicas == 1
            b.topic("fine").send(b"x")
            with pytest.raises(pyqueue.ConfigError, match="replicas"):
                b.topic("wide", replicas=3)


def test_the_server_version_is_checked(nats_cluster):
    with pyqueue.connect(nats_cluster.url) as b:
        assert b.server_version >= (2, 9, 0)
        assert b.stats()["server_version"].startswith("2.")


def test_sends_from_threads_and_from_inside_an_event_loop(nats_cluster):
    import asyncio
    import threading
    with pyqueue.connect(nats_cluster.url, namespace="threads") as b:
        t = b.topic("t")
        try:
            def produce(name):
                for i in range(50):
                    t.send(b"%s-%d" % (name, i))

            threads = [threading.Thread(target=produce, args=(b"t%d" % k,)) for k in range(4)]
            for th in threads:
                th.start()
            for th in threads:
                th.join()

            async def inside_a_loop():          # this thread runs a loop: sends go through the broker's
                return t.send(b"from-a-loop")

            r = asyncio.run(inside_a_loop())
            values = [m.value for m in t.read(0, 0, max_messages=1000)]
            assert len(values) == len(set(values)) == 201 and values[r.offset] == b"from-a-loop"
            for k in range(4):
                mine = [v for v in values if v.startswith(b"t%d-" % k)]
                assert mine == [b"t%d-%d" % (k, i) for i in range(50)]     # each thread's in order
        finally:
            b.delete_topic("t")
    with pytest.raises(pyqueue.Closed):
        t.send(b"after close")
