"""Queue mode: SQS / RabbitMQ work-queue semantics on one machine.

Members compete for every partition's messages.  Each delivery is a lease of
visibility_timeout seconds held in the group's shared state: ack() finishes
it, nack(delay) returns it (at once or after a delay), extend() lengthens it,
and an expired lease makes the message deliverable again with its delivery
count raised.  An ack after the lease expired and the message was delivered
again raises LeaseLost.  The group's committed position per partition is its
lowest unfinished offset; at most max_in_flight messages per partition are
unfinished at a time (a full window makes poll wait).  ordered=True delivers
one key's messages one at a time, in order (SQS FIFO message groups).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyqueue._native import GROUP_MAX_WINDOW, GROUP_QUEUE, Message, encode_headers
from pyqueue.consumer import Consumer, positive
from pyqueue.errors import ConfigError, LeaseLost, OffsetOutOfRange
from pyqueue.policy import Backoff, check_retry_policy, dead_letter_headers

if TYPE_CHECKING:
    from pyqueue.topic import Topic


class QueueConsumer(Consumer):
    """SQS-style member.  Options: visibility_timeout (s), max_in_flight (per
    partition, fixed when the group is created), ordered, start, auto_ack,
    session_timeout, and the retry policy: max_deliveries (None: unlimited),
    backoff (a Backoff; None: failed messages come back at once) and
    dead_letter (a topic name; past max_deliveries a message goes there with
    x-original-* headers and is acked here; None: it is dropped with a count)."""

    mode = "queue"
    _group_mode = GROUP_QUEUE

    def __init__(self, topic: "Topic", group: str, *, visibility_timeout: float = 30.0,
                 max_in_flight: int = 1024, ordered: bool = False, start: str = "earliest",
                 auto_ack: bool = False, session_timeout: float = 10.0,
                 max_deliveries: Optional[int] = None, backoff: Optional[Backoff] = None,
                 dead_letter: Optional[str] = None) -> None:
        check_retry_policy(topic.name, max_deliveries, backoff, dead_letter)
        self.max_deliveries = max_deliveries
        self.backoff = backoff
        self.dead_letter = dead_letter
        self._runner: Any = None
        self._stop_requested = False
        self.visibility_timeout = positive("visibility_timeout", visibility_timeout, maximum=43200)
        if type(max_in_flight) is not int:
            raise TypeError("max_in_flight must be int")
        if not 1 <= max_in_flight <= GROUP_MAX_WINDOW:
            raise ConfigError(f"max_in_flight={max_in_flight} is outside 1..{GROUP_MAX_WINDOW}")
        if not isinstance(ordered, bool):
            raise TypeError("ordered must be a bool")
        self.max_in_flight = max_in_flight
        self.ordered = ordered
        self._next_partition = 0
        super().__init__(topic, group, start=start, auto_ack=auto_ack,
                         session_timeout=session_timeout, window=max_in_flight)
        self._next_partition = self.slot % topic.partitions   # members start apart
        for p in range(topic.partitions):          # a new group starts at earliest or latest
            start_off, end_off = topic.offsets(p)
            self._state.init_offset(p, start_off if start == "earliest" else end_off)

    def _fetch(self, n: int) -> tuple[list[Message], Optional[float]]:
        out: list[Message] = []
        due: Optional[float] = None
        parts = self.topic.partitions
        first = self._next_partition
        self._next_partition = (first + 1) % parts
        logs = self.topic._logs
        for i in range(parts):
            p = (first + i) % parts
            msgs, p_due = self._state.lease(p, logs[p], self.slot, self.visibility_timeout,
                                            self.ordered, n - len(out), self)
            if self.max_deliveries is not None:
                msgs = self._screen(msgs)
            out.extend(msgs)
            if p_due is not None and (due is None or p_due < due):
                due = p_due
            if len(out) >= n:
                break
        return out, due

    def _ack(self, m: Message) -> None:
        self._state.ack(m.partition, m.offset, m._lease_id)

    def _nack(self, m: Message, delay: Optional[float]) -> None:
        """Return m to the queue after `delay`, or the backoff's delay for its
        delivery count when delay is None.

        A delayed retry of an unordered queue leaves the in-flight window: the
        message is appended again (same partition, key, value and headers,
        with its delivery count and first offset in x-delivery-count and
        x-original-offset, deliverable after the delay) and the delivery is
        acked, so a message waiting out its backoff never holds back the
        messages behind it.  ordered=True keeps it in place, before its key's
        later messages.  A nack of the last delivery max_deliveries allows
        dead-letters the message at once."""
        limit = self.max_deliveries
        if limit is not None and m.delivery_count >= limit:
            self._dead_letter(m, f"Nacked: delivery {m.delivery_count} of max_deliveries={limit}")
            return
        if delay is None:
            d = self.backoff.delay(m.delivery_count) if self.backoff else 0.0
        else:
            d = positive("delay", delay, allow_zero=True)
        if d <= 0 or self.ordered:
            self._state.nack(m.partition, m.offset, m._lease_id, d)
            return
        headers = dict(m.headers)
        headers["x-delivery-count"] = str(m.delivery_count).encode()
        headers.setdefault("x-original-offset", str(m.offset).encode())
        self.topic._logs[m.partition].append(m.value, m.key, encode_headers(headers),
                                             time.time_ns() + int(d * 1e9))
        self._ack(m)     # a LeaseLost here leaves a duplicate: at least once

    # -- retries and dead letters --

    def _screen(self, msgs: list[Message]) -> list[Message]:
        """Dead-letter messages delivered more than max_deliveries times
        without an ack (their handlers crashed or their leases expired)."""
        keep = []
        limit = self.max_deliveries
        for m in msgs:
            if limit is not None and m.delivery_count > limit:
                self._dead_letter(m, f"LeaseExpired: delivered {m.delivery_count - 1} times "
                                     f"without an ack")
            else:
                keep.append(m)
        return keep

    def _fail(self, m: Message, error: BaseException) -> None:
        """A handler failed on m: retry with backoff, or dead-letter it."""
        if self.max_deliveries is not None and m.delivery_count >= self.max_deliveries:
            self._dead_letter(m, f"{type(error).__name__}: {error}")
        else:
            self._nack(m, None)

    def _dead_letter(self, m: Message, error: str) -> None:
        if self.dead_letter is not None:
            self.topic._broker.topic(self.dead_letter).send(m.value, key=m.key,
                                                            headers=dead_letter_headers(m, error))
        try:
            self._ack(m)
        except LeaseLost:
            return              # another member finished it meanwhile
        self._state.count_dead_letter(m.partition)

    def run(self, handler: Callable[[Message], Any], concurrency: int = 1, *,
            install_signal_handlers: bool = True) -> int:
        """Process messages until close(), stop() or SIGTERM/SIGINT: handler
        returns -> ack; raises -> retry with backoff, or dead letter past
        max_deliveries.  Returns how many messages were handled."""
        from pyqueue.runner import run
        self._check_open()
        return run(self, handler, concurrency, install_signal_handlers)

    def stop(self) -> None:
        """Ask run() to finish (from a handler, a signal or another thread); a
        stop() before run() starts makes that run() return at once."""
        self._stop_requested = True
        runner = self._runner
        if runner is not None:
            runner.stop()

    def _give_back(self, m: Message) -> None:
        """Give back a message never handed to a handler (run() stopping):
        deliverable again at once, and not counted as a delivery."""
        self._state.release(m.partition, m.offset, m._lease_id)

    def _extend(self, m: Message, seconds: float) -> None:
        self._state.extend(m.partition, m.offset, m._lease_id,
                           positive("seconds", seconds, maximum=43200))

    def seek(self, partition: int, offset: int) -> None:
        """Move the whole group's position on `partition` (forgetting its
        in-flight messages): replay from an earlier offset or skip ahead."""
        self._check_open()
        self.topic._log(partition)
        start, end = self.topic.offsets(partition)
        if type(offset) is not int:
            raise TypeError("offset must be int")
        if not start <= offset <= end:
            raise OffsetOutOfRange(f"offset {offset} is outside {start}..{end} of partition {partition}")
        self._state.seek(partition, self.member_id, offset)

    def seek_to_time(self, ts: float) -> None:
        for p in range(self.topic.partitions):
            self.seek(p, self.topic.offset_for_time(p, ts))

    def assignment(self) -> list[int]:
        self._check_open()
        return list(range(self.topic.partitions))

    def lag(self) -> dict[int, int]:
        """Per partition: messages not yet acked (in flight or never delivered)."""
        self._check_open()
        out = {}
        for p in range(self.topic.partitions):
            committed = self._state.partition_info(p)["committed"]
            start, end = self.topic.offsets(p)
            out[p] = end - max(committed if committed is not None else start, start)
        return out

    def in_flight(self) -> dict[int, dict[str, int]]:
        """Per partition: leased, ready (to redeliver), delayed counts."""
        return {p: {k: v for k, v in self._state.partition_info(p).items()
                    if k in ("leased", "ready", "delayed")}
                for p in range(self.topic.partitions)}
