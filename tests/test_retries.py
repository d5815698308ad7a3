"""Delays, retries with backoff, dead letters and redrive, dedup and
backpressure: DESIGN.md §4.3-4.5.  The cases every backend shares are in
tests/conformance (run on this engine too)."""

import subprocess
import sys
import textwrap
import threading
import time

import pytest

import pyqueue

from conftest import CHILD_CWD, child_env

CHILD_ENV = child_env()


@pytest.fixture
def broker(tmp_path):
    b = pyqueue.open(tmp_path / "b", fsync="never")
    yield b
    b.close()


def test_poison_message_retried_with_growing_gaps_then_dead_lettered(broker):
    t = broker.topic("photos")
    t.send(b"corrupt-photo", key=b"p0", headers={"trace": b"t1"})
    for i in range(20):
        t.send(b"photo-%d" % i)
    backoff = pyqueue.Backoff(initial=0.05, maximum=1.0, multiplier=2.0, jitter=0.0)
    w = t.consumer("resize", mode="queue", max_deliveries=3, backoff=backoff, dead_letter="photos.dlq")
    dlq = broker.topic("photos.dlq")
    attempts, good, all_good = [], set(), threading.Event()

    def handler(m):
        if m.value == b"corrupt-photo":
            attempts.append((m.delivery_count, time.monotonic()))
            raise ValueError("cannot decode JPEG")
        good.add(m.value)
        if len(good) == 20:
            all_good.set()

    def stop_when_done():
        dlq.wait(0, 0, timeout=30)          # woken by the dead letter's append
        all_good.wait(timeout=30)
        w.stop()

    watcher = threading.Thread(target=stop_when_done)
    watcher.start()
    w.run(handler)
    watcher.join()
    assert len(good) == 20
    assert [a[0] for a in attempts] == [1, 2, 3]
    gap1, gap2 = attempts[1][1] - attempts[0][1], attempts[2][1] - attempts[1][1]
    assert gap1 >= 0.05 and gap2 >= 0.1 and gap2 > gap1
    dead = dlq.read(0, 0)
    assert len(dead) == 1
    m = dead[0]
    assert (m.key, m.value) == (b"p0", b"corrupt-photo")
    assert m.headers["x-original-topic"] == b"photos"
    assert m.headers["x-original-partition"] == b"0" and m.headers["x-original-offset"] == b"0"
    assert m.headers["x-delivery-count"] == b"3"
    assert m.headers["x-error"] == b"ValueError: cannot decode JPEG"
    assert m.headers["trace"] == b"t1"
    assert w.poll(timeout=0.1) is None                     # acked on the source
    assert broker.stats()["topics"]["photos"]["groups"]["resize"]["dead_letters"] == 1


def test_nack_of_the_last_delivery_dead_letters_with_its_reason(broker):
    t = broker.topic("t")
    t.send(b"refused")
    w = t.consumer("w", mode="queue", max_deliveries=2, dead_letter="t.dlq")
    w.poll(timeout=1).nack()
    last = w.poll(timeout=1)
    assert last.delivery_count == 2
    last.nack()
    assert w.poll(timeout=0.2) is None
    dead = broker.topic("t.dlq").read(0, 0)[0]
    assert dead.headers["x-error"] == b"Nacked: delivery 2 of max_deliveries=2"
    assert dead.headers["x-delivery-count"] == b"2"


def test_lease_expiry_past_max_deliveries_dead_letters(broker):
    t = broker.topic("t")
    t.send(b"crashy")
    w = t.consumer("w", mode="queue", visibility_timeout=0.05, max_deliveries=2, dead_letter="t.dlq")
    assert w.poll(timeout=1).delivery_count == 1           # "crash": never acked
    assert w.poll(timeout=2).delivery_count == 2
    assert w.poll(timeout=0.3) is None                     # third delivery goes to the DLQ
    dead = broker.topic("t.dlq").read(0, 0)[0]
    assert dead.headers["x-error"].startswith(b"LeaseExpired")


def test_run_with_threads_and_stop(broker):
    t = broker.topic("t", partitions=3)
    for i in range(300):
        t.send(b"%d" % i)
    w = t.consumer("w", mode="queue")
    done, lock = set(), threading.Lock()

    def handler(m):
        with lock:
            done.add(m.value)
            if len(done) == 300:
                w.stop()

    assert w.run(handler, concurrency=4) == 300
    assert len(done) == 300
    assert w.lag() == {0: 0, 1: 0, 2: 0}


def test_delayed_message_is_invisible_until_due_also_across_reopen(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        t = b.topic("t")
        sent_at = time.time()
        t.send(b"later", delay=0.4)
        t.send(b"now")
        c = t.consumer("w", mode="queue")
        m = c.poll(timeout=1)
        assert m.value == b"now"
        m.ack()
        assert c.poll(timeout=0.05) is None
    with pyqueue.open(path) as b:                          # closed and reopened meanwhile
        c = b.topic("t").consumer("w", mode="queue")
        m = c.poll(timeout=5)
        assert m.value == b"later" and time.time() >= sent_at + 0.4
        m.ack()


def test_nack_delay_survives_a_crash(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        b.topic("t").send(b"retry-me")
    child = textwrap.dedent("""
        import os, sys, pyqueue
        b = pyqueue.open(sys.argv[1])
        c = b.topic("t").consumer("w", mode="queue")
        m = c.poll(timeout=5)
        m.nack(delay=0.5)
        print("nacked", flush=True)
        os._exit(0)            # no close: the delay must already be in the shared state
    """)
    out = subprocess.run([sys.executable, "-c", child, str(path)], env=CHILD_ENV, cwd=CHILD_CWD,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "nacked", out.stderr
    nacked_at = time.time()
    with pyqueue.open(path) as b:
        c = b.topic("t").consumer("w", mode="queue")
        assert c.poll(timeout=0.1) is None
        m = c.poll(timeout=5)
        assert m.value == b"retry-me" and m.delivery_count == 2
        assert time.time() >= nacked_at + 0.3


def test_dedup_returns_first_receipt_and_survives_restart(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        t = b.topic("charges", partitions=4)
        first = t.send(b"charge 10 EUR", key=b"c-991", dedup_id="charge-991")
        assert t.send(b"charge 10 EUR", key=b"c-991", dedup_id="charge-991") == first
        assert t.send(b"other", dedup_id=b"charge-992") != first
    child = textwrap.dedent("""
        import sys, pyqueue
        with pyqueue.open(sys.argv[1]) as b:
            r = b.topic("charges").send(b"again", dedup_id="charge-991")
            print(r.partition, r.offset)
    """)
    out = subprocess.run([sys.executable, "-c", child, str(path)], env=CHILD_ENV, cwd=CHILD_CWD,
                         capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == [str(first.partition), str(first.offset)], out.stderr
    with pyqueue.open(path) as b:
        t = b.topic("charges")
        assert sum(t.offsets(p)[1] for p in range(4)) == 2  # the duplicates wrote nothing


def test_dedup_window_expires(broker):
    t = broker.topic("t", dedup_window=0.1)
    r1 = t.send(b"a", dedup_id="x")
    deadline = time.monotonic() + 0.15
    while time.monotonic() < deadline:
        pass
    r2 = t.send(b"a", dedup_id="x")
    assert r2.offset == r1.offset + 1


def test_concurrent_dedup_from_two_processes_writes_once(tmp_path):
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        b.topic("t", partitions=2)
    child = textwrap.dedent("""
        import sys, pyqueue
        with pyqueue.open(sys.argv[1]) as b:
            t = b.topic("t")
            for i in range(500):
                t.send(b"x", dedup_id="id-%d" % i)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", child, str(path)], env=CHILD_ENV, cwd=CHILD_CWD) for _ in range(2)]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    with pyqueue.open(path) as b:
        t = b.topic("t")
        assert sum(t.offsets(p)[1] for p in range(2)) == 500


def test_max_depth_blocks_then_queue_full_then_recovers(broker):
    t = broker.topic("t", max_depth=10)
    w = t.consumer("w", mode="queue")
    for i in range(10):
        t.send(b"%d" % i)
    start = time.monotonic()
    with pytest.raises(pyqueue.QueueFull, match="max_depth=10"):
        t.send(b"over", timeout=0.1)
    assert time.monotonic() - start >= 0.1
    assert t.offsets(0)[1] == 10                          # the refused send wrote nothing
    msgs = w.poll_batch(5, timeout=1)
    acker = threading.Thread(target=lambda: [m.ack() for m in msgs])
    waiting = threading.Event()

    def produce():
        waiting.set()
        t.send(b"fits", timeout=10)

    producer = threading.Thread(target=produce)
    producer.start()
    waiting.wait()
    acker.start()                                          # the acks wake the producer
    producer.join(timeout=10)
    assert not producer.is_alive() and t.offsets(0)[1] == 11


def test_max_depth_ignores_a_group_deleted_while_it_looks(broker, monkeypatch):
    # Between listing a topic's groups and opening one, another process may
    # delete it: the depth check must go on with the others, not fail the send.
    t = broker.topic("t", max_depth=10)
    w = t.consumer("w", mode="queue")
    listed = t.groups()
    monkeypatch.setattr(t, "groups", lambda: listed + ["deleted-meanwhile"])
    t.send(b"x")                                          # the first send looks at the groups
    t.send(b"y")
    assert [m.value for m in w.poll_batch(2, timeout=1)] == [b"x", b"y"]


def test_bad_retry_input(broker):
    t = broker.topic("t")
    with pytest.raises(pyqueue.ConfigError):
        t.send(b"x", delay=-1)
    with pytest.raises(TypeError):
        t.send(b"x", delay="soon")
    with pytest.raises(TypeError):
        t.send(b"x", dedup_id=42)
    with pytest.raises(pyqueue.ConfigError):
        t.send(b"x", dedup_id="")
    for kwargs in ({"initial": -1}, {"multiplier": 0.5}, {"jitter": 2}, {"maximum": float("inf")}):
        with pytest.raises(pyqueue.ConfigError):
            pyqueue.Backoff(**kwargs)
    with pytest.raises(pyqueue.ConfigError):
        t.consumer("w", mode="queue", max_deliveries=0)
    with pytest.raises(TypeError):
        t.consumer("w", mode="queue", backoff=5)
    with pytest.raises(pyqueue.ConfigError):
        t.consumer("w", mode="queue", dead_letter="t")
    with pytest.raises(pyqueue.InvalidName):
        t.consumer("w", mode="queue", dead_letter="../x")
    with pytest.raises(pyqueue.ConfigError):
        t.consumer("w", mode="queue").run(print, concurrency=0)
    with pytest.raises(pyqueue.ConfigError):
        broker.topic("u", max_depth=0)
    assert t.offsets(0) == (0, 0)


RUNNER = """
import sys, pyqueue
b = pyqueue.open(sys.argv[1])
w = b.topic("t").consumer("w", mode="queue")
def handler(m):
    sys.stdout.write(m.value.decode() + "\\n")   # one write: handlers run on two threads
    sys.stdout.flush()
n = w.run(handler, concurrency=2)
w.close()
b.close()
print("stopped", n, flush=True)
"""


def test_run_stops_cleanly_on_sigterm(tmp_path):
    import signal
    path = tmp_path / "b"
    with pyqueue.open(path) as b:
        t = b.topic("t")
        for i in range(10):
            t.send(b"%d" % i)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(RUNNER), str(path)],
                             env=CHILD_ENV, cwd=CHILD_CWD, stdout=subprocess.PIPE, text=True)
    seen = [child.stdout.readline().strip() for _ in range(10)]
    child.send_signal(signal.SIGTERM)
    rest, _ = child.communicate(timeout=60)
    assert child.returncode == 0
    assert sorted(seen) == [str(i) for i in range(10)]
    assert rest.strip().splitlines()[-1] == "stopped 10"
    with pyqueue.open(path) as b:                          # everything handled was acked
        assert b.topic("t").consumer("w", mode="queue").lag() == {0: 0}


def test_messages_released_by_a_stopping_run_are_not_counted(broker, monkeypatch):
    # run() leased a message, then a stop came before the handler got it: the
    # message goes back unprocessed, so it must neither use up a delivery nor
    # be dead-lettered, even at max_deliveries=1.
    t = broker.topic("t")
    t.send(b"x")
    w = t.consumer("w", mode="queue", max_deliveries=1, dead_letter="t.dlq")
    poll_batch = w.poll_batch

    def poll_then_stop(n, timeout=None):
        msgs = poll_batch(n, timeout)
        w.stop()
        return msgs
    monkeypatch.setattr(w, "poll_batch", poll_then_stop)
    assert w.run(lambda m: None, install_signal_handlers=False) == 0
    monkeypatch.undo()
    again = w.poll(timeout=1)
    assert again is not None and again.value == b"x" and again.delivery_count == 1
    again.ack()
    assert "t.dlq" not in broker.topics() or broker.topic("t.dlq").offsets(0) == (0, 0)
