"""The JetStream backend's pure parts, without a server: names, URLs,
header encoding, ack-subject parsing, the lease table and the bridge."""

import asyncio
import itertools
import threading

import pytest

import pyqueue
from pyqueue.jetstream.bridge import Bridge
from pyqueue.jetstream.client import parse_url
from pyqueue.jetstream.message import from_nats_headers, to_nats_headers
from pyqueue.jetstream.naming import Names, escape, unescape
from pyqueue.jetstream.pull import parse_reply
from pyqueue.jetstream.queue_consumer import LeaseTable
from pyqueue.jetstream.topic import parse_time_ns


def test_escaping_is_injective_and_reversible():
    alphabet = "a._-"
    names = ["".join(p) for n in range(1, 5) for p in itertools.product(alphabet, repeat=n)]
    escaped = {escape(n) for n in names}
    assert len(escaped) == len(names)
    assert all("." not in e for e in escaped)
    assert all(unescape(escape(n)) == n for n in names)
    names_ = Names("pq")
    streams = {names_.stream(t, p) for t in names for p in range(12)}
    assert len(streams) == len(names) * 12


def test_namespace_and_stream_name_limits():
    with pytest.raises(pyqueue.ConfigError):
        Names("a.b")
    with pytest.raises(pyqueue.ConfigError):
        Names("")
    with pytest.raises(pyqueue.InvalidName, match="255"):
        Names("pq").check_topic("_" * 200, 1)
    Names("pq").check_topic("x" * 240, 1024)


def test_urls():
    assert parse_url("nats://a:1,tls://b") == ["nats://a:1", "tls://b:4222"]
    assert parse_url(" nats://127.0.0.1:4222 ") == ["nats://127.0.0.1:4222"]
    for bad in ("", "nats://a:1,,nats://b:2", "ws://a:1", "a:1", "nats://a:1?x=1"):
        with pytest.raises(pyqueue.ConfigError):
            parse_url(bad)


@pytest.mark.parametrize("key, headers", [
    (None, None),
    (b"k", {"a": b"b"}),
    (b"", {"": b"", " x ": b" y "}),
    (b"\xff\x00", {"Nats-Msg-Id": b"user's", "PQ-Key": b"user's too", "caf\u00e9": b"\xe9"}),
    (b"a b", {"x-original-offset": b"7", "multi\r\nline": b"v\r\nw"}),
])
def test_headers_round_trip(key, headers):
    nh = to_nats_headers(key, headers, msg_id="abc")
    assert nh["Nats-Msg-Id"] == "abc"
    for name, value in nh.items():        # what NATS carries unchanged
        assert name == name.strip() and "\r" not in value and "\n" not in value and value == value.strip()
    assert from_nats_headers(nh) == (key, headers or {})


def test_header_types_are_checked():
    with pytest.raises(TypeError):
        to_nats_headers("text", None)
    with pytest.raises(TypeError):
        to_nats_headers(None, {"a": "text"})
    with pytest.raises(TypeError):
        to_nats_headers(None, {1: b"x"})


def test_ack_subjects_and_times():
    assert parse_reply("$JS.ACK.pq_t_0.w.3.17.9.1796013145348277216.5") == ("pq_t_0", 3, 17, 1796013145348277216, 5)
    assert parse_reply("$JS.ACK.dom.acc.pq_t_0.w.3.17.9.1796013145348277216.5.tok") == (
        "pq_t_0", 3, 17, 1796013145348277216, 5)
    assert parse_time_ns("2026-11-30T04:32:25.348277216Z") % 1_000_000_000 == 348277216
    assert parse_time_ns("1970-01-01T00:00:01Z") == 1_000_000_000
    assert parse_time_ns("1970-01-01T00:00:01.5Z") == 1_500_000_000


def test_lease_table():
    t = LeaseTable(capacity=3)
    t.note(0, 5, 1)
    assert not t.newer(0, 5, 1)
    t.note(0, 5, 2)
    assert t.newer(0, 5, 1) and not t.newer(0, 5, 2)
    t.note(0, 5, 1)                        # an older count never overrides
    assert t.newer(0, 5, 1)
    t.forget(0, 5, 1)                      # only the newest delivery forgets
    assert t.newer(0, 5, 1)
    t.forget(0, 5, 2)
    assert not t.newer(0, 5, 1)
    for i in range(10):
        t.note(1, i, 2)
    assert not t.newer(1, 0, 1) and t.newer(1, 9, 1)   # bounded: the oldest went


def test_bridge_runs_posts_in_order_and_closes():
    b = Bridge()
    seen = []

    async def add(x):
        seen.append(x)
        return x

    try:
        assert b.run(add(1)) == 1
        for i in range(100):
            b.post(seen.append, i)
        b.post(add, "coro")
        assert b.run(add("last")) == "last"
        assert seen[1:101] == list(range(100))
        with pytest.raises(ZeroDivisionError):
            b.run(_fail())
        with pytest.raises(asyncio.TimeoutError):
            b.run(asyncio.sleep(10), timeout=0.05)
        results = []
        threads = [threading.Thread(target=lambda i=i: results.append(b.run(add(i)))) for i in range(8)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        assert sorted(results) == list(range(8))
    finally:
        b.close()
    with pytest.raises(pyqueue.Closed):
        b.run(add(2))
    b.close()


async def _fail():
    return 1 / 0
