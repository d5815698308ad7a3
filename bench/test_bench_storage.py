"""pytest-benchmark suites for the storage engine: one partition, one process.

Each benchmark reports the time of one call; extra_info["messages_per_call"]
turns it into messages per second.  Topics keep at most
4 segments of 16 MiB (retention), so long calibrations do not fill the disk.

    python -m pytest bench/ --benchmark-only
    python -m pytest bench/ --benchmark-only --benchmark-json out.json
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import pytest

# The checkout comes first, so that an in-place build is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

SEED = 20261130
BATCH = 1000
SEGMENT_BYTES = 16 << 20
RETENTION_BYTES = 4 * SEGMENT_BYTES
# Sends are timed 1000 calls per round (a single ~1 us call is below the
# timer's resolution); the report is per call.
ROUNDS, ITERATIONS = 100, 1000


def value_of(size: int) -> bytes:
    return random.Random(SEED + size).randbytes(size)


def open_topic(path, fsync: str):
    broker = pyqueue.open(path, fsync=fsync)
    topic = broker.topic("bench", segment_bytes=SEGMENT_BYTES, retention_bytes=RETENTION_BYTES)
    return broker, topic


@pytest.fixture
def topic_interval(tmp_path):
    broker, topic = open_topic(tmp_path, "interval")
    yield topic
    broker.close()


@pytest.fixture
def topic_always(tmp_path):
    broker, topic = open_topic(tmp_path, "always")
    yield topic
    broker.close()


@pytest.fixture(scope="module")
def filled_topic(tmp_path_factory):
    """100,000 messages of 100 B, read over and over."""
    broker, topic = open_topic(tmp_path_factory.mktemp("filled"), "never")
    value = value_of(100)
    for _ in range(100):
        topic.send_batch([value] * BATCH, partition=0)
    yield topic
    broker.close()


def test_send_100b(benchmark, topic_interval):
    benchmark.extra_info["messages_per_call"] = 1
    value = value_of(100)
    benchmark.pedantic(topic_interval.send, args=(value,), kwargs={"partition": 0},
                       rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)


def test_send_1kib(benchmark, topic_interval):
    benchmark.extra_info["messages_per_call"] = 1
    value = value_of(1024)
    benchmark.pedantic(topic_interval.send, args=(value,), kwargs={"partition": 0},
                       rounds=ROUNDS, iterations=ITERATIONS, warmup_rounds=1)


def test_send_batch_1000x100b(benchmark, topic_interval):
    benchmark.extra_info["messages_per_call"] = BATCH
    values = [value_of(100)] * BATCH
    benchmark.pedantic(topic_interval.send_batch, args=(values,), kwargs={"partition": 0},
                       rounds=ROUNDS * 2, warmup_rounds=1)


def test_send_batch_numpy_1000x100b(benchmark, topic_interval):
    benchmark.extra_info["messages_per_call"] = BATCH
    rows = np.frombuffer(value_of(100) * BATCH, dtype=np.uint8).reshape(BATCH, 100)
    benchmark.pedantic(topic_interval.send_batch, args=(rows,), kwargs={"partition": 0},
                       rounds=ROUNDS * 2, warmup_rounds=1)


def test_read_1000(benchmark, filled_topic):
    """read() of 1000 Message objects, every value touched."""
    benchmark.extra_info["messages_per_call"] = BATCH
    start, end = filled_topic.offsets(0)
    offsets = iter(range(start, end - BATCH, BATCH))

    def read():
        nonlocal offsets
        offset = next(offsets, None)
        if offset is None:
            offsets = iter(range(start, end - BATCH, BATCH))
            offset = next(offsets)
        return sum(len(m.value) for m in filled_topic.read(0, offset, BATCH))

    assert benchmark(read) == BATCH * 100


def test_read_batch_1000(benchmark, filled_topic):
    """read_batch() of 1000 records: zero-copy, values not touched."""
    benchmark.extra_info["messages_per_call"] = BATCH
    start, end = filled_topic.offsets(0)
    offsets = iter(range(start, end - BATCH, BATCH))

    def read_batch():
        nonlocal offsets
        offset = next(offsets, None)
        if offset is None:
            offsets = iter(range(start, end - BATCH, BATCH))
            offset = next(offsets)
        return len(filled_topic.read_batch(0, offset, BATCH))

    assert benchmark(read_batch) > 0


def test_send_fsync_always_100b(benchmark, topic_always):
    """send() that returns once the message is on disk (one fdatasync each)."""
    benchmark.extra_info["messages_per_call"] = 1
    value = value_of(100)
    benchmark.pedantic(topic_always.send, args=(value,), kwargs={"partition": 0},
                       rounds=500, warmup_rounds=20)
