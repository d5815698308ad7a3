"""Topic.stats() on the JetStream backend: the embedded engine's keys,
read from the server.

Per partition (the stream's state):

    start, end, messages, bytes   first_seq - 1, last_seq, messages, bytes
    depth                         end - the slowest group's committed position
                                  (end - start without a group), as embedded
    segments, synced              None: the server's block files and its
                                  syncs are not pyqueue's to count

Per group and partition:

    committed           queue mode: the durable consumer's ack floor (its
                        stream sequence, which is the offset of the first
                        message not acked; see _first_unacked for a consumer
                        whose first delivery is not acked yet); stream mode:
                        the offset in KV
    lag                 queue mode: num_pending + num_ack_pending (messages
                        not acked: never delivered, or delivered and not
                        acked); a message acked above the ack floor is not
                        counted, where the embedded engine counts it until
                        the committed position passes it.  Stream mode:
                        end - committed
    in_flight           queue mode: num_ack_pending (a nacked message waiting
                        out its delay is counted here: the server keeps it
                        pending); stream mode: 0
    delayed             queue mode: None (the server does not tell a NAK with
                        a delay from a lease); stream mode: 0
    dead_letters        queue mode: a counter in the KV bucket pyqueue_groups
                        (key {group prefix}.dl.{p}), bumped by the member that
                        dead-lettered the message once it is terminated on the
                        source; stream mode: 0
    oldest_unacked_age  now - the timestamp of the message at the committed
                        offset (a MSG.GET of sequence committed + 1 from the
                        stream leader), None when nothing is unacked: the
                        same measure as embedded (the age of the message, not
                        of its lease).  It compares this host's clock with the
                        server's
    damaged             None (no local files to find damaged)

Per group: mode, lag, in_flight, dead_letters (sums), oldest_unacked_age
(the largest), partitions, and members: stream mode, the member records in
KV that are not deleted and were written within their session_timeout (the
server's time of the write against this host's clock); queue mode, None:
pull consumers have no membership on the server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import TYPE_CHECKING, Any, Optional

from pyqueue.jetstream.client import ERR_CONSUMER_NOT_FOUND, ERR_NO_MESSAGE, ApiError, is_transient
from pyqueue.jetstream.group_state import get_state
from pyqueue.jetstream.naming import Names

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["topic_stats", "count_dead_letter", "dead_letters_key", "queue_committed"]


def dead_letters_key(names: Names, topic: str, group: str, partition: int) -> str:
    return f"{names.group_prefix(topic, group)}.dl.{partition}"


async def topic_stats(topic: "JetStreamTopic") -> dict[str, Any]:
    from pyqueue.jetstream.group_state import group_names, read_meta
    broker = topic._broker
    states = await asyncio.gather(*(topic._state(p) for p in range(topic.partitions)))
    parts: dict[int, dict[str, Any]] = {}
    for p, st in enumerate(states):
        first, last = int(st.get("first_seq", 0)), int(st.get("last_seq", 0))
        start = max(first, 1) - 1 if first else last
        parts[p] = {"start": start, "end": last, "messages": int(st.get("messages", 0)),
                    "bytes": int(st.get("bytes", 0)), "segments": None, "synced": None}
    groups: dict[str, Any] = {}
    for group in await group_names(broker, topic.name):
        meta = await read_meta(broker, topic.name, group)
        if meta is None:                    # deleted meanwhile
            continue
        groups[group] = await _group(topic, group, meta["mode"], parts)
    for p, part in parts.items():
        floor = min((g["partitions"][p]["committed"] for g in groups.values()), default=part["start"])
        part["depth"] = max(0, part["end"] - floor)
    now = time.time()
    for g in groups.values():
        for p, v in g["partitions"].items():
            ts = v.pop("_oldest_ns")
            v["oldest_unacked_age"] = None if ts is None else max(0.0, now - ts / 1e9)
        ages = [v["oldest_unacked_age"] for v in g["partitions"].values() if v["oldest_unacked_age"] is not None]
        g["oldest_unacked_age"] = max(ages) if ages else None
    return {"partitions": parts, "groups": groups, "depth": sum(v["depth"] for v in parts.values()),
            "config": topic.config.__dict__.copy(), "replicas": topic.replicas}


async def _group(topic: "JetStreamTopic", group: str, mode: str, parts: dict[int, dict[str, Any]]) -> dict[str, Any]:
    broker = topic._broker
    one = _queue_partition if mode == "queue" else _stream_partition
    per = dict(zip(parts, await asyncio.gather(*(one(topic, group, p, parts[p]) for p in parts))))
    members = await _stream_members(broker, topic.name, group) if mode == "stream" else None
    return {"mode": mode, "members": members,
            "lag": sum(v["lag"] for v in per.values()),
            "in_flight": sum(v["in_flight"] for v in per.values()),
            "dead_letters": sum(v["dead_letters"] for v in per.values()),
            "oldest_unacked_age": None, "partitions": per}


async def _queue_partition(topic: "JetStreamTopic", group: str, p: int, part: dict[str, Any]) -> dict[str, Any]:
    broker = topic._broker
    start, end = part["start"], part["end"]
    try:
        info = await broker.client.api_retry(f"CONSUMER.INFO.{topic._streams[p]}.{Names.queue_consumer(group)}",
                                             deadline=broker._deadline(),
                                             what=f"stats of group {group!r} on {topic.name!r}")
    except ApiError as e:
        if e.err_code != ERR_CONSUMER_NOT_FOUND:
            raise
        info = None                 # the group's first member is making it: all is unread
    if info is None:
        committed, lag, in_flight = start, end - start, 0
    else:
        in_flight = int(info.get("num_ack_pending", 0))
        lag = int(info.get("num_pending", 0)) + in_flight
        committed = queue_committed(info, start, end)
    oldest = await _timestamp(topic, p, committed) if lag and committed < end else None
    return {"committed": committed, "lag": lag, "in_flight": in_flight, "delayed": None,
            "dead_letters": await _dead_letters(broker, topic.name, group, p),
            "oldest_unacked_age": None, "_oldest_ns": oldest, "damaged": None}


def queue_committed(info: dict[str, Any], start: int, end: int) -> int:
    """A queue group's committed position on a partition (start..end), from
    its durable consumer's info (what depth and max_depth count from)."""
    return min(end, max(start, _first_unacked(info, start, int(info.get("num_ack_pending", 0)))))


def _first_unacked(info: dict[str, Any], start: int, in_flight: int) -> int:
    """The offset of a queue group's first unacked message, from its durable
    consumer's info: the ack floor's stream sequence once its first delivery
    is acked.  Before that the server reports a floor of 0, so: with nothing
    in flight, everything delivered is done (the delivered sequence); else
    the consumer's start (deliver_policy "all": the retained start;
    "by_start_sequence": that sequence - 1); for "new", the delivered
    sequence less what is in flight (exact unless a later delivery was acked
    before the first)."""
    delivered = int((info.get("delivered") or {}).get("stream_seq", 0))
    if in_flight == 0:
        return delivered
    floor = info.get("ack_floor") or {}
    if int(floor.get("consumer_seq", 0)) > 0:
        return int(floor.get("stream_seq", 0))
    config = info.get("config") or {}
    policy = config.get("deliver_policy")
    if policy == "by_start_sequence":
        return int(config.get("opt_start_seq", 1)) - 1
    if policy == "all":
        return start
    return delivered - in_flight


async def _stream_partition(topic: "JetStreamTopic", group: str, p: int, part: dict[str, Any]) -> dict[str, Any]:
    broker = topic._broker
    start, end = part["start"], part["end"]
    e = await get_state(broker, f"{broker.names.group_prefix(topic.name, group)}.p.{p}",
                        f"stats of group {group!r} on topic {topic.name!r}")
    committed = start if e is None else max(start, int(json.loads(e.value or b"{}").get("committed", start)))
    committed = min(committed, end)
    oldest = await _timestamp(topic, p, committed) if committed < end else None
    return {"committed": committed, "lag": end - committed, "in_flight": 0, "delayed": 0, "dead_letters": 0,
            "oldest_unacked_age": None, "_oldest_ns": oldest, "damaged": None}


async def _timestamp(topic: "JetStreamTopic", p: int, offset: int) -> Optional[int]:
    """The server's timestamp (ns) of the message at `offset`; None if it is
    gone (retention, or a race with it)."""
    try:
        m = await topic._get(p, offset + 1, topic._broker._deadline())
    except ApiError as e:
        if e.err_code == ERR_NO_MESSAGE:
            return None
        raise
    return None if m is None else int(m.timestamp * 1e9)


async def _dead_letters(broker: "JetStreamBroker", topic: str, group: str, p: int) -> int:
    e = await get_state(broker, dead_letters_key(broker.names, topic, group, p),
                        f"dead letters of group {group!r} on topic {topic!r}")
    if e is None:
        return 0
    try:
        return int(json.loads(e.value or b"{}").get("n", 0))
    except ValueError:
        return 0


async def _stream_members(broker: "JetStreamBroker", topic: str, group: str) -> int:
    """Member records of a stream-mode group that are live: not deleted, and
    written within their session_timeout."""
    from pyqueue.jetstream.topic import parse_time_ns
    bucket = broker.names.groups_bucket
    prefix = broker.names.group_prefix(topic, group)
    keys = await broker.client.kv_keys(bucket, f"{prefix}.m.*", deadline=broker._deadline())

    async def live(key: str) -> bool:
        try:
            resp = await broker.client.api_retry(f"STREAM.MSG.GET.KV_{bucket}",
                                                 {"last_by_subj": f"$KV.{bucket}.{key}"},
                                                 deadline=broker._deadline(), what=f"member record {key}")
        except ApiError as e:
            if e.err_code == ERR_NO_MESSAGE:
                return False
            raise
        raw = resp.get("message") or {}
        if raw.get("hdrs") and b"KV-Operation" in base64.b64decode(raw["hdrs"]):   # DEL or PURGE marker
            return False
        try:
            record = json.loads(base64.b64decode(raw["data"]) if raw.get("data") else b"")
            timeout = float(record.get("session_timeout", 10.0))
        except (ValueError, TypeError, AttributeError):
            return False
        return time.time() - parse_time_ns(raw["time"]) / 1e9 <= timeout

    return sum(await asyncio.gather(*(live(k) for k in keys)))


async def count_dead_letter(broker: "JetStreamBroker", topic: str, group: str, p: int) -> None:
    """Add one to the group's dead-letter count of partition p (a CAS loop on
    its KV key).  Best effort: a failure to reach the bucket in time leaves
    the message uncounted, never the dead letter undone."""
    import nats.js.errors
    kv = broker._groups_kv
    key = dead_letters_key(broker.names, topic, group, p)
    deadline = time.monotonic() + min(broker.timeout, 5.0)
    while time.monotonic() < deadline:
        try:
            try:
                e = await kv.get(key)
                n, rev = int(json.loads(e.value or b"{}").get("n", 0)), e.revision
            except nats.js.errors.KeyNotFoundError:
                n, rev = 0, None
            body = json.dumps({"n": n + 1}).encode()
            if rev is None:
                await kv.create(key, body)
            else:
                await kv.update(key, body, last=rev)
            return
        except nats.js.errors.KeyWrongLastSequenceError:
            continue                # another member counted meanwhile
        except Exception as e:
            if not is_transient(e):
                return
            await asyncio.sleep(0.1)
