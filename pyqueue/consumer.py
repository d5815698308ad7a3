"""Consumer: a member of a consumer group, in stream or queue mode.

Both modes share membership (join, heartbeat, reaping dead members), the
blocking poll (sleeping on the topic's shared wake-up word until an append or
a group event) and iteration; stream_consumer.py and queue_consumer.py hold
what differs.
"""

from __future__ import annotations

import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, AsyncIterator, Iterator, Optional

from pyqueue._native import Group, Message
from pyqueue.errors import MemberFenced
from pyqueue.config import validate_name
from pyqueue.errors import Closed, ConfigError, PyQueueError

if TYPE_CHECKING:
    from pyqueue.topic import Topic

__all__ = ["Consumer", "make_consumer", "MODES", "STARTS"]

MODES = ("stream", "queue")
STARTS = ("earliest", "latest")
_MAINTENANCE = 0.25     # seconds between membership checks while polling
_REAP_PERIOD = 1.0      # seconds between liveness checks of other members


def make_consumer(topic: "Topic", group: str, mode: str, options: dict[str, Any]) -> "Consumer":
    validate_name(group, "group")
    if mode == "stream":
        from pyqueue.stream_consumer import StreamConsumer
        return StreamConsumer(topic, group, **options)
    if mode == "queue":
        from pyqueue.queue_consumer import QueueConsumer
        return QueueConsumer(topic, group, **options)
    raise ConfigError(f"mode={mode!r} must be 'stream' or 'queue'")


def positive(name: str, value: Any, *, allow_zero: bool = False, maximum: float = 86400 * 365) -> float:
    """Validate a duration or count option; returns it as float."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero) or value > maximum:
        raise ConfigError(f"{name}={value!r} must be {'>= 0' if allow_zero else '> 0'} and at most {maximum}")
    return float(value)


class Consumer:
    """Common part of both modes.  Thread-safe for one polling thread plus
    acks from any thread; use one consumer per worker thread for parallel polls."""

    mode: str = ""
    _group_mode: int = 0

    def __init__(self, topic: "Topic", group: str, *, start: str = "earliest", auto_ack: bool = False,
                 session_timeout: float = 10.0, window: int = 0) -> None:
        if start not in STARTS:
            raise ConfigError(f"start={start!r} must be 'earliest' or 'latest'")
        if not isinstance(auto_ack, bool):
            raise TypeError("auto_ack must be a bool")
        self.topic = topic
        self.group = group
        self.start = start
        self.auto_ack = auto_ack
        self.session_timeout = positive("session_timeout", session_timeout, maximum=3600)
        self._state: Group = topic._group(group, self._group_mode, window)
        self._lock = threading.RLock()
        self._closed = False
        self._last_reap = 0.0
        self._last_maintenance = 0.0
        self._generation = -1
        self._join()

    # -- membership --

    def _join(self) -> None:
        self.slot, self.member_id = self._state.join(os.getpid())
        self._last_heartbeat = time.monotonic()

    def _heartbeat(self) -> None:
        """Keep membership alive; rejoin (dropping local state) if we were fenced."""
        try:
            self._state.heartbeat(self.slot, self.member_id)
        except MemberFenced:
            self._on_fenced()
            self._join()
        self._last_heartbeat = time.monotonic()

    def _on_fenced(self) -> None:
        """The group declared this member dead; subclasses drop what they held."""

    def _maintain(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_maintenance < _MAINTENANCE:
            return
        self._last_maintenance = now
        self._heartbeat()
        if force or now - self._last_reap >= _REAP_PERIOD:
            self._last_reap = now
            self._state.reap(self.session_timeout)

    def _tick(self) -> None:
        """Called by the broker's upkeep thread: heartbeat even while the
        application is busy between polls."""
        if not self._closed and time.monotonic() - self._last_heartbeat > self.session_timeout / 4:
            try:
                self._state.heartbeat(self.slot, self.member_id)
                self._last_heartbeat = time.monotonic()
            except (MemberFenced, Closed):
                pass   # the polling thread rejoins at its next poll

    # -- polling --

    def poll(self, timeout: Optional[float] = None) -> Optional[Message]:
        """The next message, or None if none arrived within `timeout` seconds
        (None: wait without limit)."""
        msgs = self.poll_batch(1, timeout)
        return msgs[0] if msgs else None

    def poll_batch(self, n: int, timeout: Optional[float] = None) -> list[Message]:
        """Up to n messages; waits up to `timeout` for at least one."""
        deadline = self._poll_deadline(n, timeout)
        notify = self.topic.notify
        with self._lock:
            while True:
                msgs, seq, sleep = self._poll_step(n, deadline, notify)
                if msgs is not None:
                    return msgs
                notify.sleep(seq, sleep)

    def _poll_deadline(self, n: int, timeout: Optional[float]) -> Optional[float]:
        """Check poll_batch's arguments; the monotonic deadline or None."""
        if type(n) is not int:
            raise TypeError(f"n must be int, not {type(n).__name__}")
        if n < 1:
            raise ConfigError(f"n={n} must be at least 1")
        if timeout is not None:
            timeout = positive("timeout", timeout, allow_zero=True)
        return None if timeout is None else time.monotonic() + timeout

    def _poll_step(self, n: int, deadline: Optional[float],
                   waker: Any) -> tuple[Optional[list[Message]], int, float]:
        """One look for messages; the caller holds self._lock.

        Returns (messages, 0, 0.0) when there are some, ([], 0, 0.0) once the
        deadline has passed, else (None, token, seconds): `waker.arm()`
        returned `token` before the last look, so the caller sleeps on that
        token for at most `seconds` (the next maintenance, the deadline, or
        when a delayed or leased message falls due) and then calls this
        again.  `waker` is the topic's Notify (the caller sleeps on it) or
        its asyncio TopicWaker; `waker.disarm()` undoes an arm that is not
        slept on."""
        self._check_open()
        self._maintain()
        msgs, due = self._fetch(n)
        if msgs:
            return self._deliver(msgs), 0, 0.0
        now = time.monotonic()
        if deadline is not None and now >= deadline:
            return [], 0, 0.0
        # Arm, then look again: an append between the two is not lost.
        token = waker.arm()
        try:
            msgs, due = self._fetch(n)
        except BaseException:
            waker.disarm()           # a sleeper counted forever would cost every append a syscall
            raise
        if msgs:
            waker.disarm()
            return self._deliver(msgs), 0, 0.0
        sleep = _MAINTENANCE
        if deadline is not None:
            sleep = min(sleep, deadline - now)
        if due is not None:
            sleep = min(sleep, max(0.0, due - time.time()) + 0.0005)
        return None, token, max(0.0, sleep)

    def _deliver(self, msgs: list[Message]) -> list[Message]:
        if self.auto_ack:
            for m in msgs:
                self._ack(m)
        return msgs

    def _fetch(self, n: int) -> tuple[list[Message], Optional[float]]:
        """Up to n deliverable messages now, and when more may become
        deliverable by time alone (epoch seconds) or None."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[Message]:
        while not self._closed:
            try:
                m = self.poll(timeout=_MAINTENANCE * 4)
            except Closed:
                return
            if m is not None:
                yield m

    # -- asyncio (pyqueue/aio.py) --

    async def apoll(self, timeout: Optional[float] = None) -> Optional[Message]:
        """poll() for asyncio: the next message, or None after `timeout`
        seconds (None: no limit).  The event loop keeps running while it
        waits; an append from any process wakes it.  Cancelling it while it
        waits leases and reads nothing."""
        from pyqueue.aio import apoll_batch
        msgs = await apoll_batch(self, 1, timeout)
        return msgs[0] if msgs else None

    async def apoll_batch(self, n: int, timeout: Optional[float] = None) -> list[Message]:
        """poll_batch() for asyncio: up to n messages; waits up to `timeout`
        for at least one."""
        from pyqueue.aio import apoll_batch
        return await apoll_batch(self, n, timeout)

    def __aiter__(self) -> AsyncIterator[Message]:
        """`async for msg in consumer`: every message until close()."""
        from pyqueue.aio import aiterate
        return aiterate(self)

    async def __aenter__(self) -> "Consumer":
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    # -- acks (called by Message.ack/nack/extend) --

    def _ack(self, m: Message) -> None:
        raise NotImplementedError

    def _nack(self, m: Message, delay: Optional[float]) -> None:
        raise PyQueueError(f"nack is for queue mode; this is a {self.mode}-mode consumer")

    def _extend(self, m: Message, seconds: float) -> None:
        raise PyQueueError(f"extend is for queue mode; this is a {self.mode}-mode consumer")

    # -- common API --

    def commit(self) -> None:
        """Store the group's position durably (stream mode); acks already do in queue mode."""

    def assignment(self) -> list[int]:
        raise NotImplementedError

    def lag(self) -> dict[int, int]:
        raise NotImplementedError

    def members(self) -> list[dict[str, Any]]:
        """The group's live members: id, pid, heartbeat age in seconds."""
        return [{"member_id": mid, "pid": pid, "heartbeat_age": age}
                for mid, pid, _slot, age in self._state.members()]

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"consumer of group {self.group!r} on {self.topic.name!r} is closed")

    def _release(self) -> None:
        """Subclass hook run on close before leaving the group."""

    def close(self) -> None:
        """Commit, release partitions or leases to the other members, leave the group."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._release()
            finally:
                try:
                    self._state.leave(self.member_id)
                except Closed:
                    pass
        self.topic.notify.wake()

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} group={self.group!r} topic={self.topic.name!r} "
                f"member={self.member_id}{' closed' if self._closed else ''}>")
