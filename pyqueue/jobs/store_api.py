"""StoreAPI: what Jobs and the Worker need of a job store, whatever holds it.

Two stores implement it: pyqueue.jobs.store.JobStore (SQLite in the broker
directory, the embedded engine) and pyqueue.jetstream.job_store.JsJobStore
(a KV bucket of a JetStream cluster).  Ids are the integers new_id() makes
(time in µs << 10 | 10 random bits), so id order is submission order.

State changes are conditional: write(), heartbeat() and cancel() change a
job only while it is queued or running, atomically (a SQLite transaction,
or a compare-and-set on the KV key's revision), so a cancel racing a
worker's final write resolves one way: whichever lands first stands and
the other leaves the job alone.
"""

from __future__ import annotations

import builtins
import concurrent.futures
from typing import Any, Iterable, Optional, Protocol, Sequence

from pyqueue.jobs.definition import JobDefinition
from pyqueue.jobs.status import JobStatus

__all__ = ["StoreAPI"]


class StoreAPI(Protocol):
    # the largest JSON result a job may record here (None: the definition's max_result_bytes only)
    max_result_bytes: Optional[int]

    # -- definitions --
    def define(self, d: JobDefinition) -> None: ...
    def undefine(self, name: str) -> bool: ...
    def definitions_version(self) -> int: ...
    def definitions(self) -> dict[str, JobDefinition]: ...

    # -- submit side --
    def insert(self, name: str, now_ns: int) -> int: ...
    def insert_many(self, name: str, n: int, now_ns: int) -> list[int]: ...
    def delete(self, jid: int) -> None: ...
    def insert_fire(self, name: str, schedule_id: str, scheduled_ns: int, now_ns: int) -> tuple[int, str, int]: ...

    # -- reading --
    def states(self, ids: Sequence[int]) -> dict[int, tuple[str, int]]: ...
    def get(self, jid: int) -> Optional[JobStatus]: ...
    def list(self, state: Optional[str] = None, name: Optional[str] = None, limit: int = 100,
             newest_first: bool = True) -> "builtins.list[JobStatus]": ...
    def counts(self) -> dict[str, int]: ...

    def wait(self, jid: int, timeout: Optional[float]) -> Optional[JobStatus]:
        """The job's status once it is final, or as it is when `timeout`
        seconds (None: no limit) have passed; None if there is no such job."""
        ...

    # -- changes --
    def cancel(self, jid: int, now_ns: int) -> Optional[str]: ...
    def write(self, running: Iterable[tuple], finals: Iterable[tuple]) -> None: ...

    def write_async(self, running: Iterable[tuple], finals: Iterable[tuple]) -> "concurrent.futures.Future[None]":
        """write() begun: the future is done once it is (at once where a
        write is a local transaction; a worker goes on meanwhile)."""
        ...
    def heartbeat(self, ids: Sequence[int], now_ns: int) -> set[int]: ...

    def wake(self) -> None:
        """A worker wrote outcomes and settled their messages: waiters look
        again (a no-op where waiters watch the records themselves)."""
        ...
    def purge(self, keep: float, now_ns: int) -> int: ...

    # -- workers --
    def worker_beat(self, host: str, pid: int, queue: str, concurrency: int, started_ns: int, now_ns: int,
                    running: int, done: int) -> None: ...
    def worker_gone(self, host: str, pid: int) -> None: ...
    def workers(self) -> "builtins.list[dict[str, Any]]": ...

    # -- handles --
    def for_worker(self) -> "StoreAPI":
        """The store a worker's loop uses: a connection of its own where
        sharing one would make the loop queue behind other threads, else self."""
        ...

    def close(self) -> None: ...
