"""Names on the server: streams, subjects, consumers and KV keys for pyqueue's
topics and groups.

Topic and group names are [A-Za-z0-9._-]; a stream or consumer name may not
hold '.', and a subject token may not be empty, so a name is escaped: '_' and
'.' become '_5f' and '_2e' (two hex digits), every other character stays.
The escaped form holds no '.' and no raw '_' other than an escape's, which
keeps every mapping below injective:

    topic T, partition p   stream   {ns}_{esc(T)}_{p}        subject  {ns}.{esc(T)}.{p}
    queue group G          consumer {esc(G)}                 (a shared durable, on every partition's stream)
    stream group G         consumer {esc(G)}_s{generation}   (one per partition owner, R1;
                                    re-made as ..._s{generation}r{k} if its server is lost)
    KV buckets             pyqueue_topics (topic configs), pyqueue_groups (group state),
                           pyqueue_schedules (the scheduler's, made on first use),
                           pyqueue_jobs (job definitions, states, workers; job_store.py)
    topic config key       {ns}.{esc(T)}
    group state key        {ns}.{esc(T)}.{esc(G)}.{what}
    schedule S             {ns}.def.{esc(S)} (definition), {ns}.fired.{esc(S)} (progress)
    scheduler              {ns}.lease (the active scheduler's lease), {ns}.meta (capacity)
    job keys               {ns}.defs, {ns}.j.{id}, {ns}.f.{hash}.{time}, {ns}.w.{host}.{pid}

The namespace `ns` (default "pq", connect(namespace=)) is [A-Za-z0-9]{1,32},
so that several pyqueue deployments can share one NATS account.  The
buckets are shared by every namespace (their keys start with it): a new
namespace costs no new replicated stream.  Stream
names are at most 255 bytes on the server; a topic whose stream name would
be longer is refused with InvalidName.
"""

from __future__ import annotations

import re

from pyqueue.config import validate_name
from pyqueue.errors import ConfigError, InvalidName

__all__ = ["Names", "escape", "unescape", "validate_namespace", "MAX_STREAM_NAME"]

MAX_STREAM_NAME = 255
_NAMESPACE = re.compile(r"[A-Za-z0-9]{1,32}\Z")


def escape(name: str) -> str:
    """'_' -> '_5f', '.' -> '_2e'; other characters of a valid name unchanged."""
    return name.replace("_", "_5f").replace(".", "_2e")


_ESCAPED = re.compile(r"_(5f|2e)")


def unescape(name: str) -> str:
    """The inverse of escape()."""
    return _ESCAPED.sub(lambda m: "_" if m.group(1) == "5f" else ".", name)


def validate_namespace(ns: object) -> str:
    if not isinstance(ns, str):
        raise TypeError(f"namespace must be str, not {type(ns).__name__}")
    if not _NAMESPACE.match(ns):
        raise ConfigError(f"namespace={ns!r} must be 1 to 32 characters of [A-Za-z0-9]")
    return ns


class Names:
    """The server-side names of one namespace."""

    __slots__ = ("ns", "topics_bucket", "groups_bucket", "schedules_bucket", "jobs_bucket")

    def __init__(self, ns: str) -> None:
        self.ns = validate_namespace(ns)
        self.topics_bucket = "pyqueue_topics"
        self.groups_bucket = "pyqueue_groups"
        self.schedules_bucket = "pyqueue_schedules"
        self.jobs_bucket = "pyqueue_jobs"

    def check_topic(self, topic: str, partitions: int) -> None:
        """InvalidName if the topic's longest stream name is too long for the server."""
        validate_name(topic)
        longest = len(self.stream(topic, partitions - 1))
        if longest > MAX_STREAM_NAME:
            raise InvalidName(f"topic name {topic!r} makes stream names of {longest} characters; "
                              f"the JetStream backend allows {MAX_STREAM_NAME} "
                              f"(use a shorter name or namespace)")

    def stream(self, topic: str, partition: int) -> str:
        return f"{self.ns}_{escape(topic)}_{partition}"

    def subject(self, topic: str, partition: int) -> str:
        return f"{self.ns}.{escape(topic)}.{partition}"

    @staticmethod
    def queue_consumer(group: str) -> str:
        return escape(group)

    @staticmethod
    def stream_consumer(group: str, generation: int, incarnation: int = 0) -> str:
        base = f"{escape(group)}_s{generation}"
        return base if incarnation == 0 else f"{base}r{incarnation}"

    @staticmethod
    def is_stream_consumer(name: str, group: str) -> bool:
        """True for a consumer name that stream_consumer(group, ...) makes."""
        return re.fullmatch(re.escape(escape(group)) + r"_s\d+(r\d+)?", name) is not None

    def topic_key(self, topic: str) -> str:
        return f"{self.ns}.{escape(topic)}"

    def group_prefix(self, topic: str, group: str) -> str:
        return f"{self.ns}.{escape(topic)}.{escape(group)}"

    def schedule_key(self, schedule: str) -> str:
        return f"{self.ns}.def.{escape(schedule)}"

    def fired_key(self, schedule: str) -> str:
        return f"{self.ns}.fired.{escape(schedule)}"

    def scheduler_key(self, what: str) -> str:
        """{ns}.lease or {ns}.meta"""
        return f"{self.ns}.{what}"
