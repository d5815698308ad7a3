"""asyncio: apoll, apoll_batch, `async for`, asend (pyqueue/aio.py).

Coroutines sleep on the topic's waker thread, which the shared wake-up word
wakes when any process appends; the tests have other processes send while a
coroutine waits, and check that a waiting coroutine leaves nothing behind
when it is cancelled or its consumer closes.  Each test runs its own event
loop with asyncio.run.

A coroutine that was just created runs up to its first suspension at the
loop's next turn, so `await asyncio.sleep(0)` after create_task leaves it
waiting (the tests check the waker's count of waiters to be sure); it is a
turn of the loop, not a pause for time.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

import pyqueue
from pyqueue.errors import Closed, QueueFull

# Sends argv[3] messages "m0", "m1"... to topic argv[2] (no key: round robin)
# once "go" arrives on stdin, then prints "sent".  argv: path topic count
PRODUCER = r'''
import sys, pyqueue
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = pyqueue.open(path, fsync="never")
topic = broker.topic(name)
print("ready", flush=True)
assert sys.stdin.readline() == "go\n"
for i in range(count):
    topic.send(b"m%d" % i)
print("sent", flush=True)
assert sys.stdin.readline() == ""
broker.close()
'''

# Reads argv[3] messages as stream group "g" of topic argv[2], acks and
# commits them, then prints their values as one JSON line.  argv: path topic count
STREAM_READER = r'''
import json, sys, pyqueue
path, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
broker = pyqueue.open(path, fsync="never")
c = broker.topic(name).consumer("g", mode="stream", start="earliest")
got = []
while len(got) < count:
    for m in c.poll_batch(count - len(got), timeout=60):
        got.append(m.value.decode())
        m.ack()
c.commit()
c.close()
broker.close()
print(json.dumps(got), flush=True)
'''


def aio_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("pyqueue-aio")]


async def started(coro) -> "asyncio.Task":
    """A task for `coro`, run up to its first suspension."""
    task = asyncio.ensure_future(coro)
    await asyncio.sleep(0)
    return task


async def in_thread(fn, *args):
    """Run a blocking call (a child's line) without stopping the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


@pytest.mark.parametrize("mode", ["stream", "queue"])
def test_apoll_is_woken_by_another_process(broker_path, children, mode):
    """A coroutine waiting in apoll() gets a message that another process
    sends while it waits; the loop ran on meanwhile."""
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("t", partitions=3)
            producer = children.spawn(PRODUCER, broker_path, "t", 1)
            assert await in_thread(producer.line) == "ready"
            c = topic.consumer("g", mode=mode)
            assert await c.apoll(timeout=0) is None
            task = await started(c.apoll())
            assert not task.done() and topic._waker().waiting() == 1
            waker = topic._waker()
            generation = waker._generation
            producer.send("go\n")
            msg = await task
            assert msg.value == b"m0" and msg.delivery_count == 1
            # The append moved the shared word, which the waker thread saw (the
            # poll may have been first to look, at its upkeep timer).
            await waker.wait(generation, 60)
            assert waker._generation > generation
            msg.ack()
            c.close()
        assert producer.wait() == 0, producer.describe()
    asyncio.run(main())
    assert aio_threads() == []


def test_async_for_stream_mode(broker_path, children):
    """`async for` delivers another process's messages in order per
    partition; acked and committed, they are not delivered again."""
    n = 60

    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("s", partitions=3)
            producer = children.spawn(PRODUCER, broker_path, "s", n)
            assert await in_thread(producer.line) == "ready"
            got: dict[int, list[int]] = {0: [], 1: [], 2: []}
            async with topic.consumer("g", mode="stream") as c:
                producer.send("go\n")
                count = 0
                async for msg in c:
                    got[msg.partition].append(msg.offset)
                    assert msg.value.startswith(b"m")
                    msg.ack()
                    count += 1
                    if count == n:
                        break
                c.commit()
            for offsets in got.values():
                assert offsets == list(range(len(offsets)))   # in order, none skipped
            async with topic.consumer("g", mode="stream") as again:
                assert await again.apoll_batch(100, timeout=0) == []
        assert producer.wait() == 0, producer.describe()
    asyncio.run(main())


def test_async_for_queue_mode_two_members(broker_path, children):
    """Two queue-mode members in one loop share another process's messages:
    each message is handled once, and acks leave nothing in flight."""
    n = 80

    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("q", partitions=2)
            producer = children.spawn(PRODUCER, broker_path, "q", n)
            assert await in_thread(producer.line) == "ready"
            members = [topic.consumer("w", mode="queue") for _ in range(2)]
            seen: list[bytes] = []
            done = asyncio.Event()

            async def work(c) -> int:
                handled = 0
                async for msg in c:          # ends when c closes
                    seen.append(msg.value)
                    msg.ack()
                    handled += 1
                    if len(seen) == n:
                        done.set()
                return handled

            tasks = [await started(work(c)) for c in members]
            producer.send("go\n")
            await done.wait()
            for c in members:
                c.close()
            handled = await asyncio.gather(*tasks)
            assert sorted(seen) == sorted(b"m%d" % i for i in range(n))
            assert sum(handled) == n
            check = topic.consumer("w", mode="queue")
            assert check.lag() == {0: 0, 1: 0}
            assert await check.apoll(timeout=0) is None
            check.close()
        assert producer.wait() == 0, producer.describe()
    asyncio.run(main())


def test_apoll_timeout_returns_none(broker_path):
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("t")
            for mode in ("stream", "queue"):
                c = topic.consumer("g-" + mode, mode=mode)
                assert await c.apoll(timeout=0.05) is None
                assert await c.apoll_batch(10, timeout=0) == []
                assert topic._waker().waiting() == 0
                c.close()
    asyncio.run(main())


def test_cancelled_apoll_leaves_nothing_behind(broker_path, children):
    """Cancelling a waiting apoll leases nothing and leaves no waiter; the
    message sent next goes to another member at once, the consumer polls
    again normally, and closing the broker ends the waker thread."""
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("t", partitions=2)
            c = topic.consumer("w", mode="queue", visibility_timeout=3600)
            task = await started(c.apoll())
            assert topic._waker().waiting() == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert topic._waker().waiting() == 0
            assert aio_threads() == ["pyqueue-aio-t"]       # one per topic, not per wait

            producer = children.spawn(PRODUCER, broker_path, "t", 1)
            assert await in_thread(producer.line) == "ready"
            producer.send("go\n")
            assert await in_thread(producer.line) == "sent"
            other = topic.consumer("w", mode="queue")
            msg = other.poll(timeout=0)                        # not leased by the cancelled poll
            assert msg is not None and msg.value == b"m0" and msg.delivery_count == 1
            msg.nack(delay=0)
            again = await c.apoll(timeout=60)
            assert again.value == b"m0" and again.delivery_count == 2
            again.ack()
            other.close()
            c.close()
        assert aio_threads() == []
        assert [t.name for t in threading.enumerate() if t.name.startswith("pyqueue")] == []
        assert producer.wait() == 0, producer.describe()
    asyncio.run(main())


def test_close_ends_async_for_and_waits(broker_path):
    """close() from another coroutine ends a waiting `async for`; a later
    apoll raises Closed."""
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("t")
            c = topic.consumer("g", mode="stream")

            async def drain() -> int:
                return sum([1 async for _ in c])

            task = await started(drain())
            assert topic._waker().waiting() == 1
            c.close()
            assert await task == 0
            with pytest.raises(Closed):
                await c.apoll(timeout=0)
    asyncio.run(main())


def test_acks_nacks_and_lease_expiry(broker_path):
    """apoll with acks: an acked message is finished; a nacked one comes
    back; one whose lease expires comes back with no append to wake anyone
    (the loop's timer for the lease deadline does)."""
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("t")
            c = topic.consumer("w", mode="queue", visibility_timeout=0.2)
            topic.send(b"a")
            topic.send(b"b")
            a = await c.apoll()
            b = await c.apoll()
            assert (a.value, b.value) == (b"a", b"b")
            a.ack()
            b.nack(delay=0)
            b2 = await c.apoll()
            assert b2.value == b"b" and b2.delivery_count == 2
            b3 = await c.apoll()                      # b2 is not acked: its lease expires
            assert b3.value == b"b" and b3.delivery_count == 3
            b3.ack()
            assert c.lag() == {0: 0}
            assert await c.apoll(timeout=0) is None
            c.close()
    asyncio.run(main())


def test_delayed_message_wakes_apoll(broker_path):
    """A message sent with a delay is delivered to a waiting apoll when due."""
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("t")
            c = topic.consumer("w", mode="queue")
            receipt = await topic.asend(b"later", delay=0.2)
            assert await c.apoll(timeout=0) is None
            msg = await c.apoll()
            assert (msg.value, msg.offset) == (b"later", receipt.offset)
            msg.ack()
            c.close()
    asyncio.run(main())


def test_asend_waits_for_room_without_blocking_the_loop(broker_path, children):
    """With max_depth reached, asend waits as a coroutine: another coroutine
    runs while it waits, and the send completes once a reader in another
    process commits."""
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("bp", max_depth=2)
            await topic.asend(b"m0")
            await topic.asend(b"m1")
            send = await started(topic.asend(b"m2", timeout=600))
            other_ran = asyncio.Event()

            async def other() -> None:
                other_ran.set()

            asyncio.ensure_future(other())
            await other_ran.wait()
            assert not send.done()                   # a blocking send would have finished (QueueFull) first
            assert topic._waker().waiting() == 1
            reader = children.spawn(STREAM_READER, broker_path, "bp", 2)
            assert json.loads(await in_thread(reader.line)) == ["m0", "m1"]
            receipt = await send
            assert receipt.offset == 2
            assert [m.value for m in topic.read(0, 0)] == [b"m0", b"m1", b"m2"]
            assert reader.wait() == 0, reader.describe()
    asyncio.run(main())


def test_asend_timeout_and_cancel_send_nothing(broker_path):
    async def main() -> None:
        with pyqueue.open(broker_path) as broker:
            topic = broker.topic("bp", max_depth=1)
            await topic.asend(b"first")
            with pytest.raises(QueueFull, match="max_depth=1"):
                await topic.asend(b"no room", timeout=0)
            with pytest.raises(QueueFull, match="waited 0.05s"):
                await topic.asend(b"no room", timeout=0.05)
            send = await started(topic.asend(b"cancelled"))
            send.cancel()
            with pytest.raises(asyncio.CancelledError):
                await send
            assert topic.offsets(0) == (0, 1)
            assert topic._waker().waiting() == 0
            c = topic.consumer("g", mode="queue")
            (await c.apoll()).ack()                  # room again
            assert (await topic.asend(b"second")).offset == 1
            c.close()
    asyncio.run(main())


def test_asend_fsync_always(broker_path):
    """With fsync="always", asend returns once the message is on disk (the
    flush runs off the loop)."""
    async def main() -> None:
        with pyqueue.open(broker_path, fsync="always") as broker:
            topic = broker.topic("t", partitions=2)
            receipts = await asyncio.gather(*(topic.asend(b"v%d" % i, key=b"k") for i in range(20)))
            p = receipts[0].partition
            assert sorted(r.offset for r in receipts) == list(range(20))
            assert topic.stats()["partitions"][p]["synced"] >= 20
            first = await topic.asend(b"once", dedup_id="x")
            assert await topic.asend(b"once", dedup_id="x") == first
    asyncio.run(main())


def test_closed_topic_and_consumer(broker_path):
    async def main() -> None:
        broker = pyqueue.open(broker_path)
        topic = broker.topic("t", max_depth=5)
        c = topic.consumer("g", mode="queue")
        c.close()
        with pytest.raises(Closed):
            await c.apoll()
        broker.close()
        with pytest.raises(Closed):
            await topic.asend(b"x")
    asyncio.run(main())
