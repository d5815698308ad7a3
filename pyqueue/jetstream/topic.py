"""JetStreamTopic: a topic whose partitions are JetStream streams.

offset = stream sequence - 1, so offsets are dense from 0 as on disk (a
dedup'd send takes no sequence).  A key picks its partition with pyqueue's
own murmur2 (partition_for_key), so it lands on the same partition number on
both backends.  A keyless send with a dedup_id goes to the partition its id
hashes to, so that a retry meets the first send's stream (JetStream's
duplicate window is per stream); a keyless send without one goes round robin.

send() is one publish acknowledged by the stream's quorum.  With a dedup_id
(sent as Nats-Msg-Id) it is retried through timeouts and leader elections
until the broker's timeout: the stream drops a repeat and answers with the
first sequence.  Without one, only failures that prove nothing was stored
(no responder) are retried; a timeout raises Unavailable, since a retry
could store the message twice.

With max_depth set, send() first waits for room (QueueFull after its
timeout), from a view of the depth kept without a round trip per send:
see backpressure.py.

send_batch() pipelines its publishes on one connection, so they are stored
in order; it is not atomic (JetStream's atomic batches need nats-server
2.12): another producer's messages may interleave, so the offsets are a
range only when dense, else a tuple; a failure raises after the messages
before it were stored.

read() fetches by sequence from the stream leader ($JS.API.STREAM.MSG.GET,
up to 64 requests in flight), so it sees every acknowledged send.
offset_for_time() asks the server: an ephemeral consumer that starts at the
time gives the first sequence.
"""

from __future__ import annotations

import array
import asyncio
import base64
import calendar
import hashlib
import itertools
import json
import math
import time
from typing import TYPE_CHECKING, Any, Iterable, Optional

from pyqueue._native import Receipt, partition_for_key
from pyqueue.config import TopicConfig, validate_name
from pyqueue.errors import (Closed, ConfigError, MessageTooLarge, OffsetOutOfRange, PartitionOutOfRange,
                            PyQueueError, UnknownTopic)
from pyqueue.jetstream.client import (ERR_MSG_TOO_LARGE, ERR_NO_MESSAGE, ERR_STREAM_NOT_FOUND, ApiError,
                                      backoff, describe, is_transient)
from pyqueue.jetstream.backpressure import JsBackpressure
from pyqueue.jetstream.errors import Unavailable
from pyqueue.jetstream.message import JsMessage, from_nats_headers, to_nats_headers
from pyqueue.policy import redrive_dead_letters
from pyqueue.record_batch import RecordBatch
from pyqueue.topic import MAX_DEDUP_ID, MAX_DELAY, BatchReceipt

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker

__all__ = ["JetStreamTopic", "parse_time_ns"]

_READ_WINDOW = 64           # MSG.GET requests in flight per read()
_MAX_READ = 100_000


class JetStreamTopic:
    """A topic of a JetStreamBroker.  Get one with broker.topic(); thread-safe."""

    def __init__(self, broker: "JetStreamBroker", name: str, config: TopicConfig, replicas: int) -> None:
        self.name = name
        self.config = config
        self.replicas = replicas
        self._broker = broker
        self._names = broker.names
        self._rr = itertools.count()
        self._streams = [broker.names.stream(name, p) for p in range(config.partitions)]
        self._subjects = [broker.names.subject(name, p) for p in range(config.partitions)]
        self._closed = False
        self._backpressure: Optional[JsBackpressure] = JsBackpressure(self) if config.max_depth else None

    @property
    def partitions(self) -> int:
        return self.config.partitions

    def __repr__(self) -> str:
        return f"JetStreamTopic({self.name!r}, partitions={self.partitions}, replicas={self.replicas})"

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"topic {self.name!r} is closed")

    def _client(self) -> Any:
        return self._broker.client

    def _check_partition(self, partition: object) -> int:
        if type(partition) is not int:
            raise TypeError(f"partition must be int, not {type(partition).__name__}")
        if not 0 <= partition < self.config.partitions:
            raise PartitionOutOfRange(f"topic {self.name!r} has partitions 0..{self.config.partitions - 1}; "
                                      f"got {partition}")
        return partition

    # -- producing --

    def partition_for(self, key: Optional[bytes]) -> int:
        """The partition a message with `key` goes to (murmur2, the same
        number as on the embedded engine; round robin when key is None)."""
        n = self.config.partitions
        if key is None:
            return next(self._rr) % n
        return partition_for_key(key, n)

    def _size_check(self, value: bytes, key: Optional[bytes], headers: Optional[dict[str, bytes]]) -> None:
        size = len(value) + (len(key) if key is not None else 0)
        if headers:
            size += sum(len(k.encode("utf-8", "replace")) + len(v) for k, v in headers.items()
                        if isinstance(k, str) and isinstance(v, (bytes, bytearray)))
        if size > self.config.max_message_bytes:
            raise MessageTooLarge(f"message of {size} bytes (key + headers + value) exceeds "
                                  f"max_message_bytes={self.config.max_message_bytes} of topic {self.name!r}")

    def send(self, value: bytes, key: Optional[bytes] = None, *,
             headers: Optional[dict[str, bytes]] = None, partition: Optional[int] = None,
             delay: Optional[float] = None, dedup_id: "str | bytes | None" = None,
             timeout: Optional[float] = None) -> Receipt:
        """Append one message; Receipt(topic, partition, offset) once the
        stream's quorum stored it.  dedup_id: a repeat within the topic's
        dedup_window stores nothing and returns the first receipt (and makes
        the send safe to retry through failures).  timeout: how long to keep
        retrying (default: the broker's timeout); with max_depth set, first
        how long to wait for room before QueueFull (None: as long as it
        takes; see backpressure.py).  delay: seconds during which queue-mode
        consumers do not see it (stream mode ignores it; see
        queue_consumer.py)."""
        self._check_open()
        deliver_at = None
        if delay is not None:
            if not isinstance(delay, (int, float)) or isinstance(delay, bool):
                raise TypeError(f"delay must be a number of seconds, not {type(delay).__name__}")
            if not math.isfinite(delay) or not 0 <= delay <= MAX_DELAY:
                raise ConfigError(f"delay={delay!r} must be between 0 and {MAX_DELAY:.0f} seconds")
            if delay > 0:
                deliver_at = time.time_ns() + int(delay * 1e9)
        value = _as_bytes(value, "value")
        msg_id = None
        if dedup_id is not None:
            raw = _dedup_bytes(dedup_id)
            msg_id = hashlib.blake2b(raw, digest_size=16).hexdigest()
            if partition is None and key is None:
                partition = partition_for_key(raw, self.config.partitions)
        if partition is None:
            partition = self.partition_for(key)
        else:
            self._check_partition(partition)
        self._size_check(value, key, headers)
        nh = to_nats_headers(key, headers, msg_id, deliver_at)
        bp = self._backpressure
        if bp is not None:
            bp.room(timeout)      # before the publish, as embedded: a dedup_id repeat waits too
        deadline = self._broker._deadline(timeout)
        safe = msg_id is not None
        ack = self._broker._send(lambda client: self._publish(client, partition, value, nh, deadline, safe))
        seq = int(ack["seq"])
        if bp is not None:
            bp.sent(partition, seq)
        return Receipt(self.name, partition, seq - 1)

    async def asend(self, value: bytes, key: Optional[bytes] = None, *,
                    headers: Optional[dict[str, bytes]] = None, partition: Optional[int] = None,
                    delay: Optional[float] = None, dedup_id: "str | bytes | None" = None,
                    timeout: Optional[float] = None) -> Receipt:
        """send() for asyncio: the same arguments and result; the event loop
        keeps running (the send runs on a thread of the broker's pool).  A
        cancelled asend may still have sent: give it a dedup_id."""
        from pyqueue.jetstream.aio import asend
        return await asend(self, value=value, key=key, headers=headers, partition=partition, delay=delay,
                           dedup_id=dedup_id, timeout=timeout)

    async def _publish(self, client: Any, partition: int, value: bytes, headers: Optional[dict[str, str]],
                       deadline: float, safe: bool) -> dict:
        """Publish on `client` and wait for the stream's ack; retried while it is safe."""
        import nats.errors
        subject = self._subjects[partition]
        attempt = 0
        while True:
            left = deadline - time.monotonic()
            try:
                msg = await client.nc.request(subject, value, timeout=max(0.05, min(left, client.request_timeout)),
                                              headers=headers)
                resp = json.loads(msg.data)
                err = resp.get("error")
                if err:
                    raise ApiError(err.get("code", 0), err.get("err_code", 0), err.get("description", ""))
                return resp
            except nats.errors.NoRespondersError as e:
                # Nothing received it: always safe to retry, unless the stream is gone.
                await self._check_stream(client, partition, deadline)
                error: BaseException = e
            except nats.errors.ConnectionClosedError:
                raise Closed(f"broker {self._broker.url} is closed") from None
            except ApiError as e:
                if e.err_code == ERR_MSG_TOO_LARGE:
                    raise MessageTooLarge(f"topic {self.name!r} partition {partition}: {e.description}") from e
                if e.code != 503:
                    raise PyQueueError(f"send to topic {self.name!r} partition {partition}: {e}") from e
                error = e
            except Exception as e:
                if not is_transient(e):
                    raise
                if not safe:
                    raise Unavailable(
                        f"send to topic {self.name!r} partition {partition}: no acknowledgement within "
                        f"{client.request_timeout:g} s ({describe(e)}); the message may or may not be "
                        f"stored: give it a dedup_id to let pyqueue retry it safely") from e
                error = e
            attempt += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise Unavailable(f"send to topic {self.name!r} partition {partition}: not acknowledged "
                                  f"after {attempt} attempts (last error: {describe(error)})") from error
            await asyncio.sleep(min(left, backoff(attempt)))

    async def _check_stream(self, client: Any, partition: int, deadline: float) -> None:
        try:
            await client.api(f"STREAM.INFO.{self._streams[partition]}",
                                     timeout=max(0.05, min(1.0, deadline - time.monotonic())))
        except ApiError as e:
            if e.err_code == ERR_STREAM_NOT_FOUND:
                raise UnknownTopic(f"topic {self.name!r} was deleted (stream {self._streams[partition]} "
                                   f"is gone)") from None
        except Exception:
            pass

    def send_batch(self, values: Iterable[Any], key: Optional[bytes] = None, *,
                   headers: Optional[dict[str, bytes]] = None,
                   partition: Optional[int] = None) -> BatchReceipt:
        """Publish many messages to one partition, pipelined; BatchReceipt
        with their offsets (a range when dense).  Not atomic: see the module
        docstring.  max_depth does not hold a batch back (as on the embedded
        engine)."""
        self._check_open()
        if partition is None:
            partition = self.partition_for(key)
        else:
            self._check_partition(partition)
        if hasattr(values, "ndim") and getattr(values, "ndim") == 2:
            rows = [bytes(memoryview(r)) for r in values]   # type: ignore[union-attr]
        elif isinstance(values, (bytes, bytearray, memoryview, str)):
            raise TypeError("send_batch takes a sequence of bytes-like values, not one value")
        else:
            rows = [_as_bytes(v, "value") for v in values]
        for v in rows:
            self._size_check(v, key, headers)
        if not rows:
            return BatchReceipt(self.name, partition, range(0, 0))
        nh = to_nats_headers(key, headers)
        deadline = self._broker._deadline()
        seqs = self._broker._send(lambda client: self._publish_many(client, partition, rows, nh, deadline))
        if self._backpressure is not None:
            self._backpressure.sent(partition, max(seqs))   # not held back (as embedded), but counted
        offsets = [s - 1 for s in seqs]
        dense = offsets == list(range(offsets[0], offsets[0] + len(offsets)))
        return BatchReceipt(self.name, partition,
                            range(offsets[0], offsets[-1] + 1) if dense else tuple(offsets))  # type: ignore[arg-type]

    async def _publish_many(self, client: Any, partition: int, rows: list[bytes],
                            headers: Optional[dict[str, str]], deadline: float) -> list[int]:
        js = client.jetstream()
        subject = self._subjects[partition]
        futures = []
        for v in rows:
            h = dict(headers) if headers else None      # nats-py's publish_async may add to it
            futures.append(await js.publish_async(subject, v, headers=h))
        done = 0
        try:
            acks = await asyncio.wait_for(asyncio.gather(*futures), max(0.05, deadline - time.monotonic()))
        except asyncio.TimeoutError as e:
            done = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
            raise Unavailable(f"send_batch to topic {self.name!r} partition {partition}: {done} of "
                              f"{len(rows)} messages acknowledged in time; the batch is not atomic") from e
        except Exception as e:
            done = sum(1 for f in futures if f.done() and not f.cancelled() and f.exception() is None)
            raise Unavailable(f"send_batch to topic {self.name!r} partition {partition}: {done} of "
                              f"{len(rows)} stored before {describe(e)}; the batch is not atomic") from e
        return [a.seq for a in acks]

    def flush(self) -> None:
        """Everything a send() returned for is already stored by a quorum;
        this only waits for the connection's outgoing buffer."""
        self._check_open()
        self._broker._run(self._client().nc.flush(self._broker.request_timeout))

    def redrive(self, to: str, *, limit: Optional[int] = None) -> int:
        """Move messages of this (dead-letter) topic to topic `to`, as the
        embedded engine does (x-original-* headers removed; the position is
        kept by the stream-mode group "redrive")."""
        return redrive_dead_letters(self, self._broker.topic(to, create=False), limit)

    # -- reading --

    def read(self, partition: int, offset: int, max_messages: int = 100) -> list[JsMessage]:
        """Up to max_messages messages from `offset` (raw replay, no group).
        OffsetOutOfRange below the retained start or past the end."""
        self._check_open()
        self._check_partition(partition)
        _check_offset(offset)
        if type(max_messages) is not int:
            raise TypeError(f"max_messages must be int, not {type(max_messages).__name__}")
        if max_messages < 0:
            raise ConfigError(f"max_messages={max_messages} must be >= 0")
        return self._broker._run(self._read(partition, offset, min(max_messages, _MAX_READ)))

    async def _read(self, partition: int, offset: int, n: int) -> list[JsMessage]:
        start, end = await self._offsets(partition)
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"offset {offset} is outside {start}..{end} of topic {self.name!r} "
                                   f"partition {partition}")
        stop = min(end, offset + n)
        out: list[JsMessage] = []
        deadline = self._broker._deadline()
        seq = offset + 1
        while seq <= stop:
            batch = range(seq, min(stop, seq + _READ_WINDOW - 1) + 1)
            got = await asyncio.gather(*(self._get(partition, s, deadline) for s in batch))
            for m in got:
                if m is None:           # removed by retention meanwhile
                    if not out:
                        continue
                    return out
                out.append(m)
            seq = batch[-1] + 1
        return out

    async def _get(self, partition: int, seq: int, deadline: float) -> Optional[JsMessage]:
        try:
            resp = await self._client().api_retry(f"STREAM.MSG.GET.{self._streams[partition]}", {"seq": seq},
                                                  deadline=deadline,
                                                  what=f"read of topic {self.name!r} partition {partition}")
        except ApiError as e:
            if e.err_code == ERR_NO_MESSAGE:
                return None
            if e.err_code == ERR_STREAM_NOT_FOUND:
                raise UnknownTopic(f"topic {self.name!r} was deleted") from None
            raise
        raw = resp["message"]
        nh = _parse_raw_headers(base64.b64decode(raw["hdrs"])) if raw.get("hdrs") else None
        key, headers = from_nats_headers(nh)
        value = base64.b64decode(raw["data"]) if raw.get("data") else b""
        return JsMessage(self.name, partition, int(raw["seq"]) - 1, parse_time_ns(raw["time"]),
                         key, value, headers)

    def read_batch(self, partition: int, offset: int, n: int) -> RecordBatch:
        """Up to n records from `offset` as a RecordBatch (one buffer of the
        values, numpy arrays of offsets, positions, lengths and timestamps).
        The embedded engine's is a view of its mapped segments; here the
        values are read (as read() does) and packed into one buffer: a copy."""
        msgs = self.read(partition, offset, n)
        lengths = array.array("I", (len(m.value) for m in msgs))
        positions = array.array("I", itertools.accumulate(lengths, initial=0))[:len(msgs)]
        if len(msgs) and positions[-1] + lengths[-1] >= 1 << 32:
            raise PyQueueError(f"read_batch of {len(msgs)} records: more than 4 GiB of values; ask for fewer")
        raw = (memoryview(b"".join(m.value for m in msgs)).toreadonly(),
               array.array("Q", (m.offset for m in msgs)).tobytes(), positions.tobytes(), lengths.tobytes(),
               array.array("q", (m.timestamp_ns for m in msgs)).tobytes())
        return RecordBatch(self.name, partition, raw)

    def offsets(self, partition: int) -> tuple[int, int]:
        """(first retained offset, next offset to be written)."""
        self._check_open()
        self._check_partition(partition)
        return self._broker._run(self._offsets(partition))

    async def _offsets(self, partition: int) -> tuple[int, int]:
        state = await self._state(partition)
        first, last = int(state.get("first_seq", 0)), int(state.get("last_seq", 0))
        return (max(first, 1) - 1 if first else last, last)

    async def _state(self, partition: int) -> dict:
        try:
            info = await self._client().api_retry(
                f"STREAM.INFO.{self._streams[partition]}", deadline=self._broker._deadline(),
                what=f"offsets of topic {self.name!r} partition {partition}")
        except ApiError as e:
            if e.err_code == ERR_STREAM_NOT_FOUND:
                raise UnknownTopic(f"topic {self.name!r} was deleted (stream {self._streams[partition]} "
                                   f"is gone)") from None
            raise
        return info.get("state", {})

    def offset_for_time(self, partition: int, ts: float) -> int:
        """First offset whose timestamp is >= ts (epoch seconds); the end
        offset if none."""
        self._check_open()
        self._check_partition(partition)
        if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not math.isfinite(ts):
            raise TypeError(f"ts must be a finite number of epoch seconds, not {ts!r}")
        return self._broker._run(self._offset_for_time(partition, float(ts)))

    async def _offset_for_time(self, partition: int, ts: float) -> int:
        from pyqueue.jetstream.pull import first_seq_at_or_after
        seq = await first_seq_at_or_after(self, partition, ts)
        if seq is None:
            return (await self._offsets(partition))[1]
        return seq - 1

    def wait(self, partition: int, offset: int, timeout: Optional[float] = None) -> bool:
        """Block until record `offset` exists in the partition; False on
        timeout.  Woken by the publish itself (a core subscription on the
        partition's subject), not by polling the stream."""
        self._check_open()
        self._check_partition(partition)
        _check_offset(offset)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._broker._run(self._wait({partition: offset}, deadline))

    def wait_any(self, positions: dict[int, int], timeout: Optional[float] = None) -> bool:
        """Block until, for some partition p in `positions`, record
        positions[p] exists; False on timeout.  One wait over several
        partitions (a follower of the whole topic)."""
        self._check_open()
        for p, offset in positions.items():
            self._check_partition(p)
            _check_offset(offset)
        deadline = None if timeout is None else time.monotonic() + timeout
        return self._broker._run(self._wait(dict(positions), deadline))

    async def _wait(self, positions: dict[int, int], deadline: Optional[float]) -> bool:
        nc = self._client().nc
        arrived = asyncio.Event()

        async def on_msg(_msg: Any) -> None:
            arrived.set()

        subs = [await nc.subscribe(self._subjects[p], cb=on_msg) for p in positions]
        try:
            while True:
                arrived.clear()
                ends = await asyncio.gather(*(self._offsets(p) for p in positions))
                if any(end > offset for (_start, end), offset in zip(ends, positions.values())):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                # A publish seen on the subject may be stored a moment later:
                # look again at once after it, else after at most a second.
                try:
                    await asyncio.wait_for(arrived.wait(), 1.0 if left is None else min(left, 1.0))
                except asyncio.TimeoutError:
                    pass
        finally:
            for sub in subs:
                await sub.unsubscribe()

    # -- groups --

    def consumer(self, group: str, *, mode: str = "stream", **options: Any) -> Any:
        """A member of consumer group `group`: mode="queue" (a shared durable
        pull consumer per partition) or mode="stream" (partition ownership
        kept in KV).  See the consumer classes for options."""
        self._check_open()
        validate_name(group, "group")
        if mode == "queue":
            from pyqueue.jetstream.queue_consumer import JsQueueConsumer
            consumer: Any = JsQueueConsumer(self, group, **options)
        elif mode == "stream":
            from pyqueue.jetstream.stream_consumer import JsStreamConsumer
            consumer = JsStreamConsumer(self, group, **options)
        else:
            raise ConfigError(f"mode={mode!r} must be 'stream' or 'queue'")
        self._broker._register_consumer(consumer)
        return consumer

    def groups(self) -> list[str]:
        """Names of the consumer groups that have state on this topic."""
        from pyqueue.jetstream.group_state import group_names
        self._check_open()
        return self._broker._run(group_names(self._broker, self.name))

    def delete_group(self, name: str) -> None:
        """Forget a consumer group: its durable consumers and its state."""
        from pyqueue.jetstream.group_state import delete_group
        validate_name(name, "group")
        self._check_open()
        self._broker._run(delete_group(self._broker, self, name))

    def stats(self) -> dict[str, Any]:
        """The embedded engine's keys (see stats.py for how each is read
        from the server, and which are None here): per partition start, end,
        messages, bytes, depth; per group mode, members, lag, in flight, dead
        letters, oldest unacked age, and the same per partition; the topic's
        depth, config and replicas."""
        from pyqueue.jetstream.stats import topic_stats
        self._check_open()
        return self._broker._run(topic_stats(self))

    def close(self) -> None:
        self._closed = True


def _as_bytes(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if hasattr(value, "__buffer__") or hasattr(value, "tobytes"):
        try:
            return bytes(memoryview(value))
        except TypeError:
            pass
    raise TypeError(f"{what} must be bytes-like, not {type(value).__name__}")


def _dedup_bytes(dedup_id: "str | bytes") -> bytes:
    if isinstance(dedup_id, str):
        dedup_id = dedup_id.encode("utf-8")
    if not isinstance(dedup_id, bytes):
        raise TypeError(f"dedup_id must be str or bytes, not {type(dedup_id).__name__}")
    if not 1 <= len(dedup_id) <= MAX_DEDUP_ID:
        raise ConfigError(f"dedup_id of {len(dedup_id)} bytes must be 1..{MAX_DEDUP_ID} bytes")
    return dedup_id


def _check_offset(offset: object) -> None:
    if type(offset) is not int:
        raise TypeError(f"offset must be int, not {type(offset).__name__}")
    if offset < 0:
        raise OffsetOutOfRange(f"offset {offset} is negative")


def _parse_raw_headers(raw: bytes) -> dict[str, str]:
    """NATS/1.0 header block -> dict (as nats-py parses delivered messages)."""
    out: dict[str, str] = {}
    lines = raw.split(b"\r\n")
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            continue
        out[name.strip().decode("ascii", "replace")] = value.strip().decode("utf-8", "replace")
    return out


def parse_time_ns(text: str) -> int:
    """RFC 3339 UTC time with up to 9 fractional digits -> ns since the epoch."""
    main, _, frac = text.rstrip("Z").partition(".")
    secs = calendar.timegm(time.strptime(main, "%Y-%m-%dT%H:%M:%S"))
    digits = "".join(c for c in frac if c.isdigit())[:9]
    return secs * 1_000_000_000 + int(digits.ljust(9, "0") or 0)
