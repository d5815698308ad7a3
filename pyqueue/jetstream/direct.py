"""Direct sends: a producing thread drives a connection of its own.

A call through the broker's loop thread costs two thread wake-ups (the loop
thread's, then the caller's), and on a busy machine each can cost as much
as a tenth of a JetStream round trip.  So send() and send_batch() run on a
second nats-py connection per producing thread, with an event loop that
the calling thread itself runs for the length of the call
(run_until_complete): the request and its acknowledgement are awaited
where they were made, as a single-threaded asyncio program would.

Between calls that loop does not run: nothing reads the connection, so a
server PING goes unanswered until the next send (after about two of the
server's ping intervals, 4 minutes by default, the server closes the
connection and the next send reconnects first).  A thread already running
an asyncio loop cannot run another: its sends go through the broker's
loop thread instead.  connect(direct_sends=False) turns this off.
"""

from __future__ import annotations

import asyncio
import threading
from typing import TYPE_CHECKING, Awaitable, Callable, Optional, TypeVar

from pyqueue.errors import Closed

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker
    from pyqueue.jetstream.client import Client

__all__ = ["DirectSenders"]

T = TypeVar("T")


class _Direct:
    """One thread's connection and the loop it runs during its calls."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.lock = threading.Lock()        # held while the loop runs (by the owner or by close)
        self.client: "Optional[Client]" = None
        self.closed = False


class DirectSenders:
    """The per-thread connections of one broker."""

    def __init__(self, broker: "JetStreamBroker") -> None:
        self._broker = broker
        self._local = threading.local()
        self._all: list[_Direct] = []
        self._lock = threading.Lock()
        self._closed = False

    def run(self, make: Callable[["Client"], Awaitable[T]]) -> T:
        """Run make(client) on this thread's connection (made on first use),
        or on the broker's loop when this thread already runs a loop."""
        try:
            asyncio.get_running_loop()
            in_loop = True
        except RuntimeError:
            in_loop = False
        if in_loop:
            return self._broker._run(make(self._broker.client))
        d: Optional[_Direct] = getattr(self._local, "d", None)
        if d is None:
            d = _Direct()
            with self._lock:
                if self._closed:
                    d.loop.close()
                    raise Closed(f"broker {self._broker.url} is closed")
                self._all.append(d)
            self._local.d = d
        with d.lock:
            if d.closed:
                raise Closed(f"broker {self._broker.url} is closed")
            if d.client is None:
                d.client = d.loop.run_until_complete(self._open())
            return d.loop.run_until_complete(make(d.client))

    async def _open(self) -> "Client":
        from pyqueue.jetstream.client import Client
        b = self._broker
        return await Client.open(b.servers, connect_timeout=b.connect_timeout,
                                 request_timeout=b.request_timeout, name="pyqueue-sender", auth=b._auth)

    def close(self) -> None:
        """Close every thread's connection (waiting for a call in progress)."""
        with self._lock:
            self._closed = True
            all_, self._all = self._all, []
        for d in all_:
            if not d.lock.acquire(timeout=self._broker.timeout):
                continue                  # a call still running: its thread is stuck, leave it
            try:
                d.closed = True
                if d.client is not None:
                    try:
                        d.loop.run_until_complete(d.client.close())
                    except Exception:
                        pass
                _cancel_all(d.loop)
                d.loop.close()
            finally:
                d.lock.release()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
    for t in pending:
        t.cancel()
    if pending:
        try:
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        except Exception:
            pass
