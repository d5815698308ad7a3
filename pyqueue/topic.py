"""Topic: a named stream of messages split into partitions (one Log each)."""

from __future__ import annotations

import errno
import hashlib
import itertools
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Iterable, Literal, NamedTuple, Optional, overload

from pyqueue._native import (GROUP_QUEUE, GROUP_STREAM, Dedup, Group, Log, Message, Notify, Receipt, encode_headers,
                             partition_for_key, probe_group)
from pyqueue.backpressure import Backpressure
from pyqueue.config import TopicConfig, validate_name
from pyqueue.errors import Closed, ConfigError, CorruptionError, PartitionOutOfRange, UnknownTopic as UnknownGroup
from pyqueue.policy import DEAD_LETTER_HEADERS, redrive_dead_letters
from pyqueue.record_batch import RecordBatch

if TYPE_CHECKING:
    from pyqueue.aio import TopicWaker
    from pyqueue.broker import Broker
    from pyqueue.consumer import Consumer
    from pyqueue.queue_consumer import QueueConsumer
    from pyqueue.stream_consumer import StreamConsumer

__all__ = ["Topic", "BatchReceipt", "DEAD_LETTER_HEADERS"]

MAX_DELAY = 365 * 86400.0
_MODE_NAMES = {GROUP_STREAM: "stream", GROUP_QUEUE: "queue"}
MAX_DEDUP_ID = 1024


class BatchReceipt(NamedTuple):
    """Where a batch landed: one partition, dense offsets."""

    topic: str
    partition: int
    offsets: range


class Topic:
    """A topic of a broker.  Get one with Broker.topic(); safe to share between threads."""

    def __init__(self, broker: "Broker", name: str, path: str, config: TopicConfig) -> None:
        self.name = name
        self.path = path
        self.config = config
        self._broker = broker
        self._always = broker.fsync == "always"
        self._rr = itertools.count()
        self._logs: list[Log] = []
        self._groups: dict[str, Group] = {}
        self._groups_lock = threading.Lock()
        self._dedup: Optional[Dedup] = None
        self._max_depth = config.max_depth
        self._backpressure = Backpressure(self)
        self._aio_waker: Optional["TopicWaker"] = None
        self.notify = Notify(os.path.join(path, "notify"))
        try:
            for p in range(config.partitions):
                self._logs.append(Log(
                    os.path.join(path, str(p)), name, p,
                    segment_bytes=config.segment_bytes,
                    max_message_bytes=config.max_message_bytes,
                    retention_bytes=config.retention_bytes or 0,
                    retention_seconds=config.retention_seconds or 0.0,
                ))
                self._logs[-1].set_notify(self.notify)
        except BaseException:
            self.close()
            raise

    @property
    def partitions(self) -> int:
        return self.config.partitions

    def __repr__(self) -> str:
        return f"Topic({self.name!r}, partitions={self.partitions})"

    # -- producing --

    def partition_for(self, key: Optional[bytes]) -> int:
        """The partition a message with `key` goes to (murmur2, as Kafka's
        default partitioner; round robin when key is None)."""
        n = self.config.partitions
        if key is None:
            return next(self._rr) % n
        return partition_for_key(key, n)

    def _log(self, partition: int) -> Log:
        if type(partition) is not int:
            raise TypeError(f"partition must be int, not {type(partition).__name__}")
        if not 0 <= partition < self.config.partitions:
            raise PartitionOutOfRange(f"topic {self.name!r} has partitions 0..{self.config.partitions - 1}; "
                                      f"got {partition}")
        try:
            return self._logs[partition]
        except IndexError:
            raise Closed(f"topic {self.name!r} is closed") from None

    def send(self, value: bytes, key: Optional[bytes] = None, *,
             headers: Optional[dict[str, bytes]] = None, partition: Optional[int] = None,
             delay: Optional[float] = None, dedup_id: "str | bytes | None" = None,
             timeout: Optional[float] = None) -> Receipt:
        """Append one message; returns Receipt(topic, partition, offset).

        delay: seconds during which queue-mode consumers do not see it (stream
        mode delivers in order and ignores it).  dedup_id: a second send with
        the same id within the topic's dedup_window writes nothing and returns
        the first send's receipt.  timeout: with max_depth set, how long to
        wait for room before QueueFull (None: wait as long as it takes).
        With fsync="always" it returns once the message is on disk."""
        if delay is not None or dedup_id is not None or self._max_depth:
            return self._send_slow(value, key, headers, partition, delay, dedup_id, timeout)
        if partition is None:
            n = self.config.partitions
            partition = next(self._rr) % n if key is None else partition_for_key(key, n)
            log = self._logs[partition] if self._logs else self._log(partition)
        else:
            log = self._log(partition)
        receipt = log.append(value, key, encode_headers(headers) if headers else None)
        if self._always:
            log.sync(receipt.offset + 1)
        return receipt

    async def asend(self, value: bytes, key: Optional[bytes] = None, *,
                    headers: Optional[dict[str, bytes]] = None, partition: Optional[int] = None,
                    delay: Optional[float] = None, dedup_id: "str | bytes | None" = None,
                    timeout: Optional[float] = None) -> Receipt:
        """send() for asyncio: the same arguments and result, and it never
        blocks the event loop.  With max_depth set it waits for room as a
        coroutine (cancelled while waiting, it sends nothing; QueueFull after
        `timeout`); with fsync="always" the flush runs in the loop's default
        executor.  Otherwise it is send(), a memory append."""
        from pyqueue.aio import asend
        return await asend(self, value, key, headers, partition, delay, dedup_id, timeout)

    def _send_slow(self, value: Any, key: Optional[bytes], headers: Optional[dict[str, bytes]],
                   partition: Optional[int], delay: Optional[float],
                   dedup_id: "str | bytes | None" = None, timeout: Optional[float] = None,
                   flush: bool = True) -> Receipt:
        deliver_at = 0
        if delay is not None:
            if not isinstance(delay, (int, float)) or isinstance(delay, bool):
                raise TypeError(f"delay must be a number of seconds, not {type(delay).__name__}")
            if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY:
                raise ConfigError(f"delay={delay!r} must be between 0 and {MAX_DELAY:.0f} seconds")
            deliver_at = time.time_ns() + int(delay * 1e9)
        log = self._log(self.partition_for(key) if partition is None else partition)
        blob = encode_headers(headers) if headers else None
        if self._max_depth:
            self._backpressure.wait_for_room(timeout)
        if dedup_id is None:
            receipt = log.append(value, key, blob, deliver_at)
        else:
            receipt, duplicate = self._dedup_table().send(
                _dedup_key(dedup_id), log, value, key, blob, deliver_at, self.config.dedup_window)
            if duplicate:
                if not (0 <= receipt.partition < self.partitions
                        and receipt.offset < self._logs[receipt.partition].bounds()[1]):
                    raise CorruptionError(f"{os.path.join(self.path, 'dedup')}: the entry of this "
                                          f"dedup_id names offset {receipt.offset} of partition "
                                          f"{receipt.partition}, which topic {self.name!r} does not have")
                return receipt
        if self._always and flush:
            log.sync(receipt.offset + 1)
        return receipt

    def _dedup_table(self) -> Dedup:
        with self._groups_lock:
            if self._dedup is None:
                if not self._logs:
                    raise Closed(f"topic {self.name!r} is closed")
                self._dedup = Dedup(os.path.join(self.path, "dedup"), self.config.dedup_capacity,
                                    list(self._logs))
            return self._dedup

    def redrive(self, to: str, *, limit: Optional[int] = None) -> int:
        """Move messages of this (dead-letter) topic to topic `to`, with their
        key, value and original headers (x-original-*, x-delivery-count and
        x-error removed).  A topic's messages are moved once: the position is
        kept by the consumer group "redrive".  Returns how many were moved."""
        return redrive_dead_letters(self, self._broker.topic(to, create=False), limit)

    def send_batch(self, values: Iterable[Any], key: Optional[bytes] = None, *,
                   headers: Optional[dict[str, bytes]] = None,
                   partition: Optional[int] = None) -> BatchReceipt:
        """Append many messages to one partition under one lock.

        `values` is a sequence of bytes-like objects or a 2-D uint8 numpy array
        (one row per message, copied once).  Returns BatchReceipt with the
        dense range of offsets.  All-or-nothing, except that a batch larger
        than a segment that fails on a full disk may keep its first segments."""
        if partition is None:
            partition = self.partition_for(key)
        log = self._log(partition)
        first, count = log.append_batch(values, key, encode_headers(headers) if headers else None)
        if self._always and count:
            log.sync(first + count)
        return BatchReceipt(self.name, partition, range(first, first + count))

    def flush(self) -> None:
        """Return once everything sent so far (by any process) is on disk."""
        for log in self._live_logs():
            log.sync()

    # -- reading --

    def read(self, partition: int, offset: int, max_messages: int = 100) -> list[Message]:
        """Up to max_messages messages from `offset` (raw replay, no group).

        Raises OffsetOutOfRange below the retained start or past the end."""
        _check_offset(offset)
        return self._log(partition).read(offset, max_messages)

    def read_batch(self, partition: int, offset: int, n: int) -> RecordBatch:
        """Up to n records from one segment, zero-copy (see RecordBatch)."""
        _check_offset(offset)
        return RecordBatch(self.name, partition, self._log(partition).read_batch(offset, n))

    def offsets(self, partition: int) -> tuple[int, int]:
        """(first retained offset, next offset to be written)."""
        return self._log(partition).bounds()

    def offset_for_time(self, partition: int, ts: float) -> int:
        """First offset whose timestamp is >= ts (epoch seconds); the end offset if none."""
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            raise TypeError(f"ts must be a finite number of epoch seconds, not {ts!r}")
        return self._log(partition).offset_for_time_ns(_first_ns_at_or_after(float(ts)))

    def wait(self, partition: int, offset: int, timeout: Optional[float] = None) -> bool:
        """Block until record `offset` exists in the partition (any process may
        write it); False on timeout.  Woken by the append, not by polling."""
        log = self._log(partition)
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if log.wait(offset, remaining):
                return True
            if log.closed or (deadline is not None and time.monotonic() >= deadline):
                return False

    # -- upkeep --

    def enforce_retention(self) -> int:
        """Drop segments past the retention limits now; returns how many."""
        return sum(log.enforce_retention() for log in self._live_logs())

    def stats(self) -> dict[str, Any]:
        """Per partition: offsets, messages, segments, bytes, depth; per group:
        lag, in flight, dead letters and the age of the oldest unacked message.

        Depth is what max_depth bounds: the messages after the slowest group's
        committed position (after the retained start if the topic has no group)."""
        parts = {}
        for log in self._live_logs():
            start, end = log.bounds()
            segments, nbytes = log.disk_usage()
            parts[log.partition] = {"start": start, "end": end, "messages": end - start,
                                    "segments": segments, "bytes": nbytes, "synced": log.synced}
        groups = {}
        for name in self.groups():
            try:
                groups[name] = self._group_stats(name)
            except OSError as e:                          # StorageError is one
                if e.errno != errno.ENOENT:
                    raise                                 # else deleted meanwhile
        for p, part in parts.items():
            floor = min((g["partitions"][p]["committed"] for g in groups.values()), default=part["start"])
            part["depth"] = max(0, part["end"] - floor)
        return {"partitions": parts, "groups": groups, "depth": sum(v["depth"] for v in parts.values()),
                "config": self.config.__dict__.copy()}

    def _group_stats(self, name: str) -> dict[str, Any]:
        mode, _parts, window = probe_group(os.path.join(self.path, "groups", name + ".group"))
        g = self._group(name, mode, window)
        now = time.time()
        per_part, oldest = {}, None
        for p in range(self.config.partitions):
            info = g.partition_info(p)
            start, end = self._logs[p].bounds()
            committed = start if info["committed"] is None else max(info["committed"], start)
            age, damaged = None, None
            if committed < end:
                try:
                    age = max(0.0, now - self._logs[p].read(committed, 1)[0].timestamp)
                    oldest = age if oldest is None else max(oldest, age)
                except CorruptionError as e:      # stats must still show the rest
                    damaged = str(e)
            per_part[p] = {"committed": committed, "lag": end - committed, "in_flight": info["leased"],
                           "delayed": info["delayed"], "dead_letters": info["dead_letters"],
                           "oldest_unacked_age": age, "damaged": damaged}
        return {"mode": "queue" if mode == GROUP_QUEUE else "stream",
                "members": len(g.members()),
                "lag": sum(v["lag"] for v in per_part.values()),
                "in_flight": sum(v["in_flight"] for v in per_part.values()),
                "dead_letters": sum(v["dead_letters"] for v in per_part.values()),
                "oldest_unacked_age": oldest, "partitions": per_part}

    def _live_logs(self) -> list[Log]:
        if not self._logs:
            raise Closed(f"topic {self.name!r} is closed")
        return list(self._logs)

    def _sync_all(self) -> None:
        for log in list(self._logs):
            if not log.closed:
                log.sync()
        with self._groups_lock:
            groups = list(self._groups.values())
        for g in groups:
            try:
                g.sync()
            except Closed:
                pass
        if self._dedup is not None:
            self._dedup.sync()

    # -- consumer groups --

    @overload
    def consumer(self, group: str, *, mode: Literal["stream"] = ..., **options: Any) -> "StreamConsumer": ...

    @overload
    def consumer(self, group: str, *, mode: Literal["queue"], **options: Any) -> "QueueConsumer": ...

    @overload
    def consumer(self, group: str, *, mode: str, **options: Any) -> "Consumer": ...

    def consumer(self, group: str, *, mode: str = "stream", **options: Any) -> "Consumer":
        """A member of consumer group `group` on this topic.

        mode="stream": Kafka semantics (partitions owned by one member, in
        order, commits).  mode="queue": SQS/RabbitMQ semantics (leases with a
        visibility timeout, per-message ack/nack).  See Consumer for options."""
        from pyqueue.consumer import make_consumer
        consumer = make_consumer(self, group, mode, options)
        self._broker._register_consumer(consumer)
        return consumer

    def _waker(self) -> "TopicWaker":
        """The thread that sleeps on this topic's wake-up word for coroutines
        (pyqueue/aio.py), started on first use."""
        with self._groups_lock:
            if self._aio_waker is None:
                if not self._logs:
                    raise Closed(f"topic {self.name!r} is closed")
                from pyqueue.aio import TopicWaker
                self._aio_waker = TopicWaker(self.notify, self.name)
            return self._aio_waker

    def _group(self, name: str, mode: int, window: int) -> Group:
        """The process's shared handle on a group's state file."""
        with self._groups_lock:
            g = self._groups.get(name)
            if g is not None and g.mode != mode:
                raise ConfigError(f"group {name!r} exists in {_MODE_NAMES[g.mode]} mode; "
                                  f"asked for {_MODE_NAMES[mode]} mode")
            if g is not None and g.window != window:
                raise ConfigError(f"group {name!r} exists with max_in_flight={g.window}; asked for {window}")
            if g is None:
                if not self._logs:
                    raise Closed(f"topic {self.name!r} is closed")
                os.makedirs(os.path.join(self.path, "groups"), mode=0o700, exist_ok=True)
                g = Group(os.path.join(self.path, "groups", name + ".group"), mode,
                          self.config.partitions, window, self.notify)
                self._groups[name] = g
            return g

    def delete_group(self, name: str) -> None:
        """Forget a consumer group's positions and in-flight state on this topic."""
        validate_name(name, "group")
        path = os.path.join(self.path, "groups", name + ".group")
        with self._groups_lock:
            g = self._groups.pop(name, None)
            if g is not None:
                g.close()
            try:
                os.unlink(path)
            except FileNotFoundError:
                raise UnknownGroup(f"no group {name!r} on topic {self.name!r}") from None

    def groups(self) -> list[str]:
        """Names of the consumer groups that have state on this topic."""
        gdir = os.path.join(self.path, "groups")
        if not os.path.isdir(gdir):
            return []
        return sorted(n[:-len(".group")] for n in os.listdir(gdir) if n.endswith(".group"))

    def close(self) -> None:
        logs, self._logs = self._logs, []
        with self._groups_lock:
            groups, self._groups = list(self._groups.values()), {}
            waker, self._aio_waker = self._aio_waker, None
        if waker is not None:
            waker.stop()             # before the word it sleeps on is unmapped
        for g in groups:
            g.close()
        if self._dedup is not None:
            self._dedup.close()
        for log in logs:
            log.close()
        self.notify.close()


def _dedup_key(dedup_id: "str | bytes") -> bytes:
    if isinstance(dedup_id, str):
        dedup_id = dedup_id.encode("utf-8")
    if not isinstance(dedup_id, bytes):
        raise TypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
    if not 1 <= len(dedup_id) <= MAX_DEDUP_ID:
        raise ConfigError(f"dedup_id of {len(dedup_id)} bytes must be 1..{MAX_DEDUP_ID} bytes")
    return hashlib.blake2b(dedup_id, digest_size=16).digest()


def _first_ns_at_or_after(ts: float) -> int:
    """The smallest integer n with n / 1e9 >= ts: the ns threshold that makes
    offset_for_time(m.timestamp) find m although float seconds round ns."""
    lo, hi = int(ts * 1e9) - 4096, int(ts * 1e9) + 4096
    while lo < hi:
        mid = (lo + hi) // 2
        if mid / 1e9 >= ts:
            hi = mid
        else:
            lo = mid + 1
    return lo


def _check_offset(offset: object) -> None:
    if type(offset) is not int:
        raise TypeError(f"offset must be int, not {type(offset).__name__}")
    if offset < 0:
        from pyqueue.errors import OffsetOutOfRange
        raise OffsetOutOfRange(f"offset {offset} is negative")
