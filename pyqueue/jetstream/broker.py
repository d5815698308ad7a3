"""JetStreamBroker: pyqueue's Broker API over a NATS JetStream cluster.

connect(url) opens one nats-py connection (on the Bridge's event loop) and
two KV buckets, shared by all namespaces: `pyqueue_topics` (each topic's
configuration, written once with create: the first creator wins, as
topic.json does on disk) and `pyqueue_groups` (consumer-group state, see
group_state.py); each is created on first use, with the broker's replicas.  A topic
with N partitions is N streams (naming.py), each replicated `replicas`
times (default: 3, or the cluster's size if smaller).

Sends run on a connection of the sending thread's own (direct.py); the rest
runs on the broker's loop thread (bridge.py).  broker.scheduler() adds a
third bucket, `pyqueue_schedules`, on first use (scheduler.py).  The broker is thread-safe;
every blocking call has a deadline (`timeout`,
default 30 s, for calls that retry through a leader election; a single
request waits at most `request_timeout`, default 2 s, before it is retried
or reported).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any, Optional

from pyqueue.config import TopicConfig, validate_name
from pyqueue.errors import Closed, ConfigError, CorruptionError, UnknownTopic
from pyqueue.jetstream.bridge import Bridge
from pyqueue.jetstream.direct import DirectSenders
from pyqueue.jetstream.client import (ERR_INSUFFICIENT_RESOURCES, ERR_REPLICAS_UNSUPPORTED, ERR_STREAM_NOT_FOUND,
                                      ApiError, Client, connect_options, display_url, parse_url)
from pyqueue.jetstream.errors import Unavailable, Unsupported
from pyqueue.jetstream.naming import Names, unescape

if TYPE_CHECKING:
    from pyqueue.jetstream.scheduler import JetStreamScheduler

__all__ = ["JetStreamBroker", "connect"]

TOPIC_FORMAT = 1
KiB = 1024
# Room left in a NATS message for pyqueue's own headers (key, dedup id, the
# encoded extra headers' base64 growth is counted against the message).
_HEADER_ROOM = 8 * KiB


def connect(url: str, *, namespace: str = "pq", replicas: Optional[int] = None, timeout: float = 30.0,
            connect_timeout: float = 5.0, request_timeout: float = 2.0,
            name: Optional[str] = None, direct_sends: bool = True, user: Optional[str] = None,
            password: Optional[str] = None, token: Optional[str] = None,
            tls: Optional[ssl.SSLContext] = None) -> "JetStreamBroker":
    """Connect to a JetStream cluster: "nats://host:port,nats://host:port,...".

    namespace: prefix of every stream, subject and bucket pyqueue creates.
    replicas: copies of each partition's stream (default min(3, cluster size)).
    timeout: how long a call may retry through failures before Unavailable.
    connect_timeout: how long connecting may take before Unavailable.
    request_timeout: how long one request waits before it is retried.
    direct_sends: each producing thread sends on a connection of its own,
    driven by that thread (no thread handoff per send; see direct.py).
    user and password, or token: the server's authorization (they may also
    be in the URL: nats://user:password@host:port); never shown in messages.
    tls: an ssl.SSLContext for tls:// servers (or servers that require TLS)
    whose certificates a default context would not trust, or to present a
    client certificate."""
    return JetStreamBroker(url, namespace=namespace, replicas=replicas, timeout=timeout,
                           connect_timeout=connect_timeout, request_timeout=request_timeout, name=name,
                           direct_sends=direct_sends, user=user, password=password, token=token, tls=tls)


def _seconds(name: str, value: object, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not lo < value <= hi:
        raise ConfigError(f"{name}={value!r} must be more than {lo:g} and at most {hi:g} seconds")
    return float(value)


class JetStreamBroker:
    """A broker whose topics live in a JetStream cluster.  Same API as
    pyqueue.Broker; what this backend lacks raises Unsupported."""

    backend = "jetstream"

    def __init__(self, url: str, *, namespace: str = "pq", replicas: Optional[int] = None,
                 timeout: float = 30.0, connect_timeout: float = 5.0, request_timeout: float = 2.0,
                 name: Optional[str] = None, direct_sends: bool = True, user: Optional[str] = None,
                 password: Optional[str] = None, token: Optional[str] = None,
                 tls: Optional[ssl.SSLContext] = None) -> None:
        self.servers = parse_url(url)
        self.url = display_url(self.servers)
        self._auth = connect_options(self.servers, user=user, password=password, token=token, tls=tls)
        self.names = Names(namespace)
        self.timeout = _seconds("timeout", timeout, 0, 86400)
        self.connect_timeout = _seconds("connect_timeout", connect_timeout, 0, 3600)
        self.request_timeout = _seconds("request_timeout", request_timeout, 0, 3600)
        if replicas is not None and (type(replicas) is not int or not 1 <= replicas <= 5):
            raise ConfigError(f"replicas={replicas!r} must be an int in 1..5 (JetStream's limit)")
        self._lock = threading.RLock()
        self._topics: dict[str, Any] = {}
        self._consumers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._scheduler: "Optional[JetStreamScheduler]" = None
        self._jobs: Any = None
        self._closed = False
        if not isinstance(direct_sends, bool):
            raise TypeError("direct_sends must be a bool")
        self._direct = DirectSenders(self) if direct_sends else None
        self._bridge = Bridge()
        try:
            self.client: Client = self._bridge.run(Client.open(
                self.servers, connect_timeout=self.connect_timeout, request_timeout=self.request_timeout,
                name=name, auth=self._auth))
            self.replicas = replicas if replicas is not None else min(3, self.client.cluster_size)
            self.max_payload = int(self.client.nc._server_info.get("max_payload", 1 << 20))
            self._topics_kv, self._groups_kv = self._bridge.run(self._open_buckets(), self.timeout)
        except BaseException:
            self._shutdown()
            raise

    # -- plumbing --

    def _run(self, coro: Any, timeout: Optional[float] = None) -> Any:
        """Run a coroutine on the loop (see Bridge.run); Closed once closed."""
        if self._closed:
            coro.close()
            raise Closed(f"broker {self.url} is closed")
        return self._bridge.run(coro, timeout)

    def _send(self, make: Any) -> Any:
        """Run make(client) for a send: on this thread's own connection
        (direct sends), else on the broker's loop."""
        if self._closed:
            raise Closed(f"broker {self.url} is closed")
        if self._direct is not None:
            return self._direct.run(make)
        return self._bridge.run(make(self.client))

    def _deadline(self, timeout: Optional[float] = None) -> float:
        return time.monotonic() + (self.timeout if timeout is None else timeout)

    async def _open_buckets(self) -> tuple[Any, Any]:
        return (await self._bucket(self.names.topics_bucket, "pyqueue topic configurations"),
                await self._bucket(self.names.groups_bucket, "pyqueue consumer-group state"))

    async def _bucket(self, bucket: str, description: str) -> Any:
        """Open the KV bucket, creating it (history 1, leader reads) if missing."""
        import nats.js.errors
        from nats.js import api
        js = self.client.nc.jetstream(timeout=self.request_timeout)
        deadline = self._deadline()
        while True:
            try:
                return await js.key_value(bucket)
            except nats.js.errors.BucketNotFoundError:
                pass
            except Exception as e:
                if not _retryable(e, deadline):
                    raise _unavailable(f"opening KV bucket {bucket}", e) from e
                await asyncio.sleep(0.1)
                continue
            try:
                return await js.create_key_value(api.KeyValueConfig(
                    bucket=bucket, description=description, history=1, replicas=self.replicas,
                    storage=api.StorageType.FILE, direct=False))
            except Exception as e:
                if _api_code(e) in (ERR_REPLICAS_UNSUPPORTED, ERR_INSUFFICIENT_RESOURCES):
                    raise ConfigError(f"replicas={self.replicas}: the cluster at {self.url} cannot hold "
                                      f"{self.replicas} copies ({e})") from e
                if not _retryable(e, deadline) and _api_code(e) != 10058:
                    raise _unavailable(f"creating KV bucket {bucket}", e) from e
                await asyncio.sleep(0.1)    # created concurrently, or the cluster is settling

    def __enter__(self) -> "JetStreamBroker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"<pyqueue.JetStreamBroker {self.url!r} namespace={self.names.ns!r}"
                f"{' closed' if self._closed else ''}>")

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"broker {self.url} is closed")

    @property
    def server_version(self) -> tuple[int, int, int]:
        """The connected nats-server's version."""
        return self.client.version

    # -- topics --

    def topic(self, name: str, *, partitions: Optional[int] = None, segment_bytes: Optional[int] = None,
              retention_bytes: Optional[int] = None, retention_seconds: Optional[float] = None,
              max_message_bytes: Optional[int] = None, max_depth: Optional[int] = None,
              dedup_window: Optional[float] = None, dedup_capacity: Optional[int] = None,
              replicas: Optional[int] = None, create: bool = True) -> Any:
        """Create the topic (its configuration in KV, then one stream per
        partition), or open it with its stored configuration.  Options given
        explicitly must match the stored ones (else ConfigError).

        max_depth: sends wait while the topic holds that many unfinished
        messages, counted in pyqueue's layer (backpressure.py: approximate
        across processes).  segment_bytes and dedup_capacity are recorded
        and checked but have no effect: JetStream sizes its own blocks and
        its dedup table has no capacity."""
        from pyqueue.jetstream.topic import JetStreamTopic
        validate_name(name)
        if replicas is not None and (type(replicas) is not int or not 1 <= replicas <= 5):
            raise ConfigError(f"replicas={replicas!r} must be an int in 1..5")
        requested = {"partitions": partitions, "segment_bytes": segment_bytes,
                     "retention_bytes": retention_bytes, "retention_seconds": retention_seconds,
                     "max_message_bytes": max_message_bytes, "max_depth": max_depth,
                     "dedup_window": dedup_window, "dedup_capacity": dedup_capacity}
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
            if topic is not None:
                topic.config.merged(name, requested)
                _check_replicas(name, topic.replicas, replicas)
                return topic
        if partitions is not None and type(partitions) is int:
            self.names.check_topic(name, max(1, min(partitions, 1024)))
        config, stored_replicas = self._run(self._topic_config(name, requested, replicas, create))
        _check_replicas(name, stored_replicas, replicas)
        self.names.check_topic(name, config.partitions)
        self._run(self._ensure_streams(name, config, stored_replicas))
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
            if topic is None:
                topic = JetStreamTopic(self, name, config, stored_replicas)
                self._topics[name] = topic
            return topic

    async def _topic_config(self, name: str, requested: dict[str, Any], replicas: Optional[int],
                            create: bool) -> tuple[TopicConfig, int]:
        import nats.js.errors
        key = self.names.topic_key(name)
        deadline = self._deadline()
        while True:
            try:
                entry = await self._topics_kv.get(key)
                return _parse_topic(name, entry.value, self.names.topics_bucket, requested)
            except nats.js.errors.KeyNotFoundError:
                pass
            except Exception as e:
                if not _retryable(e, deadline):
                    raise _unavailable(f"reading the configuration of topic {name!r}", e) from e
                await asyncio.sleep(0.05)
                continue
            if not create:
                raise UnknownTopic(f"no topic {name!r} in namespace {self.names.ns!r} at {self.url}")
            given = dict(requested)
            if given.get("max_message_bytes") is None and given.get("segment_bytes") is None:
                given["max_message_bytes"] = min(TopicConfig.max_message_bytes, self.max_payload - _HEADER_ROOM)
            config = TopicConfig.for_create(given)
            if config.max_message_bytes > self.max_payload - _HEADER_ROOM:
                raise ConfigError(f"max_message_bytes={config.max_message_bytes} does not fit the server's "
                                  f"max_payload of {self.max_payload} bytes less {_HEADER_ROOM} for headers")
            record = {"format": TOPIC_FORMAT, "name": name, "backend": "jetstream",
                      "replicas": replicas or self.replicas, **config.__dict__}
            try:
                await self._topics_kv.create(key, json.dumps(record, sort_keys=True).encode())
                return config, record["replicas"]
            except nats.js.errors.KeyWrongLastSequenceError:
                continue             # created meanwhile: read theirs
            except Exception as e:
                if not _retryable(e, deadline):
                    raise _unavailable(f"creating topic {name!r}", e) from e
                await asyncio.sleep(0.05)

    def _stream_config(self, name: str, p: int, config: TopicConfig, replicas: int) -> dict[str, Any]:
        window = config.dedup_window
        if config.retention_seconds:
            window = min(window, config.retention_seconds)   # the server requires window <= max_age
        return {
            "name": self.names.stream(name, p), "subjects": [self.names.subject(name, p)],
            "description": f"pyqueue topic {name} partition {p}",
            "retention": "limits", "storage": "file", "num_replicas": replicas, "discard": "old",
            "max_msgs": -1, "max_bytes": config.retention_bytes or -1, "max_msgs_per_subject": -1,
            "max_age": int((config.retention_seconds or 0) * 1e9), "max_msg_size": self.max_payload,
            "duplicate_window": int(window * 1e9), "deny_delete": True, "deny_purge": False,
            "allow_rollup_hdrs": False, "allow_direct": False,
        }

    async def _ensure_streams(self, name: str, config: TopicConfig, replicas: int) -> None:
        """Create the partition streams that do not exist (a creator may have
        died between the configuration and its streams)."""
        deadline = self._deadline()

        async def one(p: int) -> None:
            stream = self.names.stream(name, p)
            try:
                await self.client.api_retry(f"STREAM.INFO.{stream}", deadline=deadline,
                                            what=f"topic {name!r} partition {p}")
                return
            except ApiError as e:
                if e.err_code != ERR_STREAM_NOT_FOUND:
                    raise
            while True:
                try:
                    await self.client.api_retry(f"STREAM.CREATE.{stream}",
                                                self._stream_config(name, p, config, replicas),
                                                deadline=deadline, what=f"creating stream {stream}")
                    return
                except ApiError as e:
                    if e.err_code in (ERR_REPLICAS_UNSUPPORTED, ERR_INSUFFICIENT_RESOURCES):
                        raise ConfigError(f"topic {name!r} asks for {replicas} replicas; the cluster at "
                                          f"{self.url} cannot hold them ({e.description})") from e
                    if e.err_code == 10058:      # created meanwhile (maybe by a racing opener)
                        return
                    raise Unavailable(f"creating stream {stream} for topic {name!r}: {e}") from e

        await asyncio.gather(*(one(p) for p in range(config.partitions)))

    def topics(self) -> list[str]:
        """Names of the namespace's topics, sorted."""
        self._check_open()
        return self._run(self._topic_names(), self.timeout + 1)

    async def _topic_names(self) -> list[str]:
        prefix = self.names.ns + "."
        keys = await self.client.kv_keys(self.names.topics_bucket, prefix + "*", deadline=self._deadline())
        return sorted(unescape(k[len(prefix):]) for k in keys)

    def delete_topic(self, name: str) -> None:
        """Delete the topic: its streams, its configuration and its groups' state."""
        validate_name(name)
        self._check_open()
        self._run(self._topic_config(name, {}, None, create=False))   # UnknownTopic if missing
        with self._lock:
            topic = self._topics.pop(name, None)
        if topic is not None:
            topic.close()
        self._run(self._delete_topic(name))

    async def _delete_topic(self, name: str) -> None:
        from pyqueue.jetstream.group_state import purge_topic_groups
        deadline = self._deadline()
        key = self.names.topic_key(name)
        record = await self._topics_kv.get(key)
        partitions = int(json.loads(record.value)["partitions"])
        # The configuration goes first: a concurrent open then fails instead
        # of finding half a topic; streams left by a crash here are re-made
        # (empty) only if the topic is created again.
        await self.client.purge_keys(self.names.topics_bucket, key, deadline=deadline)
        for p in range(partitions):
            stream = self.names.stream(name, p)
            try:
                await self.client.api_retry(f"STREAM.DELETE.{stream}", deadline=deadline,
                                            what=f"deleting stream {stream}")
            except ApiError as e:
                if e.err_code != ERR_STREAM_NOT_FOUND:
                    raise
        await purge_topic_groups(self, name)

    def scheduler(self, **options: Any) -> "JetStreamScheduler":
        """The namespace's durable scheduler (one object per broker handle;
        see jetstream/scheduler.py).  Options on first use: clock,
        misfire_grace, capacity, lease_ttl."""
        from pyqueue.jetstream.scheduler import JetStreamScheduler
        with self._lock:
            self._check_open()
            if self._scheduler is None:
                self._scheduler = JetStreamScheduler(self, **options)
            elif options:
                raise ConfigError("scheduler options are set on the first call to broker.scheduler()")
            return self._scheduler

    def jobs(self, **options: Any) -> Any:
        """The namespace's jobs (pyqueue.jobs.Jobs, one object per broker
        handle): definitions, states and worker heartbeats in the
        `pyqueue_jobs` KV bucket (job_store.py), messages on this broker's
        topics.  Options on first use: keep.  schedule() goes through
        scheduler()."""
        from pyqueue.jobs import Jobs
        from pyqueue.jetstream.job_store import JsJobStore
        with self._lock:
            self._check_open()
            if self._jobs is not None:
                if options:
                    raise ConfigError("jobs options are set on the first call to broker.jobs()")
                return self._jobs
        jobs = Jobs(self, store=JsJobStore(self), **options)    # type: ignore[arg-type]
        with self._lock:
            self._check_open()
            if self._jobs is None:
                self._jobs = jobs
            return self._jobs

    def stats(self) -> dict[str, Any]:
        """Topic.stats() of every topic, with the embedded broker's keys
        (`path` and `fsync` are None here) and the cluster's url, namespace
        and server version.  A topic deleted meanwhile is left out."""
        self._check_open()
        topics: dict[str, Any] = {}
        for n in self.topics():
            try:
                topics[n] = self.topic(n, create=False).stats()
            except UnknownTopic:
                pass
        return {"path": None, "fsync": None, "url": self.url, "namespace": self.names.ns, "backend": "jetstream",
                "server_version": ".".join(map(str, self.client.version)), "topics": topics}

    def _register_consumer(self, consumer: Any) -> None:
        with self._lock:
            self._consumers.add(consumer)

    def close(self) -> None:
        """Close consumers (returning what they hold), then the connection.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            scheduler, self._scheduler = self._scheduler, None
        if scheduler is not None:
            try:
                scheduler.close()             # gives its lease up while the connection is open
            except Exception:
                pass
        with self._lock:
            consumers = list(self._consumers)
            topics, self._topics = list(self._topics.values()), {}
            jobs, self._jobs = self._jobs, None
        if jobs is not None:
            jobs.close()
        for c in consumers:
            try:
                c.close()
            except Exception:   # a consumer failing to commit must not stop the close
                pass
        for t in topics:
            t.close()
        with self._lock:
            self._closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        from pyqueue.jetstream.aio import shutdown
        shutdown(self)
        if self._direct is not None:
            self._direct.close()
        client = getattr(self, "client", None)
        if client is not None:
            try:
                self._bridge.run(client.close(), 10)
            except Exception:
                pass
        self._bridge.close()


def _check_replicas(name: str, stored: int, asked: Optional[int]) -> None:
    if asked is not None and asked != stored:
        raise ConfigError(f"topic {name!r} exists with replicas={stored}; asked for replicas={asked}")


def _parse_topic(name: str, raw: Optional[bytes], bucket: str,
                 requested: dict[str, Any]) -> tuple[TopicConfig, int]:
    try:
        data = json.loads(raw or b"")
        if not isinstance(data, dict) or data.get("format") != TOPIC_FORMAT:
            raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
        replicas = int(data["replicas"])
        fields = set(TopicConfig.__dataclass_fields__)
        config = TopicConfig(**{k: v for k, v in data.items() if k in fields})
    except (ValueError, TypeError, KeyError, ConfigError) as e:
        raise CorruptionError(f"KV bucket {bucket}: unreadable configuration of topic {name!r} ({e})") from e
    return config.merged(name, requested), replicas


def _api_code(e: BaseException) -> int:
    return int(getattr(e, "err_code", 0) or 0)


def _retryable(e: BaseException, deadline: float) -> bool:
    from pyqueue.jetstream.client import is_transient
    import nats.js.errors
    transient = is_transient(e) or isinstance(e, nats.js.errors.ServiceUnavailableError) or (
        isinstance(e, nats.js.errors.APIError) and getattr(e, "code", 0) == 503)
    return transient and time.monotonic() < deadline


def _unavailable(what: str, e: BaseException) -> BaseException:
    from pyqueue.jetstream.client import describe
    if isinstance(e, (Closed, ConfigError, Unavailable, Unsupported)):
        return e
    return Unavailable(f"{what}: {describe(e)}")
