"""Jobs: define, submit, schedule, watch and cancel jobs; run workers.

Get it with broker.jobs().  The definitions and job states live in the
broker's job store (store_api.StoreAPI): on the embedded engine jobs/jobs.db
in the broker directory, on JetStream a KV bucket (jetstream/job_store.py).
The messages travel on the broker's queue topics (one per definition's
queue, "jobs" by default), the schedules in the broker's scheduler.  Any
process that opens the broker may call any method.
"""

from __future__ import annotations

import builtins
import math
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Optional, Sequence

from pyqueue.config import validate_name
from pyqueue.errors import Closed, ConfigError, MessageTooLarge
from pyqueue.jobs.definition import DEFAULT_MAX_RESULT_BYTES, JobDefinition
from pyqueue.jobs.errors import JobFailed, ResultTimeout, UnknownJob
from pyqueue.jobs.status import STATES, SUCCEEDED, JobStatus, format_id, parse_id
from pyqueue.jobs.store_api import StoreAPI
from pyqueue.policy import Backoff

if TYPE_CHECKING:
    from pyqueue.broker import Broker
    from pyqueue.topic import Topic

__all__ = ["Jobs", "DEFAULT_KEEP"]

DEFAULT_KEEP = 86400.0           # seconds a finished job's state is kept
_HEADROOM = 512                  # bytes of a message besides its payload (headers, frame)
_DEFINITIONS_TTL = 1.0           # seconds a process trusts its cached definitions


class Jobs:
    """The broker's jobs.  keep: seconds a finished job's state is kept
    (workers remove older ones).  store: the job store (default: SQLite in
    the broker directory; the JetStream broker passes its KV store)."""

    def __init__(self, broker: "Broker", *, keep: float = DEFAULT_KEEP, store: Optional[StoreAPI] = None) -> None:
        if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not math.isfinite(keep) or keep <= 0:
            raise ConfigError(f"keep={keep!r} must be a number of seconds > 0")
        self.broker = broker
        self.keep = float(keep)
        path = getattr(broker, "path", None)
        # where the jobs live, for messages: the broker directory, or the cluster and namespace
        self.where: str = path if path is not None else f"{broker.url} namespace {broker.names.ns}"  # type: ignore[attr-defined]
        self.dir = os.path.join(path, "jobs") if path is not None else None
        self.jetstream = getattr(broker, "backend", "embedded") == "jetstream"
        if store is None:
            from pyqueue.jobs.store import JobStore
            store = JobStore(os.path.join(broker.path, "jobs"), fsync=broker.fsync)
        self._store: StoreAPI = store
        self._lock = threading.Lock()
        self._defs: dict[str, JobDefinition] = {}
        self._defs_version = -1
        self._defs_checked = 0.0
        self._topics: dict[str, "Topic"] = {}
        self._closed = False

    def __repr__(self) -> str:
        return f"<pyqueue.Jobs {self.where!r}>"

    def _check_open(self) -> None:
        if self._closed:
            raise Closed(f"the jobs of {self.where} are closed")

    # -- definitions --

    def define(self, name: str, target: Optional[str] = None, *, command: Optional[Sequence[str]] = None,
               timeout: Optional[float] = None, memory_limit: Optional[int] = None, max_retries: int = 0,
               backoff: Optional[Backoff] = None, queue: str = "jobs",
               max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> JobDefinition:
        """Define (or redefine) job `name`: target="package.module:function"
        or command=[argv...].  Stored in the broker, so workers see it.
        Redefining a job changes what its next attempts do; workers import a
        target's module once, so new code needs a worker restart."""
        self._check_open()
        d = JobDefinition.create(name, target, command=command, timeout=timeout, memory_limit=memory_limit,
                                 max_retries=max_retries, backoff=backoff, queue=queue,
                                 max_result_bytes=max_result_bytes)
        self._topic(queue)
        self._store.define(d)
        with self._lock:
            self._defs[name] = d
            self._defs_checked = 0.0
        return d

    def undefine(self, name: str) -> bool:
        """Remove a definition; False if there was none.  Its queued jobs fail when a worker meets them."""
        self._check_open()
        with self._lock:
            self._defs.pop(name, None)
            self._defs_checked = 0.0
        return self._store.undefine(name)

    def definition(self, name: str) -> JobDefinition:
        """The stored definition of `name` (UnknownJob if there is none)."""
        self._check_open()
        validate_name(name, "job")
        now = time.monotonic()
        with self._lock:
            if now - self._defs_checked >= _DEFINITIONS_TTL or name not in self._defs:
                version = self._store.definitions_version()
                if version != self._defs_version:
                    self._defs = self._store.definitions()
                    self._defs_version = version
                self._defs_checked = now
            d = self._defs.get(name)
        if d is None:
            known = ", ".join(sorted(self._defs)) or "none"
            raise UnknownJob(f"no job named {name!r} is defined in {self.where} (defined: {known})")
        return d

    def definitions(self) -> list[JobDefinition]:
        self._check_open()
        return list(self._store.definitions().values())

    def _topic(self, queue: str) -> "Topic":
        t = self._topics.get(queue)
        if t is None:
            t = self._topics[queue] = self.broker.topic(queue)
        return t

    # -- submitting --

    def submit(self, name: str, /, *args: Any, **kwargs: Any) -> str:
        """Queue one run of job `name` with JSON arguments; returns its job id.
        UnknownJob for a name without definition; TypeError for arguments JSON
        cannot carry; MessageTooLarge past the queue's max_message_bytes."""
        self._check_open()
        d = self.definition(name)
        payload = d.encode_args(args, kwargs)
        topic = self._topic(d.queue)
        limit = topic.config.max_message_bytes - _HEADROOM
        if len(payload) > limit:
            raise MessageTooLarge(f"arguments of job {name!r} are {len(payload)} bytes of JSON; queue "
                                  f"{d.queue!r} takes at most {limit} (max_message_bytes less {_HEADROOM})")
        jid = self._store.insert(name, time.time_ns())     # the row exists before any worker can see the message
        headers = {"x-job": name.encode(), "x-job-id": format_id(jid).encode()}
        try:
            if self.jetstream:      # a dedup id makes the send safe to retry through a failover
                topic.send(payload, headers=headers, dedup_id=f"pq-job:{format_id(jid)}")
            else:
                topic.send(payload, headers=headers)
        except BaseException:
            self._store.delete(jid)
            raise
        return format_id(jid)

    def schedule(self, name: str, *, cron: Optional[str] = None, every: Optional[float] = None, at: Any = None,
                 timezone: Optional[str] = None, args: Sequence[Any] = (), kwargs: Optional[dict[str, Any]] = None,
                 id: Optional[str] = None, start: Any = None, end: Any = None, misfire: str = "coalesce") -> str:
        """Run job `name` on a schedule (exactly one of cron=, every=, at=),
        through the broker's durable scheduler, which workers run.  Each fire
        becomes one job (listed with its schedule_id and scheduled_for).
        Returns the schedule id (default "job.<name>"; adding it again
        replaces it and keeps its fire history)."""
        self._check_open()
        d = self.definition(name)
        if isinstance(args, (str, bytes)) or not isinstance(args, (list, tuple)):
            raise TypeError("args must be a list or tuple of JSON arguments")
        if kwargs is not None and not isinstance(kwargs, dict):
            raise TypeError("kwargs must be a dict of JSON arguments")
        payload = d.encode_args(tuple(args), dict(kwargs or {}))
        sid = f"job.{name}" if id is None else id
        self._topic(d.queue)
        self.broker.scheduler().add(sid, topic=d.queue, value=payload, headers={"x-job": name.encode()}, cron=cron,
                                    every=every, at=at, timezone=timezone, start=start, end=end, misfire=misfire)
        return sid

    def unschedule(self, id: str) -> bool:
        """Remove a schedule made by schedule(); False if there was none."""
        self._check_open()
        return self.broker.scheduler().remove(id)

    # -- watching --

    def _id(self, job_id: str) -> int:
        jid = parse_id(job_id)
        if jid is None:
            raise UnknownJob(f"{job_id!r} is not a job id (16 hex digits, as submit() returns)")
        return jid

    def status(self, job_id: str) -> JobStatus:
        """The job's state, attempts, times, result or error, exit code."""
        self._check_open()
        st = self._store.get(self._id(job_id))
        if st is None:
            raise UnknownJob(f"no job {job_id} in {self.where} (never submitted, or finished more than "
                             f"keep={self.keep:g} s ago)")
        return st

    def result(self, job_id: str, timeout: Optional[float] = None) -> Any:
        """Wait for the job to end and return its result.  JobFailed (with
        .status) if it ended otherwise; ResultTimeout after `timeout` seconds."""
        if timeout is not None and (not isinstance(timeout, (int, float)) or isinstance(timeout, bool)
                                    or not math.isfinite(timeout) or timeout < 0):
            raise ConfigError(f"timeout={timeout!r} must be None or a number of seconds >= 0")
        self._check_open()
        jid = self._id(job_id)
        st = self._store.wait(jid, timeout)
        if st is None:
            raise UnknownJob(f"no job {job_id} in {self.where} (never submitted, or finished more than "
                             f"keep={self.keep:g} s ago)")
        if not st.done:
            raise ResultTimeout(f"job {job_id} ({st.name}) is still {st.state} after {timeout} s")
        if st.state == SUCCEEDED:
            return st.result
        first = (st.error or "").split("\n", 1)[0]
        raise JobFailed(f"job {job_id} ({st.name}) ended {st.state} after {st.attempts} attempt(s)"
                        + (f": {first}" if first else ""), st)

    def cancel(self, job_id: str) -> bool:
        """Cancel a job: a queued one never runs; a running one is killed by
        its worker within about a second.  False if the job had ended already."""
        self._check_open()
        prior = self._store.cancel(self._id(job_id), time.time_ns())
        if prior is None:
            raise UnknownJob(f"no job {job_id} in {self.where}")
        return prior in ("queued", "running")

    def list(self, state: Optional[str] = None, name: Optional[str] = None, limit: int = 100) -> list[JobStatus]:
        """Jobs, newest first, filtered by state and/or name."""
        self._check_open()
        if state is not None and state not in STATES:
            raise ConfigError(f"state={state!r} must be one of {', '.join(STATES)}")
        if type(limit) is not int or limit < 1:
            raise ConfigError(f"limit={limit!r} must be a positive int")
        return self._store.list(state, name, limit)

    def counts(self) -> dict[str, int]:
        """How many jobs are in each state."""
        self._check_open()
        return self._store.counts()

    def workers(self) -> "builtins.list[dict[str, Any]]":
        """The workers that reported a heartbeat: pid, queue, concurrency, times, running, done."""
        self._check_open()
        return self._store.workers()

    # -- working --

    def work(self, concurrency: int = 1, *, queue: str = "jobs", visibility_timeout: float = 30.0,
             scheduler: bool = True, grace: Optional[float] = 30.0, install_signal_handlers: bool = True) -> int:
        """Run jobs of `queue` in `concurrency` child processes until SIGTERM,
        SIGINT or an error; also runs the broker's scheduler (standing by if
        another process runs it).  grace: seconds a stop waits for running
        jobs before killing them and returning them to the queue.  Returns how
        many job outcomes were recorded."""
        self._check_open()
        from pyqueue.jobs.worker import Worker
        return Worker(self, concurrency=concurrency, queue=queue, visibility_timeout=visibility_timeout,
                      scheduler=scheduler, grace=grace, install_signal_handlers=install_signal_handlers).run()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._store.close()
