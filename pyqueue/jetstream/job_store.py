"""JsJobStore: job definitions, job states and worker heartbeats in a KV bucket.

The JetStream broker's jobs() hands it to pyqueue.jobs.Jobs in place of the
SQLite store (the interface is pyqueue.jobs.store_api.StoreAPI).  The job
messages travel on the broker's topics, as on the embedded engine.  One
bucket, `pyqueue_jobs`, created on first use with the broker's replicas
(history 1), is shared by every namespace; its keys start with it:

    {ns}.defs                  every definition: {"name": spec JSON, ...} (one value, so that a
                               look at its revision tells a worker whether any changed)
    {ns}.j.{id}                a job (16 hex digits): its record as JSON, a newline, then its
                               result's JSON bytes (none unless it succeeded)
    {ns}.f.{hash}.{ns_time}    a schedule fire's job id (hash: of the schedule id), so that a
                               fire delivered twice is one job
    {ns}.w.{host}.{pid}        a worker's heartbeat

Changes are compare-and-set on the key's revision (KV update with last=):
a job changes only while it is queued or running, and a writer whose CAS
fails reads the key again and decides again, so a cancel racing a worker's
final write resolves one way.  A write whose answer was lost in a failover
is recognised on the retry (the key holds what it wrote).

Costs and limits (KV has no transactions and no secondary index):
  - submit: one create.  A worker reads the states of the jobs it leases
    (a get each, all in flight at once) and remembers each live job's
    revision (up to KNOWN jobs), so its batch writes are an update per job,
    a CAS over that revision with no read first (a stale one fails and the
    writer reads again and decides again); a heartbeat: a stamp per running
    job, the same way.
  - status(): one get.  result(): a KV watch on the job's key (an ordered
    consumer the server pushes each change to), with a get every
    RECHECK seconds in case the watch stalls through a failover.
  - list() and counts() read every job record of the namespace (a KV watch
    over {ns}.j.>): the cost grows with the jobs kept (keep=, default one
    day).  Past MAX_SCAN records they raise Unsupported.  A retention pass
    reads them all too, and removes at most PURGE_BATCH.
  - a result may be at most max_result_bytes (the server's max_payload less
    RECORD_ROOM); an error text is cut to MAX_ERROR_CHARS; all definitions
    together must fit one value (max_payload less RECORD_ROOM).
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import concurrent.futures
import hashlib
import heapq
import json
import re
import threading
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Optional, Sequence

import msgspec

from pyqueue.errors import Closed, ConfigError, CorruptionError
from pyqueue.jobs.definition import JobDefinition
from pyqueue.jobs.status import CANCELLED, FINAL_STATES, QUEUED, RUNNING, JobStatus
from pyqueue.jobs.store import PURGE_BATCH, new_id
from pyqueue.jetstream.client import retry_transient
from pyqueue.jetstream.errors import Unavailable, Unsupported

if TYPE_CHECKING:
    from pyqueue.jetstream.broker import JetStreamBroker

__all__ = ["JsJobStore", "MAX_SCAN", "RECORD_ROOM", "MAX_ERROR_CHARS", "RECHECK"]

MAX_SCAN = 100_000          # job records list() and counts() read at most
RECORD_ROOM = 64 << 10      # bytes of a KV value kept for a job's record besides its result
MAX_ERROR_CHARS = 16_000    # an error text longer than this is cut (its JSON may double it)
RECHECK = 2.0               # seconds between direct looks while result() watches a job
_PARALLEL = 64              # KV requests in flight per call
KNOWN = 4096                # live jobs whose last revision a store remembers
_LIVE = (QUEUED, RUNNING)
_HOST = re.compile(r"[A-Za-z0-9-]{1,64}\Z")
_encode = msgspec.json.encode


class _Entry:
    """A KV entry as _kv_get reads it."""

    __slots__ = ("value", "revision")

    def __init__(self, value: bytes, revision: int) -> None:
        self.value = value
        self.revision = revision


def _host_token(host: str) -> str:
    return host if _HOST.match(host) else "x" + host.encode().hex()[:120]


def _split(value: bytes) -> tuple[dict[str, Any], Optional[bytes]]:
    head, sep, result = value.partition(b"\n")
    rec = msgspec.json.decode(head)
    if not isinstance(rec, dict) or "state" not in rec:
        raise ValueError("no state")
    return rec, (result if sep and result else None)


def _join(rec: dict[str, Any], result: Optional[bytes]) -> bytes:
    head = _encode(rec)
    return head + b"\n" + result if result is not None else head


def _s(ns: Optional[int]) -> Optional[float]:
    return None if ns is None else ns / 1e9


def _status(jid: int, rec: dict[str, Any], result: Optional[bytes]) -> JobStatus:
    return JobStatus(rec["state"], rec.get("attempts", 0), rec["queued_ns"] / 1e9, _s(rec.get("started_ns")),
                     _s(rec.get("finished_ns")), None if result is None else msgspec.json.decode(result),
                     rec.get("error"), rec.get("exit_code"), f"{jid:016x}", rec.get("name", ""),
                     rec.get("schedule_id"), _s(rec.get("scheduled_ns")), rec.get("worker"),
                     _s(rec.get("heartbeat_ns")))


def _live(rec: dict[str, Any]) -> bool:
    return rec.get("state") in _LIVE


def _cut(error: Optional[str]) -> Optional[str]:
    if error is None or len(error) <= MAX_ERROR_CHARS:
        return error
    return error[:MAX_ERROR_CHARS] + f"\n[cut: {len(error)} characters, the JetStream job store keeps {MAX_ERROR_CHARS}]"


class JsJobStore:
    """The job store of one namespace of a JetStreamBroker.  Thread-safe:
    every call runs on the broker's event loop."""

    def __init__(self, broker: "JetStreamBroker") -> None:
        self.broker = broker
        self.bucket = broker.names.jobs_bucket
        ns = broker.names.ns
        self._defs_key = f"{ns}.defs"
        self._jobs_prefix = f"{ns}.j."
        self._fire_prefix = f"{ns}.f."
        self._workers_prefix = f"{ns}.w."
        self.max_value = broker.max_payload - 1024          # room for the KV publish's headers
        self.max_result_bytes: Optional[int] = self.max_value - RECORD_ROOM
        self._lock = threading.Lock()
        self._defs: tuple[int, dict[str, JobDefinition]] = (-1, {})
        # live job -> (revision, value) last read or written here (touched on the broker's loop only)
        self._known: dict[int, tuple[int, bytes]] = {}
        self.kv: Any = broker._run(broker._bucket(self.bucket, "pyqueue job definitions, states and workers"))
        self._api = getattr(self.kv._js, "_prefix", "$JS.API") + "."

    def __repr__(self) -> str:
        return f"<JsJobStore {self.broker.url} bucket {self.bucket} namespace {self.broker.names.ns}>"

    def for_worker(self) -> "JsJobStore":
        return self

    def close(self) -> None:
        """Nothing to release: the bucket is the broker connection's."""

    # -- plumbing --

    def _run(self, coro: Awaitable[Any]) -> Any:
        return self.broker._run(coro)

    def _key(self, jid: int) -> str:
        return f"{self._jobs_prefix}{jid:016x}"

    def _fire_key(self, schedule_id: str, scheduled_ns: int) -> str:
        h = hashlib.blake2b(schedule_id.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()
        return f"{self._fire_prefix}{h}.{scheduled_ns}"

    async def _retry(self, op: Callable[[], Awaitable[Any]], what: str, deadline: Optional[float] = None) -> Any:
        """op() through leader elections (client.retry_transient), up to the broker's timeout."""
        return await retry_transient(op, f"job store ({self.bucket}): {what}",
                                     self.broker._deadline() if deadline is None else deadline)

    async def _get(self, key: str) -> Any:
        """The key's entry (value, revision), or None."""
        import nats.js.errors
        try:
            return await self._retry(lambda: self._kv_get(key), f"reading {key}")
        except nats.js.errors.KeyNotFoundError:
            return None

    # KeyValue.get and .update of nats-py, lighter: one request each, its answer decoded by
    # msgspec and a delete marker told by a look at the raw headers (nats-py parses them as
    # e-mail).  The same requests, the same answers (leader reads), the same errors.

    async def _kv_get(self, key: str) -> _Entry:
        import nats.js.errors
        subject = self.kv._pre + key
        msg = await self.broker.client.nc.request(
            f"{self._api}STREAM.MSG.GET.{self.kv._stream}", _encode({"last_by_subj": subject}),
            timeout=self.broker.request_timeout)
        resp = msgspec.json.decode(msg.data)
        err = resp.get("error")
        if err:
            if err.get("code") == 404:
                raise nats.js.errors.KeyNotFoundError
            nats.js.errors.APIError.from_error(err)        # raises the matching APIError
        m = resp["message"]
        if m.get("subject") != subject:
            raise nats.js.errors.KeyNotFoundError
        hdrs = m.get("hdrs")
        if hdrs:
            head = base64.b64decode(hdrs)
            if b"KV-Operation: DEL" in head or b"KV-Operation: PURGE" in head:
                raise nats.js.errors.KeyNotFoundError       # a delete marker
        return _Entry(base64.b64decode(m.get("data") or b""), int(m["seq"]))

    async def _kv_update(self, key: str, value: bytes, last: int) -> int:
        import nats.js.errors
        msg = await self.broker.client.nc.request(
            self.kv._pre + key, value, timeout=self.broker.request_timeout,
            headers={"Nats-Expected-Last-Subject-Sequence": str(last)})
        resp = msgspec.json.decode(msg.data)
        err = resp.get("error")
        if err:
            if err.get("err_code") in (10071, 10164):
                raise nats.js.errors.KeyWrongLastSequenceError(description=err.get("description", ""))
            nats.js.errors.APIError.from_error(err)
        return int(resp["seq"])

    async def _create(self, key: str, value: bytes) -> bool:
        """Create the key; False if it exists with another value (a lost
        answer of our own create shows as our value, and counts as created)."""
        import nats.js.errors
        try:
            await self._retry(lambda: self.kv.create(key, value), f"creating {key}")
            return True
        except nats.js.errors.KeyWrongLastSequenceError:
            e = await self._get(key)
            return e is not None and e.value == value

    async def _update(self, key: str, value: bytes, last: int) -> bool:
        """CAS: write value over revision `last`; False if the key moved on
        (unless to this very value: our own write, its answer lost)."""
        return (await self._cas(key, value, last))[0]

    async def _cas(self, key: str, value: bytes, last: int) -> tuple[bool, Any]:
        """CAS: write value over revision `last`.  (True, the new revision),
        or (False, the entry the key holds now, or None): the key moved on.
        A lost answer of our own write shows as our value: (True, its revision)."""
        import nats.js.errors
        try:
            return True, await self._retry(lambda: self._kv_update(key, value, last), f"updating {key}")
        except nats.js.errors.KeyWrongLastSequenceError:
            e = await self._get(key)
            if e is not None and e.value == value:
                return True, e.revision
            return False, e

    async def _purge(self, key: str) -> None:
        await self.broker.client.purge_keys(self.bucket, key, deadline=self.broker._deadline())

    def _decode(self, key: str, value: bytes) -> tuple[dict[str, Any], Optional[bytes]]:
        try:
            return _split(value)
        except (msgspec.DecodeError, ValueError, TypeError) as e:
            raise CorruptionError(f"KV bucket {self.bucket}, key {key}: unreadable job record ({e})") from e

    async def _gather(self, coros: Iterable[Awaitable[Any]]) -> list[Any]:
        """Run coroutines with at most _PARALLEL in flight."""
        sem = asyncio.Semaphore(_PARALLEL)

        async def one(c: Awaitable[Any]) -> Any:
            async with sem:
                return await c
        return list(await asyncio.gather(*(one(c) for c in coros)))

    def _remember(self, jid: int, revision: int, value: bytes) -> None:
        """Keep a live job's last known (revision, value), so that its next
        change is a CAS on it without a read first (a stale one fails the
        CAS, and the writer reads again).  At most KNOWN entries."""
        known = self._known
        known.pop(jid, None)
        known[jid] = (revision, value)
        if len(known) > KNOWN:
            del known[next(iter(known))]

    async def _change(self, jid: int, change: Callable[[dict[str, Any], Optional[bytes]],
                                                       Optional[tuple[dict[str, Any], Optional[bytes]]]]) -> Any:
        """Read-modify-write of a job by CAS, again until it holds: change(rec,
        result) returns the new (rec, result), or None to leave the job alone.
        The first try starts from the revision this store last read or wrote
        (no read), if it has one.  Returns (the record decided on last,
        whether it was written), or None if there is no job."""
        key = self._key(jid)
        known = self._known.pop(jid, None)
        remembered = known is not None
        while True:
            if known is None:
                e = await self._get(key)
                if e is None:
                    return None
                known = (e.revision, e.value)
            rev, current = known
            rec, result = self._decode(key, current)
            new = change(rec, result)
            if new is None:
                if remembered:               # "leave it alone" is decided on what the key holds now
                    known, remembered = None, False
                    continue
                if _live(rec):
                    self._remember(jid, rev, current)
                return rec, False
            value = _join(*new)
            if len(value) > self.max_value:
                raise ConfigError(f"job {jid:016x}: its record is {len(value)} bytes; a KV value of "
                                  f"{self.bucket} holds at most {self.max_value}")
            ok, got = await self._cas(key, value, rev)
            if ok:
                if _live(new[0]):
                    self._remember(jid, got, value)
                return rec, True
            if got is None:
                return None
            known, remembered = (got.revision, got.value), False

    # -- definitions --

    async def _read_defs(self) -> tuple[int, dict[str, str]]:
        e = await self._get(self._defs_key)
        if e is None:
            return 0, {}
        try:
            specs = json.loads(e.value)
            if not isinstance(specs, dict):
                raise ValueError("not an object")
        except ValueError as err:
            raise CorruptionError(f"KV bucket {self.bucket}, key {self._defs_key}: unreadable job "
                                  f"definitions ({err})") from err
        return e.revision, specs

    async def _write_defs(self, change: Callable[[dict[str, str]], Any]) -> Any:
        while True:
            rev, specs = await self._read_defs()
            out = change(specs)
            value = json.dumps(specs, sort_keys=True).encode()
            if len(value) > self.max_value - RECORD_ROOM:
                raise ConfigError(f"the job definitions of namespace {self.broker.names.ns!r} would take "
                                  f"{len(value)} bytes; the JetStream backend keeps them in one KV value of at "
                                  f"most {self.max_value - RECORD_ROOM} bytes (the server's max_payload less "
                                  f"{RECORD_ROOM})")
            ok = (await self._create(self._defs_key, value)) if rev == 0 else \
                (await self._update(self._defs_key, value, rev))
            if ok:
                return out

    def define(self, d: JobDefinition) -> None:
        def change(specs: dict[str, str]) -> None:
            specs[d.name] = d.to_json()
        self._run(self._write_defs(change))

    def undefine(self, name: str) -> bool:
        def change(specs: dict[str, str]) -> bool:
            return specs.pop(name, None) is not None
        return self._run(self._write_defs(change))

    def _load_defs(self) -> tuple[int, dict[str, JobDefinition]]:
        rev, specs = self._run(self._read_defs())
        with self._lock:
            if rev == self._defs[0]:
                return self._defs
        out = {}
        for name in sorted(specs):
            try:
                out[name] = JobDefinition.from_json(specs[name])
            except (msgspec.DecodeError, TypeError, KeyError, ValueError) as e:
                raise CorruptionError(f"KV bucket {self.bucket}, key {self._defs_key}: the stored definition "
                                      f"of job {name!r} is unreadable ({e})") from e
        with self._lock:
            self._defs = (rev, out)
        return rev, out

    def definitions_version(self) -> int:
        return self._load_defs()[0]

    def definitions(self) -> dict[str, JobDefinition]:
        return dict(self._load_defs()[1])

    # -- submit side --

    def _new_record(self, name: str, now_ns: int, schedule_id: Optional[str] = None,
                    scheduled_ns: Optional[int] = None) -> dict[str, Any]:
        rec: dict[str, Any] = {"name": name, "state": QUEUED, "attempts": 0, "queued_ns": now_ns}
        if schedule_id is not None:
            rec["schedule_id"] = schedule_id
            rec["scheduled_ns"] = scheduled_ns
        return rec

    async def _insert(self, rec: dict[str, Any], now_ns: int) -> int:
        value = _join(rec, None)
        bump = 0
        while True:
            jid = new_id(now_ns + bump)
            if await self._create(self._key(jid), value):
                return jid
            bump += 1000                 # same µs and same bits as another submit: draw again

    def insert(self, name: str, now_ns: int) -> int:
        return self._run(self._insert(self._new_record(name, now_ns), now_ns))

    def insert_many(self, name: str, n: int, now_ns: int) -> list[int]:
        async def many() -> list[int]:
            return await self._gather(self._insert(self._new_record(name, now_ns), now_ns + 1000 * k)
                                      for k in range(n))
        return sorted(self._run(many()))

    def delete(self, jid: int) -> None:
        self._run(self._purge(self._key(jid)))

    def insert_fire(self, name: str, schedule_id: str, scheduled_ns: int, now_ns: int) -> tuple[int, str, int]:
        """The job of one fire of a schedule, made on its first delivery:
        (id, state, attempts).  The fire key names the job first, so a
        delivery after a crash between the two writes finds the same id."""
        async def fire() -> tuple[int, str, int]:
            fkey = self._fire_key(schedule_id, scheduled_ns)
            rec = self._new_record(name, now_ns, schedule_id, scheduled_ns)
            while True:
                e = await self._get(fkey)
                if e is None:
                    jid = new_id(now_ns)
                    if not await self._create(fkey, f"{jid:016x}".encode()):
                        continue          # made meanwhile: read theirs
                    rev = None
                else:
                    jid, rev = int(e.value, 16), e.revision
                key = self._key(jid)
                j = await self._get(key)
                if j is None:
                    if await self._create(key, _join(rec, None)):
                        return jid, QUEUED, 0
                    j = await self._get(key)
                    if j is None:
                        continue
                got, _ = self._decode(key, j.value)
                if got.get("schedule_id") == schedule_id and got.get("scheduled_ns") == scheduled_ns:
                    return jid, got["state"], got.get("attempts", 0)
                # the id drawn is another job's (same µs, same random bits): point the fire elsewhere
                if rev is None:
                    e = await self._get(fkey)
                    if e is None:
                        continue
                    rev = e.revision
                await self._update(fkey, f"{new_id(now_ns + 1000):016x}".encode(), rev)
        return self._run(fire())

    # -- reading --

    def states(self, ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        async def read() -> dict[int, tuple[str, int]]:
            keys = [self._key(j) for j in ids]
            entries = await self._gather(self._get(k) for k in keys)
            out = {}
            for jid, key, e in zip(ids, keys, entries):
                if e is not None:
                    rec, _ = self._decode(key, e.value)
                    out[jid] = (rec["state"], rec.get("attempts", 0))
                    if rec["state"] in _LIVE:
                        self._remember(jid, e.revision, e.value)   # its worker's write starts from it
            return out
        return self._run(read()) if ids else {}

    def get(self, jid: int) -> Optional[JobStatus]:
        key = self._key(jid)
        e = self._run(self._get(key))
        if e is None:
            return None
        return _status(jid, *self._decode(key, e.value))

    async def _scan(self, prefix: str, visit: Callable[[str, bytes], Any], limit: Optional[int], what: str) -> None:
        """visit(key, value) for every live key under prefix: a KV watch
        delivering each key's last value, read up to the one after which the
        server said nothing was pending.  (nats-py's own end-of-snapshot
        marker can come first when the values are still on their way, which
        would end a scan early.)  Unsupported past `limit` keys; Unavailable
        if the watch stalls for the broker's timeout."""
        watcher = await self._retry(lambda: self.kv.watch(prefix + ">"), f"scanning {prefix}>")
        n = 0
        try:
            while True:
                try:
                    e = await asyncio.wait_for(watcher._updates.get(), self.broker.timeout)
                except asyncio.TimeoutError:
                    raise Unavailable(f"job store ({self.bucket}): {what}: the scan of {prefix}> stalled for "
                                      f"{self.broker.timeout:g} s") from None
                if e is None:
                    info = await watcher._sub.consumer_info()
                    if info.num_pending == 0 and info.delivered.consumer_seq == 0:
                        return                # nothing under prefix
                    continue                  # the values are on their way
                if not hasattr(e, "key"):
                    raise Unavailable(f"job store ({self.bucket}): {what}: the scan of {prefix}> was cut off")
                if e.value and e.operation not in ("DEL", "PURGE"):
                    n += 1
                    if limit is not None and n > limit:
                        raise Unsupported(
                            f"{what} reads every job record on the JetStream backend (KV has no index) and "
                            f"stops at {limit}: namespace {self.broker.names.ns!r} keeps more; use status() by "
                            f"id, or keep fewer finished jobs (broker.jobs(keep=seconds))")
                    visit(e.key, e.value)
                if e.delta == 0:
                    return
        finally:
            try:
                await watcher.stop()
            except Exception:
                pass

    def list(self, state: Optional[str] = None, name: Optional[str] = None, limit: int = 100,
             newest_first: bool = True) -> "builtins.list[JobStatus]":
        heap: list[tuple[int, bytes]] = []        # the `limit` best (id, value) so far; heap[0] is the worst
        sign = 1 if newest_first else -1
        plen = len(self._jobs_prefix)

        def visit(key: str, value: bytes) -> None:
            rec, _ = self._decode(key, value)
            if (state is not None and rec["state"] != state) or (name is not None and rec.get("name") != name):
                return
            item = (sign * int(key[plen:], 16), value)
            if len(heap) < limit:
                heapq.heappush(heap, item)
            elif item[0] > heap[0][0]:
                heapq.heapreplace(heap, item)

        self._run(self._scan(self._jobs_prefix, visit, MAX_SCAN, "list()"))
        heap.sort(reverse=True)
        return [_status(sign * k, *self._decode(self._key(sign * k), v)) for k, v in heap]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}

        def visit(key: str, value: bytes) -> None:
            st = self._decode(key, value)[0]["state"]
            out[st] = out.get(st, 0) + 1

        self._run(self._scan(self._jobs_prefix, visit, MAX_SCAN, "counts()"))
        return out

    def wait(self, jid: int, timeout: Optional[float]) -> Optional[JobStatus]:
        return self._run(self._wait(jid, None if timeout is None else time.monotonic() + timeout))

    async def _wait(self, jid: int, deadline: Optional[float]) -> Optional[JobStatus]:
        key = self._key(jid)

        async def look() -> Optional[JobStatus]:
            e = await self._get(key)
            return None if e is None else _status(jid, *self._decode(key, e.value))

        st = await look()
        if st is None or st.done or (deadline is not None and time.monotonic() >= deadline):
            return st
        watcher = await self._retry(lambda: self.kv.watch(key), f"watching {key}")
        try:
            while True:
                left = RECHECK if deadline is None else min(RECHECK, deadline - time.monotonic())
                if left <= 0:
                    return st
                try:
                    e = await asyncio.wait_for(watcher._updates.get(), left)
                except asyncio.TimeoutError:
                    st = await look()                 # a direct look, in case the watch stalled
                else:
                    if e is None:
                        continue                      # the end of the initial values
                    if not hasattr(e, "key"):         # the watch ended: look directly from now on
                        await asyncio.sleep(min(RECHECK, max(0.0, left)))
                        st = await look()
                    elif e.operation in ("DEL", "PURGE") or not e.value:
                        return None
                    else:
                        st = _status(jid, *self._decode(key, e.value))
                if st is None or st.done:
                    return st
        finally:
            try:
                await watcher.stop()
            except Exception:
                pass

    # -- changes --

    def cancel(self, jid: int, now_ns: int) -> Optional[str]:
        def change(rec: dict[str, Any], result: Optional[bytes]) -> Any:
            if rec["state"] not in _LIVE:
                return None
            new = dict(rec, state=CANCELLED, finished_ns=now_ns,
                       error="Cancelled: cancelled by cancel()" + (" while running" if rec["state"] == RUNNING else ""))
            return new, result
        out = self._run(self._change(jid, change))
        return None if out is None else out[0]["state"]

    def write(self, running: Iterable[tuple], finals: Iterable[tuple]) -> None:
        """A worker batch (the tuples of JobStore.write), one CAS per job, all
        in flight at once; jobs no longer queued or running are left alone.
        A job this store read or wrote last (the worker's admission read it)
        is written over that revision without a read."""
        self._run(self._write(running, finals))

    def write_async(self, running: Iterable[tuple], finals: Iterable[tuple]) -> "concurrent.futures.Future[None]":
        """write() started on the broker's loop; the future is done when it is."""
        if self.broker._closed:
            raise Closed(f"broker {self.broker.url} is closed")
        return asyncio.run_coroutine_threadsafe(self._write(running, finals), self.broker._bridge.loop)

    async def _write(self, running: Iterable[tuple], finals: Iterable[tuple]) -> None:
        ops: dict[int, list[tuple[str, tuple]]] = {}
        for r in running:
            ops.setdefault(r[4], []).append(("running", r))
        for f in finals:
            ops.setdefault(f[8], []).append(("final", f))
        if not ops:
            return

        def changer(steps: list[tuple[str, tuple]]) -> Callable[..., Any]:
            def change(rec: dict[str, Any], result: Optional[bytes]) -> Any:
                new = dict(rec)
                wrote = False
                for kind, t in steps:
                    if new["state"] not in _LIVE:
                        break
                    wrote = True
                    if kind == "running":
                        attempts, started_ns, worker, heartbeat_ns, _ = t
                        new.update(state=RUNNING, attempts=attempts, started_ns=started_ns, worker=worker,
                                   heartbeat_ns=heartbeat_ns)
                    else:
                        st, attempts, started_ns, finished_ns, res, error, exit_code, worker, _ = t
                        new.update(state=st, attempts=attempts, started_ns=started_ns, finished_ns=finished_ns,
                                   error=_cut(error), exit_code=exit_code, worker=worker)
                        result = None if res is None else bytes(res)
                return (new, result) if wrote else None
            return change

        await self._gather(self._change(jid, changer(steps)) for jid, steps in ops.items())

    def wake(self) -> None:
        """Nothing to do: result() watches the job's key."""

    def heartbeat(self, ids: Sequence[int], now_ns: int) -> set[int]:
        """Stamp running jobs; returns those of `ids` that were cancelled."""
        if not ids:
            return set()

        def change(rec: dict[str, Any], result: Optional[bytes]) -> Any:
            if rec["state"] != RUNNING:
                return None
            return dict(rec, heartbeat_ns=now_ns), result

        async def beat() -> set[int]:
            outs = await self._gather(self._change(jid, change) for jid in ids)
            return {jid for jid, out in zip(ids, outs) if out is not None and out[0]["state"] == CANCELLED}
        return self._run(beat())

    def purge(self, keep: float, now_ns: int) -> int:
        """Remove up to PURGE_BATCH final jobs that finished more than `keep`
        s ago (with their fire keys).  Reads every job record."""
        cutoff_ns = now_ns - int(keep * 1e9)
        doomed: list[str] = []

        def visit(key: str, value: bytes) -> None:
            if len(doomed) >= 2 * PURGE_BATCH:
                return
            rec, _ = self._decode(key, value)
            if rec["state"] in FINAL_STATES and (rec.get("finished_ns") or 0) < cutoff_ns:
                doomed.append(key)
                if rec.get("schedule_id") is not None and rec.get("scheduled_ns") is not None:
                    doomed.append(self._fire_key(rec["schedule_id"], rec["scheduled_ns"]))

        async def run() -> int:
            await self._scan(self._jobs_prefix, visit, None, "a retention pass")
            await self._gather(self._purge(k) for k in doomed)
            return sum(1 for k in doomed if k.startswith(self._jobs_prefix))
        return self._run(run())

    # -- workers --

    def _worker_key(self, host: str, pid: int) -> str:
        return f"{self._workers_prefix}{_host_token(host)}.{pid}"

    def worker_beat(self, host: str, pid: int, queue: str, concurrency: int, started_ns: int, now_ns: int,
                    running: int, done: int) -> None:
        rec = {"host": host, "pid": pid, "queue": queue, "concurrency": concurrency, "started_ns": started_ns,
               "heartbeat_ns": now_ns, "running": running, "done": done}
        key = self._worker_key(host, pid)
        self._run(self._retry(lambda: self.kv.put(key, _encode(rec)), "a worker heartbeat"))

    def worker_gone(self, host: str, pid: int) -> None:
        self._run(self._purge(self._worker_key(host, pid)))

    def workers(self) -> "builtins.list[dict[str, Any]]":
        recs: list[dict[str, Any]] = []

        def visit(key: str, value: bytes) -> None:
            try:
                recs.append(msgspec.json.decode(value))
            except msgspec.DecodeError:
                pass

        self._run(self._scan(self._workers_prefix, visit, MAX_SCAN, "workers()"))
        recs.sort(key=lambda r: (r.get("host", ""), r.get("pid", 0)))
        return [{"host": r["host"], "pid": r["pid"], "queue": r["queue"], "concurrency": r["concurrency"],
                 "started_at": r["started_ns"] / 1e9, "heartbeat_at": r["heartbeat_ns"] / 1e9,
                 "running": r["running"], "done": r["done"]} for r in recs]
