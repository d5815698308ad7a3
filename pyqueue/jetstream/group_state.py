"""Group state in the `{ns}_groups` KV bucket: what a consumer group is.

Keys (naming.py escapes topic T and group G):

    {ns}.{T}.{G}.meta  {"mode": "queue"|"stream", ...}: written once with create
                       (the first member wins); later members must agree
    {ns}.{T}.{G}.m.{id} a stream-mode member's heartbeat   (ownership.py)
    {ns}.{T}.{G}.p.{p} a stream-mode partition's owner, generation and
                       committed offset                   (ownership.py)
    {ns}.{T}.{G}.dl.{p} a queue-mode partition's count of dead letters
                       {"n": count}                        (stats.py)

Queue mode keeps nothing else here: its position, leases and delivery
counts are the durable consumer's, on the server.  The functions below are
coroutines run on the broker's loop.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from pyqueue.errors import ConfigError, CorruptionError, UnknownTopic
from pyqueue.jetstream.client import ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND, ApiError, retry_transient
from pyqueue.jetstream.errors import Unavailable
from pyqueue.jetstream.naming import Names, unescape

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker
    from pyqueue.jetstream.topic import JetStreamTopic

__all__ = ["ensure_group", "group_names", "delete_group", "purge_topic_groups", "read_meta", "get_state"]


def meta_key(names: Names, topic: str, group: str) -> str:
    return f"{names.group_prefix(topic, group)}.meta"


async def get_state(broker: "JetStreamBroker", key: str, what: str) -> Any:
    """The entry of `key` in the groups bucket, or None if it has none;
    read again through a leader election until the broker's timeout (then
    Unavailable naming `what`)."""
    import nats.js.errors
    try:
        return await retry_transient(lambda: broker._groups_kv.get(key), what, broker._deadline())
    except nats.js.errors.KeyNotFoundError:
        return None


async def read_meta(broker: "JetStreamBroker", topic: str, group: str) -> "dict[str, Any] | None":
    """The group's meta record, or None."""
    entry = await get_state(broker, meta_key(broker.names, topic, group),
                            f"reading the state of group {group!r} on topic {topic!r}")
    if entry is None:
        return None
    try:
        meta = json.loads(entry.value)
        if not isinstance(meta, dict) or meta.get("mode") not in ("queue", "stream"):
            raise ValueError(f"no mode in {meta!r}")
        return meta
    except ValueError as e:
        raise CorruptionError(f"KV bucket {broker.names.groups_bucket}, key {meta_key(broker.names, topic, group)}: "
                              f"unreadable group state ({e})") from e


async def ensure_group(broker: "JetStreamBroker", topic: str, group: str, mode: str,
                       settings: dict[str, Any]) -> dict[str, Any]:
    """The group's stored meta record, created from mode + settings if the
    group is new.  ConfigError if it exists in another mode or with other
    settings (each named)."""
    import nats.js.errors
    from pyqueue.jetstream.broker import _retryable, _unavailable
    deadline = broker._deadline()
    while True:
        meta = await read_meta(broker, topic, group)
        if meta is None:
            record = {"mode": mode, **settings}
            try:
                await broker._groups_kv.create(meta_key(broker.names, topic, group), json.dumps(record, sort_keys=True).encode())
                return record
            except nats.js.errors.KeyWrongLastSequenceError:
                if time.monotonic() > deadline:
                    raise Unavailable(f"group {group!r} on topic {topic!r}: its state keeps changing") from None
                continue           # created concurrently: compare with theirs
            except Exception as e:
                # A leader election: the create may have been stored, so read again first.
                if not _retryable(e, deadline):
                    raise _unavailable(f"creating the state of group {group!r} on topic {topic!r}", e) from e
                await asyncio.sleep(0.05)
                continue
        if meta["mode"] != mode:
            raise ConfigError(f"group {group!r} exists in {meta['mode']} mode; asked for {mode} mode")
        for k, v in settings.items():
            if k in meta and meta[k] != v:
                raise ConfigError(f"group {group!r} exists with {k}={meta[k]!r}; asked for {k}={v!r}"
                                  + (" (on the JetStream backend it is the group's, kept by its durable "
                                     "consumer; delete_group() to change it)" if k == "visibility_timeout" else ""))
        return meta


async def group_names(broker: "JetStreamBroker", topic: str) -> list[str]:
    prefix = broker.names.topic_key(topic) + "."
    keys = await broker.client.kv_keys(broker.names.groups_bucket, f"{prefix}*.meta", deadline=broker._deadline())
    return sorted(unescape(k[len(prefix):-len(".meta")]) for k in keys)


async def _consumer_names(broker: "JetStreamBroker", stream: str) -> list[str]:
    out: list[str] = []
    offset = 0
    while True:
        resp = await broker.client.api_retry(f"CONSUMER.NAMES.{stream}", {"offset": offset},
                                             deadline=broker._deadline(), what=f"listing consumers of {stream}")
        names = resp.get("consumers") or []
        out.extend(names)
        offset += len(names)
        if not names or offset >= int(resp.get("total", 0)):
            return out


async def delete_group(broker: "JetStreamBroker", topic: "JetStreamTopic", group: str) -> None:
    """Delete the group's consumers on every partition and its KV state."""
    meta = await read_meta(broker, topic.name, group)
    if meta is None:
        raise UnknownTopic(f"no group {group!r} on topic {topic.name!r}")
    queue_name = Names.queue_consumer(group)
    for p, stream in enumerate(topic._streams):
        try:
            names = await _consumer_names(broker, stream)
        except ApiError as e:
            if e.err_code == ERR_STREAM_NOT_FOUND:
                continue
            raise
        for name in names:
            if name == queue_name or Names.is_stream_consumer(name, group):
                await _delete_consumer(broker, stream, name)
    await _purge(broker, f"{broker.names.group_prefix(topic.name, group)}.>")


async def _delete_consumer(broker: "JetStreamBroker", stream: str, name: str) -> None:
    try:
        await broker.client.api_retry(f"CONSUMER.DELETE.{stream}.{name}", deadline=broker._deadline(),
                                      what=f"deleting consumer {name} of {stream}")
    except ApiError as e:
        if e.err_code not in (ERR_CONSUMER_NOT_FOUND, ERR_STREAM_NOT_FOUND):
            raise


async def _purge(broker: "JetStreamBroker", key_filter: str) -> None:
    await broker.client.purge_keys(broker.names.groups_bucket, key_filter, deadline=broker._deadline())


async def purge_topic_groups(broker: "JetStreamBroker", topic: str) -> None:
    await _purge(broker, f"{broker.names.topic_key(topic)}.>")
