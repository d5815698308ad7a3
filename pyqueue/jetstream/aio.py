"""asyncio on the JetStream backend: apoll, apoll_batch, `async for`,
`async with` and asend, with the embedded engine's signatures.

The backend's calls already run on an event loop, but on the broker's own
loop thread (bridge.py), behind a lock that keeps one poll of a consumer at
a time.  So a coroutine here runs the blocking call on a thread of the
broker's pool, in slices of at most _SLICE seconds, and awaits it: the
caller's loop never blocks.  Cancelling an apoll waits for the slice under
way to end (at most _SLICE seconds and a round trip) and hands back what
it brought: a queue-mode message goes back to the queue at once (JetStream
counts that delivery), a stream-mode one is delivered again by the next
poll.  Cancelling an asend cannot take back a publish already on its way:
give sends a dedup_id to make their retries safe.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, Optional

from pyqueue.consumer import positive
from pyqueue.errors import Closed

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker

__all__ = ["apoll_batch", "asend", "run_blocking"]

_SLICE = 0.25          # seconds a poll slice waits at most: how soon a cancel takes effect
_THREADS = 64          # polls and sends waiting at once, per broker


def _pool(broker: "JetStreamBroker") -> concurrent.futures.ThreadPoolExecutor:
    with broker._lock:
        pool = broker.__dict__.get("_aio_pool")
        if pool is None:
            pool = concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="pyqueue-js-aio")
            broker.__dict__["_aio_pool"] = pool
        return pool


def shutdown(broker: "JetStreamBroker") -> None:
    """Stop the broker's pool (its threads end with the calls they run)."""
    pool = broker.__dict__.pop("_aio_pool", None)
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


async def run_blocking(broker: "JetStreamBroker", call: Callable[[], Any]) -> Any:
    """call() on a thread of the broker's pool, awaited."""
    if broker._closed:
        raise Closed(f"broker {broker.url} is closed")
    return await asyncio.get_running_loop().run_in_executor(_pool(broker), call)


async def apoll_batch(consumer: Any, n: int, timeout: Optional[float]) -> list[Any]:
    """Consumer.apoll_batch: poll_batch in slices on the broker's pool."""
    if type(n) is not int:
        raise TypeError(f"n must be int, not {type(n).__name__}")
    if timeout is not None:
        timeout = positive("timeout", timeout, allow_zero=True)
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    broker = consumer._broker
    while True:
        left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - loop.time()))
        call = loop.run_in_executor(_pool(broker), functools.partial(consumer.poll_batch, n, left))
        try:
            msgs = await asyncio.shield(call)
        except asyncio.CancelledError:
            try:
                got = await call
            except Exception:
                got = []
            if got:
                await run_blocking(broker, functools.partial(consumer._unread, got))
            raise
        if msgs or (deadline is not None and loop.time() >= deadline):
            return msgs


async def asend(topic: Any, **kwargs: Any) -> Any:
    """Topic.asend: send() on the broker's pool (each pool thread sends on
    a connection of its own, as any sending thread does)."""
    return await run_blocking(topic._broker, functools.partial(topic.send, **kwargs))


class AsyncConsumer:
    """The asyncio methods of both JetStream consumers (a mixin)."""

    _broker: "JetStreamBroker"

    async def apoll(self, timeout: Optional[float] = None) -> Any:
        """poll() for asyncio: the next message, or None after `timeout`
        seconds (None: no limit).  See the module docstring on cancelling."""
        msgs = await apoll_batch(self, 1, timeout)
        return msgs[0] if msgs else None

    async def apoll_batch(self, n: int, timeout: Optional[float] = None) -> list[Any]:
        """poll_batch() for asyncio: up to n messages; waits up to `timeout`
        for at least one."""
        return await apoll_batch(self, n, timeout)

    def __aiter__(self) -> AsyncIterator[Any]:
        """`async for msg in consumer`: every message until close()."""
        from pyqueue.aio import aiterate
        return aiterate(self)  # type: ignore[arg-type]

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, *exc: object) -> None:
        close = self.close  # type: ignore[attr-defined]
        if self._broker._closed:
            close()                       # nothing left to hand back: it returns at once
        else:
            await run_blocking(self._broker, close)

    def _unread(self, msgs: list[Any]) -> None:
        """Hand back messages a cancelled apoll got (see the module docstring)."""
        raise NotImplementedError
