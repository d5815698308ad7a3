"""Stream mode: Kafka's consumer-group semantics on one machine.

Each partition is owned by one member at a time and delivered in order from
the member's position.  Acks are local; commit() (and auto-commit) stores, per
owned partition, the offset below which every delivered message was acked, so
after a rebalance or a restart delivery resumes there: unacked messages come
again (at least once).  auto_ack=True acks on delivery (at most once).

Assignment is sticky and needs no coordinator: members sorted by id get
quotas (partitions // members, the first partitions % members one more); a
member over its quota releases its highest partitions, one under it claims
free ones (or those of members no longer in the table).  Members beyond the
partition count get a quota of 0 and stand by.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Optional

from pyqueue._native import GROUP_STREAM, OFFSET_UNSET, Message
from pyqueue.errors import MemberFenced
from pyqueue.consumer import Consumer, positive
from pyqueue.errors import Closed, OffsetOutOfRange, PartitionOutOfRange, PyQueueError

if TYPE_CHECKING:
    from pyqueue.topic import Topic


class _Owned:
    """A partition this member owns: next offset to deliver and the acks."""

    __slots__ = ("position", "floor", "acked_above")

    def __init__(self, offset: int) -> None:
        self.position = offset      # next offset to deliver
        self.floor = offset         # every delivered offset below it is acked
        self.acked_above: set[int] = set()

    def ack(self, offset: int) -> None:
        if offset == self.floor:
            self.floor += 1
            while self.floor in self.acked_above:
                self.acked_above.discard(self.floor)
                self.floor += 1
        elif offset > self.floor:
            self.acked_above.add(offset)

    def reset(self, offset: int) -> None:
        self.position = self.floor = offset
        self.acked_above.clear()


class StreamConsumer(Consumer):
    """Kafka-style member.  Options: start, auto_ack, auto_commit_interval
    (seconds, 0 = only explicit commits), session_timeout."""

    mode = "stream"
    _group_mode = GROUP_STREAM

    def __init__(self, topic: "Topic", group: str, *, start: str = "earliest", auto_ack: bool = False,
                 auto_commit_interval: float = 1.0, session_timeout: float = 10.0) -> None:
        self.auto_commit_interval = positive("auto_commit_interval", auto_commit_interval, allow_zero=True)
        self._owned: dict[int, _Owned] = {}
        self._ack_lock = threading.Lock()
        self._next_partition = 0
        self._target = 0
        self._last_commit = time.monotonic()
        super().__init__(topic, group, start=start, auto_ack=auto_ack, session_timeout=session_timeout)
        self._rebalance()

    # -- assignment --

    def _quota(self) -> int:
        members = [m[0] for m in self._state.members()]
        if self.member_id not in members:
            return 0
        rank, count = members.index(self.member_id), len(members)
        parts = self.topic.partitions
        return parts // count + (1 if rank < parts % count else 0)

    def _rebalance(self) -> None:
        self._generation = self._state.generation
        self._target = quota = self._quota()
        owned = sorted(self._owned)
        for p in owned[quota:]:                    # over quota: hand the highest back
            self._commit_partition(p, release=True)
        for p in range(self.topic.partitions):
            if len(self._owned) >= quota:
                break
            if p in self._owned:
                continue
            committed = self._state.claim(p, self.member_id)
            if committed is None:
                continue                           # a live member still holds it
            if committed == OFFSET_UNSET:          # the group's first look at p
                committed = self._state.init_offset(p, self._start_offset(p))
            start, end = self.topic.offsets(p)
            self._owned[p] = _Owned(min(max(committed, start), end))

    def _start_offset(self, p: int) -> int:
        start, end = self.topic.offsets(p)
        return start if self.start == "earliest" else end

    def _maintain(self, force: bool = False) -> None:
        super()._maintain(force)
        if force or self._state.generation != self._generation or len(self._owned) < self._target:
            self._rebalance()                      # members changed, or a partition may be free now
        if self.auto_commit_interval and time.monotonic() - self._last_commit >= self.auto_commit_interval:
            self.commit()

    def _on_fenced(self) -> None:
        with self._ack_lock:
            self._owned.clear()                    # others own them now

    # -- delivery --

    def _fetch(self, n: int) -> tuple[list[Message], Optional[float]]:
        out: list[Message] = []
        parts = sorted(self._owned)
        if not parts:
            return out, None
        k = self._next_partition % len(parts)
        for p in parts[k:] + parts[:k]:
            owned = self._owned[p]
            try:
                msgs = self.topic._logs[p].read(owned.position, n - len(out))
            except OffsetOutOfRange:
                start, _ = self.topic.offsets(p)   # retention passed us: skip to the start
                owned.reset(start)
                msgs = self.topic._logs[p].read(owned.position, n - len(out))
            except IndexError:
                raise Closed(f"topic {self.topic.name!r} is closed") from None
            if msgs:
                owned.position = msgs[-1].offset + 1
                for m in msgs:
                    m._set_delivery(1, self)
                out.extend(msgs)
                if len(out) >= n:
                    break
        self._next_partition += 1
        return out, None

    def _ack(self, m: Message) -> None:
        with self._ack_lock:
            owned = self._owned.get(m.partition)
            if owned is not None:                  # after a rebalance the new owner redelivers
                owned.ack(m.offset)

    # -- commits and positions --

    def _commit_partition(self, p: int, release: bool = False) -> None:
        with self._ack_lock:
            owned = self._owned.get(p)
            if owned is None:
                return
            offset = min(owned.floor, owned.position)
            if release:
                del self._owned[p]
        try:
            self._state.commit(p, self.member_id, offset, release)
        except MemberFenced:
            with self._ack_lock:
                self._owned.pop(p, None)

    def commit(self) -> None:
        """Store, for each owned partition, the offset below which every
        delivered message was acked."""
        self._check_open()
        for p in list(self._owned):
            self._commit_partition(p)
        self._last_commit = time.monotonic()
        if self.topic._broker.fsync == "always":
            self._state.sync()

    def seek(self, partition: int, offset: int) -> None:
        """Deliver partition's messages from `offset` next (replay or skip).
        The partition must be assigned to this consumer."""
        self._check_open()
        self.topic._log(partition)
        if type(offset) is not int:
            raise TypeError("offset must be int")
        owned = self._owned.get(partition)
        if owned is None:
            raise PartitionOutOfRange(f"partition {partition} is not assigned to this consumer "
                                      f"(assignment: {self.assignment()})")
        start, end = self.topic.offsets(partition)
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"offset {offset} is outside {start}..{end} of partition {partition}")
        with self._ack_lock:
            owned.reset(offset)

    def seek_to_time(self, ts: float) -> None:
        """Seek every assigned partition to the first message at or after ts."""
        for p in self.assignment():
            self.seek(p, self.topic.offset_for_time(p, ts))

    def assignment(self) -> list[int]:
        self._check_open()
        return sorted(self._owned)

    def position(self, partition: int) -> int:
        owned = self._owned.get(partition)
        if owned is None:
            raise PartitionOutOfRange(f"partition {partition} is not assigned to this consumer")
        return owned.position

    def lag(self) -> dict[int, int]:
        """Per assigned partition: messages after the committed-to-be position
        (end offset minus the acked floor)."""
        self._check_open()
        return {p: self.topic.offsets(p)[1] - o.floor for p, o in sorted(self._owned.items())}

    def _release(self) -> None:
        for p in list(self._owned):
            try:
                self._commit_partition(p, release=True)
            except (Closed, PyQueueError):
                pass
        try:
            self._state.sync() if self.topic._broker.fsync != "never" else None
        except Closed:
            pass

