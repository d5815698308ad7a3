"""Storage through the public API: round trips, partitioning, config, retention,
time lookup, zero-copy reads and bad input."""

import os
import stat
import time

import numpy as np
import pytest

import pyqueue
from pyqueue import _native

KiB = 1024


@pytest.fixture
def broker(tmp_path):
    b = pyqueue.open(tmp_path / "b", fsync="never")
    yield b
    b.close()


def test_round_trip_with_keys_and_headers_over_partitions(broker):
    t = broker.topic("orders", partitions=4)
    sent = {}
    for i in range(200):
        key = f"user-{i % 13}".encode()
        r = t.send(f"v{i}".encode(), key=key, headers={"i": str(i).encode(), "trace": b"\x00\xff"})
        assert r.topic == "orders" and 0 <= r.partition < 4
        sent[(r.partition, r.offset)] = (key, f"v{i}".encode(), str(i).encode())
    seen = 0
    for p in range(4):
        start, end = t.offsets(p)
        assert start == 0
        for m in t.read(p, 0, max_messages=10_000):
            key, value, i = sent[(p, m.offset)]
            assert (m.topic, m.partition, m.key, m.value) == ("orders", p, key, value)
            assert m.headers == {"i": i, "trace": b"\x00\xff"}
            seen += 1
        assert end == len(t.read(p, 0, 10_000))
    assert seen == 200


def test_one_key_stays_on_one_partition_in_order(broker):
    t = broker.topic("k", partitions=8)
    receipts = [t.send(str(i).encode(), key=b"user-42") for i in range(100)]
    assert {r.partition for r in receipts} == {_native.partition_for_key(b"user-42", 8)}
    p = receipts[0].partition
    assert [m.value for m in t.read(p, 0, 1000)] == [str(i).encode() for i in range(100)]
    assert [r.offset for r in receipts] == list(range(100))


def test_key_to_partition_matches_kafka_murmur2():
    # Values from Kafka's partitioner: (murmur2(key) & 0x7fffffff) % n.
    assert _native.murmur2(b"21") == -973932308
    assert _native.murmur2(b"foobar") == -790332482
    assert _native.partition_for_key(b"foobar", 16) == (-790332482 & 0x7FFFFFFF) % 16


def test_no_key_spreads_over_partitions(broker):
    t = broker.topic("rr", partitions=3)
    assert {t.send(b"x").partition for _ in range(30)} == {0, 1, 2}


def test_reopen_continues_offsets_and_keeps_config(tmp_path):
    with pyqueue.open(tmp_path, fsync="interval") as b:
        t = b.topic("t", partitions=2, segment_bytes=64 * KiB, max_message_bytes=1000)
        for i in range(50):
            t.send(b"a" * 10, partition=1)
    with pyqueue.open(tmp_path) as b:
        t = b.topic("t")
        assert t.config.partitions == 2 and t.config.segment_bytes == 64 * KiB
        assert t.config.max_message_bytes == 1000
        assert t.send(b"b", partition=1).offset == 50
        assert b.topics() == ["t"]


def test_conflicting_config_is_refused(tmp_path):
    with pyqueue.open(tmp_path) as b:
        b.topic("t", partitions=4)
        with pytest.raises(pyqueue.ConfigError, match="partitions=4"):
            b.topic("t", partitions=8)
    with pyqueue.open(tmp_path) as b:
        with pytest.raises(pyqueue.ConfigError, match="segment_bytes"):
            b.topic("t", segment_bytes=128 * KiB)
        assert b.topic("t", partitions=4).partitions == 4


@pytest.mark.parametrize("kwargs", [
    {"partitions": 0}, {"partitions": 5000}, {"partitions": "2"},
    {"segment_bytes": 1000}, {"segment_bytes": 64 * KiB + 8},
    {"max_message_bytes": 0}, {"segment_bytes": 64 * KiB, "max_message_bytes": 64 * KiB},
    {"retention_bytes": -1}, {"retention_seconds": 0}, {"retention_seconds": float("nan")},
    {"max_depth": 0},
])
def test_bad_config_values(broker, kwargs):
    with pytest.raises(pyqueue.ConfigError):
        broker.topic("bad", **kwargs)
    assert "bad" not in broker.topics()


def test_bad_broker_options(tmp_path):
    with pytest.raises(pyqueue.ConfigError, match="fsync"):
        pyqueue.open(tmp_path, fsync="sometimes")
    with pytest.raises(pyqueue.ConfigError, match="fsync_interval"):
        pyqueue.open(tmp_path, fsync_interval=0)


@pytest.mark.parametrize("name", ["", ".", "..", "../x", "a/b", "a b", "x" * 250, "é", "a\x00"])
def test_bad_topic_names(broker, name):
    with pytest.raises(pyqueue.InvalidName):
        broker.topic(name)


def test_good_topic_names(broker):
    for name in ["a", "orders.dlq", "A-b_c.9", "x" * 249, "..."]:
        broker.topic(name)
    assert "orders.dlq" in broker.topics()


def test_bad_input_writes_nothing(broker):
    t = broker.topic("t", partitions=2, max_message_bytes=1000)
    with pytest.raises(TypeError):
        t.send("text")
    with pytest.raises(TypeError):
        t.send(123)
    with pytest.raises(TypeError):
        t.send(b"v", key="text-key")
    with pytest.raises(TypeError):
        t.send(b"v", headers={"a": "str-value"})
    with pytest.raises(TypeError):
        t.send(b"v", headers={1: b"x"})
    with pytest.raises(pyqueue.MessageTooLarge, match="1000"):
        t.send(b"x" * 1001)
    with pytest.raises(pyqueue.MessageTooLarge):
        t.send(b"x" * 900, key=b"k" * 101)
    with pytest.raises(pyqueue.PartitionOutOfRange):
        t.send(b"x", partition=2)
    with pytest.raises(pyqueue.PartitionOutOfRange):
        t.send(b"x", partition=-1)
    with pytest.raises(pyqueue.MessageTooLarge):
        t.send_batch([b"ok", b"x" * 1001], partition=0)
    with pytest.raises(TypeError):
        t.send_batch([b"ok", "str"], partition=0)
    with pytest.raises(TypeError):
        t.send_batch(b"not-a-sequence")
    assert t.offsets(0) == (0, 0) and t.offsets(1) == (0, 0)
    t.send(b"x" * 1000, partition=0)   # exactly the limit is fine
    assert t.offsets(0) == (0, 1)


def test_bytes_like_values(broker):
    t = broker.topic("t")
    t.send(bytearray(b"ba"))
    t.send(memoryview(b"mv"))
    t.send(np.frombuffer(b"np", dtype=np.uint8))
    t.send(b"")
    assert [m.value for m in t.read(0, 0, 10)] == [b"ba", b"mv", b"np", b""]


def test_send_batch_dense_offsets_and_numpy_rows(broker):
    t = broker.topic("t", segment_bytes=64 * KiB)
    r = t.send_batch([b"%d" % i for i in range(5000)], partition=0)   # spans many segments
    assert r.offsets == range(0, 5000)
    rows = np.arange(300, dtype=np.uint8).reshape(30, 10)
    r2 = t.send_batch(rows, partition=0)
    assert r2.offsets == range(5000, 5030)
    got = t.read(0, 0, 6000)
    assert [m.value for m in got[:5000]] == [b"%d" % i for i in range(5000)]
    assert [m.value for m in got[5000:]] == [bytes(row) for row in rows]
    with pytest.raises(TypeError):
        t.send_batch(np.zeros((3, 4), dtype=np.uint32))
    with pytest.raises(TypeError):
        t.send_batch(np.zeros(10, dtype=np.uint8))
    assert t.send_batch([], partition=0).offsets == range(5030, 5030)


def test_read_bounds_and_out_of_range(broker):
    t = broker.topic("t")
    for i in range(10):
        t.send(b"%d" % i)
    assert [m.offset for m in t.read(0, 7, 100)] == [7, 8, 9]
    assert t.read(0, 10, 100) == []
    with pytest.raises(pyqueue.OffsetOutOfRange):
        t.read(0, 11)
    with pytest.raises(pyqueue.OffsetOutOfRange):
        t.read(0, -1)
    with pytest.raises(pyqueue.PartitionOutOfRange):
        t.read(1, 0)


def test_read_batch_is_zero_copy_and_outlives_close(tmp_path):
    b = pyqueue.open(tmp_path, fsync="never")
    t = b.topic("t")
    values = [os.urandom(i % 50) for i in range(100)]
    for v in values:
        t.send(v, key=b"k", headers={"h": b"1"})
    batch = t.read_batch(0, 10, 50)
    assert len(batch) == 50 and list(batch.offsets) == list(range(10, 60))
    assert batch.offsets.dtype == np.uint64 and batch.lengths.dtype == np.uint32
    assert [bytes(v) for v in batch] == values[10:60]
    assert batch.buffer.readonly
    b.close()
    assert bytes(batch.value(0)) == values[10]      # the mapping lives while the view does


def test_segment_roll_and_retention_by_bytes(broker):
    t = broker.topic("t", segment_bytes=64 * KiB, retention_bytes=256 * KiB)
    value = b"x" * 1000
    for i in range(1000):           # about 16 segments' worth
        t.send(value + b"%d" % i)
    start, end = t.offsets(0)
    assert end == 1000 and start > 0
    segments, nbytes = t._logs[0].disk_usage()
    assert nbytes <= 256 * KiB + 64 * KiB and segments >= 2
    with pytest.raises(pyqueue.OffsetOutOfRange, match="retained"):
        t.read(0, start - 1)
    assert t.read(0, start, 1)[0].value == value + b"%d" % start
    assert t.read(0, end - 1, 1)[0].value == value + b"%d" % (end - 1)


def test_retention_by_age(broker):
    t = broker.topic("t", segment_bytes=64 * KiB, retention_seconds=0.2)
    for _ in range(200):
        t.send(b"y" * 1000)
    assert t.offsets(0)[0] == 0
    time.sleep(0.3)      # the retention rule is about wall-clock age itself
    assert t.enforce_retention() > 0
    start, end = t.offsets(0)
    assert 0 < start < end == 200      # the tail segment is never dropped
    t.read(0, start, 1000)


def test_offset_for_time(broker):
    t = broker.topic("t", segment_bytes=64 * KiB)
    before = time.time()
    for i in range(500):
        t.send(b"z" * 300)
    middle = t.read(0, 250, 1)[0].timestamp
    assert t.offset_for_time(0, before - 10) == 0
    assert t.offset_for_time(0, middle) <= 250
    assert t.read(0, t.offset_for_time(0, middle), 1)[0].timestamp >= middle
    assert t.offset_for_time(0, time.time() + 10) == 500
    stamps = [m.timestamp for m in t.read(0, 0, 500)]
    assert stamps == sorted(stamps)      # never decreasing within a partition


def test_fsync_always_and_flush(tmp_path):
    with pyqueue.open(tmp_path, fsync="always") as b:
        t = b.topic("t")
        r = t.send(b"durable")
        assert t._logs[0].synced >= r.offset + 1
        t.send_batch([b"a", b"b"])
        assert t._logs[0].synced == 3
    with pyqueue.open(tmp_path, fsync="never") as b:
        t = b.topic("t")
        t.send(b"x")
        t.flush()
        assert t._logs[0].synced == 4


def test_files_are_private(tmp_path):
    with pyqueue.open(tmp_path / "b") as b:
        b.topic("t").send(b"x")
    for root, dirs, files in os.walk(tmp_path / "b"):
        for d in dirs:
            assert stat.S_IMODE(os.stat(os.path.join(root, d)).st_mode) == 0o700, d
        for f in files:
            assert stat.S_IMODE(os.stat(os.path.join(root, f)).st_mode) == 0o600, f


def test_delete_topic(broker):
    t = broker.topic("gone", partitions=2)
    t.send(b"x")
    broker.delete_topic("gone")
    assert "gone" not in broker.topics()
    with pytest.raises(pyqueue.Closed):
        t.send(b"y")
    with pytest.raises(pyqueue.UnknownTopic):
        broker.delete_topic("gone")
    assert broker.topic("gone").offsets(0) == (0, 0)     # a new, empty topic


def test_closed_broker(tmp_path):
    b = pyqueue.open(tmp_path)
    t = b.topic("t")
    b.close()
    b.close()
    with pytest.raises(pyqueue.Closed):
        t.send(b"x")
    with pytest.raises(pyqueue.Closed):
        b.topic("t")
    with pytest.raises(pyqueue.Closed):
        t.read(0, 0)


def test_open_without_create(tmp_path):
    with pytest.raises(pyqueue.ConfigError, match="no broker"):
        pyqueue.open(tmp_path / "missing", create=False)
    with pyqueue.open(tmp_path) as b:
        with pytest.raises(pyqueue.UnknownTopic):
            b.topic("nope", create=False)


def test_message_without_consumer_cannot_be_acked(broker):
    t = broker.topic("t")
    t.send(b"x")
    m = t.read(0, 0)[0]
    with pytest.raises(pyqueue.PyQueueError, match="without a consumer"):
        m.ack()


def test_crc32c_vectors_both_paths():
    for impl in ("sw", "hw", "auto"):
        assert _native.crc32c(b"123456789", impl=impl) == 0xE3069283
        assert _native.crc32c(b"\x00" * 32, impl=impl) == 0x8A9136AA
        assert _native.crc32c(b"\xff" * 32, impl=impl) == 0x62A8AB43
        assert _native.crc32c(bytes(range(32)), impl=impl) == 0x46DD794E
        data = os.urandom(1000)
        assert _native.crc32c(data[300:], _native.crc32c(data[:300], impl=impl), impl=impl) == \
            _native.crc32c(data, impl="sw")
