"""Scheduler: durable schedules that publish a message to a topic when due.

Definitions live in SQLite (scheduler/schedules.db, WAL) so that any process
can add, list and remove them.  One scheduler per broker is active: whoever
holds the flock on scheduler/leader.lock; the others stand by and take over
within STANDBY_POLL seconds of its death (the kernel drops a dead process's
lock).  The active one keeps every schedule's next fire time in a timer wheel,
so a tick touches only what is due, never the whole table.

Exactly once per fire time: only the active scheduler writes the fired table
(scheduler/fired, in the dedup-table format).  A fire first records
"publishing T in partition p, whose end was e", then appends the message,
then records "fired up to T".  A scheduler that takes over after a crash looks
for the message of an unfinished record in partition p from offset e on, so
a crash, restart or failover can neither publish a fire time twice nor skip it.  Fire times missed while no
scheduler ran follow the schedule's misfire policy: "coalesce" (one message
for the latest, with x-coalesced = how many it stands for), "skip" (recorded,
not published, except fires less than misfire_grace late) or "all" (each one,
at most MAX_CATCH_UP, the rest coalesced into the last).
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import logging
import os
import sqlite3
import threading
import time
from array import array
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from pyqueue._native import Dedup, Notify, TimerWheel, encode_headers
from pyqueue.errors import Closed, ConfigError, PyQueueError, UnknownTopic
from pyqueue.schedule import COLUMNS, NS, Schedule, check_row, fire_plan, first_after, scheduled_for

if TYPE_CHECKING:
    from pyqueue.broker import Broker
    from pyqueue.topic import Topic

__all__ = ["Scheduler", "DEFAULT_CAPACITY"]

log = logging.getLogger("pyqueue.scheduler")

DEFAULT_CAPACITY = 1 << 17      # schedules the fired table holds (fixed at creation)
STANDBY_POLL = 0.2              # seconds between a standby's attempts to take over
_IDLE = 1.0                     # the active loop looks at the clock at least this often
_RELOAD_ABOVE = 10_000          # changed schedules past which the active one reloads them all
_CACHE = 100_000                # schedules the active one keeps built (those firing often)
_HINTS_BATCH = 256              # next-fire hints written per transaction (a short pause each)
_HINTS_PERIOD = 0.25            # seconds a hint may wait to be written

_COLS = ", ".join(COLUMNS)
# next_ns is a hint: a time at or before the schedule's next fire, so that
# the active scheduler loads (rowid, next_ns) and nothing else.  The fired
# table, not the hint, says what has fired.
_UPSERT = (f"INSERT INTO schedules ({_COLS}, next_ns) VALUES ({', '.join('?' * (len(COLUMNS) + 1))}) "
           f"ON CONFLICT(id) DO UPDATE SET "
           + ", ".join(f"{c}=excluded.{c}" for c in COLUMNS[1:] + ("next_ns",) if c != "created_ns"))


def _create_tables(db: sqlite3.Connection) -> None:
    db.execute("BEGIN IMMEDIATE")
    try:
        cols = [r[1] for r in db.execute("PRAGMA table_info(schedules)")]
        legacy = "spec" in cols                 # the first layout: a JSON spec column
        if legacy:
            db.execute("ALTER TABLE schedules RENAME TO schedules_v1")
        db.execute("CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY, topic TEXT NOT NULL, "
                   "value BLOB NOT NULL, key BLOB, headers TEXT, cron TEXT, every REAL, at_ns INTEGER, "
                   "timezone TEXT NOT NULL, start_ns INTEGER, end_ns INTEGER, misfire TEXT NOT NULL, "
                   "created_ns INTEGER NOT NULL, next_ns INTEGER)")
        db.execute("CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT, "
                   "row INTEGER)")
        if "row" not in [r[1] for r in db.execute("PRAGMA table_info(changes)")]:
            db.execute("ALTER TABLE changes ADD COLUMN row INTEGER")
        db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        if legacy:
            for old in db.execute("SELECT id, topic, value, key, spec, created_ns FROM schedules_v1").fetchall():
                row = Schedule.from_legacy_row(old).to_row()
                # The earliest possible next fire: a safe hint, corrected at its first pop.
                db.execute(_UPSERT, row + (first_after(row, None),))
            db.execute("DROP TABLE schedules_v1")
            db.execute("INSERT INTO changes (id, row) VALUES (NULL, NULL)")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


@functools.lru_cache(maxsize=1 << 16)    # the keys of schedules that fire often
def _fired_key(schedule_id: str) -> bytes:
    """Entry (fires so far, last fire time ns, offset of its message) of a schedule."""
    return hashlib.blake2b(b"fired:" + schedule_id.encode(), digest_size=16).digest()


@functools.lru_cache(maxsize=1 << 16)
def _pending_key(schedule_id: str) -> bytes:
    """Entry (partition, fire time ns, end offset before the append) of a fire
    being published: written before the append, so that a crash between the
    append and the fired entry is resolved by looking for the message."""
    return hashlib.blake2b(b"pending:" + schedule_id.encode(), digest_size=16).digest()


_SKIPPED = (1 << 64) - 1    # "offset" of a fire time recorded without a message
_EXPIRED = 1                # an expiry time long past: the entry's slot is free again


def _last_ns(last: Optional[tuple[int, int]]) -> Optional[int]:
    return None if last is None else last[0]


_iso = scheduled_for


class Scheduler:
    """A broker's schedules.  Get it with broker.scheduler()."""

    def __init__(self, broker: "Broker", *, clock: Callable[[], float] = time.time,
                 misfire_grace: float = 1.0, capacity: Optional[int] = None) -> None:
        self.broker = broker
        self.clock = clock
        self.misfire_grace = float(misfire_grace)
        self.dir = os.path.join(broker.path, "scheduler")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._db_lock = threading.RLock()
        db_path = os.path.join(self.dir, "schedules.db")
        self._db = sqlite3.connect(db_path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL" if broker.fsync != "always" else "PRAGMA synchronous=FULL")
        _create_tables(self._db)
        # The active scheduler writes next-fire hints through a connection
        # that never waits for the write lock: a bulk add holding it must not
        # stall the fires; the hints are simply written a little later.
        self._hint_db = sqlite3.connect(db_path, timeout=0, check_same_thread=False, isolation_level=None)
        self._hint_db.execute("PRAGMA synchronous=NORMAL")
        self.capacity = self._capacity(capacity)
        self._fired = Dedup(os.path.join(self.dir, "fired"), self.capacity)
        self._notify = Notify(os.path.join(self.dir, "notify"))
        self._closed = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock_fd: Optional[int] = None
        # The active scheduler's state: a timer per schedule in the wheel,
        # whose item is the schedule's rowid, and the wheel handle of each
        # rowid (0: none) in an array, so that a million schedules cost a few
        # dozen bytes each.  A schedule is read from the table when it fires.
        self._wheel = TimerWheel(tick=0.001, clock=clock)   # replaced when leading
        self._handles = array("Q")
        self._cache: dict[int, Schedule] = {}     # rowid -> schedule, of those that fired lately
        self._topics: dict[str, "Topic"] = {}     # topics looked up while firing a batch
        self._hints: list[tuple[Optional[int], int, str]] = []   # (next_ns, rowid, id) to write
        self._hints_written = time.monotonic()
        self._seen_seq = 0
        self.fires = 0                    # messages this scheduler published

    def _capacity(self, requested: Optional[int]) -> int:
        with self._db_lock:
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('capacity', ?)",
                             (str(requested or DEFAULT_CAPACITY),))
            self._db.execute("INSERT OR IGNORE INTO meta VALUES ('count', '0')")
            stored = int(self._db.execute("SELECT value FROM meta WHERE name='capacity'").fetchone()[0])
        if requested is not None and requested != stored:
            raise ConfigError(f"the scheduler was created with capacity={stored}; asked for {requested}")
        return stored

    # -- definitions (any process) --

    def add(self, id: str, *, topic: str, value: bytes, key: Optional[bytes] = None,
            headers: Optional[dict[str, bytes]] = None, cron: Optional[str] = None,
            every: Optional[float] = None, at: Any = None, timezone: Optional[str] = None,
            start: Any = None, end: Any = None, misfire: str = "coalesce") -> Schedule:
        """Add a schedule, or replace the one with this id (keeping what it has
        fired, so that adding the same schedule at every start-up never fires
        a time twice).  Exactly one of cron=, every=, at=."""
        self.add_many([dict(id=id, topic=topic, value=value, key=key, headers=headers, cron=cron,
                            every=every, at=at, timezone=timezone, start=start, end=end, misfire=misfire)])
        stored = self.get(id)
        assert stored is not None        # unless removed meanwhile by another process
        return stored

    def add_many(self, schedules: "Iterable[dict[str, Any]]") -> int:
        """Add (or replace) many schedules in one transaction: each item holds
        the keyword arguments of add(), id included.  Returns how many were
        new (the others replaced schedules of the same id)."""
        self._check_open()
        now_ns = int(self.clock() * NS)
        rows = [check_row(**item, created_ns=now_ns) for item in schedules]
        topics = set(self.broker.topics())
        for row in rows:
            if row[1] not in topics:
                raise UnknownTopic(f"schedule {row[0]!r}: no topic {row[1]!r} in {self.broker.path}")
        ids = list(dict.fromkeys(row[0] for row in rows))
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                created = self._created_ns(ids)
                count = int(self._db.execute("SELECT value FROM meta WHERE name='count'").fetchone()[0])
                count += len(ids) - len(created)
                if count > self.capacity:
                    raise ConfigError(f"the scheduler holds at most {self.capacity} schedules (its capacity); "
                                      f"this add would make {count}")

                def with_hint(row: tuple) -> tuple:
                    if row[0] not in created:
                        return row + (first_after(row, None),)
                    # A replacement keeps its creation time and its fires.
                    row = row[:12] + (created[row[0]],)
                    last = self._fired_entry(row[0])
                    return row + (first_after(row, None if last is None else last[0]),)

                self._db.executemany(_UPSERT, map(with_hint, rows))
                if len(ids) > _RELOAD_ABOVE:       # one row telling the active scheduler to reload
                    self._db.execute("INSERT INTO changes (id, row) VALUES (NULL, NULL)")
                else:
                    self._db.executemany("INSERT INTO changes (id) VALUES (?)", ((i,) for i in ids))
                self._db.execute("UPDATE meta SET value=? WHERE name='count'", (str(count),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._notify.wake()
        return len(ids) - len(created)

    def _created_ns(self, ids: "list[str]") -> dict[str, int]:
        """Creation times of those of `ids` that exist already."""
        found: dict[str, int] = {}
        for k in range(0, len(ids), 500):          # stay under SQLite's variable limit
            chunk = ids[k:k + 500]
            found.update(self._db.execute(
                f"SELECT id, created_ns FROM schedules WHERE id IN ({','.join('?' * len(chunk))})",
                chunk).fetchall())
        return found

    def remove(self, id: str) -> bool:
        """Remove a schedule; False if there was none."""
        self._check_open()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("DELETE FROM schedules WHERE id=? RETURNING rowid", (id,)).fetchone()
                if row is not None:
                    self._db.execute("INSERT INTO changes (id, row) VALUES (?, ?)", (id, row[0]))
                    self._db.execute("UPDATE meta SET value=CAST(value AS INTEGER) - 1 WHERE name='count'")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._notify.wake()
        return row is not None

    def get(self, id: str) -> Optional[Schedule]:
        self._check_open()
        with self._db_lock:
            row = self._db.execute(f"SELECT {_COLS} FROM schedules WHERE id=?", (id,)).fetchone()
        return None if row is None else Schedule.from_row(row)

    def list(self) -> list[Schedule]:
        self._check_open()
        with self._db_lock:
            rows = self._db.execute(f"SELECT {_COLS} FROM schedules ORDER BY id").fetchall()
        return [Schedule.from_row(r) for r in rows]

    def count(self) -> int:
        with self._db_lock:
            return int(self._db.execute("SELECT value FROM meta WHERE name='count'").fetchone()[0])

    def info(self, id: str) -> Optional[dict[str, Any]]:
        """The schedule, its last fire time and count, and its next fire time."""
        spec = self.get(id)
        if spec is None:
            return None
        last = self._last_fire(spec)
        nxt = spec.next_fire(_last_ns(last))
        return {"schedule": spec, "last_fire": None if last is None else _iso(last[0]),
                "fires": 0 if last is None else last[1], "next_fire": None if nxt is None else _iso(nxt)}

    # -- running --

    def start(self) -> None:
        """Run the scheduler in a background thread (active or standing by)."""
        self._check_open()
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self.run_forever, name="pyqueue-scheduler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop (and hand leadership to a standby)."""
        self._stop.set()
        self._notify.wake()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    @property
    def active(self) -> bool:
        """True while this scheduler is the broker's active one."""
        return self._lock_fd is not None

    def run_forever(self) -> None:
        """Fire schedules until stop(): active while holding the broker's
        scheduler lock, standing by otherwise."""
        while not self._stop.is_set():
            try:
                if not self._lead():
                    self._stop.wait(STANDBY_POLL)
                    continue
                try:
                    self._loop()
                finally:
                    self._resign()
            except Closed:
                return
            except Exception:                     # a fault must not end the scheduler thread
                log.exception("scheduler loop failed; retrying in %.1f s", STANDBY_POLL)
                self._stop.wait(STANDBY_POLL)

    def run_pending(self) -> int:
        """Fire everything due now (taking leadership if free); returns how
        many messages were published.  For tests and custom loops."""
        if not self.active and not self._lead():
            raise PyQueueError(f"another scheduler is active on {self.broker.path}")
        self._apply_changes()
        return self._fire_due()

    def _fire_due(self) -> int:
        before = self.fires
        try:
            for rowid in self._wheel.expire(self.clock()):
                self._fire(rowid)
        finally:
            self._topics.clear()                  # looked up again next time: it may be deleted
        self._write_hints()
        return self.fires - before

    def _topic(self, name: str) -> "Topic":
        topic = self._topics.get(name)
        if topic is None:
            topic = self._topics[name] = self.broker.topic(name, create=False)
        return topic

    def _lead(self) -> bool:
        if self._lock_fd is not None:
            return True                           # this object leads already (run_pending)
        fd = os.open(os.path.join(self.dir, "leader.lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        try:
            self._load()
        except BaseException:
            self._resign()
            raise
        return True

    def _resign(self) -> None:
        if self._lock_fd is not None:
            try:
                self._write_hints(everything=True)
            except sqlite3.Error:                 # only hints: the next leader corrects them
                pass
            os.close(self._lock_fd)               # releases the flock
            self._lock_fd = None
        self._wheel = TimerWheel(tick=0.001, clock=self.clock)
        self._handles = array("Q")
        self._cache.clear()
        self._hints.clear()

    def _loop(self) -> None:
        applied = None
        while not self._stop.is_set():
            seq = self._notify.arm()
            try:
                if seq != applied:                # someone added or removed schedules
                    applied = seq
                    self._apply_changes()
                self._fire_due()
            except BaseException:
                self._notify.disarm()
                raise
            nd = self._wheel.next_deadline()
            wait = _IDLE if nd is None else min(_IDLE, max(0.0, nd - self.clock()))
            if self._hints:
                wait = min(wait, _HINTS_PERIOD)
            self._notify.sleep(seq, wait)

    # -- the active scheduler's state --

    def _load(self) -> None:
        """Every schedule's next-fire hint into a new wheel."""
        self._wheel = TimerWheel(tick=0.001, clock=self.clock)
        self._cache.clear()
        self._hints.clear()
        with self._db_lock:
            self._db.execute("BEGIN")             # one snapshot for the seq and the rows
            try:
                self._seen_seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
                top = self._db.execute("SELECT coalesce(max(rowid), 0) FROM schedules").fetchone()[0]
                self._handles = array("Q", bytes(8 * (top + 1)))
                handles, add_at = self._handles, self._wheel.add_at
                for rowid, next_ns in self._db.execute(
                        "SELECT rowid, next_ns FROM schedules WHERE next_ns IS NOT NULL"):
                    handles[rowid] = add_at(next_ns / NS, rowid)
            finally:
                self._db.execute("COMMIT")

    def _place(self, rowid: int, next_ns: Optional[int]) -> None:
        """(Re)set the timer of schedule `rowid` to next_ns (None: no timer)."""
        if rowid >= len(self._handles):
            grow = max(rowid + 1 - len(self._handles), len(self._handles) // 2)
            self._handles.frombytes(bytes(8 * grow))
        old = self._handles[rowid]
        if old:
            self._wheel.cancel(old)
        self._handles[rowid] = 0 if next_ns is None else self._wheel.add_at(next_ns / NS, rowid)

    def _apply_changes(self) -> None:
        with self._db_lock:
            changed = self._db.execute("SELECT seq, id, row FROM changes WHERE seq > ? ORDER BY seq",
                                       (self._seen_seq,)).fetchall()
            if not changed:
                return
            ids = sorted({c[1] for c in changed if c[1] is not None})
            if len(ids) > _RELOAD_ABOVE or any(c[1] is None for c in changed):
                self._load()                       # cheaper than a lookup per id
                return
            rows = []
            for k in range(0, len(ids), 500):      # stay under SQLite's variable limit
                chunk = ids[k:k + 500]
                rows += self._db.execute(f"SELECT rowid, next_ns FROM schedules WHERE id IN "
                                         f"({','.join('?' * len(chunk))})", chunk).fetchall()
            self._seen_seq = changed[-1][0]
        touched = {c[2] for c in changed if c[2] is not None} | {r[0] for r in rows}
        for rowid in touched:                      # removed, or replaced: forget what we knew
            self._cache.pop(rowid, None)
            self._place(rowid, None)
        if self._hints:                            # a hint of an older definition must not win
            self._hints = [h for h in self._hints if h[1] not in touched]
        for rowid, next_ns in rows:
            self._place(rowid, next_ns)

    def _write_hints(self, everything: bool = False) -> None:
        """Store the next fire times of schedules that fired, so that a restart
        loads them where they are, not where they were: in batches, through
        a connection that gives up at once when another process writes."""
        if not self._hints or (not everything and len(self._hints) < _HINTS_BATCH
                               and time.monotonic() - self._hints_written < _HINTS_PERIOD):
            return
        while self._hints:
            batch = self._hints[:_HINTS_BATCH]
            try:
                self._hint_db.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError:       # busy: try again next time round
                return
            try:
                # A change not applied yet may have rewritten these rows: then
                # apply it first (the next time round) and drop what it touched.
                seq = self._hint_db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
                if seq != self._seen_seq:
                    return
                self._hint_db.executemany("UPDATE schedules SET next_ns=? WHERE rowid=? AND id=?", batch)
                self._hint_db.execute("DELETE FROM changes WHERE seq <= ?", (self._seen_seq - 10_000,))
            finally:
                self._hint_db.execute("COMMIT")
            del self._hints[:len(batch)]
            self._hints_written = time.monotonic()
            if not everything:
                return

    def _schedule(self, rowid: int) -> Optional[Schedule]:
        spec = self._cache.get(rowid)
        if spec is None:
            with self._db_lock:
                row = self._db.execute(f"SELECT {_COLS} FROM schedules WHERE rowid=?", (rowid,)).fetchone()
            if row is None:
                return None
            if len(self._cache) >= _CACHE:
                self._cache.clear()
            spec = self._cache[rowid] = Schedule.from_row(row)
        return spec

    def _fire(self, rowid: int) -> None:
        self._handles[rowid] = 0
        spec = self._schedule(rowid)
        if spec is None:
            return
        now = int(self.clock() * NS)
        actions, nxt = fire_plan(spec, _last_ns(self._last_fire(spec)), now, int(self.misfire_grace * NS))
        try:
            for t, stands_for in actions:
                if stands_for:
                    self._publish(spec, t, stands_for)
                else:
                    self._record_skip(spec, t)
        except UnknownTopic:
            log.warning("schedule %r: topic %r is gone; fire at %s not published",
                        spec.id, spec.topic, _iso(actions[-1][0]))
            self._record_skip(spec, actions[-1][0])
        self._place(rowid, nxt)             # without actions: the hint was early (fired since it was written)
        self._hints.append((nxt, rowid, spec.id))

    def _fired_entry(self, id: str) -> Optional[tuple[int, int]]:
        """(last fire time ns, fires) as recorded, without a pending fire."""
        f = self._fired.get(_fired_key(id))
        return None if f is None else (f[1], f[0])

    def _last_fire(self, spec: Schedule) -> Optional[tuple[int, int]]:
        """(last fire time ns, fires) of a schedule, finishing the record of a
        fire whose publisher died between its append and its fired entry."""
        last = self._fired_entry(spec.id)
        pending = self._fired.get(_pending_key(spec.id))
        if pending is not None and (last is None or pending[1] > last[0]):
            part, t_ns, start = pending
            offset = self._find_fire(spec, part, t_ns, start)
            if offset is not None and self.active:
                fires = (last[1] if last else 0) + 1
                self._fired.put(_fired_key(spec.id), fires, t_ns, offset)
                last = (t_ns, fires)
        return last

    def _find_fire(self, spec: Schedule, part: int, t_ns: int, start: int) -> Optional[int]:
        """Offset of the message of fire t_ns in partition `part` at or after
        `start`, or None: a scan of what was appended since that fire began."""
        try:
            log = self.broker.topic(spec.topic, create=False)._log(part)
        except (UnknownTopic, PyQueueError):
            return None
        want_id, want_t = spec.id.encode(), _iso(t_ns).encode()
        offset = max(start, log.bounds()[0])
        while True:
            msgs = log.read(offset, 1000)
            if not msgs:
                return None
            for m in msgs:
                h = m.headers
                if h.get("x-schedule-id") == want_id and h.get("x-scheduled-for") == want_t:
                    return m.offset
            offset = msgs[-1].offset + 1

    def _record_skip(self, spec: Schedule, t_ns: int) -> None:
        f = self._fired.get(_fired_key(spec.id))
        self._fired.put(_fired_key(spec.id), 0 if f is None else f[0], t_ns, _SKIPPED)

    def _publish(self, spec: Schedule, t_ns: int, stands_for: int) -> None:
        topic = self._topic(spec.topic)
        f = self._fired.get(_fired_key(spec.id))
        if f is not None and f[1] >= t_ns:
            return                                # fired already (a record this scheduler missed)
        headers = dict(spec.headers)
        headers["x-schedule-id"] = spec.id.encode()
        headers["x-scheduled-for"] = _iso(t_ns).encode()
        if stands_for > 1:
            headers["x-coalesced"] = str(stands_for).encode()
        part = topic.partition_for(spec.key)
        log = topic._log(part)
        self._fired.put(_pending_key(spec.id), part, t_ns, log.bounds()[1])
        if topic._always:
            self._fired.sync()                    # the intent is on disk before the message
        receipt = log.append(spec.value, spec.key, encode_headers(headers))
        self._fired.put(_fired_key(spec.id), (0 if f is None else f[0]) + 1, t_ns, receipt.offset)
        # The fire is recorded: let the pending entry expire, so that a
        # schedule holds one entry of the table, not two.
        self._fired.put(_pending_key(spec.id), part, t_ns, 0, _EXPIRED)
        self.fires += 1
        if topic._always:
            log.sync(receipt.offset + 1)

    # -- lifecycle --

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the scheduler is closed")

    def close(self) -> None:
        self.stop()
        self._resign()
        self._closed = True
        self._db.close()
        self._hint_db.close()
        self._fired.close()
        self._notify.close()
