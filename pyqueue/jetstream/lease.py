"""Lease: one holder at a time of a KV key, elected by compare-and-set.

The record (JSON) names its holder and the lease's `ttl`:

    {"holder": id, "pid": ..., "host": ..., "ttl": seconds}

Taking it: create the key when it is absent (or holds a delete marker), or
write over a record whose revision has not changed for its ttl, as timed by
the taker's own monotonic clock from the moment it first saw that revision
(no clocks are compared across machines).  The holder renews it every
ttl/4 by a CAS on the revision it wrote; a CAS that fails means another
process took it: the lease is lost at once.

The holder counts the lease as held until the time it *sent* its last
successful write plus HELD_FRACTION of the ttl: a taker cannot have seen
that revision before it was written, so it waits a full ttl after a moment
later than that, and the holder stops (a quarter of the ttl early) before
any taker starts, given clocks that run at about the same rate.  Renewals
that keep failing (the KV stream is electing a leader) let the lease lapse
by itself: held() turns False without a word from the server.

Releasing deletes the key with a CAS on the holder's revision, so a standby
takes over at its next look instead of after a ttl.  Coroutines run on the
broker's loop; held() may be read from any thread.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from typing import Any, Callable, Optional

from pyqueue.jetstream.client import is_transient

__all__ = ["Lease", "HELD_FRACTION"]

HELD_FRACTION = 0.75


class Lease:
    """A lease on `key` of KV bucket `kv`, taken and renewed by this process."""

    def __init__(self, kv: Any, key: str, ttl: float, on_lost: Callable[[], None] = lambda: None) -> None:
        self.kv = kv
        self.key = key
        self.ttl = ttl
        self.holder = uuid.uuid4().hex
        self.on_lost = on_lost
        self.rev: Optional[int] = None            # revision of our record while we hold it
        self.valid_until = 0.0                    # monotonic
        self._seen: Optional[tuple[int, float]] = None   # another holder's revision, first seen at
        self._task: Optional[asyncio.Task] = None
        self._data = json.dumps({"holder": self.holder, "pid": os.getpid(), "host": socket.gethostname(),
                                 "ttl": ttl}).encode()

    def held(self) -> bool:
        return self.rev is not None and time.monotonic() < self.valid_until

    def left(self) -> float:
        """Seconds the lease is still held for (0 if not held)."""
        return max(0.0, self.valid_until - time.monotonic()) if self.rev is not None else 0.0

    def describe_holder(self, raw: Optional[bytes]) -> str:
        try:
            d = json.loads(raw or b"{}")
            return f"pid {d.get('pid')} on {d.get('host')}"
        except ValueError:
            return "an unreadable record"

    async def acquire(self) -> bool:
        """One attempt to take the lease; True if this process holds it now."""
        import nats.js.errors
        if self.held():
            return True
        sent = time.monotonic()
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:      # absent, or a delete marker
            entry = None
        try:
            if entry is None:
                rev = await self.kv.create(self.key, self._data)
            else:
                try:
                    d = json.loads(entry.value or b"{}")
                    theirs, ttl = d.get("holder"), float(d.get("ttl", self.ttl))
                except (ValueError, TypeError, AttributeError):
                    theirs, ttl = None, self.ttl
                if theirs != self.holder:
                    if self._seen is None or self._seen[0] != entry.revision:
                        self._seen = (entry.revision, time.monotonic())
                        return False
                    if time.monotonic() - self._seen[1] < ttl:
                        return False              # alive, as far as we can tell
                rev = await self.kv.update(self.key, self._data, last=entry.revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False                          # someone else moved first
        self.rev, self.valid_until, self._seen = rev, sent + self.ttl * HELD_FRACTION, None
        self._task = asyncio.get_running_loop().create_task(self._keep())
        return True

    async def _keep(self) -> None:
        """Renew every ttl/4 until lost or released."""
        import nats.js.errors
        while self.rev is not None:
            await asyncio.sleep(self.ttl / 4)
            last = self.rev
            if last is None:
                return
            sent = time.monotonic()
            try:
                rev = await asyncio.wait_for(self.kv.update(self.key, self._data, last=last), self.ttl / 4)
            except nats.js.errors.KeyWrongLastSequenceError:
                # Taken over, or our previous renewal was stored and its answer lost.
                try:
                    entry = await self.kv.get(self.key)
                    mine = json.loads(entry.value or b"{}").get("holder") == self.holder
                except Exception:
                    mine = False
                if mine and self.rev is not None:
                    self.rev = entry.revision     # not extended: we do not know when it was written
                    continue
                self._lose()
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                if not is_transient(e):
                    self._lose()
                    return
                continue                          # a failover: the lease lapses unless a renewal passes
            if self.rev is None:
                return
            self.rev, self.valid_until = rev, sent + self.ttl * HELD_FRACTION

    def _lose(self) -> None:
        self.rev = None
        self.valid_until = 0.0
        self.on_lost()

    async def release(self) -> None:
        """Stop renewing and delete our record (if it is still ours)."""
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        last, self.rev, self.valid_until = self.rev, None, 0.0
        if last is not None:
            try:
                await self.kv.delete(self.key, last=last)
            except Exception:
                pass                              # taken over meanwhile, or gone: it lapses by itself
