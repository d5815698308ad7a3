"""pytest-benchmark suites for pyqueue.TimerWheel through the Python API.

Each benchmark times one batch of 1000 operations on a wheel that already
holds 100,000 pending timers (delays uniform over 0..60 s), so that the
operations run against a populated wheel, not an empty one;
extra_info["ops_per_call"] turns the reported time per call into operations
per second.  Batches that need something undone or prepared (the adds to
cancel, the timers to expire) get it from pedantic rounds whose setup is not
timed.  Each group has a heapq baseline (bench/wheel.py's lazy-deletion
HeapTimers, the same batches), so that pytest-benchmark's group table shows
the two side by side.

    python -m pytest bench/test_bench_wheel.py --benchmark-only
    python -m pytest bench/test_bench_wheel.py --benchmark-only --benchmark-group-by=group --benchmark-json out.json

Side by side with sched and asyncio, memory per timer and real-time
lateness: bench/wheel.py.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys

import pytest

# The checkout comes first, so that an in-place build is what gets measured.
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import pyqueue  # noqa: E402

# bench/wheel.py under another module name: "wheel" is also a packaging tool's name.
_spec = importlib.util.spec_from_file_location("pyqueue_bench_wheel", os.path.join(HERE, "wheel.py"))
_bench_wheel = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_bench_wheel)
HeapTimers = _bench_wheel.HeapTimers
FakeClock = _bench_wheel.FakeClock

SEED = 20261130
BATCH = 1000
PENDING = 100_000
HORIZON = 60.0
TICK = 0.001
ROUNDS = 300
IMPLS = ("TimerWheel", "heapq")


def make(impl: str, clock=None):
    if impl == "TimerWheel":
        return pyqueue.TimerWheel(tick=TICK) if clock is None else pyqueue.TimerWheel(tick=TICK, clock=clock)
    return HeapTimers() if clock is None else HeapTimers(clock)


@pytest.fixture(scope="module")
def delays() -> list[float]:
    rng = random.Random(SEED)
    return [rng.random() * HORIZON for _ in range(BATCH)]


@pytest.fixture(params=IMPLS)
def populated(request):
    """(impl, timers) holding PENDING timers that stay pending through the benchmark."""
    rng = random.Random(SEED + 1)
    timers = make(request.param)
    add = timers.add
    for _ in range(PENDING):
        add(rng.random() * HORIZON, None)
    return request.param, timers


def info(benchmark, impl: str) -> None:
    benchmark.extra_info.update({"ops_per_call": BATCH, "pending": PENDING, "impl": impl})


@pytest.mark.benchmark(group="add 1000")
def test_add(benchmark, populated, delays):
    impl, timers = populated
    held: list = []
    add, cancel = timers.add, timers.cancel

    def setup():
        for h in held:
            cancel(h)
        held.clear()

    def add_batch():
        held.extend([add(d, None) for d in delays])

    info(benchmark, impl)
    benchmark.pedantic(add_batch, setup=setup, rounds=ROUNDS, warmup_rounds=5, iterations=1)


@pytest.mark.benchmark(group="add_at 1000 (no clock call)")
def test_add_at(benchmark, populated, delays):
    impl, timers = populated
    held: list = []
    add_at, cancel = timers.add_at, timers.cancel
    base = 1e6                      # well past the monotonic clock: pending all along

    def setup():
        for h in held:
            cancel(h)
        held.clear()

    def add_batch():
        held.extend([add_at(base + d, None) for d in delays])

    info(benchmark, impl)
    benchmark.pedantic(add_batch, setup=setup, rounds=ROUNDS, warmup_rounds=5, iterations=1)


@pytest.mark.benchmark(group="cancel 1000 (random order)")
def test_cancel(benchmark, populated, delays):
    impl, timers = populated
    add, cancel = timers.add, timers.cancel
    rng = random.Random(SEED + 2)

    def setup():
        handles = [add(d, None) for d in delays]
        rng.shuffle(handles)
        return (handles,), {}

    def cancel_batch(handles):
        for h in handles:
            cancel(h)

    info(benchmark, impl)
    benchmark.pedantic(cancel_batch, setup=setup, rounds=ROUNDS, warmup_rounds=5, iterations=1)


@pytest.mark.benchmark(group="add 1000 + cancel 1000")
def test_add_cancel(benchmark, populated, delays):
    impl, timers = populated
    add, cancel = timers.add, timers.cancel

    def add_cancel():
        for h in [add(d, None) for d in delays]:
            cancel(h)

    info(benchmark, impl)
    benchmark.extra_info["ops_per_call"] = 2 * BATCH
    benchmark(add_cancel)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.benchmark(group="expire 1000, tick by tick over 1 s")
def test_expire_ticks(benchmark, impl):
    """Each round: 1000 timers due uniformly over the next second of a fake
    clock (added by the untimed setup), then expire() at each of that
    second's 1001 ticks; PENDING more are due minutes after the last round."""
    rng = random.Random(SEED + 3)
    clock = FakeClock()
    timers = make(impl, clock.time)
    for _ in range(PENDING):
        timers.add(500.0 + rng.random() * HORIZON, None)
    expire, add_at = timers.expire, timers.add_at
    offsets = [k * TICK for k in range(1, 1002)]
    state = {"base": clock.now}

    def setup():
        base = state["base"]
        for _ in range(BATCH):
            add_at(base + TICK + rng.random() * (1.0 - TICK), None)
        return (base,), {}

    def expire_second(base):
        got = 0
        for o in offsets:
            got += len(expire(base + o))
        state["base"] = base + offsets[-1]
        assert got == BATCH

    info(benchmark, impl)
    benchmark.extra_info["expire_calls_per_call"] = len(offsets)
    benchmark.pedantic(expire_second, setup=setup, rounds=100, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.benchmark(group="expire 1000 due, one call")
def test_expire_batch(benchmark, impl):
    """1000 timers already due, collected by one expire() call."""
    rng = random.Random(SEED + 4)
    clock = FakeClock()
    timers = make(impl, clock.time)
    for _ in range(PENDING):
        timers.add(1e5 + rng.random() * HORIZON, None)    # far beyond the rounds below

    def setup():
        clock.now += 1.0
        base = clock.now
        for _ in range(BATCH):
            timers.add_at(base + rng.random() * 0.5, None)
        return (base + 0.5 + TICK,), {}

    def expire_once(now):
        assert len(timers.expire(now)) == BATCH

    info(benchmark, impl)
    benchmark.pedantic(expire_once, setup=setup, rounds=ROUNDS, warmup_rounds=5, iterations=1)


@pytest.mark.benchmark(group="next_deadline")
def test_next_deadline(benchmark, populated):
    impl, timers = populated
    benchmark.extra_info.update({"ops_per_call": 1, "pending": PENDING, "impl": impl})
    benchmark(timers.next_deadline)
