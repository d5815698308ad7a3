"""The durable scheduler: every / at / cron with time zones, exactly once per
fire time across restarts and a SIGKILLed active scheduler, misfire policies,
bad input."""

import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import pyqueue

from conftest import CHILD_CWD, child_env

CHILD_ENV = child_env()


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def scheduled_for(msgs):
    return [datetime.fromisoformat(m.headers["x-scheduled-for"].decode()) for m in msgs]


@pytest.fixture
def broker(tmp_path):
    b = pyqueue.open(tmp_path / "b", fsync="never")
    b.topic("health")
    yield b
    b.close()


def test_every_fires_on_time_with_headers(broker):
    s = broker.scheduler()
    s.add("beat", topic="health", value=b"ping", key=b"k", headers={"team": b"ops"}, every=0.1)
    s.start()
    c = broker.topic("health").consumer("g")
    msgs = [c.poll(timeout=5) for _ in range(5)]
    s.stop()
    assert all(m.value == b"ping" and m.key == b"k" for m in msgs)
    assert all(m.headers["x-schedule-id"] == b"beat" and m.headers["team"] == b"ops" for m in msgs)
    times = scheduled_for(msgs)
    assert all(abs((b - a).total_seconds() - 0.1) < 1e-5 for a, b in zip(times, times[1:]))
    for m, t in zip(msgs, times):
        assert 0 <= m.timestamp - t.timestamp() < 0.5         # published at its time, not before


def test_at_fires_once_and_removed_schedules_stop(broker):
    clock = Clock(1_900_000_000.0)
    s = broker.scheduler(clock=clock)
    s.add("once", topic="health", value=b"x", at=datetime.fromtimestamp(clock.t + 10, timezone.utc))
    s.add("beat", topic="health", value=b"y", every=5)
    assert s.run_pending() == 0
    clock.t += 10
    assert s.run_pending() == 3                   # once (at +10); beat at +5 (late) and +10
    clock.t += 100
    s.remove("beat")
    assert s.run_pending() == 0                   # the one-off is done, beat is gone
    assert [x.id for x in s.list()] == ["once"]
    assert s.info("once")["fires"] == 1 and s.info("once")["next_fire"] is None


def test_cron_across_dst_matches_croniter(broker):
    tz = ZoneInfo("Europe/Paris")
    start = datetime(2027, 3, 26, 12, 0, tzinfo=tz)            # spring forward on March 28
    clock = Clock(start.timestamp())
    s = broker.scheduler(clock=clock, misfire_grace=3600)
    s.add("nightly", topic="health", value=b"r", cron="30 2 * * *", timezone="Europe/Paris")
    s.add("hourly", topic="health", value=b"h", cron="0 * * * *", timezone="Europe/Paris")
    end = datetime(2027, 11, 2, tzinfo=tz).timestamp()          # past the fall-back on October 31
    expected = {"nightly": [], "hourly": []}
    for name, expr in (("nightly", "30 2 * * *"), ("hourly", "0 * * * *")):
        it = croniter(expr, start)
        while (d := it.get_next(datetime)).timestamp() <= end:
            expected[name].append(d)
    c = broker.topic("health").consumer("g")
    got = {"nightly": [], "hourly": []}
    while clock.t < end:
        clock.t = min(end, clock.t + 1800)
        s.run_pending()
        for m in c.poll_batch(1000, timeout=0):
            got[m.headers["x-schedule-id"].decode()].append(
                datetime.fromisoformat(m.headers["x-scheduled-for"].decode()))
    for name in got:
        assert [d.timestamp() for d in got[name]] == [d.timestamp() for d in expected[name]]
    hourly = [d.timestamp() for d in got["hourly"]]
    assert len(hourly) == len(set(hourly))
    # the repeated hour on October 31 is fired twice by "30 2 * * *"
    oct31 = [d for d in got["nightly"] if d.astimezone(tz).date() == datetime(2027, 10, 31).date()]
    assert len(oct31) == 2


def test_schedules_survive_restart_and_never_fire_twice(tmp_path):
    path = tmp_path / "b"
    clock = Clock(1_900_000_000.0)
    with pyqueue.open(path) as b:
        b.topic("health")
        s = b.scheduler(clock=clock)
        s.add("beat", topic="health", value=b"x", every=60)
        clock.t += 60
        assert s.run_pending() == 1
    with pyqueue.open(path) as b:
        s = b.scheduler(clock=clock)
        assert [x.id for x in s.list()] == ["beat"]
        assert s.run_pending() == 0                # the fire at +60 is already published
        s.add("beat", topic="health", value=b"x", every=60)   # re-adding keeps the progress
        assert s.run_pending() == 0
        clock.t += 60
        assert s.run_pending() == 1
        msgs = b.topic("health").read(0, 0, 10)
        assert len(msgs) == 2 and len({m.headers["x-scheduled-for"] for m in msgs}) == 2


def test_misfire_policies(broker):
    clock = Clock(1_900_000_000.0)
    s = broker.scheduler(clock=clock)
    for policy in ("coalesce", "skip", "all"):
        s.add(policy, topic="health", value=policy.encode(), every=10, misfire=policy)
    clock.t += 55                                    # five fire times were missed
    s.run_pending()
    msgs = broker.topic("health").read(0, 0, 100)
    by = {}
    for m in msgs:
        by.setdefault(m.value.decode(), []).append(m)
    assert len(by["coalesce"]) == 1 and by["coalesce"][0].headers["x-coalesced"] == b"5"
    assert "skip" not in by                          # all five were late: recorded, not published
    assert len(by["all"]) == 5
    assert s.info("skip")["last_fire"] == s.info("coalesce")["last_fire"]


MEMBER = """
import sys, threading, pyqueue
b = pyqueue.open(sys.argv[1])
s = b.scheduler()
s.start()
changed = threading.Event()
last = None
while True:                       # report standby -> active once it happens
    if s.active != last:
        last = s.active
        print("active" if last else "standby", flush=True)
    changed.wait(0.01)
"""


def read_status(procs, done, timeout=30):
    """Follow the children's status lines (raw reads, so no line waits in a
    buffer select() cannot see) until done(latest status per child)."""
    sel = selectors.DefaultSelector()
    for p in procs:
        sel.register(p.stdout, selectors.EVENT_READ, p)
    latest, partial = {}, {p: b"" for p in procs}
    deadline = time.monotonic() + timeout
    while not done(latest):
        left = deadline - time.monotonic()
        assert left > 0, f"timed out waiting for scheduler status: {latest}"
        for key, _ in sel.select(timeout=left):
            chunk = os.read(key.fileobj.fileno(), 4096)
            assert chunk, "a scheduler child exited"
            *lines, partial[key.data] = (partial[key.data] + chunk).split(b"\n")
            for line in lines:
                latest[key.data] = line.decode().strip()
    sel.close()
    return latest


def test_sigkill_of_active_scheduler_fails_over_without_duplicates(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        b.topic("health")
        b.scheduler().add("beat", topic="health", value=b"x", every=0.05)
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(MEMBER), str(path)],
                              stdout=subprocess.PIPE, env=CHILD_ENV, cwd=CHILD_CWD) for _ in range(2)]
    try:
        status = read_status(procs, lambda st: "active" in st.values())
        active = next(p for p in procs if status.get(p) == "active")
        standby = next(p for p in procs if p is not active)
        with pyqueue.open(path) as b:
            t = b.topic("health")
            assert t.wait(0, 10, timeout=30)           # the active one has fired 11 times
            active.send_signal(signal.SIGKILL)
            active.wait()
            assert read_status([standby], lambda st: st.get(standby) == "active")  # it took over
            end = t.offsets(0)[1]
            assert t.wait(0, end + 10, timeout=30)     # and fires go on
            msgs = t.read(0, 0, 100_000)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    times = scheduled_for(msgs)
    assert len(times) == len(set(times)), ("a fire time was published twice",
                                           [(m.offset, t.time(), m.headers.get("x-coalesced"))
                                            for m, t in zip(msgs, times)])
    stands_for = [int(m.headers.get("x-coalesced", b"1")) for m in msgs]
    first_covered = times[0].timestamp() - 0.05 * (stands_for[0] - 1)   # a catch-up at start-up
    span = round((times[-1].timestamp() - first_covered) / 0.05) + 1
    covered = sum(stands_for)
    assert covered == span, "a fire time was lost without being reported as coalesced"
    assert times == sorted(times)


def test_bad_input(broker):
    s = broker.scheduler()
    with pytest.raises(pyqueue.ConfigError, match="cron"):
        s.add("a", topic="health", value=b"x", cron="61 * * * *")
    with pytest.raises(pyqueue.ConfigError, match="time zone"):
        s.add("a", topic="health", value=b"x", cron="0 2 * * *", timezone="Mars/Olympus")
    with pytest.raises(pyqueue.ConfigError, match="every"):
        s.add("a", topic="health", value=b"x", every=0)
    with pytest.raises(pyqueue.ConfigError, match="every"):
        s.add("a", topic="health", value=b"x", every=-5)
    with pytest.raises(pyqueue.ConfigError, match="exactly one"):
        s.add("a", topic="health", value=b"x")
    with pytest.raises(pyqueue.ConfigError, match="exactly one"):
        s.add("a", topic="health", value=b"x", every=5, cron="* * * * *")
    with pytest.raises(pyqueue.UnknownTopic):
        s.add("a", topic="nope", value=b"x", every=5)
    with pytest.raises(pyqueue.ConfigError, match="time zone"):
        s.add("a", topic="health", value=b"x", at=datetime(2030, 1, 1))      # naive
    with pytest.raises(pyqueue.ConfigError, match="misfire"):
        s.add("a", topic="health", value=b"x", every=5, misfire="sometimes")
    with pytest.raises(pyqueue.InvalidName):
        s.add("../a", topic="health", value=b"x", every=5)
    with pytest.raises(TypeError):
        s.add("a", topic="health", value="text", every=5)
    with pytest.raises(TypeError, match="time zone|IANA"):
        s.add("a", topic="health", value=b"x", every=5, timezone=["UTC"])
    with pytest.raises(pyqueue.ConfigError, match="every"):   # one bad item: nothing of the batch is stored
        s.add_many([dict(id="ok", topic="health", value=b"x", every=5),
                    dict(id="bad", topic="health", value=b"x", every=0)])
    assert s.list() == []
    assert s.remove("missing") is False and s.get("missing") is None


def test_capacity_is_enforced_with_a_clear_error(broker):
    s = broker.scheduler(capacity=16)
    assert s.add_many([dict(id=f"s{i}", topic="health", value=b"x", every=5) for i in range(16)]) == 16
    assert s.add_many([dict(id="s3", topic="health", value=b"y", every=5)]) == 0   # a replacement fits
    with pytest.raises(pyqueue.ConfigError, match="at most 16 schedules"):
        s.add("one-more", topic="health", value=b"x", every=5)
    assert s.count() == 16 and s.get("s3").value == b"y"


def test_fired_table_holds_one_entry_per_schedule(broker):
    clock = Clock(1_900_000_000.0)
    s = broker.scheduler(clock=clock, capacity=64)
    s.add_many([dict(id=f"s{i}", topic="health", value=b"x", every=1) for i in range(60)])
    for _ in range(5):                        # each fire must not leave a second entry behind
        clock.t += 1
        assert s.run_pending() == 60


def test_big_batches_reach_a_running_scheduler(broker):
    clock = Clock(1_900_000_000.0)
    s = broker.scheduler(clock=clock, capacity=1 << 15)
    s.run_pending()                           # active, loaded, empty
    s.add_many([dict(id=f"a{i}", topic="health", value=b"x", every=10) for i in range(700)])
    s.add_many([dict(id=f"b{i}", topic="health", value=b"x", every=10) for i in range(10_500)])
    clock.t += 10
    assert s.run_pending() == 11_200          # chunked lookups, then a full reload


def test_run_pending_then_start_in_one_process(broker):
    s = broker.scheduler()
    s.run_pending()
    s.add("beat", topic="health", value=b"x", every=0.05)
    s.start()
    c = broker.topic("health").consumer("g")
    assert c.poll(timeout=5) is not None      # the thread leads with the lock it already holds
    s.stop()


def test_every_with_start_fires_at_start_first(broker):
    clock = Clock(1_900_000_000.0)
    s = broker.scheduler(clock=clock)
    start = datetime.fromtimestamp(clock.t + 30, timezone.utc)
    s.add("from-start", topic="health", value=b"x", every=10, start=start)
    assert s.info("from-start")["next_fire"] == start.isoformat()
    clock.t += 30
    assert s.run_pending() == 1


def test_restart_loads_each_schedule_at_its_next_fire(tmp_path):
    # After fires, a restart must put each schedule's timer at its next fire
    # time (stored when it fired), not at its first: else every schedule that
    # ever fired would pop at once on restart and be read back to be re-placed.
    path = tmp_path / "b"
    clock = Clock(1_900_000_000.0)
    with pyqueue.open(path) as b:
        b.topic("health")
        s = b.scheduler(clock=clock)
        s.add_many([dict(id=f"s{i}", topic="health", value=b"x", every=60) for i in range(50)])
        for _ in range(3):
            clock.t += 60
            assert s.run_pending() == 50
    with pyqueue.open(path) as b:
        s = b.scheduler(clock=clock)
        assert s.run_pending() == 0
        assert s._wheel.next_deadline() > clock.t + 30   # a lower bound, exact for near timers
        assert len(s._cache) == 0                 # nothing was read back from the table
        clock.t += 60
        assert s.run_pending() == 50


def test_a_replacement_wins_over_the_old_definitions_next_fire(tmp_path, monkeypatch):
    # The active scheduler stores next fire times lazily; a schedule replaced
    # by another process in between must keep the replacement's time.
    monkeypatch.setattr(pyqueue.scheduler, "_HINTS_PERIOD", 3600.0)   # hold them until it stops
    path = tmp_path / "b"
    clock = Clock(1_900_000_000.0)
    with pyqueue.open(path) as b:
        b.topic("health")
        leader = b.scheduler(clock=clock)
        leader.add("x", topic="health", value=b"x", every=100)
        clock.t += 100
        assert leader.run_pending() == 1          # next fire +200, not stored yet
        other = pyqueue.scheduler.Scheduler(b, clock=clock)
        other.add("x", topic="health", value=b"x", every=10)
        other.close()
        leader.close()                            # stores what it knows, unless it is stale
    with pyqueue.open(path) as b:
        s = b.scheduler(clock=clock)
        clock.t += 10
        assert s.run_pending() == 1               # +110, the replacement's next fire
        assert s.info("x")["last_fire"] == datetime.fromtimestamp(clock.t, timezone.utc).isoformat()


def test_schedules_of_the_first_table_layout_are_migrated(tmp_path):
    import json
    import sqlite3
    path = tmp_path / "b"
    t0 = 1_900_000_000.0
    with pyqueue.open(path) as b:
        b.topic("health")
    os.makedirs(path / "scheduler")
    db = sqlite3.connect(path / "scheduler" / "schedules.db")
    db.execute("CREATE TABLE schedules (id TEXT PRIMARY KEY, topic TEXT, value BLOB, key BLOB, spec TEXT, "
               "created_ns INTEGER)")
    db.execute("CREATE TABLE changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT)")
    spec = {"cron": None, "every": 30.0, "at_ns": None, "timezone": "UTC", "start_ns": None, "end_ns": None,
            "misfire": "coalesce", "headers": {"team": b"ops".hex()}}
    db.execute("INSERT INTO schedules VALUES (?, ?, ?, ?, ?, ?)",
               ("beat", "health", b"v", b"k", json.dumps(spec), int(t0 * 1e9)))
    db.commit()
    db.close()
    clock = Clock(t0 + 30)
    with pyqueue.open(path) as b:
        s = b.scheduler(clock=clock)
        assert s.get("beat").headers == {"team": b"ops"} and s.get("beat").every == 30.0
        assert s.run_pending() == 1
        (m,) = b.topic("health").read(0, 0, 10)
        assert (m.key, m.value, m.headers["team"]) == (b"k", b"v", b"ops")
