"""Puller: pull requests to one JetStream consumer per partition, answered
on one inbox, with the delivered messages buffered in arrival order.

A pull request ($JS.API.CONSUMER.MSG.NEXT.<stream>.<consumer>) asks for up
to `batch` messages; its reply subject is <inbox>.<partition>.<request id>.
A status answer comes on that subject; a message keeps its own subject and
names its stream in its ack subject, and counts against the oldest open
request of its partition (a consumer serves waiting requests in order).  A request ends when `batch`
messages came, or on a status: 404 (no messages: a no_wait request found
none), 408 (expired, or a no_wait request delivered fewer than asked), 409
(the consumer refuses: deleted, too many waiting requests, ...).

nats-server 2.9 leaves some requests unanswered: one to a consumer that
does not exist, and a no_wait request once the consumer's MaxAckPending is
reached (none at all when it is full, no 408 after a short batch).  So a
no_wait request also ends when its last message says nothing more is
pending (the ack subject's pending count is 0), when no message follows the
last one within _QUIET, or when nothing came within _SILENCE; a waiting
request ends at its expiry plus _GRACE.  Ending a request early only ends
the wait: a late answer still lands in the buffer.

Messages can arrive after the caller stopped waiting (a lingering request
served just before it expired); they stay in the buffer, in order, and are
handed out first next time.  Everything here runs on the broker's loop.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyqueue.jetstream.client import ERR_STREAM_NOT_FOUND, ApiError
from pyqueue.jetstream.message import DELIVER_AT, JsMessage, from_nats_headers

if TYPE_CHECKING:
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["Puller", "Request", "parse_reply", "first_seq_at_or_after"]

_GRACE = 0.5        # seconds past a request's expiry before it is given up without an answer
_SILENCE = 0.1      # seconds a no_wait request may go unanswered (the window is full, or no consumer)
_QUIET = 0.005      # seconds without a next message that end a no_wait request's burst


def parse_reply(reply: str) -> tuple[str, int, int, int, int]:
    """(stream, delivery count, stream sequence, timestamp ns, pending) from
    a JetStream message's ack subject (the v1 form of 9 tokens, or the v2
    form of 11 or more)."""
    t = reply.split(".")
    if len(t) == 9:
        return t[2], int(t[4]), int(t[5]), int(t[7]), int(t[8])
    return t[4], int(t[6]), int(t[7]), int(t[9]), int(t[10])


def _due(text: str) -> int:
    """A Pq-Deliver-At header's epoch ns (0, due at once, if unreadable:
    a message is never held back by a header it cannot parse)."""
    try:
        return max(0, int(text))
    except ValueError:
        return 0


class Request:
    """One pull request: how many messages it may still bring, when it ends."""

    __slots__ = ("partition", "remaining", "expires_at", "done", "answered", "no_wait", "quiet")

    def __init__(self, partition: int, batch: int, expires_at: float, no_wait: bool) -> None:
        self.answered = False         # a status or a message came for it
        self.no_wait = no_wait
        self.quiet: Any = None        # the timer that ends a no_wait burst
        self.partition = partition
        self.remaining = batch
        self.expires_at = expires_at
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class Puller:
    """Pull requests and the buffer of delivered messages for one member."""

    def __init__(self, topic: "JetStreamTopic", consumers: Callable[[int], Optional[str]],
                 owner: Any) -> None:
        self.topic = topic
        self.client = topic._broker.client
        self._consumer_of = consumers      # partition -> consumer name (None: not pulled now)
        self._owner = owner
        self._ids = itertools.count(1)
        self._requests: dict[int, Request] = {}          # in the order sent
        self._partition_of = {name: p for p, name in enumerate(topic._streams)}
        self.buffer: "collections.deque[JsMessage]" = collections.deque()
        self.arrived = asyncio.Event()
        self._sub: Any = None
        self._inbox = ""
        self.lease = float("inf")       # seconds a delivery is ours (queue mode: AckWait)
        self.closed = False

    async def start(self) -> None:
        nc = self.client.nc
        self._inbox = nc.new_inbox()
        self._sub = await nc.subscribe(self._inbox + ".>", cb=self._on_msg,
                                       pending_msgs_limit=1 << 20, pending_bytes_limit=1 << 30)

    async def stop(self) -> None:
        self.closed = True
        for r in self._requests.values():
            r.finish()
        self._requests.clear()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
            self._sub = None

    def outstanding(self, partition: int) -> bool:
        """True if a request to `partition` may still bring messages."""
        now = time.monotonic()
        return any(r.partition == partition and not r.done.done() and r.expires_at > now
                   for r in self._requests.values())

    async def pull(self, partition: int, batch: int, *, no_wait: bool, expires: float = 0.0) -> Optional[Request]:
        """Send a pull request; the Request, or None if the partition has no
        consumer now.  no_wait: answered at once (404/408 when short);
        otherwise the server holds it up to `expires` seconds."""
        name = self._consumer_of(partition)
        if name is None or self.closed:
            return None
        rid = next(self._ids)
        body: dict[str, Any] = {"batch": batch}
        if no_wait:
            body["no_wait"] = True
            ends = time.monotonic() + _SILENCE
        else:
            body["expires"] = max(1_000_000, int(expires * 1e9))
            ends = time.monotonic() + expires + _GRACE
        req = Request(partition, batch, ends, no_wait)
        self._requests[rid] = req
        loop = asyncio.get_running_loop()
        loop.call_at(loop.time() + (ends - time.monotonic()), self._expire, rid)
        stream = self.topic._streams[partition]
        await self.client.nc.publish(f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}", json.dumps(body).encode(),
                                     reply=f"{self._inbox}.{partition}.{rid}")
        return req

    def _expire(self, rid: int) -> None:
        req = self._requests.pop(rid, None)
        if req is not None:
            req.finish()

    async def _on_msg(self, msg: Any) -> None:
        if not msg.reply:
            # A status (404, 408, 409): sent to the request's own reply subject.
            try:
                rid = int(msg.subject.rsplit(".", 1)[1])
            except (ValueError, IndexError):
                return
            req = self._requests.pop(rid, None)
            if req is not None:
                req.answered = True
                req.finish()
            return
        # A message keeps its own subject; its ack subject names the stream.
        # A consumer serves its waiting requests in order, so the message
        # counts against the partition's oldest open request.
        stream, dc, seq, ts, pending = parse_reply(msg.reply)
        partition = self._partition_of.get(stream)
        if partition is None:
            return
        key, headers = from_nats_headers(msg.headers)
        m = JsMessage(self.topic.name, partition, seq - 1, ts, key, msg.data, headers, dc, self._owner, msg.reply)
        m._deadline = time.monotonic() + self.lease          # the server leased it as it sent it
        if msg.headers and DELIVER_AT in msg.headers:
            m._due_ns = _due(msg.headers[DELIVER_AT])
        self.buffer.append(m)
        self.arrived.set()
        for rid, req in self._requests.items():
            if req.partition == partition:
                req.answered = True
                req.remaining -= 1
                if req.remaining <= 0 or (req.no_wait and pending == 0):
                    del self._requests[rid]
                    req.finish()
                elif req.no_wait:
                    if req.quiet is not None:
                        req.quiet.cancel()
                    req.quiet = asyncio.get_running_loop().call_later(_QUIET, self._expire, rid)
                break

    def forget(self, partition: int) -> list[JsMessage]:
        """Drop the partition's requests and buffered messages (it was
        released); returns the messages dropped."""
        for rid, r in list(self._requests.items()):
            if r.partition == partition:
                del self._requests[rid]
                r.finish()
        kept: "collections.deque[Any]" = collections.deque()
        dropped: list[Any] = []
        for m in self.buffer:
            (dropped if m.partition == partition else kept).append(m)
        self.buffer = kept
        return dropped


async def first_seq_at_or_after(topic: "JetStreamTopic", partition: int, ts: float) -> Optional[int]:
    """The first stream sequence stored at or after `ts` (epoch seconds), or
    None if there is none: the server's own time lookup, through an ephemeral
    consumer created to start at that time and deleted at once."""
    client = topic._broker.client
    stream = topic._streams[partition]
    from pyqueue.topic import _first_ns_at_or_after
    ns = max(0, _first_ns_at_or_after(ts))     # m.timestamp finds m despite float rounding
    secs, nanos = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{nanos:09d}Z"
    config = {"deliver_policy": "by_start_time", "opt_start_time": stamp, "ack_policy": "none",
              "inactive_threshold": 5_000_000_000, "mem_storage": True, "num_replicas": 1,
              "max_deliver": 1, "replay_policy": "instant"}
    deadline = topic._broker._deadline()
    try:
        info = await client.api_retry(f"CONSUMER.CREATE.{stream}", {"stream_name": stream, "config": config},
                                      deadline=deadline, what=f"time lookup in topic {topic.name!r}")
    except ApiError as e:
        if e.err_code == ERR_STREAM_NOT_FOUND:
            from pyqueue.errors import UnknownTopic
            raise UnknownTopic(f"topic {topic.name!r} was deleted") from None
        raise
    name = info["name"]
    try:
        if int(info.get("num_pending", 0)) == 0:
            return None
        return int(info["delivered"]["stream_seq"]) + 1
    finally:
        try:
            await client.api(f"CONSUMER.DELETE.{stream}.{name}", timeout=client.request_timeout)
        except (ApiError, Exception):
            pass     # it deletes itself after inactive_threshold
