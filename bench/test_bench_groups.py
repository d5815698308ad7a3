"""pytest-benchmark suites for consumer groups: one partition, 100 B messages.

Each benchmark times one call, or one batch of 1000 messages;
extra_info["messages_per_call"] turns the reported time per call into
messages per second.  Consumers read a topic of 100,000 messages filled once
per module and seek back to its start when they reach its end, so long
calibrations never run dry.  The split of poll_batch, ack and commit uses
pedantic rounds whose setup (not timed) does the other steps.  The ping-pong
runs against an echo process forked for the module.

    python -m pytest bench/ --benchmark-only
    python -m pytest bench/test_bench_groups.py --benchmark-only --benchmark-json out.json

Side by side with peers, two worker processes and latency percentiles:
bench/groups.py.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sys

import pytest

# The checkout comes first, so that an in-place build is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

SEED = 20261130
BATCH = 1000
MESSAGES = 100 * BATCH
VALUE_BYTES = 100
ROUNDS = 200          # pedantic rounds (each one batch of 1000)
STOP = b"stop"


def value_of(size: int) -> bytes:
    return random.Random(SEED + size).randbytes(size)


@pytest.fixture(scope="module")
def topic(tmp_path_factory):
    """100,000 messages of 100 B in one partition, fsync="interval" (the default)."""
    broker = pyqueue.open(tmp_path_factory.mktemp("groups"))
    t = broker.topic("bench")
    value = value_of(VALUE_BYTES)
    for _ in range(MESSAGES // BATCH):
        t.send_batch([value] * BATCH, partition=0)
    yield t
    broker.close()


class Cursor:
    """A consumer that goes back to the start of the topic when it reaches the end."""

    def __init__(self, topic, group: str, mode: str) -> None:
        options = {"auto_commit_interval": 0} if mode == "stream" else {}
        self.consumer = topic.consumer(group, mode=mode, **options)
        self.start, self.end = topic.offsets(0)
        self.next = self.start   # next offset the consumer will deliver

    def rewind_at_end(self) -> None:
        if self.next >= self.end:
            self.consumer.seek(0, self.start)
            self.next = self.start

    def poll_batch(self):
        self.rewind_at_end()
        msgs = self.consumer.poll_batch(BATCH, timeout=5.0)
        self.next = msgs[-1].offset + 1
        return msgs

    def poll(self):
        self.rewind_at_end()
        m = self.consumer.poll(timeout=5.0)
        self.next = m.offset + 1
        return m


@pytest.fixture
def stream(topic, request):
    cursor = Cursor(topic, request.node.name, "stream")
    yield cursor
    cursor.consumer.close()


@pytest.fixture
def queue(topic, request):
    cursor = Cursor(topic, request.node.name, "queue")
    yield cursor
    cursor.consumer.close()


def ack_all(msgs) -> int:
    nbytes = 0
    for m in msgs:
        nbytes += len(m.value)
        m.ack()
    return nbytes


# ---- stream mode ----

def test_stream_poll_ack_commit_1000(benchmark, stream):
    """Workload (a): poll_batch(1000), ack each, commit."""
    benchmark.extra_info["messages_per_call"] = BATCH

    def step():
        nbytes = ack_all(stream.poll_batch())
        stream.consumer.commit()
        return nbytes

    assert benchmark(step) == BATCH * VALUE_BYTES


def test_stream_poll_batch_1000(benchmark, stream):
    """poll_batch(1000) alone (stream acks are local: nothing to free)."""
    benchmark.extra_info["messages_per_call"] = BATCH
    assert len(benchmark(stream.poll_batch)) == BATCH


def test_stream_ack_1000(benchmark, stream):
    """ack() of 1000 delivered messages; the poll is in the untimed setup."""
    benchmark.extra_info["messages_per_call"] = BATCH
    benchmark.pedantic(ack_all, setup=lambda: ((stream.poll_batch(),), {}), rounds=ROUNDS, warmup_rounds=5)


def test_stream_commit(benchmark, stream):
    """commit() after 1000 acks; poll and acks are in the untimed setup."""
    benchmark.extra_info["messages_per_call"] = BATCH

    def setup():
        ack_all(stream.poll_batch())

    benchmark.pedantic(stream.consumer.commit, setup=setup, rounds=ROUNDS, warmup_rounds=5)


def test_stream_poll_ack_1(benchmark, stream):
    """One message per call: poll() + ack()."""
    benchmark.extra_info["messages_per_call"] = 1

    def step():
        m = stream.poll()
        m.ack()
        return len(m.value)

    assert benchmark(step) == VALUE_BYTES


# ---- queue mode ----

def test_queue_poll_ack_1000(benchmark, queue):
    """Workload (b): poll_batch(1000) (1000 leases), ack each."""
    benchmark.extra_info["messages_per_call"] = BATCH
    assert benchmark(lambda: ack_all(queue.poll_batch())) == BATCH * VALUE_BYTES


def test_queue_poll_batch_1000(benchmark, queue):
    """poll_batch(1000) alone; the previous batch is acked in the untimed setup."""
    benchmark.extra_info["messages_per_call"] = BATCH
    held: list = []

    def setup():
        ack_all(held)
        held.clear()

    def poll():
        held.extend(queue.poll_batch())

    benchmark.pedantic(poll, setup=setup, rounds=ROUNDS, warmup_rounds=5)
    assert len(held) == BATCH


def test_queue_ack_1000(benchmark, queue):
    """ack() of 1000 leases; the poll is in the untimed setup."""
    benchmark.extra_info["messages_per_call"] = BATCH
    benchmark.pedantic(ack_all, setup=lambda: ((queue.poll_batch(),), {}), rounds=ROUNDS, warmup_rounds=5)


def test_queue_poll_ack_1(benchmark, queue):
    """One message per call: poll() + ack()."""
    benchmark.extra_info["messages_per_call"] = 1

    def step():
        m = queue.poll()
        m.ack()
        return len(m.value)

    assert benchmark(step) == VALUE_BYTES


# ---- wake-up across processes ----

def _echo(path: str, ready) -> None:
    """Poll "ping", send each value back on "pong", until STOP."""
    with pyqueue.open(path) as broker:
        pong = broker.topic("pong")
        consumer = broker.topic("ping").consumer("echo", mode="stream")
        ready.set()
        while True:
            m = consumer.poll(timeout=60.0)
            if m is None or m.value == STOP:
                break
            pong.send(m.value, partition=0)
            m.ack()
        consumer.close()


@pytest.fixture(scope="module")
def pingpong(tmp_path_factory):
    """(ping topic, pong consumer) with an echo process at the other end."""
    path = str(tmp_path_factory.mktemp("pingpong"))
    with pyqueue.open(path) as broker:   # topics and groups exist before the fork
        broker.topic("ping").consumer("echo", mode="stream").close()
        broker.topic("pong").consumer("ping", mode="stream").close()
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    echo = ctx.Process(target=_echo, args=(path, ready), daemon=True)
    echo.start()
    broker = pyqueue.open(path)
    ping = broker.topic("ping")
    consumer = broker.topic("pong").consumer("ping", mode="stream")
    assert ready.wait(30), "the echo process did not start"
    yield ping, consumer
    ping.send(STOP, partition=0)
    echo.join(timeout=30)
    if echo.is_alive():
        echo.kill()
    consumer.close()
    broker.close()


def test_pingpong_round_trip(benchmark, pingpong):
    """send() on "ping", poll() the echo's reply on "pong": one round trip, two cross-process wake-ups."""
    ping, consumer = pingpong
    benchmark.extra_info["messages_per_call"] = 1
    value = value_of(VALUE_BYTES)

    def round_trip():
        ping.send(value, partition=0)
        m = consumer.poll(timeout=5.0)
        m.ack()
        return m.value

    assert benchmark(round_trip) == value
