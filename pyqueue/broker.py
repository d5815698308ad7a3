"""Broker: a directory holding topics; open it with pyqueue.open(path)."""

from __future__ import annotations

import builtins
import json
import math
import os
import shutil
import threading
import uuid
import weakref
from typing import TYPE_CHECKING, Any, Optional

from pyqueue.config import TopicConfig, validate_name
from pyqueue.errors import Closed, ConfigError, CorruptionError, UnknownTopic
from pyqueue.topic import Topic

if TYPE_CHECKING:
    from pyqueue.jobs import Jobs
    from pyqueue.scheduler import Scheduler

__all__ = ["Broker", "open"]

FSYNC_MODES = ("never", "interval", "always")
BROKER_FORMAT = 1
_RETENTION_PERIOD = 1.0   # seconds between age-retention checks


def open(path: "str | os.PathLike[str]", *, fsync: str = "interval", fsync_interval: float = 0.05,
         create: bool = True) -> "Broker":
    """Open (or create) the broker in directory `path`.

    fsync: "never" (survives a process crash, not an OS crash), "interval"
    (a background flush every fsync_interval seconds) or "always" (send
    returns once the message is on disk; concurrent senders share flushes).
    """
    return Broker(path, fsync=fsync, fsync_interval=fsync_interval, create=create)


class Broker:
    """A broker directory.  One Broker per process is enough; it is thread-safe.
    Open it after fork(), not before."""

    def __init__(self, path: "str | os.PathLike[str]", *, fsync: str = "interval",
                 fsync_interval: float = 0.05, create: bool = True) -> None:
        if fsync not in FSYNC_MODES:
            raise ConfigError(f"fsync={fsync!r} must be one of {', '.join(FSYNC_MODES)}")
        if (not isinstance(fsync_interval, (int, float)) or isinstance(fsync_interval, bool)
                or not math.isfinite(fsync_interval) or not 0.001 <= fsync_interval <= 3600):
            raise ConfigError(f"fsync_interval={fsync_interval!r} must be between 0.001 and 3600 seconds")
        self.path = os.path.abspath(os.fspath(path))
        self.fsync = fsync
        self.fsync_interval = float(fsync_interval)
        self._topics: dict[str, Topic] = {}
        self._consumers: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self._scheduler: Any = None
        self._jobs: Any = None
        self._lock = threading.RLock()
        self._closed = False
        self._init_directory(create)
        self._stop = threading.Event()
        self._upkeep = threading.Thread(target=self._upkeep_loop, name="pyqueue-upkeep", daemon=True)
        self._upkeep.start()

    def _init_directory(self, create: bool) -> None:
        meta = os.path.join(self.path, "broker.json")
        if not os.path.isdir(self.path):
            if not create:
                raise ConfigError(f"no broker at {self.path}")
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        os.makedirs(os.path.join(self.path, "topics"), mode=0o700, exist_ok=True)
        if not os.path.exists(meta):
            _write_once(meta, json.dumps({"format": BROKER_FORMAT}) + "\n")
        try:
            with _open_text(meta) as f:
                fmt = json.load(f).get("format")
        except (ValueError, AttributeError, UnicodeDecodeError) as e:
            raise CorruptionError(f"{meta}: unreadable broker metadata ({e})") from e
        if fmt != BROKER_FORMAT:
            raise CorruptionError(f"{meta}: broker format {fmt!r}, this version reads {BROKER_FORMAT}")

    def __enter__(self) -> "Broker":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<pyqueue.Broker {self.path!r} fsync={self.fsync}{' closed' if self._closed else ''}>"

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"broker {self.path} is closed")

    # -- topics --

    def _topic_dir(self, name: str) -> str:
        return os.path.join(self.path, "topics", name)

    def topic(self, name: str, *, partitions: Optional[int] = None, segment_bytes: Optional[int] = None,
              retention_bytes: Optional[int] = None, retention_seconds: Optional[float] = None,
              max_message_bytes: Optional[int] = None, max_depth: Optional[int] = None,
              dedup_window: Optional[float] = None, dedup_capacity: Optional[int] = None,
              create: bool = True) -> Topic:
        """Create the topic, or open it with its stored configuration.

        Options given explicitly must match the stored ones (else ConfigError)."""
        validate_name(name)
        requested = {"partitions": partitions, "segment_bytes": segment_bytes,
                     "retention_bytes": retention_bytes, "retention_seconds": retention_seconds,
                     "max_message_bytes": max_message_bytes, "max_depth": max_depth,
                     "dedup_window": dedup_window, "dedup_capacity": dedup_capacity}
        with self._lock:
            self._check_open()
            topic = self._topics.get(name)
            if topic is not None:
                topic.config.merged(name, requested)
                return topic
            tdir = self._topic_dir(name)
            cfg_path = os.path.join(tdir, "topic.json")
            if not os.path.exists(cfg_path):
                if not create:
                    raise UnknownTopic(f"no topic {name!r} in {self.path}")
                config = TopicConfig.for_create(requested)
                os.makedirs(tdir, mode=0o700, exist_ok=True)
                _write_once(cfg_path, config.to_json(name) + "\n")   # first creator wins
            try:
                with _open_text(cfg_path) as f:
                    text = f.read()
            except UnicodeDecodeError as e:
                raise CorruptionError(f"{cfg_path}: unreadable topic configuration ({e})") from e
            stored = TopicConfig.from_json(text, cfg_path)
            config = stored.merged(name, requested)
            topic = Topic(self, name, tdir, config)
            self._topics[name] = topic
            return topic

    def topics(self) -> list[str]:
        """Names of the topics in the broker, sorted."""
        self._check_open()
        root = os.path.join(self.path, "topics")
        return sorted(n for n in os.listdir(root)
                      if os.path.exists(os.path.join(root, n, "topic.json")))

    def delete_topic(self, name: str) -> None:
        """Delete the topic and its data.  Processes that still have it open
        keep reading what they mapped; new opens do not find it."""
        validate_name(name)
        with self._lock:
            self._check_open()
            tdir = self._topic_dir(name)
            if not os.path.exists(os.path.join(tdir, "topic.json")):
                raise UnknownTopic(f"no topic {name!r} in {self.path}")
            topic = self._topics.pop(name, None)
            if topic is not None:
                topic.close()
            trash = os.path.join(self.path, "trash")
            os.makedirs(trash, mode=0o700, exist_ok=True)
            doomed = os.path.join(trash, f"{name}.{uuid.uuid4().hex}")
            os.rename(tdir, doomed)        # atomic: the topic is gone at once
            shutil.rmtree(doomed, ignore_errors=True)

    def scheduler(self, **options: Any) -> "Scheduler":
        """The broker's durable scheduler (one object per broker handle).
        Options on first use: clock, misfire_grace, capacity."""
        from pyqueue.scheduler import Scheduler
        with self._lock:
            self._check_open()
            if self._scheduler is None:
                self._scheduler = Scheduler(self, **options)
            elif options:
                raise ConfigError("scheduler options are set on the first call to broker.scheduler()")
            return self._scheduler

    def jobs(self, **options: Any) -> "Jobs":
        """The broker's jobs: definitions, submit, schedule, status, workers
        (one object per broker handle).  Options on first use: keep."""
        from pyqueue.jobs import Jobs
        with self._lock:
            self._check_open()
            if self._jobs is None:
                self._jobs = Jobs(self, **options)
            elif options:
                raise ConfigError("jobs options are set on the first call to broker.jobs()")
            return self._jobs

    def stats(self) -> dict[str, Any]:
        """Per topic and partition: offsets, messages, segments, bytes."""
        with self._lock:
            self._check_open()
            names = self.topics()
        return {"path": self.path, "fsync": self.fsync,
                "topics": {n: self.topic(n).stats() for n in names}}

    def _register_consumer(self, consumer: Any) -> None:
        with self._lock:
            self._consumers.add(consumer)

    # -- upkeep --

    def _upkeep_loop(self) -> None:
        period = self.fsync_interval if self.fsync == "interval" else _RETENTION_PERIOD
        since_retention = 0.0
        while not self._stop.wait(period):
            with self._lock:
                topics = list(self._topics.values())
                consumers = list(self._consumers)
            for c in consumers:
                c._tick()
            since_retention += period
            for t in topics:
                try:
                    if self.fsync == "interval":
                        t._sync_all()
                    if since_retention >= _RETENTION_PERIOD and (
                            t.config.retention_seconds or t.config.retention_bytes):
                        t.enforce_retention()
                except Closed:
                    pass
                except Exception:   # a failing disk must not kill the flusher; sends report it
                    pass
            if since_retention >= _RETENTION_PERIOD:
                since_retention = 0.0

    def close(self) -> None:
        """Flush (unless fsync="never") and release every topic.  Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        if self._upkeep is not threading.current_thread():
            self._upkeep.join()
        if self._scheduler is not None:
            self._scheduler.close()
        if self._jobs is not None:
            self._jobs.close()
        with self._lock:
            topics, self._topics = list(self._topics.values()), {}
            consumers = list(self._consumers)
        for c in consumers:
            try:
                c.close()
            except Exception:   # a consumer failing to commit must not stop the close
                pass
        try:
            if self.fsync != "never":
                for t in topics:
                    t._sync_all()
        finally:
            for t in topics:
                t.close()


def _open_text(path: str):
    return builtins.open(path, encoding="utf-8")   # this module's open() is pyqueue.open


def _write_once(path: str, text: str) -> None:
    """Create `path` with `text` atomically unless it exists (first writer wins)."""
    tmp = f"{path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, text.encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)   # fails if another process created it first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
