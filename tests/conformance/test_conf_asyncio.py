"""asyncio on every backend: apoll, apoll_batch, `async for`, `async with`
and asend, the event loop running on while they wait; a cancelled apoll
leaves its messages to be delivered again."""

import asyncio
import time

import pytest

import pyqueue


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_apoll_gets_what_is_sent_while_it_waits(broker, mode):
    t = broker.topic("t")
    c = t.consumer("g", mode=mode)

    async def main():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.ensure_future(tick())
        waiting = asyncio.ensure_future(c.apoll(timeout=30))
        await asyncio.sleep(0.2)
        assert not waiting.done()
        r = await t.asend(b"hello", key=b"k", headers={"h": b"v"})
        m = await waiting
        ticker.cancel()
        return r, m, ticks

    r, m, ticks = asyncio.run(main())
    assert (m.offset, m.value, m.key, m.headers) == (r.offset, b"hello", b"k", {"h": b"v"})
    assert ticks >= 10                       # the loop ran while apoll waited
    m.ack()


def test_apoll_timeout_returns_none(broker):
    c = broker.topic("t").consumer("g", mode="queue")
    start = time.monotonic()
    assert asyncio.run(c.apoll(timeout=0.3)) is None
    assert 0.3 <= time.monotonic() - start < 5
    assert asyncio.run(c.apoll_batch(10, timeout=0)) == []


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_async_for_and_async_with(broker, mode):
    t = broker.topic("t")
    t.send_batch([b"%d" % i for i in range(5)])

    async def main():
        got = []
        async with t.consumer("g", mode=mode) as c:
            async for m in c:
                got.append(m.value)
                m.ack()
                if len(got) == 5:
                    break
        return got, c

    got, c = asyncio.run(main())
    assert got == [b"%d" % i for i in range(5)]
    with pytest.raises(pyqueue.Closed):
        c.poll(timeout=0)                   # async with closed it


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_a_cancelled_apoll_leaves_its_messages_to_the_next_poll(broker, mode):
    t = broker.topic("t")
    c = t.consumer("g", mode=mode)

    async def main():
        waiting = asyncio.ensure_future(c.apoll_batch(10, timeout=30))
        await asyncio.sleep(0.2)
        t.send_batch([b"a", b"b"])          # may reach the poll before the cancel does
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting

    asyncio.run(main())
    got = []
    while len(got) < 2:
        msgs = c.poll_batch(10, timeout=10)
        assert msgs, f"only {got} came back"
        for m in msgs:
            got.append(m.value)
            m.ack()
    assert got == [b"a", b"b"]
    assert c.poll(timeout=0.3) is None


def test_asend_checks_its_arguments(broker):
    t = broker.topic("t")
    with pytest.raises(TypeError):
        asyncio.run(t.asend("not bytes"))
    with pytest.raises(pyqueue.PartitionOutOfRange):
        asyncio.run(t.asend(b"x", partition=5))
