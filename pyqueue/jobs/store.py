"""JobStore: definitions and job states in SQLite (jobs/jobs.db, WAL mode).

Any process of the broker reads and writes it: submit() inserts a queued row
before it sends the job's message (so a worker never sees a message without
its row), workers write running and final states, status() and list() read.
WAL lets readers run beside the one writer, so status() never waits for a
worker's batch.

Job ids are integers that grow with time (microseconds << 10 | 10 random
bits), so the rowid order is submission order and retention deletes a range
of ids.  Two submits in one microsecond that draw the same bits collide on
the primary key and the loser draws again.

Waiting: result() sleeps on a futex word in jobs/notify (Notify), armed
before it looks at the row; cancel() wakes it, and a worker's wake() once a
batch of outcomes is written and its messages settled, across processes.  A sleep lasts at most a second, in case a wake-up was
lost with a killed process.

Bounds: a retention pass deletes at most PURGE_BATCH rows; list() returns at
most its limit (default 100) rows.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import os
import random
import sqlite3
import threading
import time
from typing import Any, Iterable, Optional, Sequence

import msgspec

from pyqueue._native import Notify
from pyqueue.errors import CorruptionError
from pyqueue.jobs.definition import JobDefinition
from pyqueue.jobs.status import (CANCELLED, FINAL_STATES, QUEUED, RUNNING, STATES, JobStatus, format_id)

__all__ = ["JobStore", "STORE_FORMAT", "PURGE_BATCH"]

STORE_FORMAT = 1
PURGE_BATCH = 10_000
_ID_BITS = 10
_COLUMNS = ("state, attempts, queued_ns, started_ns, finished_ns, result, error, exit_code, id, name, "
            "schedule_id, scheduled_ns, worker, heartbeat_ns")
_LIVE = f"('{QUEUED}', '{RUNNING}')"
_FINAL = "(" + ", ".join(f"'{s}'" for s in sorted(FINAL_STATES)) + ")"
_SCHEMA = [
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS definitions (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated_ns INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY, name TEXT NOT NULL, state TEXT NOT NULL, "
    "attempts INTEGER NOT NULL DEFAULT 0, queued_ns INTEGER NOT NULL, started_ns INTEGER, finished_ns INTEGER, "
    "result BLOB, error TEXT, exit_code INTEGER, schedule_id TEXT, scheduled_ns INTEGER, worker INTEGER, "
    "heartbeat_ns INTEGER)",
    "CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state)",
    # one row per fire time of a schedule, however often its message is delivered
    "CREATE UNIQUE INDEX IF NOT EXISTS jobs_fire ON jobs (schedule_id, scheduled_ns) WHERE schedule_id IS NOT NULL",
    "CREATE TABLE IF NOT EXISTS workers (host TEXT NOT NULL, pid INTEGER NOT NULL, queue TEXT NOT NULL, "
    "concurrency INTEGER NOT NULL, started_ns INTEGER NOT NULL, heartbeat_ns INTEGER NOT NULL, "
    "running INTEGER NOT NULL, done INTEGER NOT NULL, PRIMARY KEY (host, pid))",
]


def new_id(now_ns: Optional[int] = None) -> int:
    """A fresh job id: the time in µs, then 10 random bits."""
    us = (time.time_ns() if now_ns is None else now_ns) // 1000
    return (us << _ID_BITS) | random.getrandbits(_ID_BITS)


def _s(ns: Optional[int]) -> Optional[float]:
    return None if ns is None else ns / 1e9


class JobStore:
    """One connection to jobs.db; thread-safe (a lock around the connection).
    Use one store per thread that writes often, so they do not queue on the lock."""

    max_result_bytes: Optional[int] = None      # the definition's max_result_bytes is the only bound

    def __init__(self, directory: str, *, fsync: str = "interval") -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.directory = directory
        self.fsync = fsync
        self.path = os.path.join(directory, "jobs.db")
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, timeout=60, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL" if fsync == "always" else "PRAGMA synchronous=NORMAL")
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    for stmt in _SCHEMA:
                        self._db.execute(stmt)
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('format', ?)", (STORE_FORMAT,))
                    self._db.execute("INSERT OR IGNORE INTO meta VALUES ('definitions', 0)")
                    fmt = self._db.execute("SELECT value FROM meta WHERE name='format'").fetchone()[0]
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
        except sqlite3.DatabaseError as e:
            raise CorruptionError(f"{self.path}: not a job store ({e})") from e
        if fmt != STORE_FORMAT:
            self._db.close()
            raise CorruptionError(f"{self.path}: job store format {fmt!r}, this version reads {STORE_FORMAT}")
        self._notify = Notify(os.path.join(directory, "notify"))

    def for_worker(self) -> "JobStore":
        """A connection of its own for a worker's loop."""
        return JobStore(self.directory, fsync=self.fsync)

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None   # type: ignore[assignment]
                self._notify.close()

    def _tx(self, fn: Any) -> Any:
        """Run fn(db) in one write transaction (BEGIN IMMEDIATE ... COMMIT)."""
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                out = fn(db)
                db.execute("COMMIT")
                return out
            except BaseException:
                db.execute("ROLLBACK")
                raise

    # -- definitions --

    def define(self, d: JobDefinition) -> None:
        def tx(db: sqlite3.Connection) -> None:
            db.execute("INSERT OR REPLACE INTO definitions VALUES (?, ?, ?)", (d.name, d.to_json(), time.time_ns()))
            db.execute("UPDATE meta SET value = value + 1 WHERE name='definitions'")
        self._tx(tx)

    def undefine(self, name: str) -> bool:
        def tx(db: sqlite3.Connection) -> bool:
            gone = db.execute("DELETE FROM definitions WHERE name=?", (name,)).rowcount > 0
            db.execute("UPDATE meta SET value = value + 1 WHERE name='definitions'")
            return gone
        return self._tx(tx)

    def definitions_version(self) -> int:
        with self._lock:
            return self._db.execute("SELECT value FROM meta WHERE name='definitions'").fetchone()[0]

    def definitions(self) -> dict[str, JobDefinition]:
        with self._lock:
            rows = self._db.execute("SELECT name, spec FROM definitions ORDER BY name").fetchall()
        out = {}
        for name, spec in rows:
            try:
                out[name] = JobDefinition.from_json(spec)
            except (msgspec.DecodeError, TypeError, KeyError, ValueError) as e:
                raise CorruptionError(f"{self.path}: the stored definition of job {name!r} is unreadable ({e})") from e
        return out

    # -- submit side --

    def insert(self, name: str, now_ns: int) -> int:
        """A queued row for a new job; returns its id."""
        bump = 0
        with self._lock:
            while True:
                jid = new_id(now_ns + bump)
                try:
                    self._db.execute("INSERT INTO jobs (id, name, state, queued_ns) VALUES (?, ?, 'queued', ?)",
                                     (jid, name, now_ns))
                    return jid
                except sqlite3.IntegrityError:
                    bump += 1000             # same µs and same bits as another submit: draw again

    def insert_many(self, name: str, n: int, now_ns: int) -> list[int]:
        def tx(db: sqlite3.Connection) -> list[int]:
            ids = sorted({new_id(now_ns + 1000 * k) for k in range(n)})
            while len(ids) < n:
                ids = sorted(set(ids) | {new_id(now_ns + 1000 * (n + len(ids)))})
            db.executemany("INSERT INTO jobs (id, name, state, queued_ns) VALUES (?, ?, 'queued', ?)",
                           [(i, name, now_ns) for i in ids])
            return ids
        while True:
            try:
                return self._tx(tx)
            except sqlite3.IntegrityError:
                now_ns += 1000 * n

    def delete(self, jid: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM jobs WHERE id=?", (jid,))

    def insert_fire(self, name: str, schedule_id: str, scheduled_ns: int, now_ns: int) -> tuple[int, str, int]:
        """The row of one fire of a schedule, created on its first delivery:
        (id, state, attempts)."""
        def tx(db: sqlite3.Connection) -> tuple[int, str, int]:
            row = db.execute("SELECT id, state, attempts FROM jobs WHERE schedule_id=? AND scheduled_ns=?",
                             (schedule_id, scheduled_ns)).fetchone()
            if row is not None:
                return row
            jid = new_id(now_ns)
            while db.execute("SELECT 1 FROM jobs WHERE id=?", (jid,)).fetchone():
                jid = new_id(now_ns)
            db.execute("INSERT INTO jobs (id, name, state, queued_ns, schedule_id, scheduled_ns) "
                       "VALUES (?, ?, 'queued', ?, ?, ?)", (jid, name, now_ns, schedule_id, scheduled_ns))
            return jid, QUEUED, 0
        return self._tx(tx)

    # -- reading --

    def states(self, ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """{id: (state, attempts)} of the ids that have a row."""
        if not ids:
            return {}
        with self._lock:
            if len(ids) == 1:
                row = self._db.execute("SELECT id, state, attempts FROM jobs WHERE id=?", (ids[0],)).fetchone()
                return {} if row is None else {row[0]: (row[1], row[2])}
            out = {}
            for k in range(0, len(ids), 500):
                chunk = ids[k:k + 500]
                for jid, state, attempts in self._db.execute(
                        f"SELECT id, state, attempts FROM jobs WHERE id IN ({','.join('?' * len(chunk))})", chunk):
                    out[jid] = (state, attempts)
            return out

    def get(self, jid: int) -> Optional[JobStatus]:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (jid,)).fetchone()
        return None if row is None else _status(row)

    def list(self, state: Optional[str] = None, name: Optional[str] = None, limit: int = 100,
             newest_first: bool = True) -> list[JobStatus]:
        where, params = [], []
        if state is not None:
            where.append("state=?")
            params.append(state)
        if name is not None:
            where.append("name=?")
            params.append(name)
        sql = (f"SELECT {_COLUMNS} FROM jobs" + (" WHERE " + " AND ".join(where) if where else "")
               + f" ORDER BY id {'DESC' if newest_first else 'ASC'} LIMIT ?")
        with self._lock:
            rows = self._db.execute(sql, (*params, limit)).fetchall()
        return [_status(r) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall()
        return {s: n for s, n in rows}

    def wait(self, jid: int, timeout: Optional[float]) -> Optional[JobStatus]:
        """The job's status once final, or as it is after `timeout` s; None if it has no row."""
        deadline = None if timeout is None else time.monotonic() + timeout
        notify = self._notify
        while True:
            seq = notify.arm()                 # armed before the look: a write between is not missed
            try:
                st = self.get(jid)
            except BaseException:
                notify.disarm()
                raise
            if st is None or st.done:
                notify.disarm()
                return st
            wait = 1.0                         # a bound, in case a wake-up is lost with a killed worker
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    notify.disarm()
                    return st
                wait = min(wait, left)
            notify.sleep(seq, wait)

    # -- changes --

    def cancel(self, jid: int, now_ns: int) -> Optional[str]:
        """Mark a queued or running job cancelled; returns the state it had
        (None: no such job).  A final state is left as it is."""
        def tx(db: sqlite3.Connection) -> Optional[str]:
            row = db.execute("SELECT state FROM jobs WHERE id=?", (jid,)).fetchone()
            if row is None:
                return None
            if row[0] in (QUEUED, RUNNING):
                db.execute("UPDATE jobs SET state='cancelled', finished_ns=?, error=? WHERE id=?",
                           (now_ns, "Cancelled: cancelled by cancel()" + (" while running" if row[0] == RUNNING else ""),
                            jid))
            return row[0]
        prior = self._tx(tx)
        if prior is not None:
            self._notify.wake()
        return prior

    def write(self, running: Iterable[tuple], finals: Iterable[tuple]) -> None:
        """One worker batch in one transaction.  running: (attempts, started_ns,
        worker, heartbeat_ns, id); finals: (state, attempts, started_ns,
        finished_ns, result, error, exit_code, worker, id).  Rows that are no
        longer queued or running (cancelled meanwhile) are left alone."""
        def tx(db: sqlite3.Connection) -> None:
            db.executemany("UPDATE jobs SET state='running', attempts=?, started_ns=?, worker=?, heartbeat_ns=? "
                           f"WHERE id=? AND state IN {_LIVE}", running)
            db.executemany("UPDATE jobs SET state=?, attempts=?, started_ns=?, finished_ns=?, result=?, error=?, "
                           f"exit_code=?, worker=? WHERE id=? AND state IN {_LIVE}", finals)
        self._tx(tx)

    def write_async(self, running: Iterable[tuple], finals: Iterable[tuple]) -> "concurrent.futures.Future[None]":
        """write(), done before it returns (a local transaction): a future that is done."""
        f: "concurrent.futures.Future[None]" = concurrent.futures.Future()
        try:
            self.write(running, finals)
        except Exception as e:
            f.set_exception(e)
        else:
            f.set_result(None)
        return f

    def wake(self) -> None:
        """Have result() waiters look again (a worker calls it once a batch's
        messages are settled too)."""
        self._notify.wake()

    def heartbeat(self, ids: Sequence[int], now_ns: int) -> set[int]:
        """Stamp running jobs; returns those of `ids` that were cancelled."""
        if not ids:
            return set()
        marks = ",".join("?" * len(ids))

        def tx(db: sqlite3.Connection) -> set[int]:
            db.execute(f"UPDATE jobs SET heartbeat_ns=? WHERE id IN ({marks}) AND state='running'", (now_ns, *ids))
            return {r[0] for r in db.execute(f"SELECT id FROM jobs WHERE id IN ({marks}) AND state='{CANCELLED}'",
                                             ids)}
        return self._tx(tx)

    def purge(self, keep: float, now_ns: int) -> int:
        """Delete up to PURGE_BATCH final jobs that finished more than `keep` s ago."""
        cutoff_ns = now_ns - int(keep * 1e9)
        max_id = ((cutoff_ns // 1000) + 1) << _ID_BITS       # nothing submitted later finished before the cutoff
        with self._lock:
            return self._db.execute(
                f"DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE id < ? AND state IN {_FINAL} "
                f"AND finished_ns < ? LIMIT {PURGE_BATCH})", (max_id, cutoff_ns)).rowcount

    # -- workers --

    def worker_beat(self, host: str, pid: int, queue: str, concurrency: int, started_ns: int, now_ns: int,
                    running: int, done: int) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO workers VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (host, pid, queue, concurrency, started_ns, now_ns, running, done))

    def worker_gone(self, host: str, pid: int) -> None:
        with self._lock:
            self._db.execute("DELETE FROM workers WHERE host=? AND pid=?", (host, pid))

    def workers(self) -> "builtins.list[dict[str, Any]]":
        with self._lock:
            rows = self._db.execute("SELECT host, pid, queue, concurrency, started_ns, heartbeat_ns, running, done "
                                    "FROM workers ORDER BY host, pid").fetchall()
        return [{"host": h, "pid": p, "queue": q, "concurrency": c, "started_at": s / 1e9, "heartbeat_at": hb / 1e9,
                 "running": r, "done": d} for h, p, q, c, s, hb, r, d in rows]


def _status(row: tuple) -> JobStatus:
    (state, attempts, queued_ns, started_ns, finished_ns, result, error, exit_code, jid, name,
     schedule_id, scheduled_ns, worker, heartbeat_ns) = row
    value = None
    if result is not None:
        value = msgspec.json.decode(result)
    return JobStatus(state, attempts, queued_ns / 1e9, _s(started_ns), _s(finished_ns), value, error, exit_code,
                     format_id(jid), name, schedule_id, _s(scheduled_ns), worker, _s(heartbeat_ns))


assert set(STATES) == FINAL_STATES | {QUEUED, RUNNING}
