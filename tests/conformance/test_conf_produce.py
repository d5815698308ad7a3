"""Producing and reading, on every backend: receipts, offsets, keys and
partitions, headers, batches, replay by offset and time, topic
configuration, dedup, limits and bad input."""

import time

import pytest

import pyqueue
from pyqueue._native import partition_for_key

from conformance.support import busy_wait


def test_send_then_read_back(broker):
    t = broker.topic("orders", partitions=2)
    r = t.send(b'{"id": 1}', key=b"user-42", headers={"trace": b"abc"})
    assert (r.topic, r.partition, r.offset) == ("orders", partition_for_key(b"user-42", 2), 0)
    [m] = t.read(r.partition, r.offset, max_messages=10)
    assert (m.topic, m.partition, m.offset, m.key, m.value) == ("orders", r.partition, 0, b"user-42", b'{"id": 1}')
    assert m.headers == {"trace": b"abc"}
    assert abs(m.timestamp - time.time()) < 60
    assert t.offsets(r.partition) == (0, 1)
    assert t.offsets(1 - r.partition) == (0, 0)


def test_a_key_lands_on_the_same_partition_number_on_every_backend(broker):
    t = broker.topic("keys", partitions=7)
    for i in range(40):
        key = b"user-%d" % i
        assert t.send(b"x", key=key).partition == partition_for_key(key, 7) == t.partition_for(key)


def test_offsets_are_dense_and_keys_keep_their_order(broker):
    t = broker.topic("t", partitions=3)
    for i in range(60):
        t.send(b"%d" % i, key=b"k%d" % (i % 5))
    seen = {}
    for p in range(3):
        start, end = t.offsets(p)
        msgs = t.read(p, start, max_messages=1000)
        assert [m.offset for m in msgs] == list(range(start, end))
        for m in msgs:
            seen.setdefault(m.key, []).append(int(m.value))
    assert sum(map(len, seen.values())) == 60
    assert all(v == sorted(v) for v in seen.values())


def test_keyless_sends_spread_over_partitions(broker):
    t = broker.topic("rr", partitions=3)
    parts = {t.send(b"x").partition for _ in range(9)}
    assert parts == {0, 1, 2}


@pytest.mark.parametrize("headers", [
    {},
    {"plain": b"ascii text", "x-original-offset": b"12"},
    {"binary": b"\x00\xff\r\n", "empty": b"", "spaced": b" padded ", "unicode-\u00e9": b"caf\xc3\xa9"},
    {"Nats-Msg-Id": b"not the dedup id", "pq-reserved": b"kept", "a:b": b"colon in name"},
])
def test_headers_round_trip_exactly(broker, headers):
    t = broker.topic("h")
    r = t.send(b"v", headers=headers)
    assert t.read(0, r.offset)[0].headers == headers


@pytest.mark.parametrize("key", [b"", b"\x00\x01\xff", b" spaced ", b"plain-key", bytes(range(256))])
def test_keys_round_trip_exactly(broker, key):
    t = broker.topic("k")
    r = t.send(b"v", key=key, partition=0)
    m = t.read(0, r.offset)[0]
    assert m.key == key and m.value == b"v"
    assert t.send(b"v").partition == 0 and t.read(0, r.offset + 1)[0].key is None


def test_send_batch_is_in_order(broker):
    t = broker.topic("b", partitions=2)
    t.send(b"first", partition=1)
    br = t.send_batch([b"m%d" % i for i in range(250)], partition=1)
    assert (br.topic, br.partition) == ("b", 1)
    assert list(br.offsets) == list(range(1, 251))
    msgs = t.read(1, 1, max_messages=1000)
    assert [m.value for m in msgs] == [b"m%d" % i for i in range(250)]
    assert t.send_batch([], partition=0).offsets == range(0, 0)


def test_send_batch_of_numpy_rows(broker):
    np = pytest.importorskip("numpy")
    t = broker.topic("np")
    rows = np.arange(40, dtype=np.uint8).reshape(10, 4)
    br = t.send_batch(rows, key=b"k")
    assert [m.value for m in t.read(br.partition, br.offsets[0], 100)] == [bytes(r) for r in rows]


def test_read_bounds_and_time_lookup(broker):
    t = broker.topic("t")
    for i in range(5):
        t.send(b"%d" % i)
    stamps = [m.timestamp for m in t.read(0, 0)]
    assert stamps == sorted(stamps)
    assert [m.value for m in t.read(0, 2, max_messages=2)] == [b"2", b"3"]
    assert t.read(0, 5) == []
    with pytest.raises(pyqueue.OffsetOutOfRange):
        t.read(0, 6)
    with pytest.raises(pyqueue.OffsetOutOfRange):
        t.read(0, -1)
    with pytest.raises(pyqueue.PartitionOutOfRange):
        t.read(1, 0)
    assert t.offset_for_time(0, stamps[3]) == 3
    assert t.offset_for_time(0, 0.0) == 0
    assert t.offset_for_time(0, time.time() + 3600) == 5


def test_topic_configuration_is_stored_and_checked(broker, reopen):
    broker.topic("cfg", partitions=3, retention_seconds=3600.0)
    assert "cfg" in broker.topics()
    other = reopen()
    t = other.topic("cfg")
    assert t.partitions == 3 and t.config.retention_seconds == 3600.0
    with pytest.raises(pyqueue.ConfigError, match="partitions"):
        other.topic("cfg", partitions=4)
    with pytest.raises(pyqueue.UnknownTopic):
        other.topic("missing", create=False)
    other.delete_topic("cfg")
    assert "cfg" not in other.topics()
    with pytest.raises(pyqueue.UnknownTopic):
        other.delete_topic("cfg")
    with pytest.raises(pyqueue.InvalidName):
        other.topic("../x")
    with pytest.raises(pyqueue.ConfigError):
        other.topic("zero", partitions=0)


def test_dotted_and_underscored_names_stay_apart(broker):
    a, b, c = broker.topic("a.b"), broker.topic("a_b"), broker.topic("a-b")
    a.send(b"dot"), b.send(b"underscore"), c.send(b"dash")
    assert [t.read(0, 0)[0].value for t in (a, b, c)] == [b"dot", b"underscore", b"dash"]
    assert {"a.b", "a_b", "a-b"} <= set(broker.topics())


def test_dedup_returns_the_first_receipt(broker, reopen):
    t = broker.topic("charges", partitions=4)
    first = t.send(b"charge 10 EUR", key=b"c-991", dedup_id="charge-991")
    assert t.send(b"charge 10 EUR", key=b"c-991", dedup_id="charge-991") == first
    keyless = t.send(b"no key", dedup_id=b"charge-992")
    assert t.send(b"no key", dedup_id=b"charge-992") == keyless != first
    again = reopen().topic("charges").send(b"charge 10 EUR", key=b"c-991", dedup_id="charge-991")
    assert again == first
    assert sum(t.offsets(p)[1] for p in range(4)) == 2


def test_dedup_window_expires(broker):
    t = broker.topic("t", dedup_window=0.2)
    r1 = t.send(b"a", dedup_id="x")
    busy_wait(1.0)                      # the server drops expired ids on a timer: leave it room
    assert t.send(b"a", dedup_id="x").offset == r1.offset + 1


def test_limits_and_bad_input(broker):
    t = broker.topic("lim", max_message_bytes=1000)
    t.send(b"x" * 990, key=b"k" * 10)
    with pytest.raises(pyqueue.MessageTooLarge):
        t.send(b"x" * 1001)
    with pytest.raises(pyqueue.MessageTooLarge):
        t.send_batch([b"ok", b"x" * 1001])
    with pytest.raises(TypeError):
        t.send("text, not bytes")
    with pytest.raises(TypeError):
        t.send(b"v", key="text key")
    with pytest.raises(TypeError):
        t.send(b"v", headers={"h": "text"})
    with pytest.raises(pyqueue.PartitionOutOfRange):
        t.send(b"v", partition=3)
    with pytest.raises(TypeError):
        t.send(b"v", partition="0")
    with pytest.raises(pyqueue.ConfigError):
        t.send(b"v", dedup_id="")
    with pytest.raises(TypeError):
        t.read(0, "0")
    assert t.offsets(0) == (0, 1)


def test_closed_broker_refuses(backend):
    b = backend.open()
    t = b.topic("t")
    b.close()
    b.close()
    with pytest.raises(pyqueue.Closed):
        t.send(b"x")
    with pytest.raises(pyqueue.Closed):
        b.topic("t")
