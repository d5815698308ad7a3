"""The scheduler on every backend: every / at / cron fire with their headers,
remove, restart without a double fire, misfire policies after downtime, one
active scheduler among several processes and a takeover when it stops or is
SIGKILLed, and a fire published once even when its publisher dies before
recording it."""

import time
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter

import pyqueue

from conformance.support import busy_wait, until

T0 = 1_900_000_000.0


class Clock:
    def __init__(self, t):
        self.t = t

    def __call__(self):
        return self.t


def scheduled_for(msgs):
    return [datetime.fromisoformat(m.headers["x-scheduled-for"].decode()) for m in msgs]


def options(backend, **extra):
    """Scheduler options: on JetStream a short lease, so takeovers are quick."""
    if backend.name == "jetstream":
        extra.setdefault("lease_ttl", 1.0)
    return extra


def test_every_fires_on_time_with_headers(broker):
    broker.topic("health")
    s = broker.scheduler()
    s.add("beat", topic="health", value=b"ping", key=b"k", headers={"team": b"ops"}, every=0.1)
    s.start()
    c = broker.topic("health").consumer("g")
    msgs = [c.poll(timeout=5) for _ in range(5)]
    s.stop()
    assert not s.active
    assert all(m.value == b"ping" and m.key == b"k" for m in msgs)
    assert all(m.headers["x-schedule-id"] == b"beat" and m.headers["team"] == b"ops" for m in msgs)
    times = scheduled_for(msgs)
    assert all(abs((b - a).total_seconds() - 0.1) < 1e-5 for a, b in zip(times, times[1:]))
    for m, t in zip(msgs, times):
        assert -0.01 <= m.timestamp - t.timestamp() < 1.0         # published at its time, not before


def test_at_fires_once_and_removed_schedules_stop(broker):
    broker.topic("health")
    clock = Clock(T0)
    s = broker.scheduler(clock=clock)
    s.add("once", topic="health", value=b"x", at=datetime.fromtimestamp(clock.t + 10, timezone.utc))
    s.add("beat", topic="health", value=b"y", every=5)
    assert s.count() == 2 and [x.id for x in s.list()] == ["beat", "once"]
    assert s.run_pending() == 0
    clock.t += 10
    assert s.run_pending() == 3                   # once (at +10); beat at +5 (late) and +10
    msgs = broker.topic("health").read(0, 0, 10)
    assert sorted((m.headers["x-schedule-id"], m.headers["x-scheduled-for"]) for m in msgs) == [
        (b"beat", datetime.fromtimestamp(T0 + 5, timezone.utc).isoformat().encode()),
        (b"beat", datetime.fromtimestamp(T0 + 10, timezone.utc).isoformat().encode()),
        (b"once", datetime.fromtimestamp(T0 + 10, timezone.utc).isoformat().encode())]
    clock.t += 100
    assert s.remove("beat") is True and s.remove("beat") is False
    assert s.run_pending() == 0                   # the one-off is done, beat is gone
    assert [x.id for x in s.list()] == ["once"] and s.get("beat") is None and s.count() == 1
    assert s.info("once")["fires"] == 1 and s.info("once")["next_fire"] is None


def test_many_schedules_due_at_once_each_fire_once(broker):
    """More than one batch of fires (JetStream fires a batch concurrently),
    some of them on a topic that is gone, some of them coalesced."""
    t = broker.topic("health", partitions=3)
    broker.topic("gone")
    clock = Clock(T0)
    s = broker.scheduler(clock=clock, misfire_grace=10)
    s.add_many([dict(id=f"s{i}", topic="health", value=b"x", at=datetime.fromtimestamp(T0 + 1, timezone.utc))
                for i in range(300)])
    s.add_many([dict(id=f"e{i}", topic="health", value=b"y", every=1.0) for i in range(20)])
    s.add("lost", topic="gone", value=b"z", at=datetime.fromtimestamp(T0 + 1, timezone.utc))
    broker.delete_topic("gone")
    clock.t += 3.5
    assert s.run_pending() == 300 + 20 * 3         # every=1 on time: fires at +1, +2, +3
    clock.t += 60
    assert s.run_pending() == 20 * 11              # past the grace: one fire standing for 50, then 10 on time
    assert s.run_pending() == 0
    msgs = [m for p in range(3) for m in t.read(p, 0, 1000)]
    fires = sorted((m.headers["x-schedule-id"], m.headers["x-scheduled-for"]) for m in msgs)
    assert len(fires) == len(set(fires)) == 300 + 20 * 14
    assert sum(1 for m in msgs if m.headers.get("x-coalesced") == b"50") == 20
    assert all(s.info(f"s{i}")["fires"] == 1 for i in (0, 150, 299))
    assert s.info("e7")["fires"] == 14 and s.info("lost")["next_fire"] is None


def test_cron_in_a_time_zone_matches_croniter(broker):
    broker.topic("health")
    tz = ZoneInfo("Europe/Paris")
    start = datetime(2027, 3, 26, 12, 0, tzinfo=tz)            # spring forward on March 28
    clock = Clock(start.timestamp())
    s = broker.scheduler(clock=clock, misfire_grace=3600)
    s.add("nightly", topic="health", value=b"r", cron="30 2 * * *", timezone="Europe/Paris")
    end = datetime(2027, 3, 30, tzinfo=tz).timestamp()
    it = croniter("30 2 * * *", start)
    expected = []
    while (d := it.get_next(datetime)).timestamp() <= end:
        expected.append(d.timestamp())
    while clock.t < end:
        clock.t = min(end, clock.t + 3600)
        s.run_pending()
    msgs = broker.topic("health").read(0, 0, 100)
    assert [d.timestamp() for d in scheduled_for(msgs)] == expected
    assert len(expected) == 3                     # the 28th at 03:00, the end of the skipped hour


def test_restart_keeps_schedules_and_never_fires_twice(backend, reopen):
    clock = Clock(T0)
    b = reopen()
    b.topic("health")
    s = b.scheduler(clock=clock)
    s.add("beat", topic="health", value=b"x", every=60)
    clock.t += 60
    assert s.run_pending() == 1
    b.close()                                     # gives the lock or lease up
    b = reopen()
    s = b.scheduler(clock=clock)
    assert [x.id for x in s.list()] == ["beat"]
    assert s.run_pending() == 0                   # the fire at +60 is already published
    s.add("beat", topic="health", value=b"x", every=60)   # re-adding keeps the progress
    assert s.run_pending() == 0
    clock.t += 60
    assert s.run_pending() == 1
    msgs = b.topic("health").read(0, 0, 10)
    assert len(msgs) == 2 and len({m.headers["x-scheduled-for"] for m in msgs}) == 2
    assert s.info("beat")["fires"] == 2


def test_misfire_policies_after_downtime(backend, reopen):
    clock = Clock(T0)
    b = reopen()
    b.topic("health")
    s = b.scheduler(clock=clock)
    for policy in ("coalesce", "skip", "all"):
        s.add(policy, topic="health", value=policy.encode(), every=10, misfire=policy)
    b.close()                                     # no scheduler runs for a while
    clock.t += 55                                 # five fire times were missed
    b = reopen()
    s = b.scheduler(clock=clock)
    s.run_pending()
    by: dict = {}
    for m in b.topic("health").read(0, 0, 100):
        by.setdefault(m.value.decode(), []).append(m)
    assert len(by["coalesce"]) == 1 and by["coalesce"][0].headers["x-coalesced"] == b"5"
    assert "skip" not in by                       # all five were late: recorded, not published
    assert len(by["all"]) == 5
    assert s.info("skip")["last_fire"] == s.info("coalesce")["last_fire"]
    clock.t += 5
    assert s.run_pending() == 3                   # +60, on time: each goes on from there


def test_bad_input(broker):
    broker.topic("health")
    s = broker.scheduler()
    with pytest.raises(pyqueue.ConfigError, match="cron"):
        s.add("a", topic="health", value=b"x", cron="61 * * * *")
    with pytest.raises(pyqueue.ConfigError, match="time zone"):
        s.add("a", topic="health", value=b"x", cron="0 2 * * *", timezone="Mars/Olympus")
    with pytest.raises(pyqueue.ConfigError, match="exactly one"):
        s.add("a", topic="health", value=b"x", every=5, cron="* * * * *")
    with pytest.raises(pyqueue.UnknownTopic):
        s.add("a", topic="nope", value=b"x", every=5)
    with pytest.raises(pyqueue.InvalidName):
        s.add("../a", topic="health", value=b"x", every=5)
    with pytest.raises(pyqueue.ConfigError, match="every"):   # one bad item: nothing of the batch is stored
        s.add_many([dict(id="ok", topic="health", value=b"x", every=5),
                    dict(id="bad", topic="health", value=b"x", every=0)])
    assert s.list() == [] and s.count() == 0
    assert s.remove("missing") is False and s.get("missing") is None and s.info("missing") is None
    with pytest.raises(pyqueue.ConfigError, match="first call"):
        broker.scheduler(misfire_grace=2.0)


def test_capacity_is_enforced_with_a_clear_error(broker):
    broker.topic("health")
    s = broker.scheduler(capacity=16)
    assert s.add_many([dict(id=f"s{i}", topic="health", value=b"x", every=5) for i in range(16)]) == 16
    assert s.add_many([dict(id="s3", topic="health", value=b"y", every=5)]) == 0   # a replacement fits
    with pytest.raises(pyqueue.ConfigError, match="at most 16 schedules"):
        s.add("one-more", topic="health", value=b"x", every=5)
    assert s.count() == 16 and s.get("s3").value == b"y"


MEMBER = """
import sys, threading, time
s = broker.scheduler(**{options!r})
s.start()

def commands():
    for line in sys.stdin:
        if line.strip() == "stop":
            s.stop()
            print("stopped", flush=True)

threading.Thread(target=commands, daemon=True).start()
last = None
while True:                       # report standby -> active once it happens
    if s.active != last:
        last = s.active
        print("active" if last else "standby", flush=True)
    time.sleep(0.01)
"""


def latest(child):
    return child.lines[-1] if child.lines else None


@pytest.mark.parametrize("how", ["stop", "sigkill"])
def test_one_active_scheduler_and_a_takeover_without_duplicates(backend, children, how):
    b = backend.open()
    t = b.topic("health")
    s = b.scheduler(**options(backend))
    s.add("beat", topic="health", value=b"x", every=0.05)
    # A lease of 2 s: a busy machine must not starve the active one's renewals into a takeover.
    code = backend.child_open_code() + MEMBER.format(options=options(backend, lease_ttl=2.0)
                                                     if backend.name == "jetstream" else {})
    procs = [children.spawn(code) for _ in range(2)]
    wait_a_little = lambda: time.sleep(0.01)     # noqa: E731 - the children report by lines on stdout
    until(lambda: all(p.lines for p in procs) and any(latest(p) == "active" for p in procs), timeout=60,
          step=wait_a_little)
    active = next(p for p in procs if latest(p) == "active")
    standby = next(p for p in procs if p is not active)
    assert t.wait(0, 10, timeout=30)              # the active one has fired 11 times
    assert latest(standby) == "standby"           # and the other one stood by all along
    assert "active" not in standby.lines
    if how == "stop":
        active.send("stop\n")
        until(lambda: "stopped" in active.lines and "standby" in active.lines[active.lines.index("active"):],
              timeout=30, step=wait_a_little)
    else:
        active.kill()
    until(lambda: latest(standby) == "active", timeout=30, step=wait_a_little)   # it took over
    end = t.offsets(0)[1]
    assert t.wait(0, end + 10, timeout=30)        # and fires go on
    children.reap()
    msgs = t.read(0, 0, 100_000)
    times = scheduled_for(msgs)
    assert len(times) == len(set(times)), "a fire time was published twice"
    assert times == sorted(times)
    stands_for = [int(m.headers.get("x-coalesced", b"1")) for m in msgs]
    first_covered = times[0].timestamp() - 0.05 * (stands_for[0] - 1)   # a catch-up at start-up
    span = round((times[-1].timestamp() - first_covered) / 0.05) + 1
    assert sum(stands_for) == span, "a fire time was lost without being reported as coalesced"


# The child dies right after the fire's message is stored, before the
# scheduler records it: the next scheduler must find it, not publish it again.
DIE_AFTER_PUBLISH = {
    "embedded": """
import os, signal
import pyqueue.topic
real_log = pyqueue.topic.Topic._log

class Dying:
    def __init__(self, log):
        self.log = log
    def __getattr__(self, name):
        return getattr(self.log, name)
    def append(self, *args):
        receipt = self.log.append(*args)
        os.kill(os.getpid(), signal.SIGKILL)

pyqueue.topic.Topic._log = lambda self, p: Dying(real_log(self, p))
""",
    "jetstream": """
import os, signal
from pyqueue.jetstream.topic import JetStreamTopic
real_publish = JetStreamTopic._publish

async def dying(self, *args):
    ack = await real_publish(self, *args)
    os.kill(os.getpid(), signal.SIGKILL)

JetStreamTopic._publish = dying
""",
}


def test_a_fire_whose_publisher_died_before_recording_it_is_not_published_again(backend, children, monkeypatch):
    b = backend.open()
    t = b.topic("health", partitions=2)
    quick = {"lease_ttl": 0.5} if backend.name == "jetstream" else {}
    s = b.scheduler(**quick)
    s.add("once", topic="health", value=b"x", at=datetime.fromtimestamp(time.time() - 0.2, timezone.utc))
    s.add("later", topic="health", value=b"y", at=datetime.fromtimestamp(time.time() + 3600, timezone.utc))
    child = children.spawn(backend.child_open_code() + DIE_AFTER_PUBLISH[backend.name] + f"""
s = broker.scheduler(**{quick!r})
s.run_pending()
print("survived", flush=True)
""")
    assert child.wait(60) < 0, child.describe()   # killed by itself, after the publish
    stored = [m for p in range(2) for m in t.read(p, 0, 10)]
    assert [m.headers["x-schedule-id"] for m in stored] == [b"once"]
    # The dead child's lease (JetStream) lapses after its ttl; its flock (embedded) went with it.
    until(lambda: _try_run_pending(s), timeout=30, step=lambda: busy_wait(0.05))
    assert s.info("once")["fires"] == 1
    if backend.name == "jetstream":
        # Publish the same fire again, as a scheduler that could not find the
        # message would: the stream drops it by its Nats-Msg-Id.
        from pyqueue.jetstream.scheduler import JetStreamScheduler
        monkeypatch.setattr(JetStreamScheduler, "_find_fire", lambda *args: False)
        spec = s.get("once")
        s._write(spec, {"last_ns": None, "fires": 0, "created_ns": spec.created_ns,
                        "pending": {"t": spec.at_ns, "p": 0, "from": 0}})
        s._place("once", spec.at_ns)
        assert s.run_pending() == 0               # published again, and dropped by the server
        assert s.info("once")["fires"] == 1
    assert [m.headers["x-schedule-id"] for p in range(2) for m in t.read(p, 0, 10)] == [b"once"]


def _try_run_pending(s):
    try:
        s.run_pending()
        return True
    except pyqueue.PyQueueError as e:
        assert "another scheduler is active" in str(e)
        return False


def test_a_lost_lease_stops_the_fires_at_once(backend, broker):
    if backend.name != "jetstream":
        pytest.skip("the embedded scheduler's lock is a flock held by the process: it cannot be taken away")
    import json
    t = broker.topic("health")
    ttl = 2.0
    s = broker.scheduler(lease_ttl=ttl)
    s.add("beat", topic="health", value=b"x", every=0.05)
    s.start()
    assert t.wait(0, 5, timeout=30)
    key = broker.names.scheduler_key("lease")
    stolen_at = time.time()
    broker._run(s.kv.put(key, json.dumps({"holder": "someone else", "ttl": ttl}).encode()))
    until(lambda: not s.active, timeout=ttl, step=lambda: busy_wait(0.01))
    until(lambda: s.active, timeout=30, step=lambda: busy_wait(0.05))   # the thief never renews: taken back
    retaken_at = time.time()
    end = t.offsets(0)[1]
    assert t.wait(0, end + 5, timeout=30)
    s.stop()
    msgs = t.read(0, 0, 100_000)
    # No fire between noticing the loss (at the next renewal, ttl/4) and a
    # full ttl after the theft, when a standby may take over.
    quiet = [m for m in msgs if stolen_at + ttl / 4 + 0.3 <= m.timestamp < stolen_at + ttl]
    assert quiet == [], [(m.timestamp - stolen_at, m.headers["x-scheduled-for"]) for m in quiet]
    assert retaken_at >= stolen_at + ttl
    times = scheduled_for(msgs)
    assert len(times) == len(set(times))
