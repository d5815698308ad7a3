"""The native timing wheel: exact expiry tick by tick across levels, far
deadlines, cancel semantics, bad input.  Driven by a fake clock."""

import math
import random

import pytest

import pyqueue


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_every_timer_expires_exactly_on_its_tick():
    clock = Clock()
    w = pyqueue.TimerWheel(tick=0.001, clock=clock)
    rng = random.Random(7)
    due = {}
    for i in range(3000):
        delay = rng.choice([rng.uniform(0, 0.3), rng.uniform(0, 70.0), 0.256, 65.536, 0.0])
        w.add(delay, i)
        due[i] = math.ceil(delay / 0.001 - 1e-6)   # the wheel rounds to a millionth of a tick
    got = {}
    for tick in range(0, 70_100):
        clock.t = tick * 0.001
        for item in w.expire():
            got[item] = tick
    assert got == due
    assert len(w) == 0 and w.next_deadline() is None


def test_far_deadlines_and_big_jumps():
    clock = Clock()
    w = pyqueue.TimerWheel(tick=0.001, clock=clock)
    far = [60 * 86400.0, 400 * 86400.0, 3.5, 5 * 3600.0]     # beyond the 49-day horizon too
    for i, d in enumerate(far):
        w.add(d, i)
    seen = []
    for t in sorted(far):
        clock.t = t - 0.002
        assert w.expire() == [], t                          # never early
        clock.t = t
        seen += w.expire()
    assert sorted(seen) == [0, 1, 2, 3]


def test_next_deadline_is_a_lower_bound():
    clock = Clock()
    w = pyqueue.TimerWheel(tick=0.01, clock=clock)
    w.add(5.0, "a")
    w.add(0.5, "b")
    nd = w.next_deadline()
    assert nd <= 0.5
    clock.t = nd
    while not w.expire():
        nd = w.next_deadline()
        assert nd is not None and nd > clock.t - 1e-9
        clock.t = nd if nd > clock.t else clock.t + 0.01
    assert clock.t == pytest.approx(0.5, abs=0.011)


def test_cancel():
    clock = Clock()
    w = pyqueue.TimerWheel(clock=clock)
    h1 = w.add(1.0, "one")
    h2 = w.add(2.0, "two")
    assert w.cancel(h1) is True
    assert w.cancel(h1) is False          # twice
    assert len(w) == 1
    clock.t = 5
    assert w.expire() == ["two"]
    assert w.cancel(h2) is False          # already expired
    h3 = w.add(1.0, "three")              # reuses the node: the old handle must not hit it
    assert w.cancel(h1) is False and w.cancel(h2) is False
    assert w.cancel(h3) is True


def test_many_timers_roundtrip():
    clock = Clock()
    w = pyqueue.TimerWheel(tick=0.001, clock=clock)
    handles = [w.add(i % 1000 * 0.01, i) for i in range(200_000)]
    for h in handles[::2]:
        w.cancel(h)
    clock.t = 11.0
    assert sorted(w.expire()) == list(range(1, 200_000, 2))


def test_bad_input():
    with pytest.raises(pyqueue.ConfigError):
        pyqueue.TimerWheel(tick=0)
    w = pyqueue.TimerWheel()
    with pytest.raises(ValueError):
        w.add(-1.0, "x")
    with pytest.raises(ValueError):
        w.add(float("nan"), "x")
    with pytest.raises(TypeError):
        w.add("soon", "x")
