"""pytest-benchmark suites for the scheduler: definitions, loading and firing.

Each benchmark times one call; extra_info["schedules_per_call"] turns the time
per call into schedules per second.  Interval schedules with a 16-byte payload,
fsync="interval" (the default).  Loading times run_pending() on a fresh broker
handle over 10,000 stored schedules (the restart path: leader lock, then every
schedule into the timer wheel); firing times run_pending() publishing 1,000
due schedules, on a clock that setup moves one interval forward per round.

    python -m pytest bench/test_bench_scheduler.py --benchmark-only

Side by side with APScheduler, at 1,000,000 schedules, with fire lateness in
real time: bench/scheduler.py.
"""

from __future__ import annotations

import itertools
import os
import sys

import pytest

# The checkout comes first, so that an in-place build is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

TOPIC = "jobs"
BATCH = 1000
STORED = 10_000
ROUNDS = 30
CAPACITY = 1 << 18      # room for every round's new ids, two fired-table slots each


def payload(i: int) -> bytes:
    return b"%016d" % i


def items(ids, every: float = 3600.0, **extra) -> list:
    return [dict(id=f"s{i:08d}", topic=TOPIC, value=payload(i), every=every, **extra) for i in ids]


@pytest.fixture
def scheduler(tmp_path):
    broker = pyqueue.open(tmp_path)
    broker.topic(TOPIC)
    yield broker.scheduler(capacity=CAPACITY)
    broker.close()


def test_add_many_1000_new(benchmark, scheduler):
    counter = itertools.count()

    def setup():
        k = next(counter)
        return (items(range(k * BATCH, (k + 1) * BATCH)),), {}
    benchmark.extra_info["schedules_per_call"] = BATCH
    benchmark.pedantic(scheduler.add_many, setup=setup, rounds=ROUNDS)


def test_add_many_1000_replace(benchmark, scheduler):
    """The same 1000 ids added again (an application that adds its schedules at every start)."""
    batch = items(range(BATCH))
    scheduler.add_many(batch)
    benchmark.extra_info["schedules_per_call"] = BATCH
    benchmark.pedantic(scheduler.add_many, args=(batch,), rounds=ROUNDS)


def test_add_one(benchmark, scheduler):
    counter = itertools.count()
    benchmark.extra_info["schedules_per_call"] = 1
    benchmark.pedantic(lambda i: scheduler.add(f"s{i:08d}", topic=TOPIC, value=payload(i), every=3600.0),
                       setup=lambda: ((next(counter),), {}), rounds=1000)


def test_load_10000(benchmark, tmp_path):
    broker = pyqueue.open(tmp_path)
    broker.topic(TOPIC)
    broker.scheduler(capacity=CAPACITY).add_many(items(range(STORED)))
    broker.close()
    opened = []

    def setup():
        while opened:
            opened.pop().close()
        b = pyqueue.open(tmp_path)
        opened.append(b)
        return (b.scheduler(),), {}
    benchmark.extra_info["schedules_per_call"] = STORED
    benchmark.pedantic(lambda s: s.run_pending(), setup=setup, rounds=10)
    while opened:
        opened.pop().close()


def test_fire_1000(benchmark, tmp_path):
    now = [1_900_000_000.0]
    broker = pyqueue.open(tmp_path)
    broker.topic(TOPIC)
    s = broker.scheduler(clock=lambda: now[0], capacity=CAPACITY)
    s.add_many(items(range(BATCH), every=1.0))
    s.run_pending()                       # loads; nothing due yet

    def setup():
        now[0] += 1.0
        return (), {}
    fired = []
    benchmark.extra_info["schedules_per_call"] = BATCH
    benchmark.pedantic(lambda: fired.append(s.run_pending()), setup=setup, rounds=ROUNDS)
    broker.close()
    assert fired and all(f == BATCH for f in fired), fired[:5]
