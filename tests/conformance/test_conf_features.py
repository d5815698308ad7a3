"""Backpressure, batch reads, the scheduler and jobs on every
backend; where a backend lacks one, the test is skipped with the reason
and a test of its own checks that using it raises Unsupported, naming it."""

import time

import pytest

import pyqueue

BACKEND_FEATURES = {
    # feature: (what to call, the word the error must contain)
    "ordered": (lambda b: b.topic("t").consumer("g", mode="queue", ordered=True), "ordered"),
}


def test_every_missing_feature_raises_unsupported_naming_it(backend, broker):
    from pyqueue.jetstream import Unsupported
    for feature, (call, word) in sorted(BACKEND_FEATURES.items()):
        if backend.lacks(feature):
            with pytest.raises(Unsupported, match=word) as info:
                call(broker)
            assert isinstance(info.value, pyqueue.PyQueueError)


def test_backpressure_raises_queue_full(broker, requires):
    requires("max_depth")
    t = broker.topic("deep", max_depth=2)
    t.send(b"1")
    t.send(b"2")
    with pytest.raises(pyqueue.QueueFull):
        t.send(b"3", timeout=0.05)


def test_read_batch_gives_one_buffer_and_arrays(broker):
    pytest.importorskip("numpy")
    t = broker.topic("t")
    t.send_batch([b"a", b"bb", b"", b"ccc"])
    rb = t.read_batch(0, 1, 10)
    assert [bytes(rb.buffer[p:p + n]) for p, n in zip(rb.positions, rb.lengths)] == [b"bb", b"", b"ccc"]
    assert list(rb.offsets) == [1, 2, 3] and rb.next_offset == 4 and len(rb) == 3
    assert [bytes(v) for v in rb] == [b"bb", b"", b"ccc"]
    assert all(abs(ts / 1e9 - time.time()) < 60 for ts in rb.timestamps_ns)
    assert len(t.read_batch(0, 4, 10)) == 0
    with pytest.raises(pyqueue.OffsetOutOfRange):
        t.read_batch(0, 5, 10)


def test_scheduler_fires_every(broker, requires):
    requires("scheduler")
    broker.topic("health")
    s = broker.scheduler()
    s.add("beat", topic="health", value=b"ping", every=0.1)
    s.start()
    c = broker.topic("health").consumer("g")
    msgs = [c.poll(timeout=5) for _ in range(3)]
    s.stop()
    assert all(m.value == b"ping" and m.headers["x-schedule-id"] == b"beat" for m in msgs)


def test_jobs_queue_and_cancel(broker, requires):
    requires("jobs")
    jobs = broker.jobs()
    jobs.define("noop", command=["true"])
    jid = jobs.submit("noop")
    assert jobs.status(jid).state == "queued"
    jobs.cancel(jid)
    assert jobs.status(jid).state == "cancelled"
