"""Queue mode on JetStream: a shared durable pull consumer per partition.

Each partition's stream has one durable consumer named after the group,
with explicit acks; every member of the group pulls from all of them, so the
server hands each message to one member at a time.  The mapping:

    visibility_timeout   AckWait (the group's: stored with the group, the
                         same for every member; a member asking for another
                         value gets ConfigError)
    max_in_flight        MaxAckPending, per partition
    ack()                +ACK
    nack(delay)          -NAK with the delay (the backoff's when None); the
                         message keeps its offset (JetStream redelivers in
                         place, without holding back the messages behind it)
    extend(s)            +WPI (in progress), repeated every AckWait/2 until s
                         seconds have passed; the lease then lasts at least s
    delivery_count       the delivery metadata's count (minus one for a
                         delayed message, see below)
    send(delay=)         the message is stored at once (stream mode sees it)
                         with a Pq-Deliver-At header; a member that gets it
                         for the first time, or before it is due, NAKs it
                         with the time left, unseen by the application.
                         Clocks of senders and consumers must agree.
    max_deliveries       checked by pyqueue: a delivery past it, or a handler
                         failing on the last one, goes to the dead-letter
                         topic (same headers as the embedded engine, sent
                         with a dedup id so that a retry cannot double it)
                         and is terminated (+TERM) on the source.  MaxDeliver
                         stays unlimited: a member dying between the last
                         delivery and the dead letter must not strand it.

LeaseLost: JetStream accepts an ack from an older delivery after the lease
moved on (it acks the message whoever holds it now; the work was done, so
nothing is lost).  pyqueue raises LeaseLost for an ack, nack or extend of a
delivery that this process has finished already, or that this process has
since seen delivered again (a newer delivery count of the same message);
a newer delivery to another process cannot be known, and the ack is sent.

Not provided: ordered=True (JetStream has no per-key ordered work queue;
Unsupported, use stream mode for per-partition order).  A dead member's
leases come back after AckWait, not at once: the server has no liveness
signal for a pull consumer's members.
"""

from __future__ import annotations

import asyncio
import collections
import json
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Optional

from pyqueue.consumer import STARTS, positive
from pyqueue.errors import Closed, ConfigError, LeaseLost, OffsetOutOfRange
from pyqueue.jetstream.aio import AsyncConsumer
from pyqueue.jetstream.client import ERR_CONSUMER_NOT_FOUND, ApiError
from pyqueue.jetstream.errors import Unavailable, Unsupported
from pyqueue.jetstream.group_state import ensure_group
from pyqueue.jetstream.message import JsMessage
from pyqueue.jetstream.naming import Names
from pyqueue.jetstream.pull import Puller
from pyqueue.policy import Backoff, check_retry_policy, dead_letter_headers

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["JsQueueConsumer", "queue_lag", "LeaseTable"]

MAX_WINDOW = 65536
_LINGER = 1.0          # seconds a waiting pull request lives before it is renewed
_ACK = b"+ACK"
_TERM = b"+TERM"
_WPI = b"+WPI"


class LeaseTable:
    """What this process knows of one group's deliveries: the newest
    delivery count it has seen per (partition, offset) (an ack of an older
    delivery is LeaseLost), and the offsets it acked lately (acks are
    asynchronous on the server: a late ack can lose the race with the
    redelivery its expired lease caused, and that copy is acked again and
    not handed out).  Bounded: the oldest entries go past `capacity`."""

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._latest: "collections.OrderedDict[tuple[int, int], int]" = collections.OrderedDict()
        self._acked: "collections.OrderedDict[tuple[int, int], float]" = collections.OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def acked(self, partition: int, offset: int, ttl: float) -> None:
        with self._lock:
            k = (partition, offset)
            self._acked[k] = time.monotonic() + ttl
            self._acked.move_to_end(k)
            while len(self._acked) > self._capacity:
                self._acked.popitem(last=False)

    def acked_lately(self, partition: int, offset: int) -> bool:
        with self._lock:
            until = self._acked.get((partition, offset))
            if until is None:
                return False
            if until < time.monotonic():
                del self._acked[(partition, offset)]
                return False
            return True

    def forget_partition(self, partition: int) -> None:
        """A seek: the partition's offsets may be delivered again."""
        with self._lock:
            for table in (self._latest, self._acked):
                for k in [k for k in table if k[0] == partition]:
                    del table[k]

    def note(self, partition: int, offset: int, count: int) -> None:
        with self._lock:
            k = (partition, offset)
            if self._latest.get(k, 0) < count:
                self._latest[k] = count
                self._latest.move_to_end(k)
                while len(self._latest) > self._capacity:
                    self._latest.popitem(last=False)

    def newer(self, partition: int, offset: int, count: int) -> bool:
        with self._lock:
            return self._latest.get((partition, offset), 0) > count

    def forget(self, partition: int, offset: int, count: int) -> None:
        with self._lock:
            if self._latest.get((partition, offset)) == count:
                del self._latest[(partition, offset)]


class JsQueueConsumer(AsyncConsumer):
    """SQS-style member on JetStream.  Options as the embedded QueueConsumer:
    visibility_timeout, max_in_flight, start, auto_ack, session_timeout
    (accepted, unused: leases end by AckWait), max_deliveries, backoff,
    dead_letter; ordered=True raises Unsupported."""

    mode = "queue"

    def __init__(self, topic: "JetStreamTopic", group: str, *, visibility_timeout: float = 30.0,
                 max_in_flight: int = 1024, ordered: bool = False, start: str = "earliest",
                 auto_ack: bool = False, session_timeout: float = 10.0,
                 max_deliveries: Optional[int] = None, backoff: Optional[Backoff] = None,
                 dead_letter: Optional[str] = None) -> None:
        check_retry_policy(topic.name, max_deliveries, backoff, dead_letter)
        self.visibility_timeout = positive("visibility_timeout", visibility_timeout, maximum=43200)
        if type(max_in_flight) is not int:
            raise TypeError("max_in_flight must be int")
        if not 1 <= max_in_flight <= MAX_WINDOW:
            raise ConfigError(f"max_in_flight={max_in_flight} is outside 1..{MAX_WINDOW}")
        if not isinstance(ordered, bool):
            raise TypeError("ordered must be a bool")
        if ordered:
            raise Unsupported("ordered=True (one key's messages one at a time, in order) is not provided by "
                              "the JetStream backend: JetStream has no per-key ordered work queue; use "
                              "mode='stream', which delivers each partition in order")
        if start not in STARTS:
            raise ConfigError(f"start={start!r} must be 'earliest' or 'latest'")
        if not isinstance(auto_ack, bool):
            raise TypeError("auto_ack must be a bool")
        self.session_timeout = positive("session_timeout", session_timeout, maximum=3600)
        self.topic = topic
        self.group = group
        self.start = start
        self.auto_ack = auto_ack
        self.max_in_flight = max_in_flight
        self.ordered = False
        self.max_deliveries = max_deliveries
        self.backoff = backoff
        self.dead_letter = dead_letter
        self.member_id = 0
        self._broker: "JetStreamBroker" = topic._broker
        self._bridge = self._broker._bridge
        self._name = Names.queue_consumer(group)
        self._leases: LeaseTable = _lease_table(self._broker, topic.name, group)
        self._held: dict[tuple[int, int], JsMessage] = {}     # delivered to the application, unfinished
        self._held_lock = threading.Lock()
        self._lock = threading.RLock()                          # one poll at a time
        self._runner: Any = None
        self._stop_requested = False
        self._closed = False
        self._next_partition = 0
        self._ack_wait = self.visibility_timeout
        self._puller = Puller(topic, self._consumer_of, self)
        meta = self._broker._run(ensure_group(self._broker, topic.name, group, "queue", {
            "max_in_flight": max_in_flight, "visibility_timeout": self.visibility_timeout}))
        self._ack_wait = float(meta.get("visibility_timeout", self.visibility_timeout))
        self._puller.lease = self._ack_wait
        self._broker._run(self._setup(start))

    def _consumer_of(self, partition: int) -> Optional[str]:
        return self._name

    def _consumer_config(self, deliver: dict[str, Any]) -> dict[str, Any]:
        return {"durable_name": self._name, "ack_policy": "explicit", "ack_wait": int(self._ack_wait * 1e9),
                "max_ack_pending": self.max_in_flight, "max_deliver": -1, "replay_policy": "instant",
                "max_waiting": 512, "description": f"pyqueue queue group {self.group}", **deliver}

    async def _setup(self, start: str) -> None:
        await self._puller.start()
        deliver = {"deliver_policy": "all" if start == "earliest" else "new"}
        await asyncio.gather(*(self._ensure_consumer(p, deliver) for p in range(self.topic.partitions)))

    async def _ensure_consumer(self, partition: int, deliver: dict[str, Any], *, replace: bool = False) -> None:
        """Create the partition's durable consumer if missing (replace: delete
        it first, to move the group's position)."""
        client = self._broker.client
        stream = self.topic._streams[partition]
        deadline = self._broker._deadline()
        what = f"queue group {self.group!r} on topic {self.topic.name!r} partition {partition}"
        if replace:
            try:
                await client.api_retry(f"CONSUMER.DELETE.{stream}.{self._name}", deadline=deadline, what=what)
            except ApiError as e:
                if e.err_code != ERR_CONSUMER_NOT_FOUND:
                    raise
        else:
            try:
                await client.api_retry(f"CONSUMER.INFO.{stream}.{self._name}", deadline=deadline, what=what)
                return
            except ApiError as e:
                if e.err_code != ERR_CONSUMER_NOT_FOUND:
                    raise Unavailable(f"{what}: {e}") from e
        try:
            await client.api_retry(f"CONSUMER.DURABLE.CREATE.{stream}.{self._name}",
                                   {"stream_name": stream, "config": self._consumer_config(deliver)},
                                   deadline=deadline, what=what)
        except ApiError as e:
            # Created concurrently by another member with another start: theirs stands.
            try:
                await client.api(f"CONSUMER.INFO.{stream}.{self._name}")
            except ApiError:
                raise Unavailable(f"{what}: creating its durable consumer failed: {e}") from e

    # -- polling --

    def poll(self, timeout: Optional[float] = None) -> Optional[JsMessage]:
        """The next message, or None if none came within `timeout` seconds
        (None: wait without limit)."""
        msgs = self.poll_batch(1, timeout)
        return msgs[0] if msgs else None

    def poll_batch(self, n: int, timeout: Optional[float] = None) -> list[JsMessage]:
        """Up to n messages, each leased for the group's visibility timeout;
        waits up to `timeout` for at least one."""
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
                msgs = self._broker._run(self._apoll(n, deadline))
                if self.max_deliveries is not None:
                    msgs = self._screen(msgs)
                if msgs or (deadline is not None and time.monotonic() >= deadline):
                    return self._deliver(msgs)

    def _deliver(self, msgs: list[JsMessage]) -> list[JsMessage]:
        with self._held_lock:
            for m in msgs:
                self._held[(m.partition, m.offset)] = m
        if self.auto_ack:
            for m in msgs:
                self._ack(m)
        return msgs

    async def _apoll(self, n: int, deadline: Optional[float]) -> list[JsMessage]:
        puller = self._puller
        parts = self.topic.partitions
        while True:
            got = self._take(n)
            if got:
                return got
            first = self._next_partition
            self._next_partition = (first + 1) % parts
            for i in range(parts):
                need = n - len(puller.buffer)
                if need <= 0:
                    break
                req = await puller.pull((first + i) % parts, need, no_wait=True)
                if req is not None:
                    await req.done
            got = self._take(n)
            if got:
                return got
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return []
            linger = _LINGER if left is None else min(left, _LINGER)
            puller.arrived.clear()
            for p in range(parts):
                if not puller.outstanding(p):
                    await puller.pull(p, 1, no_wait=False, expires=linger)
            if not puller.buffer:
                try:
                    await asyncio.wait_for(puller.arrived.wait(), linger)
                except asyncio.TimeoutError:
                    pass

    def _take(self, n: int) -> list[JsMessage]:
        """Up to n buffered messages whose lease still runs here; a message
        that waited in the buffer past it is left to the server's redelivery."""
        buf = self._puller.buffer
        out: list[JsMessage] = []
        now = time.monotonic()
        while buf and len(out) < n:
            m = buf.popleft()
            if m._deadline <= now:
                continue
            if self._leases.acked_lately(m.partition, m.offset):
                m._done = True          # a copy of what this process acked: ack it too, drop it
                asyncio.get_running_loop().create_task(self._broker.client.nc.publish(m._reply, _ACK))
                continue
            if m._due_ns:
                if m.delivery_count == 1 or time.time_ns() < m._due_ns:
                    self._hold_back(m)
                    continue
                m.delivery_count -= 1     # the first delivery was the hold-back
            self._leases.note(m.partition, m.offset, m.delivery_count)
            out.append(m)
        return out

    def _hold_back(self, m: JsMessage) -> None:
        """A delayed message (send(delay=)) delivered before it is due, or
        for the first time: back to the server until due.  Its first
        delivery is always this hold-back, even when it is due already, so
        that the user's delivery count is the server's minus one whichever
        process sees which delivery."""
        m._done = True
        wait = m._due_ns - time.time_ns()
        body = b"-NAK" if wait <= 0 else b"-NAK " + json.dumps({"delay": wait}).encode()
        asyncio.get_running_loop().create_task(self._broker.client.nc.publish(m._reply, body))

    def __iter__(self) -> Iterator[JsMessage]:
        while not self._closed:
            try:
                m = self.poll(timeout=1.0)
            except Closed:
                return
            if m is not None:
                yield m

    # -- acks (called by JsMessage.ack/nack/extend) --

    def _finish(self, m: JsMessage, what: str) -> None:
        """Mark m finished here; LeaseLost if it was, or moved on."""
        if self._closed:
            raise Closed(f"consumer of group {self.group!r} on {self.topic.name!r} is closed")
        if m._done:
            raise LeaseLost(f"{what} of offset {m.offset} of {self.topic.name!r} partition {m.partition}: "
                            f"this delivery was already acked, nacked or dead-lettered")
        if self._leases.newer(m.partition, m.offset, m.delivery_count):
            raise LeaseLost(f"{what} of offset {m.offset} of {self.topic.name!r} partition {m.partition}: "
                            f"its lease expired and it was delivered again (delivery {m.delivery_count} "
                            f"is stale)")
        m._done = True
        with self._held_lock:
            if self._held.get((m.partition, m.offset)) is m:
                del self._held[(m.partition, m.offset)]

    def _send(self, m: JsMessage, payload: bytes) -> None:
        self._bridge.post(self._broker.client.nc.publish, m._reply, payload)

    def _ack(self, m: JsMessage) -> None:
        self._finish(m, "ack")
        self._send(m, _ACK)
        self._leases.forget(m.partition, m.offset, m.delivery_count)
        if time.monotonic() > m._deadline - min(0.5, self._ack_wait / 4):
            # Late (or nearly): the redelivery may be on its way.
            self._leases.acked(m.partition, m.offset, 2 * self._ack_wait + 1.0)

    def _nack(self, m: JsMessage, delay: Optional[float]) -> None:
        """Return m to the queue after `delay` seconds, or the backoff's delay
        for its delivery count when delay is None (at once without a backoff).
        A nack of the last delivery max_deliveries allows dead-letters the
        message at once, as on the embedded engine."""
        limit = self.max_deliveries
        if limit is not None and m.delivery_count >= limit:
            self._dead_letter(m, f"Nacked: delivery {m.delivery_count} of max_deliveries={limit}")
            return
        if delay is None:
            d = self.backoff.delay(m.delivery_count) if self.backoff else 0.0
        else:
            d = positive("delay", delay, allow_zero=True)
        self._finish(m, "nack")
        self._send(m, b"-NAK" if d <= 0 else b"-NAK " + json.dumps({"delay": int(d * 1e9)}).encode())

    def _extend(self, m: JsMessage, seconds: float) -> None:
        seconds = positive("seconds", seconds, maximum=43200)
        if self._closed:
            raise Closed(f"consumer of group {self.group!r} on {self.topic.name!r} is closed")
        if m._done or self._leases.newer(m.partition, m.offset, m.delivery_count):
            raise LeaseLost(f"extend of offset {m.offset} of {self.topic.name!r} partition {m.partition}: "
                            f"the delivery is finished or stale")
        self._send(m, _WPI)
        until = time.monotonic() + seconds
        m._deadline = max(m._deadline, time.monotonic() + max(seconds, self._ack_wait))
        if seconds > self._ack_wait:
            self._bridge.post(lambda: self._bridge.loop.create_task(self._keep_alive(m, until)))

    async def _keep_alive(self, m: JsMessage, until: float) -> None:
        """+WPI every AckWait/2 until the server's lease reaches `until`."""
        period = self._ack_wait / 2
        while not m._done and not self._closed and time.monotonic() + self._ack_wait < until:
            await asyncio.sleep(period)
            if m._done or self._closed:
                return
            try:
                await self._broker.client.nc.publish(m._reply, _WPI)
            except Exception:
                return

    # -- retries and dead letters (the runner calls _fail) --

    def _screen(self, msgs: list[JsMessage]) -> list[JsMessage]:
        keep = []
        assert self.max_deliveries is not None
        for m in msgs:
            if m.delivery_count > self.max_deliveries:
                self._dead_letter(m, f"LeaseExpired: delivered {m.delivery_count - 1} times without an ack")
            else:
                keep.append(m)
        return keep

    def _fail(self, m: JsMessage, error: BaseException) -> None:
        """A handler failed on m: retry with backoff, or dead-letter it."""
        if self.max_deliveries is not None and m.delivery_count >= self.max_deliveries:
            self._dead_letter(m, f"{type(error).__name__}: {error}")
        else:
            self._nack(m, None)

    def _dead_letter(self, m: JsMessage, error: str) -> None:
        if self.dead_letter is not None:
            self._broker.topic(self.dead_letter).send(
                m.value, key=m.key, headers=dead_letter_headers(m, error),
                dedup_id=f"pq-dlq:{m.topic}:{m.partition}:{m.offset}:{m.delivery_count}")
        try:
            self._finish(m, "dead letter")
        except LeaseLost:
            return
        self._send(m, _TERM)
        self._leases.forget(m.partition, m.offset, m.delivery_count)
        from pyqueue.jetstream.stats import count_dead_letter     # for stats(): dead_letters
        try:
            self._broker._run(count_dead_letter(self._broker, self.topic.name, self.group, m.partition))
        except Closed:
            pass

    def run(self, handler: Callable[[JsMessage], Any], concurrency: int = 1, *,
            install_signal_handlers: bool = True) -> int:
        """Process messages until close(), stop() or SIGTERM/SIGINT: handler
        returns -> ack; raises -> retry with backoff, or dead letter past
        max_deliveries.  Returns how many messages were handled."""
        from pyqueue.runner import run
        self._check_open()
        # The runner needs only poll_batch, _fail, _give_back and stop: it serves both backends.
        return run(self, handler, concurrency, install_signal_handlers)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Ask run() to finish; a stop() before run() starts makes that run()
        return at once."""
        self._stop_requested = True
        runner = self._runner
        if runner is not None:
            runner.stop()

    def _give_back(self, m: JsMessage) -> None:
        """A message a stopping run() leased but never handled: back to the
        queue at once, never dead-lettered (JetStream counts the delivery all
        the same)."""
        self._finish(m, "nack")
        self._send(m, b"-NAK")

    def _unread(self, msgs: list[JsMessage]) -> None:
        for m in msgs:
            try:
                self._give_back(m)
            except (LeaseLost, Closed):
                pass                      # acked meanwhile, or closing: close() returns the rest

    # -- positions --

    def seek(self, partition: int, offset: int) -> None:
        """Move the whole group's position on `partition` (its durable
        consumer is re-made to start there; what was in flight is forgotten:
        acks of earlier deliveries raise LeaseLost)."""
        self._check_open()
        self.topic._check_partition(partition)
        if type(offset) is not int:
            raise TypeError("offset must be int")
        start, end = self.topic.offsets(partition)
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"offset {offset} is outside {start}..{end} of partition {partition}")
        with self._lock:
            with self._held_lock:
                for k in [k for k in self._held if k[0] == partition]:
                    self._held.pop(k)._done = True
            self._broker._run(self._reseek(partition, offset))

    async def _reseek(self, partition: int, offset: int) -> None:
        self._leases.forget_partition(partition)
        for m in self._puller.forget(partition):
            m._done = True
        deliver = {"deliver_policy": "by_start_sequence", "opt_start_seq": offset + 1}
        await self._ensure_consumer(partition, deliver, replace=True)

    def seek_to_time(self, ts: float) -> None:
        for p in range(self.topic.partitions):
            self.seek(p, self.topic.offset_for_time(p, ts))

    def assignment(self) -> list[int]:
        self._check_open()
        return list(range(self.topic.partitions))

    def commit(self) -> None:
        """Nothing to do: acks are stored by the server as they come."""

    def members(self) -> list[dict[str, Any]]:
        """Queue-mode members are not tracked on this backend (the server
        hands messages to whoever pulls)."""
        return []

    def lag(self) -> dict[int, int]:
        """Per partition: messages not yet acked (in flight or never delivered)."""
        self._check_open()
        return {p: v["lag"] for p, v in self._broker._run(queue_lag(self._broker, self.topic, self.group)).items()}

    def in_flight(self) -> dict[int, dict[str, int]]:
        """Per partition: leased (delivered, unacked, including nacked ones
        waiting out a delay) and undelivered counts."""
        self._check_open()
        per = self._broker._run(queue_lag(self._broker, self.topic, self.group))
        return {p: {"leased": v["in_flight"], "undelivered": v["lag"] - v["in_flight"]} for p, v in per.items()}

    # -- closing --

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"consumer of group {self.group!r} on {self.topic.name!r} is closed")

    def close(self) -> None:
        """Return the messages this member holds (nack, at once) and stop pulling."""
        with self._held_lock:
            if self._closed:
                return
            self._closed = True
            held, self._held = list(self._held.values()), {}
        try:
            self._broker._run(self._release(held), 10)
        except (Closed, Exception):
            pass

    async def _release(self, held: list[JsMessage]) -> None:
        nc = self._broker.client.nc
        await self._puller.stop()
        pending = held + list(self._puller.buffer)
        self._puller.buffer.clear()
        for m in pending:
            if not m._done:
                m._done = True
                try:
                    await nc.publish(m._reply, b"-NAK")
                except Exception:
                    break
        try:
            await nc.flush(2)
        except Exception:
            pass

    def __enter__(self) -> "JsQueueConsumer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<JsQueueConsumer group={self.group!r} topic={self.topic.name!r}"
                f"{' closed' if self._closed else ''}>")


def _lease_table(broker: "JetStreamBroker", topic: str, group: str) -> LeaseTable:
    with broker._lock:
        tables = broker.__dict__.setdefault("_lease_tables", {})
        table = tables.get((topic, group))
        if table is None:
            table = tables[(topic, group)] = LeaseTable()
        return table


async def queue_lag(broker: "JetStreamBroker", topic: "JetStreamTopic", group: str) -> dict[int, dict[str, int]]:
    """Per partition: lag (not yet acked) and in_flight (delivered, unacked)."""
    name = Names.queue_consumer(group)

    async def one(p: int) -> dict[str, int]:
        try:
            info = await broker.client.api_retry(f"CONSUMER.INFO.{topic._streams[p]}.{name}",
                                                 deadline=broker._deadline(),
                                                 what=f"lag of group {group!r} on {topic.name!r}")
        except ApiError as e:
            if e.err_code == ERR_CONSUMER_NOT_FOUND:
                return {"lag": 0, "in_flight": 0}
            raise
        pending, acking = int(info.get("num_pending", 0)), int(info.get("num_ack_pending", 0))
        return {"lag": pending + acking, "in_flight": acking}

    res = await asyncio.gather(*(one(p) for p in range(topic.partitions)))
    return dict(enumerate(res))
