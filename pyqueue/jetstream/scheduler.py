"""JetStreamScheduler: the durable scheduler on the JetStream backend.

The same API and semantics as pyqueue.scheduler.Scheduler; schedule.py
checks the definitions and computes fire times and misfires (fire_plan) for
both.  State lives in the KV bucket `pyqueue_schedules` (made on first use,
with the broker's replicas), keys namespaced as naming.py lists:

    {ns}.def.{S}    a schedule's definition (JSON), written by add() in any
                    process; a replacement is a CAS on the revision read, so
                    it keeps the creation time (and with it the progress)
    {ns}.fired.{S}  its progress {"last_ns", "fires", "created_ns", "pending"},
                    written only by the active scheduler, by CAS
    {ns}.lease      the active scheduler's lease (lease.py)
    {ns}.meta       {"capacity": n}, written once

One scheduler per namespace is active: the holder of the lease.  It loads
every definition (a KV watcher that then keeps it up to date with other
processes' adds and removes) and every progress record, keeps each
schedule's next fire time in a heap, and fires what is due while the lease
is held; a lost or lapsed lease stops it before the next fire.  Standbys
try to take the lease every min(0.5 s, lease_ttl / 4).

A fire of time T is: a CAS of the progress to "pending T in partition p,
whose end was e"; a publish with Nats-Msg-Id "{S}@{T in ns}"; a CAS of the
progress to "fired up to T".  (e is the sequence of the active scheduler's
last publish to p, a lower bound of the end, or the stream's end the first
time.)  A scheduler that finds a pending record (its predecessor died
between the first and last step) looks for the message in partition p
from offset e on: found, the fire is recorded; not found, it is
published again.  A publish repeated through a failover within the topic's
dedup_window (the stream's duplicate window, 300 s by default) is also
dropped by the server.  A CAS that fails (a fenced predecessor's last
write, or a remove) makes the scheduler read the record again before it
decides anything.

Removal writes a delete marker (seen by the active scheduler's watcher) and
then purges the keys.  Limits: every definition and progress record is held
in the active scheduler's memory and read at each takeover, so a namespace
holds at most `capacity` schedules (default 10,000, at most 100,000); a fire
costs three round trips to the cluster (two KV writes, one publish), one
after the other; schedules due together are fired concurrently (up to
_FIRE_BATCH at a time, _FIRE_WINDOW in flight), each one's steps in order,
so many due at once fire at a few thousand a second where one alone
takes three round trips.  add_many() is not one
transaction: a failure part way leaves the schedules before it stored.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import heapq
import json
import logging
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Sequence

from pyqueue._native import partition_for_key
from pyqueue.errors import Closed, ConfigError, CorruptionError, MessageTooLarge, PyQueueError, UnknownTopic
from pyqueue.jetstream.client import describe, retry_transient
from pyqueue.jetstream.errors import Unavailable
from pyqueue.jetstream.lease import Lease
from pyqueue.jetstream.message import to_nats_headers
from pyqueue.jetstream.naming import unescape
from pyqueue.schedule import COLUMNS, NS, SLACK_NS, Schedule, check_row, fire_plan, scheduled_for

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker

__all__ = ["JetStreamScheduler", "DEFAULT_CAPACITY", "MAX_CAPACITY", "DEFAULT_LEASE_TTL", "fire_id"]

log = logging.getLogger("pyqueue.scheduler")

DEFAULT_CAPACITY = 10_000
MAX_CAPACITY = 100_000
DEFAULT_LEASE_TTL = 5.0
FORMAT = 1
_IDLE = 1.0                 # the active loop looks at the clock at least this often
_CONFLICT_PAUSE_NS = 50_000_000   # a schedule whose progress changed under us is tried again this much later
_ADD_WINDOW = 64            # KV writes in flight in add_many()
_FIRE_BATCH = 256           # due schedules fired together (each one's steps in order)
_FIRE_WINDOW = 64           # of them, fires in flight at once


def fire_id(schedule_id: str, t_ns: int) -> str:
    """The Nats-Msg-Id of a fire: the server drops a repeat within the
    stream's duplicate window.  (A user's dedup_id is sent hashed to 32 hex
    digits, so it never meets one of these.)"""
    return f"{schedule_id}@{t_ns}"


class _Conflict(Exception):
    """A progress record changed under the active scheduler."""


def _encode(row: tuple) -> bytes:
    d = dict(zip(COLUMNS, row))
    d["value"] = base64.b64encode(d["value"]).decode("ascii")
    d["key"] = None if d["key"] is None else base64.b64encode(d["key"]).decode("ascii")
    d["format"] = FORMAT
    return json.dumps(d, sort_keys=True).encode()


def _decode(raw: Optional[bytes], where: str) -> tuple:
    try:
        d = json.loads(raw or b"")
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise ValueError(f"unknown format {d.get('format') if isinstance(d, dict) else d!r}")
        d["value"] = base64.b64decode(d["value"])
        d["key"] = None if d["key"] is None else base64.b64decode(d["key"])
        return tuple(d[c] for c in COLUMNS)
    except (ValueError, TypeError, KeyError) as e:
        raise CorruptionError(f"{where}: unreadable schedule definition ({e})") from e


def _progress(raw: Optional[bytes]) -> dict[str, Any]:
    try:
        d = json.loads(raw or b"{}")
        return d if isinstance(d, dict) else {}
    except ValueError:
        return {}


def _number(name: str, value: object, lo: float, hi: float) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number of seconds, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} must be between {lo:g} and {hi:g} seconds")
    return float(value)


class JetStreamScheduler:
    """A namespace's schedules on JetStream.  Get it with broker.scheduler().

    Options (on the first call): clock (epoch seconds, for tests),
    misfire_grace (1 s), capacity (schedules the namespace may hold, fixed
    when first created: default 10,000, at most 100,000), lease_ttl (5 s: a
    standby takes over this long after the active scheduler's last renewal
    when it dies without releasing)."""

    def __init__(self, broker: "JetStreamBroker", *, clock: Callable[[], float] = time.time,
                 misfire_grace: float = 1.0, capacity: Optional[int] = None,
                 lease_ttl: float = DEFAULT_LEASE_TTL) -> None:
        if not callable(clock):
            raise TypeError("clock must be a callable returning epoch seconds")
        self.broker = broker
        self.clock = clock
        self.misfire_grace = _number("misfire_grace", misfire_grace, 0, 86400)
        self.lease_ttl = _number("lease_ttl", lease_ttl, 0.5, 300)
        if capacity is not None and (type(capacity) is not int or not 1 <= capacity <= MAX_CAPACITY):
            raise ConfigError(f"capacity={capacity!r} must be an int in 1..{MAX_CAPACITY} on the JetStream "
                              f"backend (the active scheduler holds every schedule in memory)")
        names = broker.names
        self._names = names
        self._def_prefix = names.schedule_key("")          # "{ns}.def."
        self._fired_prefix = names.fired_key("")
        self.kv = broker._run(broker._bucket(names.schedules_bucket, "pyqueue schedules"), broker.timeout + 1)
        self.capacity = broker._run(self._capacity(capacity), broker.timeout + 1)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._closed = False
        self._lease = Lease(self.kv, names.scheduler_key("lease"), self.lease_ttl, on_lost=self._wake.set)
        self._standby_poll = min(0.5, self.lease_ttl / 4)
        self._state_lock = threading.RLock()
        # The active scheduler's state (under _state_lock).
        self._leading = False
        self._defs: dict[str, Schedule] = {}
        self._revs: dict[str, int] = {}                   # id -> revision of the definition applied
        self._progress: dict[str, tuple[int, dict[str, Any]]] = {}   # id -> (revision, record)
        self._heap: list[tuple[int, str]] = []
        self._next: dict[str, int] = {}                   # id -> next fire time (heap entries not equal are stale)
        # (topic, partition) -> an offset at or before its end: where a scan
        # for a fire published from now on may start (saves a request a fire).
        self._ends: dict[tuple[str, int], int] = {}
        # Definition changes: from the watcher (loop thread) and from this object's own add/remove.
        self._events: "collections.deque[tuple[str, int, Optional[tuple]]]" = collections.deque()
        self._watcher: Any = None
        self._watch_task: Optional[asyncio.Task] = None
        self._watch_error: Optional[BaseException] = None
        self.fires = 0                    # messages this scheduler published

    def __repr__(self) -> str:
        return f"<JetStreamScheduler namespace={self._names.ns!r}{' active' if self.active else ''}>"

    # -- plumbing (coroutines run on the broker's loop) --

    async def _retry(self, op: Callable[[], Any], what: str, deadline: Optional[float] = None) -> Any:
        """op() through leader elections (client.retry_transient), up to the broker's timeout."""
        return await retry_transient(op, f"scheduler of namespace {self._names.ns!r}: {what}",
                                     self.broker._deadline() if deadline is None else deadline)

    async def _get(self, key: str, deadline: Optional[float] = None) -> Any:
        import nats.js.errors
        try:
            return await self._retry(lambda: self.kv.get(key), f"reading {key}", deadline)
        except nats.js.errors.KeyNotFoundError:          # absent, or a delete marker
            return None

    async def _snapshot(self, pattern: str, deadline: float) -> dict[str, Any]:
        """Every live key matching `pattern` -> its entry (one watcher, read
        to its end marker)."""
        w = await self._retry(lambda: self.kv.watch(pattern, ignore_deletes=True), f"reading {pattern}", deadline)
        out: dict[str, Any] = {}
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise Unavailable(f"scheduler of namespace {self._names.ns!r}: reading {pattern} took "
                                      f"longer than {self.broker.timeout:g} s ({len(out)} keys read)")
                entry = await asyncio.wait_for(w._updates.get(), left)
                if entry is None or not hasattr(entry, "key"):
                    return out
                if entry.operation not in ("DEL", "PURGE"):
                    out[entry.key] = entry
        finally:
            try:
                await w.stop()
            except Exception:
                pass

    async def _capacity(self, requested: Optional[int]) -> int:
        import nats.js.errors
        key = self._names.scheduler_key("meta")
        deadline = self.broker._deadline()
        while True:
            entry = await self._get(key, deadline)
            if entry is None:
                data = json.dumps({"capacity": requested or DEFAULT_CAPACITY}).encode()
                try:
                    await self._retry(lambda: self.kv.create(key, data), "creating the scheduler", deadline)
                except nats.js.errors.KeyWrongLastSequenceError:
                    continue                  # created concurrently: read theirs
                return requested or DEFAULT_CAPACITY
            try:
                stored = int(json.loads(entry.value)["capacity"])
            except (ValueError, TypeError, KeyError) as e:
                raise CorruptionError(f"KV bucket {self._names.schedules_bucket}, key {key}: unreadable "
                                      f"scheduler record ({e})") from e
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
        """Add (or replace) many schedules: each item holds the keyword
        arguments of add(), id included.  Every item is checked before any is
        stored; the writes are not one transaction (see the module's notes).
        Returns how many were new."""
        self._check_open()
        now_ns = int(self.clock() * NS)
        rows = [check_row(**item, created_ns=now_ns) for item in schedules]
        if not rows:
            return 0
        topics = set(self.broker.topics())
        for row in rows:
            if row[1] not in topics:
                raise UnknownTopic(f"schedule {row[0]!r}: no topic {row[1]!r} in namespace "
                                   f"{self._names.ns!r} at {self.broker.url}")
        last = list({row[0]: row for row in rows}.values())     # the last of an id wins
        written: list[tuple[str, int, tuple, bool]] = self.broker._run(
            self._add(last), self.broker.timeout + 1 + len(last) / 100)
        for id, rev, row, _ in written:
            self._events.append((id, rev, row))
        self._wake.set()
        return sum(1 for w in written if w[3])

    async def _add(self, rows: list[tuple]) -> list[tuple[str, int, tuple, bool]]:
        deadline = self.broker._deadline()
        existing = set(await self.broker.client.kv_keys(self._names.schedules_bucket, self._def_prefix + "*",
                                                        deadline=deadline))
        new = sum(1 for row in rows if self._names.schedule_key(row[0]) not in existing)
        if len(existing) + new > self.capacity:
            raise ConfigError(f"the scheduler holds at most {self.capacity} schedules (its capacity); this add "
                              f"would make {len(existing) + new}")
        window = asyncio.Semaphore(_ADD_WINDOW)

        async def one(row: tuple) -> tuple[str, int, tuple, bool]:
            async with window:
                return await self._put(row, self._names.schedule_key(row[0]) in existing, deadline)

        results = await asyncio.gather(*(one(row) for row in rows), return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                raise r
        return [r for r in results if not isinstance(r, BaseException)]

    async def _put(self, row: tuple, exists: bool, deadline: float) -> tuple[str, int, tuple, bool]:
        """Store one definition: create it, or replace it keeping its
        creation time.  (id, revision, the row stored, whether it is new)."""
        import nats.js.errors
        key = self._names.schedule_key(row[0])
        while True:
            entry = await self._get(key, deadline) if exists else None
            try:
                if entry is None:
                    data = _encode(row)
                    rev = await self._retry(lambda: self.kv.create(key, data), f"adding schedule {row[0]!r}",
                                            deadline)
                    return row[0], rev, row, True
                old = _decode(entry.value, f"KV bucket {self._names.schedules_bucket}, key {key}")
                kept = row[:12] + (old[12],)
                data, last = _encode(kept), entry.revision
                rev = await self._retry(lambda: self.kv.update(key, data, last=last),
                                        f"replacing schedule {row[0]!r}", deadline)
                return row[0], rev, kept, False
            except nats.js.errors.KeyWrongLastSequenceError:
                exists = True                 # written meanwhile: read it again
                if time.monotonic() > deadline:
                    raise Unavailable(f"schedule {row[0]!r}: its definition keeps changing") from None

    def remove(self, id: str) -> bool:
        """Remove a schedule; False if there was none."""
        self._check_open()
        if not isinstance(id, str):
            raise TypeError(f"schedule id must be str, not {type(id).__name__}")
        rev = self.broker._run(self._remove(id), self.broker.timeout + 1)
        if rev is None:
            return False
        self._events.append((id, rev, None))
        self._wake.set()
        return True

    async def _remove(self, id: str) -> Optional[int]:
        deadline = self.broker._deadline()
        key = self._names.schedule_key(id)
        if await self._get(key, deadline) is None:
            return None
        bucket = self._names.schedules_bucket
        js = self.broker.client.jetstream()
        # A delete marker first, so that the active scheduler's watcher sees
        # the removal; then a purge up to it, which leaves nothing behind.
        ack = await self._retry(lambda: js.publish(f"$KV.{bucket}.{key}", b"", headers={"KV-Operation": "DEL"}),
                                f"removing schedule {id!r}", deadline)
        rev = int(ack.seq)
        await self.broker.client.api_retry(f"STREAM.PURGE.KV_{bucket}", {"filter": f"$KV.{bucket}.{key}",
                                                                         "seq": rev + 1},
                                           deadline=deadline, what=f"removing schedule {id!r}")
        await self.broker.client.purge_keys(bucket, self._names.fired_key(id), deadline=deadline)
        return rev

    def get(self, id: str) -> Optional[Schedule]:
        self._check_open()
        if not isinstance(id, str):
            raise TypeError(f"schedule id must be str, not {type(id).__name__}")
        key = self._names.schedule_key(id)
        entry = self.broker._run(self._get(key), self.broker.timeout + 1)
        if entry is None:
            return None
        return Schedule.from_row(_decode(entry.value, f"KV bucket {self._names.schedules_bucket}, key {key}"))

    def list(self) -> list[Schedule]:
        self._check_open()
        entries = self.broker._run(self._snapshot(self._def_prefix + "*", self.broker._deadline()),
                                   self.broker.timeout + 1)
        out = [Schedule.from_row(_decode(e.value, f"KV bucket {self._names.schedules_bucket}, key {k}"))
               for k, e in entries.items()]
        return sorted(out, key=lambda s: s.id)

    def count(self) -> int:
        self._check_open()
        return len(self.broker._run(self.broker.client.kv_keys(
            self._names.schedules_bucket, self._def_prefix + "*", deadline=self.broker._deadline()),
            self.broker.timeout + 1))

    def info(self, id: str) -> Optional[dict[str, Any]]:
        """The schedule, its last fire time and count, and its next fire time
        (as recorded: a fire being published shows once it is recorded)."""
        spec = self.get(id)
        if spec is None:
            return None
        entry = self.broker._run(self._get(self._names.fired_key(id)), self.broker.timeout + 1)
        rec = _progress(entry.value) if entry is not None else {}
        if rec.get("created_ns") != spec.created_ns:
            rec = {}                          # the progress of a removed schedule of the same id
        last = rec.get("last_ns")
        nxt = spec.next_fire(last)
        return {"schedule": spec, "last_fire": None if last is None else scheduled_for(last),
                "fires": int(rec.get("fires", 0)), "next_fire": None if nxt is None else scheduled_for(nxt)}

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
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    @property
    def active(self) -> bool:
        """True while this scheduler is the namespace's active one."""
        return self._leading and self._lease.held()

    def run_forever(self) -> None:
        """Fire schedules until stop(): active while holding the namespace's
        lease, standing by otherwise."""
        while not self._stop.is_set():
            try:
                if not self._lead():
                    self._stop.wait(self._standby_poll)
                    continue
                try:
                    self._loop()
                finally:
                    self._resign()
            except Closed:
                return
            except Exception:                     # a fault must not end the scheduler thread
                if self._closed or self.broker._closed:
                    return
                log.exception("scheduler loop failed; retrying in %.1f s", self._standby_poll)
                self._stop.wait(self._standby_poll)

    def run_pending(self) -> int:
        """Fire everything due now (taking the lease if free); returns how
        many messages were published.  For tests and custom loops."""
        self._check_open()
        with self._state_lock:
            if not self._lead():
                raise PyQueueError(f"another scheduler is active on namespace {self._names.ns!r} at "
                                   f"{self.broker.url}")
            self._apply_changes()
            return self._fire_due()

    def _lead(self) -> bool:
        with self._state_lock:
            if self._leading:
                if self._lease.held():
                    return True
                self._resign()                    # lapsed or lost: what we knew may be stale
            if not self.broker._run(self._lease.acquire(), self.broker.timeout + 1):
                return False
            try:
                self._load()
            except BaseException:
                self._resign()
                raise
            self._leading = True
            return True

    def _resign(self) -> None:
        with self._state_lock:
            self._leading = False
            self._defs.clear()
            self._revs.clear()
            self._progress.clear()
            self._heap.clear()
            self._next.clear()
            self._ends.clear()
            self._events.clear()
            self._watch_error = None
            if self.broker._closed:
                return
            try:
                self.broker._run(self._release(), self.broker.request_timeout * 2)
            except Exception:
                pass                              # the lease lapses by itself

    async def _release(self) -> None:
        await self._stop_watch()
        await self._lease.release()

    def _loop(self) -> None:
        while not self._stop.is_set() and self._lease.held():
            if self._watch_error is not None:
                raise Unavailable(f"scheduler of namespace {self._names.ns!r}: watching definitions failed "
                                  f"({describe(self._watch_error)})")
            self._wake.clear()
            with self._state_lock:
                self._apply_changes()
                self._fire_due()
                nd = self._heap[0][0] if self._heap else None
            wait = _IDLE if nd is None else min(_IDLE, max(0.0, nd / NS - self.clock()))
            self._wake.wait(min(wait, self._lease.left()))

    # -- the active scheduler's state --

    def _load(self) -> None:
        """Watch the definitions (the watcher's first pass is the load) and
        read every progress record."""
        fired = self.broker._run(self._start_watch(), self.broker.timeout * 2 + 1)
        for k, e in fired.items():
            self._progress[unescape(k[len(self._fired_prefix):])] = (e.revision, _progress(e.value))
        self._apply_changes()

    async def _start_watch(self) -> dict[str, Any]:
        deadline = self.broker._deadline()
        await self._stop_watch()
        self._events.clear()
        synced = asyncio.Event()
        self._watcher = await self._retry(lambda: self.kv.watch(self._def_prefix + "*"),
                                          "watching schedule definitions", deadline)
        self._watch_task = asyncio.get_running_loop().create_task(self._consume(self._watcher, synced))
        try:
            await asyncio.wait_for(synced.wait(), max(0.01, deadline - time.monotonic()))
        except asyncio.TimeoutError:
            raise Unavailable(f"scheduler of namespace {self._names.ns!r}: loading the schedules took longer "
                              f"than {self.broker.timeout:g} s") from None
        return await self._snapshot(self._fired_prefix + "*", self.broker._deadline())

    async def _consume(self, watcher: Any, synced: asyncio.Event) -> None:
        bucket = self._names.schedules_bucket
        try:
            while True:
                entry = await watcher._updates.get()
                if entry is None:
                    synced.set()
                    continue
                if not hasattr(entry, "key"):     # the watcher was stopped
                    return
                id = unescape(entry.key[len(self._def_prefix):])
                if entry.operation in ("DEL", "PURGE"):
                    self._events.append((id, entry.revision, None))
                else:
                    try:
                        row = _decode(entry.value, f"KV bucket {bucket}, key {entry.key}")
                    except CorruptionError as e:
                        log.error("%s: not scheduled", e)
                        continue
                    self._events.append((id, entry.revision, row))
                if synced.is_set():
                    self._wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as e:
            self._watch_error = e
            self._wake.set()

    async def _stop_watch(self) -> None:
        task, self._watch_task = self._watch_task, None
        if task is not None:
            task.cancel()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.stop()
            except Exception:
                pass

    def _apply_changes(self) -> None:
        while self._events:
            id, rev, row = self._events.popleft()
            if rev <= self._revs.get(id, 0):
                continue                          # older than what we applied
            self._revs[id] = rev
            if row is None:
                self._defs.pop(id, None)
                self._next.pop(id, None)
                continue
            spec = Schedule.from_row(row)
            self._defs[id] = spec
            self._place(id, spec.next_fire(self._last_ns(spec)))

    def _place(self, id: str, t_ns: Optional[int]) -> None:
        if t_ns is None:
            self._next.pop(id, None)
        else:
            self._next[id] = t_ns
            heapq.heappush(self._heap, (t_ns, id))

    def _record(self, spec: Schedule) -> dict[str, Any]:
        """The schedule's progress record ({} if none, or a removed
        schedule's of the same id)."""
        prog = self._progress.get(spec.id)
        if prog is None or prog[1].get("created_ns") != spec.created_ns:
            return {}
        return prog[1]

    def _last_ns(self, spec: Schedule) -> Optional[int]:
        return self._record(spec).get("last_ns")

    def _fire_due(self) -> int:
        """Fire what is due, up to _FIRE_BATCH schedules at a time: each
        schedule's steps in order, different schedules' concurrently."""
        before = self.fires
        while self._heap:
            batch: list[tuple[str, int]] = []
            while self._heap and len(batch) < _FIRE_BATCH:
                t, id = self._heap[0]
                if t > int(self.clock() * NS) + SLACK_NS:
                    break
                heapq.heappop(self._heap)
                if self._next.get(id) != t:
                    continue                      # stale: replaced or removed
                if not self._lease.held():
                    self._place(id, t)
                    break
                del self._next[id]
                batch.append((id, t))
            if not batch:
                break
            self._fire_batch(batch)
            if not self._lease.held():
                break
        return self.fires - before

    def _fire_batch(self, batch: Sequence[tuple[str, int]]) -> None:
        plans: list[tuple[str, int, Any]] = []         # (id, due time, its coroutine)
        error: Optional[BaseException] = None
        for i, (id, t) in enumerate(batch):
            spec = self._defs.get(id)
            if spec is None:
                continue
            try:
                now = int(self.clock() * NS)
                actions, nxt = fire_plan(spec, self._resolve(spec), now, int(self.misfire_grace * NS))
                topic: Any = None
                if any(stands_for for _, stands_for in actions):
                    try:
                        topic = self.broker.topic(spec.topic, create=False)
                    except UnknownTopic as e:
                        topic = e                 # raised at the publish, after the steps before it
            except _Conflict:
                self._place(id, int(self.clock() * NS) + _CONFLICT_PAUSE_NS)
                continue
            except BaseException as e:
                self._place(id, t)                # tried again next time (Unavailable, a bad record, ...)
                for later_id, later_t in batch[i + 1:]:
                    self._place(later_id, later_t)
                error = e
                break
            plans.append((id, t, self._afire(spec, actions, nxt, topic)))
        if plans:
            window = asyncio.Semaphore(_FIRE_WINDOW)

            async def one(c: Any) -> Any:
                async with window:
                    return await c

            async def all_of() -> list[Any]:
                return list(await asyncio.gather(*(one(c) for _, _, c in plans), return_exceptions=True))

            try:
                outs = self.broker._run(all_of(), self.broker.timeout + 1)
            except BaseException as e:
                for _, _, c in plans:
                    c.close()
                outs = [e] * len(plans)
            for (id, t, _), out in zip(plans, outs):
                if isinstance(out, BaseException):
                    self._place(id, t)            # tried again next time
                    if error is None:
                        error = out
                else:
                    self._place(id, out)
        if error is not None:
            raise error

    async def _afire(self, spec: Schedule, actions: Sequence[tuple[int, int]], nxt: Optional[int],
                     topic: Any) -> Optional[int]:
        """One schedule's due fire (its actions in order); its next fire time."""
        try:
            try:
                for t, stands_for in actions:
                    if stands_for:
                        if isinstance(topic, BaseException):
                            raise topic
                        await self._publish(spec, topic, t, stands_for)
                    else:
                        await self._awrite(spec, {**self._base(spec), "last_ns": t})
            except (UnknownTopic, MessageTooLarge) as e:
                self._ends = {k: v for k, v in self._ends.items() if k[0] != spec.topic}
                log.warning("schedule %r: fire at %s not published: %s", spec.id, scheduled_for(actions[-1][0]), e)
                await self._awrite(spec, {**self._base(spec), "last_ns": actions[-1][0]})
        except _Conflict:
            # Someone else wrote its progress (a fenced scheduler's last
            # write, or a remove): decide again from what is stored now.
            return int(self.clock() * NS) + _CONFLICT_PAUSE_NS
        return nxt

    def _base(self, spec: Schedule) -> dict[str, Any]:
        rec = self._record(spec)
        return {"last_ns": rec.get("last_ns"), "fires": int(rec.get("fires", 0)), "created_ns": spec.created_ns}

    def _write(self, spec: Schedule, record: dict[str, Any]) -> None:
        """Store a progress record by CAS on the revision we know; _Conflict
        (after reading it again) if it changed."""
        self.broker._run(self._awrite(spec, record), self.broker.timeout + 1)

    async def _awrite(self, spec: Schedule, record: dict[str, Any]) -> None:
        rev = await self._cas(spec.id, record)
        self._progress[spec.id] = (rev, record)

    async def _cas(self, id: str, record: dict[str, Any]) -> int:
        import nats.js.errors
        key = self._names.fired_key(id)
        data = json.dumps(record, sort_keys=True).encode()
        deadline = self.broker._deadline(min(self.broker.timeout, max(self._lease.left(),
                                                                       self.broker.request_timeout)))
        prog = self._progress.get(id)
        try:
            if prog is None:
                return await self._retry(lambda: self.kv.create(key, data), f"recording a fire of {id!r}", deadline)
            last = prog[0]
            return await self._retry(lambda: self.kv.update(key, data, last=last),
                                     f"recording a fire of {id!r}", deadline)
        except nats.js.errors.KeyWrongLastSequenceError:
            entry = await self._get(key, deadline)
            if entry is None:
                self._progress.pop(id, None)
            else:
                self._progress[id] = (entry.revision, _progress(entry.value))
            raise _Conflict(id) from None

    def _resolve(self, spec: Schedule) -> Optional[int]:
        """The last fire time of a schedule, finishing the record of a fire
        whose publisher stopped between its pending record and its fired one."""
        rec = self._record(spec)
        last, pending = rec.get("last_ns"), rec.get("pending")
        if not pending or (last is not None and pending["t"] <= last):
            return last
        t = int(pending["t"])
        if self._find_fire(spec, int(pending["p"]), t, int(pending["from"])):
            record = {**self._base(spec), "last_ns": t, "fires": int(rec.get("fires", 0)) + 1}
        else:
            record = self._base(spec)             # not published: it is due again
        self._write(spec, record)
        return record["last_ns"]

    def _find_fire(self, spec: Schedule, part: int, t_ns: int, start: int) -> bool:
        """True if fire t_ns's message is in partition `part` at or after
        offset `start`: a scan of what was appended since that fire began."""
        try:
            topic = self.broker.topic(spec.topic, create=False)
            if part >= topic.partitions:
                return False
            first, end = topic.offsets(part)
        except UnknownTopic:
            return False
        want_id, want_t = spec.id.encode(), scheduled_for(t_ns).encode()
        offset = max(start, first)
        while offset < end:
            msgs = topic.read(part, offset, 1000)
            if not msgs:
                return False
            for m in msgs:
                h = m.headers
                if h.get("x-schedule-id") == want_id and h.get("x-scheduled-for") == want_t:
                    return True
            offset = msgs[-1].offset + 1
        return False

    async def _publish(self, spec: Schedule, topic: Any, t_ns: int, stands_for: int) -> None:
        if not self._lease.held():
            raise _Conflict(spec.id)              # fenced: the loop ends at its next look
        rec = self._record(spec)
        if rec.get("last_ns") is not None and rec["last_ns"] >= t_ns:
            return                                # fired already
        headers = dict(spec.headers)
        headers["x-schedule-id"] = spec.id.encode()
        headers["x-scheduled-for"] = scheduled_for(t_ns).encode()
        if stands_for > 1:
            headers["x-coalesced"] = str(stands_for).encode()
        topic._size_check(spec.value, spec.key, headers)
        msg_id = fire_id(spec.id, t_ns)
        part = partition_for_key(spec.key if spec.key is not None else msg_id.encode(), topic.partitions)
        # An offset at or before the partition's end, read before this fire's publish (another
        # fire's publish in flight meanwhile lands before or after it: the bound holds).
        end = self._ends.get((spec.topic, part))
        if end is None:
            _, end = await topic._offsets(part)
        base = self._base(spec)
        await self._awrite(spec, {**base, "pending": {"t": t_ns, "p": part, "from": end}})
        nh = to_nats_headers(spec.key, headers, msg_id)
        # Not past the lease (give or take a request): a successor publishes it again, deduplicated.
        deadline = time.monotonic() + max(self._lease.left(), self.broker.request_timeout)
        ack = await topic._publish(self.broker.client, part, spec.value, nh, deadline, True)
        self._ends[(spec.topic, part)] = int(ack["seq"])    # a lower bound of the end from now on
        await self._awrite(spec, {**base, "last_ns": t_ns, "fires": base["fires"] + 1})
        if not ack.get("duplicate"):
            self.fires += 1

    # -- lifecycle --

    def _check_open(self) -> None:
        if self._closed:
            raise Closed("the scheduler is closed")

    def close(self) -> None:
        """Stop, and give the lease up.  Idempotent."""
        self.stop()
        self._resign()
        self._closed = True
