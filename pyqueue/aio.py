"""asyncio support: awaitable poll and send, woken by appends.

The public surface is methods of the sync classes, so that one consumer or
topic serves both worlds and close() ends everything:

    msg = await consumer.apoll(timeout=1.0)          # Message or None
    msgs = await consumer.apoll_batch(100, timeout=1.0)
    async for msg in consumer: ...                   # ends when the consumer closes
    receipt = await topic.asend(b"...", key=b"k")    # waits for room (max_depth) without blocking

How a coroutine sleeps.  Appends from any process bump the topic's shared
wake-up word (a futex, native/notify.h), which an event loop cannot select
on.  So each topic that coroutines wait on gets one thread per process, its
TopicWaker, that sleeps on the word with the GIL released and, when the word
moves, wakes every waiting coroutine, whatever its loop, with
call_soon_threadsafe.  Lookups (lease, read, depth) run on the loop's thread
and never block; only the sleep is delegated.  Costs: one thread per topic
waited on (not per consumer, coroutine or message), started at the first
wait and ended by Topic.close() (so by Broker.close()); while nobody waits
the thread is not counted as a sleeper, so writers pay nothing for it.

The lost-wake-up rule.  The waker keeps a generation number.  Whenever a
generation g can be read, the word was armed before g was published, so any
append after the read moves the word, ends the armed sleep and publishes
g + 1.  A coroutine reads g (arming the word if no sleep is armed), looks for
work, and if there is none waits for a generation after g: an append that
its look missed is one that comes after the read, so it cannot be lost.
Wake-ups may be spurious; callers look again.  Time-based wake-ups (the
next membership upkeep, the caller's timeout, a delayed message or an
expired lease falling due) are loop timers, not the thread's business.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Optional

from pyqueue._native import Message, Notify, Receipt
from pyqueue.consumer import positive
from pyqueue.errors import Closed, QueueFull

if TYPE_CHECKING:
    from pyqueue.consumer import Consumer
    from pyqueue.topic import Topic

__all__ = ["TopicWaker", "apoll_batch", "aiterate", "asend"]

_ROOM_RECHECK = 0.25   # seconds between depth checks while a send waits for room (as backpressure.py)


def _wake(fut: "asyncio.Future[None]") -> None:
    if not fut.done():
        fut.set_result(None)


class TopicWaker:
    """One thread that sleeps on a topic's wake-up word for this process's
    coroutines.  arm() and wait() are called from event loops; stop()
    from whoever closes the topic, before the word is unmapped."""

    def __init__(self, notify: Notify, name: str) -> None:
        self._notify = notify
        self._cond = threading.Condition(threading.Lock())
        self._generation = 0
        self._armed = False          # an arm is held for the thread to sleep on (and undo)
        self._seq = 0
        self._stopping = False
        self._waiters: dict["asyncio.Future[None]", asyncio.AbstractEventLoop] = {}
        self._thread = threading.Thread(target=self._run, name=f"pyqueue-aio-{name}", daemon=True)
        self._thread.start()

    def arm(self) -> int:
        """The current generation, with the word armed for it: look for work
        after this, then wait(generation) if there was none.  Raises Closed
        once stop() has begun."""
        with self._cond:
            if self._stopping:
                raise Closed("the topic is closed")
            if not self._armed:
                self._seq = self._notify.arm()
                self._armed = True
                self._cond.notify()
            return self._generation

    def disarm(self) -> None:
        """Nothing: an arm is the thread's to undo (its sleep ends at the
        next move of the word).  Here so that Consumer._poll_step takes a
        TopicWaker where it takes a Notify."""

    async def wait(self, generation: int, timeout: Optional[float]) -> None:
        """Return once the word moved after `generation` was read, or after
        `timeout` seconds (None: no limit), or when the waker stops.
        Cancelling the caller leaves nothing behind."""
        loop = asyncio.get_running_loop()
        fut: "asyncio.Future[None]" = loop.create_future()
        with self._cond:
            if self._generation != generation or self._stopping:
                return
            self._waiters[fut] = loop
        timer = None if timeout is None else loop.call_later(max(0.0, timeout), _wake, fut)
        try:
            await fut
        finally:
            if timer is not None:
                timer.cancel()
            with self._cond:
                self._waiters.pop(fut, None)

    def waiting(self) -> int:
        """How many coroutines wait right now (for tests and stats)."""
        with self._cond:
            return len(self._waiters)

    def stop(self) -> None:
        """Wake every waiter and end the thread; returns once it has ended.
        Idempotent.  The topic's word must still be open."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            armed = self._armed
        if armed:
            self._notify.wake()      # ends an armed sleep (a spurious wake-up for other sleepers)
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._armed and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    if self._armed:
                        self._notify.disarm()
                        self._armed = False
                    self._release()
                    return
                seq = self._seq
            # GIL released; returns when the word differs from seq (an append,
            # a group event, or stop()), and undoes the arm.
            self._notify.sleep(seq, None)
            with self._cond:
                self._armed = False
                self._generation += 1
                self._release()

    def _release(self) -> None:
        """Wake every waiter; self._cond is held."""
        for fut, loop in self._waiters.items():
            try:
                loop.call_soon_threadsafe(_wake, fut)
            except RuntimeError:
                pass                 # its loop is closed; nobody is left to wake
        self._waiters.clear()


# -- consumers --

async def apoll_batch(consumer: "Consumer", n: int, timeout: Optional[float]) -> list[Message]:
    """Consumer.apoll_batch: Consumer.poll_batch's loop, sleeping on the
    topic's waker instead of blocking.  Cancellation only ever interrupts the
    sleep: a batch that was leased or read is returned, never dropped."""
    deadline = consumer._poll_deadline(n, timeout)
    waker = consumer.topic._waker()
    while True:
        with consumer._lock:         # held only for the look: no await inside
            msgs, generation, sleep = consumer._poll_step(n, deadline, waker)
        if msgs is not None:
            return msgs
        await waker.wait(generation, sleep)


async def aiterate(consumer: "Consumer") -> AsyncIterator[Message]:
    """`async for msg in consumer`: every message, until the consumer closes."""
    while True:
        try:
            msgs = await consumer.apoll_batch(1, None)    # either backend's
        except Closed:
            return
        if msgs:
            yield msgs[0]


# -- producers --

async def asend(topic: "Topic", value: Any, key: Optional[bytes], headers: Optional[dict[str, bytes]],
                partition: Optional[int], delay: Optional[float], dedup_id: "str | bytes | None",
                timeout: Optional[float]) -> Receipt:
    """Topic.asend.  The append itself is a memory copy done on the loop's
    thread.  With max_depth set, waiting for room is a coroutine sleep on
    the topic's waker (cancelling it sends nothing); with fsync="always", the
    flush that makes the message durable runs in the loop's default executor
    (cancelling that wait leaves the message sent)."""
    if not topic._max_depth and not topic._always:
        return topic.send(value, key, headers=headers, partition=partition, delay=delay, dedup_id=dedup_id)
    if timeout is not None:
        timeout = positive("timeout", timeout, allow_zero=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            receipt = topic._send_slow(value, key, headers, partition, delay, dedup_id,
                                       timeout=0.0, flush=False)
            break
        except QueueFull:
            pass
        await _room(topic, deadline, timeout)
    if topic._always:
        log = topic._log(receipt.partition)
        await asyncio.get_running_loop().run_in_executor(None, log.sync, receipt.offset + 1)
    return receipt


async def _room(topic: "Topic", deadline: Optional[float], timeout: Optional[float]) -> None:
    """Return once the topic's depth is below max_depth, or raise QueueFull
    at the deadline."""
    waker = topic._waker()
    bp = topic._backpressure
    while True:
        generation = waker.arm()
        depth = bp.depth()
        if depth < bp.max_depth:
            return
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise QueueFull(f"topic {topic.name!r} holds {depth} unfinished messages, "
                            f"max_depth={bp.max_depth}; waited {timeout}s")
        await waker.wait(generation, _ROOM_RECHECK if left is None else min(left, _ROOM_RECHECK))
