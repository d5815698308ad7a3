"""Stream mode on JetStream reads through a consumer without acks, so a gap
in the offsets it delivers has two causes that must be told apart:
retention removed the messages (skip them, and commit past them), or they
were lost on the way to this process (ask for them again: nothing is
skipped silently)."""

import pytest

import pyqueue

from conformance.support import drain, nats_missing, until

pytestmark = pytest.mark.skipif(nats_missing() is not None, reason=f"jetstream backend: {nats_missing()}")


@pytest.fixture
def js(nats_cluster, request):
    ns = f"gap{abs(hash(request.node.name)) % 10**8}"
    b = pyqueue.connect(nats_cluster.url, namespace=ns, timeout=20.0, request_timeout=1.0)
    try:
        yield b
    finally:
        for name in b.topics():
            b.delete_topic(name)
        b.close()


def test_messages_lost_on_the_way_are_asked_for_again(js):
    t = js.topic("t")
    t.send_batch([b"%d" % i for i in range(100)])
    c = t.consumer("g", mode="stream")
    first = c.poll_batch(10, timeout=5)
    assert [m.offset for m in first] == list(range(10))
    # The server sends the next five; they never reach the application (as
    # if the connection dropped them): the consumer's position moved on.
    async def deliver_five() -> None:
        req = await c._puller.pull(0, 5, no_wait=True)
        await req.done

    js._run(deliver_five(), 10)
    lost = [c._puller.buffer.popleft().offset for _ in range(len(c._puller.buffer))]
    assert lost == list(range(10, 15))
    rest = [m.offset for m in drain(c)]
    assert rest == list(range(10, 100))


def test_offsets_removed_by_retention_are_skipped_and_committed_past(js):
    t = js.topic("t", retention_seconds=1.0)
    t.send_batch([b"old%d" % i for i in range(5)])
    c = t.consumer("g", mode="stream")
    assert [m.offset for m in drain(c)] == list(range(5))
    c.commit()
    # The reader falls behind: these expire before it reads them.
    t.send_batch([b"expiring%d" % i for i in range(5)])
    until(lambda: t.offsets(0)[0] == 10, timeout=30, step=lambda: t.wait(0, 1 << 40, timeout=0.2))
    t.send_batch([b"new%d" % i for i in range(5)])
    got = drain(c)
    assert [m.offset for m in got] == list(range(10, 15))
    c.commit()
    assert t.stats()["groups"]["g"]["partitions"][0]["committed"] == 15
