"""Bridge: pyqueue's synchronous API over nats-py's asyncio client.

One event loop runs on a daemon thread per connected broker; every call of
the sync API hands a coroutine to it (run) and waits for the result on the
calling thread.  Fire-and-forget protocol messages (acks, naks, in-progress)
go through post(): they are queued and written by one loop callback per
burst, so a thread acking a batch wakes the loop once, not once per message.

Cost: a run() is two thread handoffs: a write to the loop's self-pipe, and a
lock the caller sleeps on, released by the task's done callback (about
20-50 us on a busy 2-CPU machine; run_coroutine_threadsafe's future and
condition cost half as much again), small next to a JetStream round trip
(about 0.5 ms to an R3 stream on loopback); post() costs a deque append,
plus one wake-up per burst.  bench/jetstream.py
measures both against nats-py used directly.

Calls from inside the loop thread (a coroutine calling run()) would wait on
themselves; they raise RuntimeError instead.
"""

from __future__ import annotations

import _thread
import asyncio
import collections
import threading
from typing import Any, Awaitable, Callable, Optional, TypeVar

from pyqueue.errors import Closed

__all__ = ["Bridge"]

T = TypeVar("T")


class Bridge:
    """An event loop on its own thread, and the ways into it."""

    def __init__(self, name: str = "pyqueue-jetstream") -> None:
        self.loop = asyncio.new_event_loop()
        self._outbox: "collections.deque[tuple[Callable[..., Any], tuple]]" = collections.deque()
        self._draining = False
        self._closed = False
        self._calls: "set[_Call]" = set()         # run() calls waiting for the loop
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)
        self.thread.start()
        self._ready.wait()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._ready.set)
        try:
            self.loop.run_forever()
        finally:
            try:
                pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            finally:
                self.loop.close()

    def run(self, coro: Awaitable[T], timeout: Optional[float] = None) -> T:
        """Run `coro` on the loop and return its result (or raise its error).
        With `timeout`, the coroutine is cancelled after that many seconds and
        asyncio.TimeoutError is raised.  Closed if the bridge is closed, or
        closes before the coroutine ends."""
        if threading.current_thread() is self.thread:
            coro.close()  # type: ignore[attr-defined]
            raise RuntimeError("a blocking pyqueue call was made from the JetStream event loop thread")
        if self._closed:
            coro.close()  # type: ignore[attr-defined]
            raise Closed("the JetStream connection is closed")
        if timeout is not None:
            coro = asyncio.wait_for(coro, timeout)
        # A bare lock released by the task's done callback: one futex wake,
        # cheaper than run_coroutine_threadsafe's future and condition.
        call = _Call(coro)
        self._calls.add(call)
        try:
            self.loop.call_soon_threadsafe(call.start, self.loop)
        except RuntimeError:                       # the loop closed meanwhile
            self._calls.discard(call)
            coro.close()  # type: ignore[attr-defined]
            raise Closed("the JetStream connection is closed") from None
        try:
            call.lock.acquire()
        except BaseException:                      # KeyboardInterrupt while waiting
            task = call.task
            if task is not None:
                try:
                    self.loop.call_soon_threadsafe(task.cancel)
                except RuntimeError:
                    pass
            raise
        finally:
            self._calls.discard(call)
        task = call.task
        if task is None or task.cancelled():
            raise Closed("the JetStream connection was closed during the call")
        return task.result()

    def post(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call `fn(*args)` on the loop soon, in order with other posts; do not
        wait.  fn may be a plain function or return a coroutine (awaited in
        order).  Errors are swallowed: posts are for messages whose loss the
        protocol tolerates (an ack lost is a redelivery)."""
        if self._closed:
            raise Closed("the JetStream connection is closed")
        self._outbox.append((fn, args))
        if not self._draining:
            self._draining = True
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:      # loop closed meanwhile
                raise Closed("the JetStream connection is closed") from None

    def _drain(self) -> None:
        self._draining = False
        waiting = []
        while self._outbox:
            fn, args = self._outbox.popleft()
            try:
                r = fn(*args)
            except Exception:
                continue
            if asyncio.iscoroutine(r):
                waiting.append(r)
        if waiting:
            self.loop.create_task(_await_all(waiting))

    def flush_posts(self, timeout: float = 5.0) -> None:
        """Return once everything posted so far was handed to the client."""
        self.run(asyncio.sleep(0), timeout)

    def close(self) -> None:
        """Stop the loop and join its thread.  Idempotent."""
        if self._closed:
            return
        self._closed = True
        if threading.current_thread() is self.thread:
            self.loop.stop()
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass
        self.thread.join(10)
        for call in list(self._calls):             # never started: the loop stopped first
            call.abandon()


class _Call:
    """One run(): its coroutine, the task running it, and the lock its
    caller waits on (released once, when the task is done or abandoned)."""

    __slots__ = ("coro", "task", "lock", "_released")

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self.task: Optional[asyncio.Task] = None
        self.lock = _thread.allocate_lock()
        self.lock.acquire()
        self._released = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.task = loop.create_task(self.coro)
        self.task.add_done_callback(self._done)

    def _done(self, _task: Any) -> None:
        self._release()

    def abandon(self) -> None:
        if self.task is None:
            try:
                self.coro.close()
            except Exception:
                pass
        self._release()

    def _release(self) -> None:
        if not self._released:
            self._released = True
            self.lock.release()


async def _await_all(coros: list) -> None:
    for c in coros:
        try:
            await c
        except Exception:
            pass
