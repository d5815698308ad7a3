"""max_depth on the JetStream backend: a send waits while the topic holds
max_depth unfinished messages, then raises QueueFull, as on the embedded
engine (pyqueue/backpressure.py).  JetStream's own limits (max_msgs,
max_bytes) count what a stream keeps, not what a group has left to do, so
this is pyqueue's layer.

Depth is what stats() shows (stats.py): per partition, the end less the
slowest group's committed position (a queue group's: its durable
consumer's ack floor; a stream group's: its committed offset in KV), or
less the retained start when the topic has no group.

No round trip per send.  Each topic object keeps a view of the depth:

    ends[p]    raised by each publish ack of this process (the ack's
               sequence is the partition's end at that moment, other
               producers' messages included), and read at a refresh
    floors[p]  the slowest group's committed position at the last refresh

A send goes ahead while the view says below max_depth.  The view is
refreshed (STREAM.INFO of each partition, the group list, each group's
CONSUMER.INFO or KV record, concurrently, on the broker's loop) before the
first send, then when it reaches a quarter of max_depth, then each time it
has covered half of the room the last refresh showed (so a fill from
empty to full costs about log2(max_depth) refreshes, and a send at
max_depth always refreshes), and, past a quarter, when it is older than
_STALE seconds.  Committed positions only move forward, so a remembered
floor can only overstate the depth; remembered ends understate it by what
other processes sent since (on a partition this process also sends to,
only since its own last send there), which the schedule above bounds.

Waiting for room: the sending thread blocks on a coroutine on the
broker's loop that subscribes, for the length of the wait, to the topic's
ack subjects ($JS.ACK.{stream}.>: a queue member's ack, nack or term is a
plain publish there) and to its stream groups' partition records in KV
($KV.{bucket}.{ns}.{topic}.*.p.*: a commit is a put there), and refreshes
on each wake-up (at most one refresh per _MIN_GAP).  A poll every
_RECHECK seconds is the backstop for what has no event (retention moving
the start, a group deleted, an interest not yet known to the server the
ack went through), and one _FOLLOW_UP seconds after a wake-up whose
refresh found no room catches an ack the consumer's leader had not
applied yet when it answered.

The bound, across processes: a process admits a send on a view that may
miss other processes' latest sends.  Where the processes send to the same
partitions (keys spread over them, or round robin), each ack brings the
others' sends into the view, and the depth can pass max_depth by one send
per sending thread (of any process) that checked before it saw the
others' last sends.  Where each process sends to partitions of its own,
it sees the others' sends only at its refreshes, and the depth can pass
max_depth by what they send between two of them: up to a quarter of
max_depth per process when many start at once on an empty topic
(measured: 3 and 4 such processes filling a topic of max_depth=200 at
once stopped at 225-236 and 208-215 over two runs).  send_batch() is not held back (as on the
embedded engine); its acks count in the view.  The scheduler's fires do not wait either (as
on the embedded engine, whose scheduler appends directly).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import TYPE_CHECKING, Any, Optional

from pyqueue.errors import QueueFull
from pyqueue.jetstream.client import ERR_CONSUMER_NOT_FOUND, ApiError, retry_transient
from pyqueue.jetstream.naming import Names

if TYPE_CHECKING:
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["JsBackpressure", "depth_figures"]

_STALE = 0.5        # s: a view past a quarter of max_depth older than this is refreshed before a send
_RECHECK = 0.25     # s: the backstop poll while a send waits for room
_FOLLOW_UP = 0.05   # s: a second look after a wake-up whose refresh found no room
_MIN_GAP = 0.01     # s: at most one refresh per this while acks keep waking a waiting send


async def depth_figures(topic: "JetStreamTopic") -> tuple[list[int], list[int]]:
    """(ends, floors) per partition, read from the server now: the end, and
    the slowest group's committed position (the retained start without a
    group), as stats() computes them."""
    from pyqueue.jetstream.group_state import group_names, read_meta
    broker = topic._broker

    async def groups() -> list[tuple[str, str]]:
        names = await group_names(broker, topic.name)
        metas = await asyncio.gather(*(read_meta(broker, topic.name, g) for g in names))
        return [(g, m["mode"]) for g, m in zip(names, metas) if m is not None]   # None: deleted meanwhile

    states, found = await asyncio.gather(asyncio.gather(*(topic._state(p) for p in range(topic.partitions))),
                                         groups())
    bounds = []
    for st in states:
        first, last = int(st.get("first_seq", 0)), int(st.get("last_seq", 0))
        bounds.append((max(first, 1) - 1 if first else last, last))
    committed = await asyncio.gather(*(_committed(topic, g, mode, p, *bounds[p])
                                       for g, mode in found for p in range(topic.partitions)))
    floors = []
    for p, (start, end) in enumerate(bounds):
        mine = committed[p::topic.partitions] if found else []
        floors.append(min(mine, default=start))
    return [end for _start, end in bounds], floors


async def _committed(topic: "JetStreamTopic", group: str, mode: str, p: int, start: int, end: int) -> int:
    from pyqueue.jetstream.stats import queue_committed
    broker = topic._broker
    if mode == "queue":
        try:
            info = await broker.client.api_retry(
                f"CONSUMER.INFO.{topic._streams[p]}.{Names.queue_consumer(group)}",
                deadline=broker._deadline(), what=f"depth of topic {topic.name!r} (group {group!r})")
        except ApiError as e:
            if e.err_code != ERR_CONSUMER_NOT_FOUND:
                raise
            return start            # its first member is making it: all is unread
        return queue_committed(info, start, end)
    from pyqueue.jetstream.group_state import get_state
    entry = await get_state(broker, f"{broker.names.group_prefix(topic.name, group)}.p.{p}",
                            f"depth of topic {topic.name!r} (group {group!r})")
    committed = start if entry is None else max(start, int(json.loads(entry.value or b"{}").get("committed", start)))
    return min(committed, end)


class JsBackpressure:
    """The depth view of one topic object (shared by its threads)."""

    def __init__(self, topic: "JetStreamTopic") -> None:
        self.topic = topic
        self.max_depth = topic.config.max_depth or 0
        self._lock = threading.Lock()
        self._ends = [0] * topic.partitions
        self._floors = [0] * topic.partitions
        self._depth = 0                          # sum(ends) - sum(floors)
        self._at: Optional[float] = None         # monotonic time of the last refresh; None: never
        self._quarter = max(1, self.max_depth // 4)
        self._next = 0                           # the view's depth at which the next send refreshes
        self.refreshes = 0                       # how many times the view was read from the server

    def depth(self) -> int:
        """The view's depth (no round trip)."""
        return self._depth

    def room(self, timeout: Optional[float]) -> None:
        """Return when a send may go ahead; QueueFull after `timeout`
        seconds (None: wait as long as it takes) of a full topic."""
        at, depth = self._at, self._depth
        if at is not None and depth < self._next and (
                depth < self._quarter or time.monotonic() - at < _STALE):
            return
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        self.topic._broker._run(self._wait(deadline, timeout))

    def sent(self, partition: int, seq: int) -> None:
        """A publish to `partition` was acknowledged with sequence `seq`."""
        with self._lock:
            old = self._ends[partition]
            if seq > old:
                self._ends[partition] = seq
                self._depth += seq - old

    async def refresh(self) -> int:
        """Read the figures from the server into the view; its depth.
        Transient failures (a leader election) are retried until the
        broker's timeout, then Unavailable."""
        ends, floors = await retry_transient(lambda: depth_figures(self.topic),
                                             f"depth of topic {self.topic.name!r} (max_depth)",
                                             self.topic._broker._deadline())
        with self._lock:
            # The server's ends replace the view's (a topic deleted and made
            # again starts over); an ack that came back during the read and
            # is newer is a send that was in flight: within the bound.
            self._ends = list(ends)
            self._floors = [min(f, e) for f, e in zip(floors, ends)]
            d = self._depth = sum(self._ends) - sum(self._floors)
            # Next look: at a quarter of max_depth, then half way from here to
            # max_depth; at max_depth (full), at once.
            m = self.max_depth
            self._next = self._quarter if d < self._quarter else min(m, d + max(1, (m - d) // 2))
            self._at = time.monotonic()
            self.refreshes += 1
            return self._depth

    async def _wait(self, deadline: Optional[float], timeout: Optional[float]) -> None:
        depth = await self.refresh()
        if depth < self.max_depth:
            return
        if deadline is not None and time.monotonic() >= deadline:
            raise self._full(depth, timeout)
        topic = self.topic
        nc = topic._client().nc
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()

        async def on_event(_msg: Any) -> None:
            woke.set()

        names = topic._broker.names
        subjects = [f"$JS.ACK.{s}.>" for s in topic._streams]
        subjects.append(f"$KV.{names.groups_bucket}.{names.topic_key(topic.name)}.*.p.*")
        subs = []
        try:
            for subject in subjects:
                subs.append(await nc.subscribe(subject, cb=on_event))
            pause = _FOLLOW_UP            # events before the subscriptions took are not seen: look again soon
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise self._full(depth, timeout)
                try:
                    await asyncio.wait_for(woke.wait(), pause if left is None else min(left, pause))
                    by_event = True
                except asyncio.TimeoutError:
                    by_event = False
                woke.clear()
                began = loop.time()
                depth = await self.refresh()
                if depth < self.max_depth:
                    return
                pause = _FOLLOW_UP if by_event else _RECHECK
                gap = began + _MIN_GAP - loop.time()
                if gap > 0:
                    await asyncio.sleep(gap)
        finally:
            for sub in subs:
                try:
                    await sub.unsubscribe()
                except Exception:
                    pass                  # the connection is closing: the subscription goes with it

    def _full(self, depth: int, timeout: Optional[float]) -> QueueFull:
        return QueueFull(f"topic {self.topic.name!r} holds {depth} unfinished messages, "
                         f"max_depth={self.max_depth}; waited {timeout}s")
