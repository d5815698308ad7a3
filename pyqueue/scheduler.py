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
import hashlib
import logging
import os
import sqlite3
import threading
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Optional

from pyqueue._native import Dedup, Notify, TimerWheel, encode_headers
from pyqueue.errors import Closed, ConfigError, PyQueueError, UnknownTopic
from pyqueue.schedule import MAX_CATCH_UP, NS, Schedule

if TYPE_CHECKING:
    from pyqueue.broker import Broker

__all__ = ["Scheduler", "DEFAULT_CAPACITY"]

log = logging.getLogger("pyqueue.scheduler")

DEFAULT_CAPACITY = 1 << 17      # schedules the fired table holds (fixed at creation)
STANDBY_POLL = 0.2              # seconds between a standby's attempts to take over
_IDLE = 1.0                     # the active loop looks at the clock at least this often
_RELOAD_ABOVE = 10_000          # changed schedules past which the active one reloads them all


def _fired_key(schedule_id: str) -> bytes:
    """Entry (fires so far, last fire time ns, offset of its message) of a schedule."""
    return hashlib.blake2b(b"fired:" + schedule_id.encode(), digest_size=16).digest()


def _pending_key(schedule_id: str) -> bytes:
    """Entry (partition, fire time ns, end offset before the append) of a fire
    being published: written before the append, so that a crash between the
    append and the fired entry is resolved by looking for the message."""
    return hashlib.blake2b(b"pending:" + schedule_id.encode(), digest_size=16).digest()


_SKIPPED = (1 << 64) - 1    # "offset" of a fire time recorded without a message
_EXPIRED = 1                # an expiry time long past: the entry's slot is free again


def _iso(t_ns: int) -> str:
    return datetime.fromtimestamp(t_ns / NS, timezone.utc).isoformat()


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
        self._db = sqlite3.connect(os.path.join(self.dir, "schedules.db"), timeout=30,
                                   check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL" if broker.fsync != "always" else "PRAGMA synchronous=FULL")
        self._db.execute("CREATE TABLE IF NOT EXISTS schedules (id TEXT PRIMARY KEY, topic TEXT, value BLOB, "
                         "key BLOB, spec TEXT, created_ns INTEGER)")
        self._db.execute("CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT)")
        self.capacity = self._capacity(capacity)
        self._fired = Dedup(os.path.join(self.dir, "fired"), self.capacity)
        self._notify = Notify(os.path.join(self.dir, "notify"))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock_fd: Optional[int] = None
        self._loaded = False
        self._specs: dict[str, Schedule] = {}
        self._next: dict[str, int] = {}
        self._handles: dict[str, int] = {}
        self._wheel: Optional[TimerWheel] = None
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
        return self.add_many([dict(id=id, topic=topic, value=value, key=key, headers=headers, cron=cron,
                                   every=every, at=at, timezone=timezone, start=start, end=end,
                                   misfire=misfire)])[0]

    def add_many(self, schedules: "list[dict[str, Any]]") -> list[Schedule]:
        """Add (or replace) many schedules in one transaction: each item holds
        the keyword arguments of add(), id included."""
        self._check_open()
        now_ns = int(self.clock() * NS)
        specs = [Schedule.create(**item, created_ns=now_ns) for item in schedules]
        topics = set(self.broker.topics())
        for spec in specs:
            if spec.topic not in topics:
                raise UnknownTopic(f"schedule {spec.id!r}: no topic {spec.topic!r} in {self.broker.path}")
        out = []
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                count = int(self._db.execute("SELECT value FROM meta WHERE name='count'").fetchone()[0])
                for spec in specs:
                    row = self._db.execute("SELECT created_ns FROM schedules WHERE id=?", (spec.id,)).fetchone()
                    if row is not None:
                        spec = Schedule(**{**spec.__dict__, "created_ns": row[0]})
                    elif count >= self.capacity:
                        raise ConfigError(f"the scheduler holds {self.capacity} schedules (its capacity)")
                    else:
                        count += 1
                    self._db.execute("INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?, ?)", spec.to_row())
                    self._db.execute("INSERT INTO changes (id) VALUES (?)", (spec.id,))
                    out.append(spec)
                self._db.execute("UPDATE meta SET value=? WHERE name='count'", (str(count),))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._notify.wake()
        return out

    def remove(self, id: str) -> bool:
        """Remove a schedule; False if there was none."""
        self._check_open()
        with self._db_lock:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute("DELETE FROM schedules WHERE id=?", (id,)).rowcount > 0
            if gone:
                self._db.execute("INSERT INTO changes (id) VALUES (?)", (id,))
                self._db.execute("UPDATE meta SET value=CAST(value AS INTEGER) - 1 WHERE name='count'")
            self._db.execute("COMMIT")
        self._notify.wake()
        return gone

    def get(self, id: str) -> Optional[Schedule]:
        self._check_open()
        with self._db_lock:
            row = self._db.execute("SELECT id, topic, value, key, spec, created_ns FROM schedules WHERE id=?",
                                   (id,)).fetchone()
        return None if row is None else Schedule.from_row(row)

    def list(self) -> list[Schedule]:
        self._check_open()
        with self._db_lock:
            rows = self._db.execute("SELECT id, topic, value, key, spec, created_ns FROM schedules "
                                    "ORDER BY id").fetchall()
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
        nxt = spec.next_after(self._base(spec, last))
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
        before = self.fires
        self._apply_changes()
        for id in self._wheel.expire(self.clock()):
            self._fire(id)
        return self.fires - before

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
        self._load()
        return True

    def _resign(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)          # releases the flock
            self._lock_fd = None
        self._loaded = False

    def _loop(self) -> None:
        while not self._stop.is_set():
            seq = self._notify.arm()
            try:
                self.run_pending()
            except BaseException:
                self._notify.disarm()
                raise
            nd = self._wheel.next_deadline()
            wait = _IDLE if nd is None else min(_IDLE, max(0.0, nd - self.clock()))
            self._notify.sleep(seq, wait)

    # -- the active scheduler's state --

    def _base(self, spec: Schedule, last: Optional[tuple[int, int]]) -> int:
        if last is not None:
            return last[0]
        if spec.at_ns is not None:
            return spec.at_ns - 1                # a one-off in the past still fires once
        return spec.created_ns - 1

    def _load(self) -> None:
        self._wheel = TimerWheel(tick=0.001, clock=self.clock)
        self._specs.clear()
        self._next.clear()
        self._handles.clear()
        with self._db_lock:
            self._seen_seq = self._db.execute("SELECT coalesce(max(seq), 0) FROM changes").fetchone()[0]
            rows = self._db.execute("SELECT id, topic, value, key, spec, created_ns FROM schedules").fetchall()
        for row in rows:
            self._place(Schedule.from_row(row))
        self._loaded = True

    def _place(self, spec: Schedule) -> None:
        old = self._handles.pop(spec.id, None)
        if old is not None:
            self._wheel.cancel(old)
        self._specs[spec.id] = spec
        nxt = spec.next_after(self._base(spec, self._last_fire(spec)))
        if nxt is None:
            self._next.pop(spec.id, None)        # finished (a fired one-off, or past its end)
            return
        self._next[spec.id] = nxt
        self._handles[spec.id] = self._wheel.add_at(nxt / NS, spec.id)

    def _apply_changes(self) -> None:
        with self._db_lock:
            changed = self._db.execute("SELECT seq, id FROM changes WHERE seq > ? ORDER BY seq",
                                       (self._seen_seq,)).fetchall()
            if not changed:
                return
            ids = sorted({c[1] for c in changed})
            if len(ids) > _RELOAD_ABOVE:
                self._load()                       # cheaper than a lookup per id
                return
            rows = {}
            for k in range(0, len(ids), 500):      # stay under SQLite's variable limit
                chunk = ids[k:k + 500]
                rows.update((r[0], r) for r in self._db.execute(
                    f"SELECT id, topic, value, key, spec, created_ns FROM schedules WHERE id IN "
                    f"({','.join('?' * len(chunk))})", chunk).fetchall())
            self._seen_seq = changed[-1][0]
            self._db.execute("DELETE FROM changes WHERE seq <= ?", (self._seen_seq - 10_000,))
        for id in ids:
            if id in rows:
                self._place(Schedule.from_row(rows[id]))
            else:
                h = self._handles.pop(id, None)
                if h is not None:
                    self._wheel.cancel(h)
                self._specs.pop(id, None)
                self._next.pop(id, None)

    def _fire(self, id: str) -> None:
        spec = self._specs.get(id)
        first = self._next.get(id)
        self._handles.pop(id, None)
        if spec is None or first is None:
            return
        now = int(self.clock() * NS)
        due = [first]                             # every fire time now due, up to the cap
        while len(due) <= MAX_CATCH_UP:
            nxt = spec.next_after(due[-1])
            if nxt is None or nxt > now:
                break
            due.append(nxt)
        grace = int(self.misfire_grace * NS)
        extra = 0
        if len(due) > MAX_CATCH_UP:               # long downtime: find the true latest and count
            due[-1], extra = self._latest_due(spec, due[-1], now)
        # Fire times less than misfire_grace late are simply published; the
        # later ones are misfires and follow the schedule's policy.
        late = [t for t in due if now - t > grace]
        on_time = due[len(late):]
        try:
            if late and spec.misfire == "all":
                for t in late[:-1]:
                    self._publish(spec, t, 1)
                self._publish(spec, late[-1], 1 + extra)
            elif late and spec.misfire == "skip":
                self._record_skip(spec, late[-1])
            elif late:
                self._publish(spec, late[-1], len(late) + extra)
            for t in on_time:
                self._publish(spec, t, 1)
        except UnknownTopic:
            log.warning("schedule %r: topic %r is gone; fire at %s not published",
                        id, spec.topic, _iso(due[-1]))
            self._record_skip(spec, due[-1])
        self._place(spec)

    def _latest_due(self, spec: Schedule, from_ns: int, now: int) -> tuple[int, int]:
        """The latest fire time <= now after from_ns, and how many lie between."""
        if spec.every is not None:
            step = int(spec.every * NS)
            n = (now - from_ns) // step
            return from_ns + n * step, n
        t, n = from_ns, 0
        while True:                               # cron or at: walk (cron is minutely at most)
            nxt = spec.next_after(t)
            if nxt is None or nxt > now:
                return t, n
            t, n = nxt, n + 1

    def _last_fire(self, spec: Schedule) -> Optional[tuple[int, int]]:
        """(last fire time ns, fires) of a schedule, finishing the record of a
        fire whose publisher died between its append and its fired entry."""
        f = self._fired.get(_fired_key(spec.id))
        last = None if f is None else (f[1], f[0])
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
        topic = self.broker.topic(spec.topic, create=False)
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
        if self._db is None:
            raise Closed("the scheduler is closed")

    def close(self) -> None:
        self.stop()
        self._resign()
        if self._db is not None:
            self._db.close()
            self._db = None
        self._fired.close()
        self._notify.close()
