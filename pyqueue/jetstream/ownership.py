"""Ownership: stream mode's membership, partition owners, generations and
committed offsets, kept in the `{ns}_groups` KV bucket with compare-and-set.

Records (JSON), under the group's prefix {ns}.{T}.{G}:

    m.{member}   {"pid", "host", "session_timeout"}   put every session_timeout/4
    p.{p}        {"owner": member | null, "gen": n, "committed": offset}

Every member watches the prefix (a KV watcher: an ordered consumer pushing
each change) and keeps a view of both.  A member is alive while its record
keeps changing: one whose revision has not moved for its session_timeout,
as timed by the observer's own monotonic clock (no clocks are compared
across machines), is dead; any member may then delete its record (a CAS on
the revision it saw, so a late heartbeat wins) and take its partitions.
A view that has not seen its own member's heartbeats for a session_timeout
is stale (the watcher lags or was cut off): it declares no one dead and is
re-made.

A partition changes hands only by a CAS on its record: a claim writes
{owner: me, gen: gen + 1} over a record that names no owner or a dead one;
a commit or a release writes over the revision its owner last wrote or saw.
A member whose CAS fails re-reads the record; if another member owns the
partition now, it was fenced: it drops the partition (its commit is lost,
so the new owner re-delivers from the last committed offset: at least
once).  The owner's server-side consumer is named with the generation, so a
fenced owner's pull requests reach nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import uuid
from typing import TYPE_CHECKING, Any, Optional

from pyqueue.jetstream.client import is_transient

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["Ownership", "Part", "new_member_id", "stream_lag"]


def new_member_id() -> str:
    """Ids sort by join time (a hex clock of fixed width), then at random."""
    return f"{time.time_ns():016x}-{uuid.uuid4().hex[:8]}"


class Part:
    """The view of one partition's record."""

    __slots__ = ("rev", "owner", "gen", "committed")

    def __init__(self, rev: int, owner: Optional[str], gen: int, committed: int) -> None:
        self.rev, self.owner, self.gen, self.committed = rev, owner, gen, committed


class _Member:
    __slots__ = ("rev", "changed", "session_timeout")

    def __init__(self, rev: int, changed: float, session_timeout: float) -> None:
        self.rev, self.changed, self.session_timeout = rev, changed, session_timeout


class Ownership:
    """One member's records and its view of the group.  Coroutines run on
    the broker's loop; the view is read by the loop only."""

    def __init__(self, broker: "JetStreamBroker", topic: "JetStreamTopic", group: str, member_id: str,
                 session_timeout: float) -> None:
        self.broker = broker
        self.kv = broker._groups_kv
        self.topic = topic
        self.group = group
        self.member_id = member_id
        self.session_timeout = session_timeout
        self.prefix = broker.names.group_prefix(topic.name, group)
        self.members: dict[str, _Member] = {}
        self.parts: dict[int, Part] = {}
        self._watcher: Any = None
        self._watch_task: Optional[asyncio.Task] = None
        self._beat_task: Optional[asyncio.Task] = None
        self._own_seen = time.monotonic()
        self._synced: Optional[asyncio.Event] = None
        self.changes = 0            # bumped on every change of the view (a hint to rebalance)
        self.closed = False

    # -- the view --

    async def start(self) -> None:
        """Write the first heartbeat and start the view.  Through a failover
        either may fail for now: heartbeats go on in the background and the
        view is made again at a maintenance step (ready() is False till then)."""
        try:
            await self._beat()
        except Exception as e:
            if not is_transient(e):
                raise
        self._beat_task = asyncio.get_running_loop().create_task(self._beat_loop())
        await self.refresh()

    def ready(self) -> bool:
        """True if the view is in sync and fresh enough to decide on: its
        watcher delivered every record once and sees this member's heartbeats."""
        return (self._watcher is not None and self._synced is not None and self._synced.is_set()
                and not self.stale())

    async def _watch(self) -> None:
        self._synced = asyncio.Event()
        self._watcher = await self.kv.watch(f"{self.prefix}.>")
        self._watch_task = asyncio.get_running_loop().create_task(self._consume(self._watcher, self._synced))
        try:
            await asyncio.wait_for(self._synced.wait(), 2 * self.broker.request_timeout)
        except asyncio.TimeoutError:
            pass                      # the view fills in as updates come; ready() waits for it

    async def _consume(self, watcher: Any, synced: asyncio.Event) -> None:
        while True:
            entry = await watcher._updates.get()
            if entry is None:
                synced.set()
                continue
            if not hasattr(entry, "key"):   # the watcher was stopped
                return
            self._apply(entry.key, entry.revision, entry.value, entry.operation)

    def _apply(self, key: str, rev: int, value: Optional[bytes], op: Optional[str]) -> None:
        rest = key[len(self.prefix) + 1:]
        kind, _, name = rest.partition(".")
        deleted = op in ("DEL", "PURGE")
        now = time.monotonic()
        if kind == "m":
            if name == self.member_id:
                self._own_seen = now
            if deleted:
                if self.members.pop(name, None) is not None:
                    self.changes += 1
                return
            cur = self.members.get(name)
            if cur is None:
                try:
                    st = float(json.loads(value or b"{}").get("session_timeout", 10.0))
                except ValueError:
                    st = 10.0
                self.members[name] = _Member(rev, now, st)
                self.changes += 1
            elif rev > cur.rev:
                cur.rev, cur.changed = rev, now
        elif kind == "p" and name.isdigit():
            p = int(name)
            cur_p = self.parts.get(p)
            if cur_p is not None and rev <= cur_p.rev:
                return
            if deleted:
                self.parts.pop(p, None)
            else:
                try:
                    d = json.loads(value or b"{}")
                    self.parts[p] = Part(rev, d.get("owner"), int(d.get("gen", 0)), int(d.get("committed", 0)))
                except ValueError:
                    return
            self.changes += 1

    def stale(self) -> bool:
        """True if this view has not seen its own heartbeat for a session_timeout."""
        return time.monotonic() - self._own_seen > self.session_timeout

    def live_members(self) -> list[str]:
        """Members alive by this view, sorted by id (join order).  A stale
        view counts everyone it knows as alive."""
        now = time.monotonic()
        stale = self.stale()
        live = [m for m, rec in self.members.items()
                if stale or m == self.member_id or now - rec.changed <= rec.session_timeout]
        if self.member_id not in live:
            live.append(self.member_id)
        return sorted(live)

    async def refresh_if_stale(self) -> None:
        """Re-make the watcher when the view went stale (or could not be made)."""
        if self.closed or (self._watcher is not None and not self.stale()):
            return
        await self.refresh()

    async def refresh(self) -> None:
        """A new watcher and an empty view, filled from the records' current
        values.  A transient failure leaves no watcher (ready() is False)."""
        await self._stop_watch()
        self._own_seen = time.monotonic()
        self.members.clear()
        self.parts.clear()
        self.changes += 1
        try:
            await self._watch()
        except Exception as e:
            if not is_transient(e):
                raise
            await self._stop_watch()

    async def _retry(self, op: Any, what: str, deadline: Optional[float]) -> Any:
        """op() through leader elections of the KV stream (client.retry_transient),
        until `deadline` (default: the broker's timeout from now)."""
        from pyqueue.jetstream.client import retry_transient
        return await retry_transient(op, f"group {self.group!r} on topic {self.topic.name!r}: {what}",
                                     self.broker._deadline() if deadline is None else deadline)

    # -- heartbeats --

    def _member_key(self, member: str) -> str:
        return f"{self.prefix}.m.{member}"

    def _part_key(self, p: int) -> str:
        return f"{self.prefix}.p.{p}"

    async def _beat(self) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "session_timeout": self.session_timeout}
        await self.kv.put(self._member_key(self.member_id), json.dumps(record).encode())

    async def _beat_loop(self) -> None:
        period = self.session_timeout / 4
        while not self.closed:
            await asyncio.sleep(period)
            try:
                await self._beat()
            except asyncio.CancelledError:
                raise
            except Exception:
                pass                 # a failover: the next beat may pass; session_timeout allows 3 misses

    async def reap(self) -> None:
        """Delete the records of members this (fresh) view finds dead."""
        if self.stale():
            return
        live = set(self.live_members())
        for m, rec in list(self.members.items()):
            if m not in live:
                try:
                    await self.kv.delete(self._member_key(m), last=rec.rev)
                except Exception:
                    pass             # refreshed meanwhile, or a failover: judged again later

    # -- partitions --

    async def _read_part(self, p: int, deadline: Optional[float] = None) -> Optional[Part]:
        import nats.js.errors
        try:
            e = await self._retry(lambda: self.kv.get(self._part_key(p)), f"reading partition {p}", deadline)
        except nats.js.errors.KeyNotFoundError:
            return None
        d = json.loads(e.value or b"{}")
        part = Part(e.revision, d.get("owner"), int(d.get("gen", 0)), int(d.get("committed", 0)))
        cur = self.parts.get(p)
        if cur is None or part.rev > cur.rev:
            self.parts[p] = part
        return part

    async def claim(self, p: int, start_offset: int, deadline: float) -> Optional[Part]:
        """Take partition p if it has no live owner other than this member:
        its new record (with the generation this member owns it under), or
        None if it is taken.  A new record starts at `start_offset`.
        Unavailable after `deadline`; a claim whose answer was lost shows in
        the record as this member's, and is taken again (a new generation)."""
        import nats.js.errors
        live = set(self.live_members())
        part = self.parts.get(p)
        if part is None:
            part = await self._read_part(p, deadline)
        key = self._part_key(p)
        try:
            if part is None:
                record = {"owner": self.member_id, "gen": 1, "committed": start_offset}
                data = json.dumps(record).encode()
                rev = await self._retry(lambda: self.kv.create(key, data), f"claiming partition {p}", deadline)
                new = Part(rev, self.member_id, 1, start_offset)
            else:
                if part.owner is not None and part.owner != self.member_id and part.owner in live:
                    return None
                record = {"owner": self.member_id, "gen": part.gen + 1, "committed": part.committed}
                data, last = json.dumps(record).encode(), part.rev
                rev = await self._retry(lambda: self.kv.update(key, data, last=last),
                                        f"claiming partition {p}", deadline)
                new = Part(rev, self.member_id, part.gen + 1, part.committed)
        except nats.js.errors.KeyWrongLastSequenceError:
            await self._read_part(p, deadline)   # someone else moved first; judged again next time
            return None
        self._set(p, new)
        return new

    def _set(self, p: int, part: Part) -> None:
        cur = self.parts.get(p)
        if cur is None or part.rev > cur.rev:
            self.parts[p] = part

    async def commit(self, p: int, gen: int, offset: int, release: bool = False,
                     deadline: Optional[float] = None) -> bool:
        """Store `offset` as p's committed offset (and give p up if release).
        False if this member no longer owns p under `gen` (fenced);
        Unavailable after `deadline`.  A commit whose answer was lost fails
        its next CAS, re-reads the record (still this member's) and goes on."""
        import nats.js.errors
        key = self._part_key(p)
        for _ in range(3):
            part = self.parts.get(p)
            if part is None or part.owner != self.member_id or part.gen != gen:
                part = await self._read_part(p, deadline)
                if part is None or part.owner != self.member_id or part.gen != gen:
                    return False
            record: dict[str, Any] = {"owner": None if release else self.member_id, "gen": gen,
                                      "committed": offset}
            data, last = json.dumps(record).encode(), part.rev
            try:
                rev = await self._retry(lambda: self.kv.update(key, data, last=last),
                                        f"committing partition {p}", deadline)
            except nats.js.errors.KeyWrongLastSequenceError:
                await self._read_part(p, deadline)
                continue
            self._set(p, Part(rev, record["owner"], gen, offset))
            return True
        return False

    # -- closing --

    async def _stop_watch(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            self._watch_task = None
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:
                pass
            self._watcher = None

    async def leave(self) -> None:
        """Stop heartbeats and the watcher; delete this member's record."""
        self.closed = True
        if self._beat_task is not None:
            self._beat_task.cancel()
        await self._stop_watch()
        try:
            await self.kv.delete(self._member_key(self.member_id))
        except Exception as e:
            if not is_transient(e):
                pass


async def stream_lag(broker: "JetStreamBroker", topic: "JetStreamTopic", group: str) -> dict[int, dict[str, int]]:
    """Per partition: committed offset and lag (end - committed)."""
    import nats.js.errors
    prefix = broker.names.group_prefix(topic.name, group)
    out: dict[int, dict[str, int]] = {}
    for p in range(topic.partitions):
        start, end = await topic._offsets(p)
        try:
            e = await broker._groups_kv.get(f"{prefix}.p.{p}")
            committed = max(start, int(json.loads(e.value or b"{}").get("committed", start)))
        except nats.js.errors.KeyNotFoundError:
            committed = start
        out[p] = {"committed": committed, "lag": max(0, end - committed)}
    return out
