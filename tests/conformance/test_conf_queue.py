"""Queue mode on every backend: leases, acks, nacks, redelivery, extend,
LeaseLost, in-flight bounds, retries with backoff, dead letters, redrive,
run(), restarts, and what a backend refuses."""

import threading
import time

import pytest

import pyqueue

from conformance.support import busy_wait, drain, until


def test_each_message_goes_to_one_member(broker):
    t = broker.topic("t", partitions=2)
    for i in range(100):
        t.send(b"%d" % i)
    a = t.consumer("w", mode="queue")
    b = t.consumer("w", mode="queue")
    got = []
    for c in (a, b, a, b):
        msgs = c.poll_batch(30, timeout=0.5)
        got += [(m.partition, m.offset) for m in msgs]
        for m in msgs:
            assert m.delivery_count == 1
            m.ack()
    got += [(m.partition, m.offset) for m in drain(a)]
    assert len(got) == len(set(got)) == 100


def test_lease_expiry_redelivers_with_higher_count(broker):
    t = broker.topic("t")
    t.send(b"job")
    c = t.consumer("w", mode="queue", visibility_timeout=0.3)
    m1 = c.poll(timeout=5)
    assert m1.delivery_count == 1
    assert c.poll(timeout=0.0) is None          # invisible while leased
    m2 = c.poll(timeout=5)                      # comes back when the lease expires
    assert (m2.offset, m2.delivery_count) == (m1.offset, 2)
    with pytest.raises(pyqueue.LeaseLost):
        m1.ack()                                # the message went out again
    m2.ack()
    assert c.poll(timeout=0.5) is None
    assert c.lag() == {0: 0}


def test_ack_after_expiry_but_before_redelivery_is_accepted(broker):
    t = broker.topic("t")
    t.send(b"job")
    c = t.consumer("w", mode="queue", visibility_timeout=0.2)
    m = c.poll(timeout=5)
    busy_wait(0.3)
    m.ack()                                     # nobody else got it: SQS accepts this too
    assert c.poll(timeout=0.5) is None


def test_extend_keeps_the_lease(broker):
    t = broker.topic("t")
    t.send(b"slow")
    c = t.consumer("w", mode="queue", visibility_timeout=1.0)
    m = c.poll(timeout=5)
    m.extend(6.0)
    assert c.poll(timeout=3.0) is None          # would have expired thrice without extend
    m.ack()
    with pytest.raises(pyqueue.LeaseLost):
        m.extend(1.0)


def test_nack_now_and_with_delay(broker):
    t = broker.topic("t")
    t.send(b"a")
    c = t.consumer("w", mode="queue")
    m = c.poll(timeout=5)
    m.nack()
    again = c.poll(timeout=5)
    assert (again.offset, again.delivery_count) == (m.offset, 2)
    with pytest.raises(pyqueue.LeaseLost):
        m.ack()
    start = time.monotonic()
    again.nack(delay=0.4)
    assert c.poll(timeout=0.1) is None
    third = c.poll(timeout=5)
    assert third.delivery_count == 3 and time.monotonic() - start >= 0.35
    third.ack()
    with pytest.raises(pyqueue.LeaseLost):
        third.ack()                             # twice


def test_max_in_flight_bounds_unacked_deliveries(broker):
    t = broker.topic("t")
    for i in range(10):
        t.send(b"%d" % i)
    c = t.consumer("w", mode="queue", max_in_flight=4)
    first = c.poll_batch(10, timeout=0.5)
    assert [m.offset for m in first] == [0, 1, 2, 3]
    assert c.poll_batch(10, timeout=0.2) == []
    for m in first:
        m.ack()
    nxt: list = []
    while len(nxt) < 4:                         # acks reach the server one by one: so may the room
        more = c.poll_batch(10, timeout=5)
        assert more, f"only {[m.offset for m in nxt]} after the acks"
        nxt += more
    assert [m.offset for m in nxt] == [4, 5, 6, 7]
    assert c.poll_batch(10, timeout=0.2) == []  # the window is full again
    with pytest.raises(pyqueue.ConfigError, match="max_in_flight"):
        t.consumer("w", mode="queue", max_in_flight=8)


def test_window_is_of_offsets(broker, requires):
    requires("offset_window")
    t = broker.topic("t")
    for i in range(10):
        t.send(b"%d" % i)
    c = t.consumer("w", mode="queue", max_in_flight=4)
    first = c.poll_batch(10, timeout=0.5)
    first[1].ack()                              # not the head: the window stays full
    assert c.poll_batch(10, timeout=0.1) == []
    first[0].ack()
    assert [m.offset for m in c.poll_batch(10, timeout=0.5)] == [4, 5]


def test_ordered_delivers_a_key_one_at_a_time(broker, requires):
    requires("ordered")
    t = broker.topic("t")
    for i in range(6):
        t.send(b"%d" % i, key=b"A" if i % 2 == 0 else b"B")
    c = t.consumer("fifo", mode="queue", ordered=True)
    batch = c.poll_batch(10, timeout=0.5)
    assert [m.value for m in batch] == [b"0", b"1"]
    batch[1].ack()
    assert [m.value for m in c.poll_batch(10, timeout=0.5)] == [b"3"]


def test_unordered_keys_flow_in_parallel(broker):
    t = broker.topic("t")
    for i in range(6):
        t.send(b"%d" % i, key=b"A")
    c = t.consumer("w", mode="queue")
    assert len(c.poll_batch(10, timeout=0.5)) == 6


def test_leases_and_counts_survive_a_restart(backend):
    b = backend.open()
    t = b.topic("t")
    for i in range(10):
        t.send(b"%d" % i)
    c = t.consumer("w", mode="queue", visibility_timeout=60)
    msgs = c.poll_batch(6, timeout=1)
    assert len(msgs) == 6
    for m in msgs[:3]:
        m.ack()
    msgs[4].nack(delay=0.0)
    b.close()                                   # the other leases go back to the queue
    c = backend.open().topic("t").consumer("w", mode="queue", visibility_timeout=60)
    got = drain(c, ack=False)
    assert sorted(m.offset for m in got) == list(range(3, 10))
    counts = {m.offset: m.delivery_count for m in got}
    assert counts[3] == counts[4] == counts[5] == 2 and counts[6] == 1


def test_start_latest_and_seek(broker):
    t = broker.topic("t")
    for i in range(5):
        t.send(b"old")
    c = t.consumer("w", mode="queue", start="latest")
    assert c.poll(timeout=0.2) is None
    t.send(b"new")
    m = c.poll(timeout=5)
    assert m.value == b"new"
    m.ack()
    c.seek(0, 0)
    assert [m.value for m in drain(c, ack=False)] == [b"old"] * 5 + [b"new"]


def test_auto_ack(broker):
    t = broker.topic("t")
    t.send(b"x")
    c = t.consumer("w", mode="queue", auto_ack=True, visibility_timeout=0.5)
    assert c.poll(timeout=5).value == b"x"
    assert c.poll(timeout=1.5) is None


def test_poison_message_retried_with_growing_gaps_then_dead_lettered(broker):
    t = broker.topic("photos")
    t.send(b"corrupt-photo", key=b"p0", headers={"trace": b"t1"})
    for i in range(20):
        t.send(b"photo-%d" % i)
    backoff = pyqueue.Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0.0)
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
        dlq.wait(0, 0, timeout=30)              # woken by the dead letter's arrival
        all_good.wait(timeout=30)
        w.stop()

    watcher = threading.Thread(target=stop_when_done)
    watcher.start()
    w.run(handler)
    watcher.join()
    assert len(good) == 20
    assert [a[0] for a in attempts] == [1, 2, 3]
    gap1, gap2 = attempts[1][1] - attempts[0][1], attempts[2][1] - attempts[1][1]
    assert gap1 >= 0.09 and gap2 >= 0.19 and gap2 > gap1
    [m] = dlq.read(0, 0)
    assert (m.key, m.value) == (b"p0", b"corrupt-photo")
    assert m.headers["x-original-topic"] == b"photos"
    assert m.headers["x-original-partition"] == b"0" and m.headers["x-original-offset"] == b"0"
    assert m.headers["x-delivery-count"] == b"3"
    assert m.headers["x-error"] == b"ValueError: cannot decode JPEG"
    assert m.headers["trace"] == b"t1"
    assert w.poll(timeout=0.3) is None          # finished on the source


def test_lease_expiry_past_max_deliveries_dead_letters(broker):
    t = broker.topic("t")
    t.send(b"crashy")
    w = t.consumer("w", mode="queue", visibility_timeout=0.2, max_deliveries=2, dead_letter="t.dlq")
    assert w.poll(timeout=5).delivery_count == 1          # "crash": never acked
    assert w.poll(timeout=5).delivery_count == 2
    dlq = broker.topic("t.dlq")
    assert w.poll(timeout=1.0) is None                    # the third delivery goes to the DLQ
    assert dlq.wait(0, 0, timeout=10)
    assert dlq.read(0, 0)[0].headers["x-error"].startswith(b"LeaseExpired")


def test_redrive_brings_dead_letters_back(broker):
    t = broker.topic("jobs")
    t.send(b"flaky", key=b"k")
    w = t.consumer("w", mode="queue", max_deliveries=1, dead_letter="jobs.dlq")

    def handler(m):
        w.stop()
        raise RuntimeError("boom")

    w.run(handler)
    dlq = broker.topic("jobs.dlq")
    assert dlq.read(0, 0)[0].headers["x-error"] == b"RuntimeError: boom"
    assert dlq.redrive(to="jobs") == 1
    assert dlq.redrive(to="jobs") == 0                    # moved once
    back = w.poll(timeout=5)
    assert (back.key, back.value, back.delivery_count) == (b"k", b"flaky", 1)
    assert not any(h.startswith("x-") for h in back.headers)
    with pytest.raises(pyqueue.UnknownTopic):
        dlq.redrive(to="missing")


def test_run_with_threads_and_stop(broker):
    t = broker.topic("t", partitions=3)
    t.send_batch([b"%d" % i for i in range(100)], partition=0)
    t.send_batch([b"%d" % i for i in range(100, 200)], partition=1)
    t.send_batch([b"%d" % i for i in range(200, 300)], partition=2)
    w = t.consumer("w", mode="queue")
    done, lock = set(), threading.Lock()

    def handler(m):
        with lock:
            done.add(m.value)
            if len(done) == 300:
                w.stop()

    assert w.run(handler, concurrency=4) == 300
    assert len(done) == 300
    until(lambda: w.lag() == {0: 0, 1: 0, 2: 0}, timeout=5)


def test_nack_of_the_last_delivery_dead_letters_with_its_reason(broker):
    t = broker.topic("t")
    broker.topic("t.dlq")
    t.send(b"refused")
    w = t.consumer("w", mode="queue", max_deliveries=2, dead_letter="t.dlq")
    w.poll(timeout=5).nack()
    last = w.poll(timeout=5)
    assert last.delivery_count == 2
    last.nack()
    assert w.poll(timeout=0.5) is None
    dead = broker.topic("t.dlq").read(0, 0)
    assert len(dead) == 1 and dead[0].headers["x-error"] == b"Nacked: delivery 2 of max_deliveries=2"


def test_stop_before_run_makes_run_return(broker):
    t = broker.topic("t")
    w = t.consumer("w", mode="queue")
    w.stop()
    done = threading.Event()
    runner = threading.Thread(target=lambda: (w.run(lambda m: None, install_signal_handlers=False), done.set()))
    runner.start()
    assert done.wait(30), "run() missed a stop() that came before it"
    runner.join()
    t.send(b"x")                                  # the request is spent: the next run() runs
    handled = []

    def handle(m):
        handled.append(m.value)
        w.stop()
    assert w.run(handle, install_signal_handlers=False) == 1 and handled == [b"x"]


def test_dead_member_leases_come_back(backend, children):
    b = backend.open()
    t = b.topic("t")
    t.send(b"held")
    child = children.spawn(backend.child_open_code() + """
c = broker.topic("t").consumer("w", mode="queue", visibility_timeout=1.0)
m = c.poll(timeout=10)
print(m.value.decode(), flush=True)
import time
time.sleep(3600)
""")
    assert child.line(timeout=60) == "held"
    child.kill()
    c = t.consumer("w", mode="queue", visibility_timeout=1.0)
    m = c.poll(timeout=10)
    assert m.value == b"held" and m.delivery_count == 2


def test_bad_queue_arguments(broker):
    t = broker.topic("t")
    for kwargs in ({"visibility_timeout": 0}, {"visibility_timeout": -1},
                   {"max_in_flight": 0}, {"max_in_flight": 10 ** 6}, {"max_deliveries": 0},
                   {"start": "middle"}, {"dead_letter": "t"}):
        with pytest.raises(pyqueue.ConfigError):
            t.consumer("w", mode="queue", **kwargs)
    with pytest.raises(TypeError):
        t.consumer("w", mode="queue", ordered="yes")
    with pytest.raises(TypeError):
        t.consumer("w", mode="queue", unknown_option=1)
    with pytest.raises(pyqueue.InvalidName):
        t.consumer("a/b", mode="queue")
    c = t.consumer("w", mode="queue")
    t.send(b"x")
    m = c.poll(timeout=5)
    with pytest.raises(pyqueue.ConfigError):
        m.nack(delay=-1)
    with pytest.raises(pyqueue.ConfigError):
        m.extend(0)
    with pytest.raises(TypeError):
        m.extend("5")
    with pytest.raises(pyqueue.ConfigError, match="stream mode|queue mode"):
        t.consumer("w", mode="stream")          # the group exists in queue mode
    c.close()
    with pytest.raises(pyqueue.Closed):
        c.poll(timeout=0)


def test_read_messages_have_nothing_to_ack(broker):
    t = broker.topic("t")
    t.send(b"x")
    m = t.read(0, 0)[0]
    for call in (m.ack, m.nack, lambda: m.extend(1)):
        with pytest.raises(pyqueue.PyQueueError, match="without a consumer"):
            call()
