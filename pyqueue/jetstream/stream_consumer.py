"""Stream mode on JetStream: Kafka's consumer-group semantics.

Ownership (ownership.py) decides which member owns which partition; the
assignment rule is the embedded engine's: members sorted by id (join order)
get quotas of partitions // members, the first partitions % members one
more; a member over its quota releases its highest partitions, one under it
claims free ones or those of dead members.  Members beyond the partition
count stand by.

An owner reads its partition through a consumer of its own on the
partition's stream, named {group}_s{generation}: pull, no acks (AckNone),
one replica, starting at the committed offset (DeliverByStartSequence),
deleted by the server after it is idle for max(30 s, 3 session timeouts).
Acks are local, as on the embedded engine; commit() (and auto-commit)
stores per owned partition the offset below which every delivered message
was acked.  seek() and seek_to_time() re-make the consumer at the new
sequence.  A consumer lost with the server that held it (one replica) is
re-made at the member's position when a pull request goes unanswered.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Optional

from pyqueue.consumer import STARTS, positive
from pyqueue.errors import Closed, ConfigError, OffsetOutOfRange, PartitionOutOfRange, PyQueueError
from pyqueue.jetstream.aio import AsyncConsumer
from pyqueue.jetstream.client import ERR_CONSUMER_NOT_FOUND, ApiError, backoff, is_transient
from pyqueue.jetstream.errors import Unavailable
from pyqueue.jetstream.group_state import ensure_group
from pyqueue.jetstream.message import JsMessage
from pyqueue.jetstream.naming import Names
from pyqueue.jetstream.ownership import Ownership, new_member_id
from pyqueue.jetstream.pull import Puller

if TYPE_CHECKING:
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["JsStreamConsumer"]

_MAINTENANCE = 0.25     # seconds between membership looks while polling
_LINGER = 1.0


class _Owned:
    """A partition this member owns: its generation, position and acks."""

    __slots__ = ("gen", "position", "floor", "acked_above", "holes", "consumer", "incarnation", "committed",
                 "asked_again_at")

    def __init__(self, gen: int, offset: int, consumer: str) -> None:
        self.gen = gen
        self.consumer = consumer
        self.incarnation = 0        # bumped when the consumer is re-made under a new name
        self.position = offset      # next offset to deliver
        self.floor = offset         # every delivered offset below it is acked
        self.committed = offset     # what the record holds
        self.acked_above: set[int] = set()
        self.holes: dict[int, int] = {}       # start -> end of offsets that are not in the stream
        self.asked_again_at = -1    # the position the consumer was last re-made at for a gap

    def ack(self, offset: int) -> None:
        if offset == self.floor:
            self.floor += 1
            self._advance()
        elif offset > self.floor:
            self.acked_above.add(offset)

    def skip(self, start: int, end: int) -> None:
        """Offsets start..end-1 are not in the stream (retention removed
        them): deliver from `end` on, and count them as acked."""
        self.position = max(self.position, end)
        if self.floor >= start:
            self.floor = max(self.floor, end)
            self._advance()
        else:
            self.holes[start] = end

    def _advance(self) -> None:
        while True:
            if self.floor in self.acked_above:
                self.acked_above.discard(self.floor)
                self.floor += 1
            elif self.floor in self.holes:
                self.floor = max(self.floor, self.holes.pop(self.floor))
            else:
                return

    def reset(self, offset: int) -> None:
        self.position = self.floor = offset
        self.acked_above.clear()
        self.holes.clear()


class JsStreamConsumer(AsyncConsumer):
    """Kafka-style member on JetStream.  Options: start, auto_ack,
    auto_commit_interval (seconds, 0 = only explicit commits), session_timeout."""

    mode = "stream"

    def __init__(self, topic: "JetStreamTopic", group: str, *, start: str = "earliest", auto_ack: bool = False,
                 auto_commit_interval: float = 1.0, session_timeout: float = 10.0) -> None:
        if start not in STARTS:
            raise ConfigError(f"start={start!r} must be 'earliest' or 'latest'")
        if not isinstance(auto_ack, bool):
            raise TypeError("auto_ack must be a bool")
        self.auto_commit_interval = positive("auto_commit_interval", auto_commit_interval, allow_zero=True)
        self.session_timeout = positive("session_timeout", session_timeout, maximum=3600)
        self.topic = topic
        self.group = group
        self.start = start
        self.auto_ack = auto_ack
        self._broker = topic._broker
        self._owned: dict[int, _Owned] = {}
        self._ack_lock = threading.Lock()
        self._lock = threading.RLock()
        self._closed = False
        self._target = 0
        self._seen_changes = -1
        self._last_live: list[str] = []
        self._last_maintenance = 0.0
        self._last_commit = time.monotonic()
        self._next_partition = 0
        self._reconnects = topic._broker.client.reconnects
        self._gap: Optional[tuple[int, int]] = None      # (partition, offset) of a message after a gap
        self.member_id = new_member_id()
        self._broker._run(ensure_group(self._broker, topic.name, group, "stream", {}))
        self._own = Ownership(self._broker, topic, group, self.member_id, self.session_timeout)
        self._puller = Puller(topic, self._consumer_of, self)
        try:
            self._broker._run(self._start())
            self._maintain(force=True)
        except BaseException:
            self._closed = True
            try:
                self._broker._run(self._stop(), 10)
            except Exception:
                pass
            raise

    async def _start(self) -> None:
        await self._puller.start()
        await self._own.start()

    def _consumer_of(self, partition: int) -> Optional[str]:
        o = self._owned.get(partition)
        return None if o is None else o.consumer

    # -- assignment (sync side: decisions; the loop: requests) --

    def _maintain(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_maintenance < _MAINTENANCE:
            return
        self._last_maintenance = now
        self._broker._run(self._amaintain(force))
        if self.auto_commit_interval and time.monotonic() - self._last_commit >= self.auto_commit_interval:
            self._last_commit = time.monotonic()
            try:
                self._broker._run(self._commit_all(deadline=self._short_deadline()))
            except Unavailable:
                pass                # a leader election: the next auto-commit tries again

    def _short_deadline(self) -> float:
        """How long one maintenance step may wait out a failover before it is
        left for the next one (polling must not stall on group bookkeeping)."""
        return time.monotonic() + 2 * self._broker.request_timeout

    async def _amaintain(self, force: bool) -> None:
        try:
            await self._amaintain_once(force)
        except Exception as e:
            if not (isinstance(e, Unavailable) or is_transient(e)):
                raise
            self._seen_changes = -1         # a failover: look again at the next maintenance

    async def _amaintain_once(self, force: bool) -> None:
        own = self._own
        await own.refresh_if_stale()
        if not own.ready():
            return                          # no decision on a view that is not in sync
        live = own.live_members()
        if live != self._last_live:
            self._last_live = live
            await own.reap()
            force = True
        # Partitions taken from this member (fenced) are dropped at once.
        for p, o in list(self._owned.items()):
            part = own.parts.get(p)
            if part is not None and (part.owner != self.member_id or part.gen != o.gen):
                self._drop(p)
        if force or own.changes != self._seen_changes or len(self._owned) < self._target:
            self._seen_changes = own.changes
            await self._rebalance(live)

    def _quota(self, live: list[str]) -> int:
        rank, count = live.index(self.member_id), len(live)
        parts = self.topic.partitions
        return parts // count + (1 if rank < parts % count else 0)

    async def _rebalance(self, live: list[str]) -> None:
        self._target = quota = self._quota(live)
        for p in sorted(self._owned)[quota:]:          # over quota: hand the highest back
            await self._release_partition(p)
        for p in range(self.topic.partitions):
            if len(self._owned) >= quota:
                break
            if p in self._owned:
                continue
            part = self._own.parts.get(p)
            if part is not None and part.owner not in (None, self.member_id) and part.owner in live:
                continue                              # another live member holds it
            start, end = await self.topic._offsets(p)
            new = await self._own.claim(p, start if self.start == "earliest" else end, self._short_deadline())
            if new is None:
                continue
            offset = min(max(new.committed, start), end)
            o = _Owned(new.gen, offset, Names.stream_consumer(self.group, new.gen))
            o.committed = new.committed
            stale = [o.consumer] + ([Names.stream_consumer(self.group, new.gen - 1)] if new.gen > 1 else [])
            await self._make_consumer(p, o, stale, self._short_deadline())
            self._owned[p] = o

    async def _make_consumer(self, p: int, o: _Owned, stale: list[str], deadline: Optional[float] = None) -> None:
        """Create this owner's consumer of partition p at o.position, after
        deleting the consumers named in `stale` (best effort: one request
        each; a consumer whose server is down idles out by itself)."""
        client = self._broker.client
        stream = self.topic._streams[p]
        if deadline is None:
            deadline = self._broker._deadline()
        what = f"stream group {self.group!r} on topic {self.topic.name!r} partition {p}"
        for name in dict.fromkeys(stale):
            try:
                await client.api(f"CONSUMER.DELETE.{stream}.{name}")
            except Exception:
                pass
        idle = max(30.0, 3 * self.session_timeout)
        attempt = 0
        while True:
            config = {"durable_name": o.consumer, "ack_policy": "none", "deliver_policy": "by_start_sequence",
                      "opt_start_seq": o.position + 1, "replay_policy": "instant", "num_replicas": 1,
                      "mem_storage": True, "inactive_threshold": int(idle * 1e9), "max_waiting": 512,
                      "description": f"pyqueue stream group {self.group} member {self.member_id}"}
            try:
                await client.api(f"CONSUMER.DURABLE.CREATE.{stream}.{o.consumer}",
                                 {"stream_name": stream, "config": config}, what=what)
                return
            except Exception as e:
                if not (is_transient(e) or (isinstance(e, ApiError) and e.code == 503)):
                    raise
                error: BaseException = e
            # No answer: the server it was placed on may be down and not yet
            # known to be.  Another name gets another placement.
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"{what}: its consumer could not be created in time ({error!r})") from error
            o.incarnation += 1
            o.consumer = Names.stream_consumer(self.group, o.gen, o.incarnation)
            await asyncio.sleep(min(left, backoff(attempt)))

    async def _release_partition(self, p: int, deadline: Optional[float] = None) -> None:
        """Commit and give p up.  If the record cannot be written (a
        failover), p stays owned, to be released at the next rebalance."""
        o = self._owned.get(p)
        if o is None:
            return
        offset = min(o.floor, o.position)
        await self._own.commit(p, o.gen, offset, release=True,
                               deadline=self._short_deadline() if deadline is None else deadline)
        self._drop(p)
        try:
            await self._broker.client.api(f"CONSUMER.DELETE.{self.topic._streams[p]}.{o.consumer}")
        except Exception:
            pass                                     # it goes by itself when idle

    def _drop(self, p: int) -> None:
        with self._ack_lock:
            self._owned.pop(p, None)
        self._puller.forget(p)

    # -- polling --

    def poll(self, timeout: Optional[float] = None) -> Optional[JsMessage]:
        msgs = self.poll_batch(1, timeout)
        return msgs[0] if msgs else None

    def poll_batch(self, n: int, timeout: Optional[float] = None) -> list[JsMessage]:
        """Up to n messages, in order per partition; waits up to `timeout`."""
        if type(n) is not int:
            raise TypeError(f"n must be int, not {type(n).__name__}")
        if n < 1:
            raise ConfigError(f"n={n} must be at least 1")
        if timeout is not None:
            timeout = positive("timeout", timeout, allow_zero=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            while True:
                self._check_open()
                self._maintain()
                step = time.monotonic() + _MAINTENANCE
                if deadline is not None:
                    step = min(step, deadline)
                msgs = self._broker._run(self._apoll(n, step))
                if msgs:
                    if self.auto_ack:
                        for m in msgs:
                            self._ack(m)
                    return msgs
                if deadline is not None and time.monotonic() >= deadline:
                    return []

    async def _apoll(self, n: int, until: float) -> list[JsMessage]:
        puller = self._puller
        if self._broker.client.reconnects != self._reconnects:
            await self._after_reconnect()
        got = await self._take_in_order(n)
        if got:
            return got
        parts = sorted(self._owned)
        if not parts:
            left = until - time.monotonic()
            if left > 0:
                await asyncio.sleep(left)        # a standby: nothing to read until the next look
            return []
        k = self._next_partition % len(parts)
        self._next_partition += 1
        for p in parts[k:] + parts[:k]:
            need = n - len(puller.buffer)
            if need <= 0:
                break
            req = await puller.pull(p, need, no_wait=True)
            if req is not None:
                await req.done
                if not req.answered:
                    await self._recover(p)
        got = await self._take_in_order(n)
        if got:
            return got
        left = until - time.monotonic()
        if left <= 0:
            return []
        puller.arrived.clear()
        for p in parts:
            if p in self._owned and not puller.outstanding(p):
                await puller.pull(p, 1, no_wait=False, expires=min(left, _LINGER))
        if not puller.buffer:
            try:
                await asyncio.wait_for(puller.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass
        return await self._take_in_order(n)

    async def _after_reconnect(self) -> None:
        """The connection was lost and made again: messages the server sent
        meanwhile are lost, and a consumer without acks never sends them
        again.  Re-make each owned partition's consumer at the position."""
        self._reconnects = self._broker.client.reconnects
        for p, o in list(self._owned.items()):
            if not await self._remake(p, o):
                self._reconnects = -1     # try again at the next poll

    async def _recover(self, p: int) -> None:
        """A pull request got no answer: if the consumer is gone (it idled
        out) or does not answer (the server holding its one replica is
        down), make it again at the position, under a new name (the meta
        layer may still assign the old one to the lost server)."""
        o = self._owned.get(p)
        if o is None:
            return
        try:
            await self._broker.client.api(f"CONSUMER.INFO.{self.topic._streams[p]}.{o.consumer}")
            return                                 # it is there: the server was only slow
        except ApiError as e:
            if e.err_code != ERR_CONSUMER_NOT_FOUND and e.code != 503:
                return
        except Exception as e:
            if not is_transient(e):
                return
        if self._owned.get(p) is not o:
            return
        await self._remake(p, o)     # failing, the next poll finds it unanswered again and retries

    async def _remake(self, p: int, o: _Owned) -> bool:
        """Re-make p's consumer at o.position under a new name (the server
        may still hold the old one), dropping what the buffer holds of p.
        False if it could not be made in time (left to the next poll)."""
        self._puller.forget(p)
        old = o.consumer
        o.incarnation += 1
        o.consumer = Names.stream_consumer(self.group, o.gen, o.incarnation)
        try:
            await self._make_consumer(p, o, [old], self._short_deadline())
            return True
        except Unavailable:
            return False

    def _take(self, n: int) -> list[JsMessage]:
        """Buffered messages of owned partitions, in order: a repeat (below
        the position) is skipped; at a gap, taking stops until _close_gap()
        has found out why (see there)."""
        buf = self._puller.buffer
        out: list[JsMessage] = []
        while buf and len(out) < n:
            m = buf.popleft()
            o = self._owned.get(m.partition)
            if o is None or m.offset < o.position:
                continue
            if m.offset > o.position and o.asked_again_at != o.position:
                buf.appendleft(m)
                self._gap = (m.partition, m.offset)
                break
            if m.offset > o.position:            # asked again, and the same offsets are missing
                with self._ack_lock:
                    o.skip(o.position, m.offset)
            o.position = m.offset + 1
            m.delivery_count = 1
            out.append(m)
        return out

    async def _take_in_order(self, n: int) -> list[JsMessage]:
        got = self._take(n)
        if self._gap is not None:
            await self._close_gap()
            got += self._take(n - len(got))
        return got

    async def _close_gap(self) -> None:
        """A message came after a gap in the offsets.  Offsets that
        retention removed are skipped; if the missing messages are still in
        the stream they were lost on the way (a consumer without acks never
        sends them again), so the consumer is re-made at the position to ask
        for them again.  A gap that remains after that (messages deleted
        from inside the stream by hand) is skipped."""
        gap, self._gap = self._gap, None
        if gap is None:
            return
        p, seen = gap
        o = self._owned.get(p)
        if o is None:
            return
        first, _end = await self.topic._offsets(p)
        if first > o.position:
            with self._ack_lock:
                o.skip(o.position, min(first, seen))
        if o.position >= seen:
            return
        o.asked_again_at = o.position
        await self._remake(p, o)     # failing, the next poll finds it unanswered and re-makes it

    def __iter__(self) -> Iterator[JsMessage]:
        while not self._closed:
            try:
                m = self.poll(timeout=1.0)
            except Closed:
                return
            if m is not None:
                yield m

    def _unread(self, msgs: list[JsMessage]) -> None:
        with self._lock:
            if not self._closed:
                self._broker._run(self._aunread(msgs))

    async def _aunread(self, msgs: list[JsMessage]) -> None:
        """Put messages back in front of the buffer, in order, and the
        positions of their partitions back to them."""
        for m in reversed(msgs):
            o = self._owned.get(m.partition)
            if o is None:
                continue                  # released meanwhile: its new owner reads it
            o.position = min(o.position, m.offset)
            self._puller.buffer.appendleft(m)

    # -- acks and commits --

    def _ack(self, m: JsMessage) -> None:
        with self._ack_lock:
            o = self._owned.get(m.partition)
            if o is not None:                      # after a rebalance the new owner redelivers
                o.ack(m.offset)

    def _nack(self, m: JsMessage, delay: Optional[float]) -> None:
        raise PyQueueError("nack is for queue mode; this is a stream-mode consumer")

    def _extend(self, m: JsMessage, seconds: float) -> None:
        raise PyQueueError("extend is for queue mode; this is a stream-mode consumer")

    def commit(self) -> None:
        """Store, for each owned partition, the offset below which every
        delivered message was acked (a CAS on the partition's record)."""
        self._check_open()
        self._broker._run(self._commit_all())
        self._last_commit = time.monotonic()

    async def _commit_all(self, release: bool = False, deadline: Optional[float] = None) -> None:
        for p, o in list(self._owned.items()):
            with self._ack_lock:
                offset = min(o.floor, o.position)
            if offset == o.committed and not release:
                continue
            if await self._own.commit(p, o.gen, offset, release=release, deadline=deadline):
                o.committed = offset
            else:
                self._drop(p)                      # fenced: another member owns it now

    def seek(self, partition: int, offset: int) -> None:
        """Deliver partition's messages from `offset` next (the consumer is
        re-made there).  The partition must be assigned to this consumer."""
        self._check_open()
        self.topic._check_partition(partition)
        if type(offset) is not int:
            raise TypeError("offset must be int")
        o = self._owned.get(partition)
        if o is None:
            raise PartitionOutOfRange(f"partition {partition} is not assigned to this consumer "
                                      f"(assignment: {self.assignment()})")
        start, end = self.topic.offsets(partition)
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"offset {offset} is outside {start}..{end} of partition {partition}")
        with self._lock:
            with self._ack_lock:
                o.reset(offset)
            self._broker._run(self._reseek(partition, o))

    async def _reseek(self, p: int, o: _Owned) -> None:
        self._puller.forget(p)
        await self._make_consumer(p, o, [o.consumer])

    def seek_to_time(self, ts: float) -> None:
        """Seek every assigned partition to the first message at or after ts."""
        for p in self.assignment():
            self.seek(p, self.topic.offset_for_time(p, ts))

    def assignment(self) -> list[int]:
        self._check_open()
        return sorted(self._owned)

    def position(self, partition: int) -> int:
        o = self._owned.get(partition)
        if o is None:
            raise PartitionOutOfRange(f"partition {partition} is not assigned to this consumer")
        return o.position

    def lag(self) -> dict[int, int]:
        """Per assigned partition: end offset minus the acked floor."""
        self._check_open()
        parts = sorted(self._owned)

        async def ends() -> list:
            return await asyncio.gather(*(self.topic._offsets(p) for p in parts))

        got = self._broker._run(ends())
        return {p: e[1] - self._owned[p].floor for p, e in zip(parts, got) if p in self._owned}

    def members(self) -> list[dict[str, Any]]:
        """The group's live members by this member's view."""
        return [{"member_id": m} for m in self._own.live_members()]

    # -- closing --

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"consumer of group {self.group!r} on {self.topic.name!r} is closed")

    def close(self) -> None:
        """Commit, hand the partitions back to the other members, leave."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._broker._run(self._stop(), self._broker.timeout)
            except (Closed, Exception):
                pass

    async def _stop(self) -> None:
        try:
            deadline = self._broker._deadline()
            for p in list(self._owned):
                try:
                    await self._release_partition(p, deadline)
                except Unavailable:
                    self._drop(p)      # leaving: the others take it once this member's record is gone
        finally:
            await self._puller.stop()
            await self._own.leave()

    def __enter__(self) -> "JsStreamConsumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<JsStreamConsumer group={self.group!r} topic={self.topic.name!r} "
                f"member={self.member_id}{' closed' if self._closed else ''}>")
