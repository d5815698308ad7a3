"""Worker: the supervisor that runs a queue's jobs in a pool of child processes.

One thread does the work, in a loop around select() on the children's pipes:
an outcome frame frees its slot; a child's EOF is a crash, a timeout or a
cancel of its job and a fresh child takes the slot; past a job's deadline its
process group gets SIGKILL; free room leases that many messages
(poll_batch(timeout=0)), the jobs' rows are read (cancelled? done already?
attempt seen?) and each job is sent to a child; a flush writes the
running and final states in one transaction, then acks, retries or
dead-letters the messages; a heartbeat extends leases, stamps rows, kills
cancelled jobs and purges old rows.  When slots are idle and the queue is
empty, a waiter thread sleeps on the topic's wake-up word (armed before the
empty poll, so no append is missed) and wakes the loop through a pipe.  A
topic without one (the JetStream backend, where a poll and a read of the
jobs' states are round trips to the cluster) has the waiter thread make
every poll (a pull request that the server answers as a message arrives,
renewed every POLL seconds) and read the states of what it got; the loop
takes both and goes on with the running jobs meanwhile.  There an idle slot
asks for as many jobs as it would pipeline of the jobs seen so far (see
Pipelining), so that a round trip brings a batch.

Delivery rule: a job's message is acked only after its final state is
committed, so a worker killed at any point leaves either a final row or a
message whose lease comes back (at once when the group reaps the dead
member, else when the visibility timeout passes) and runs again as the next
attempt.  An attempt number is the message's delivery count; a delivery
whose number the row has already seen is a duplicate and is skipped.

Retries: a failed attempt (the callable raised, the command exited non-zero,
the job timed out, ran out of memory, or its process crashed) is retried
while attempt <= max_retries: the row goes back to queued with the error, and
the message is sent again after the backoff delay (on JetStream, which has
no delayed send, it is nacked with that delay: the server redelivers it in
place and counts the delivery).  With no retry left the
job ends dead (max_retries > 0) or with the attempt's own state (failed,
timeout, oom) and its message goes to the dead-letter topic <queue>.dlq.
Bad arguments, an unknown job name and a target that cannot be imported are
not retried: the job fails at once.  An attempt whose worker died counts as
an attempt: a job with max_retries=0 runs at most once.

Pipelining: an idle child gets one job; a busy child also gets jobs queued in
its pipe, but only while the measured average run time (EWMA per definition)
of what it holds stays within PIPELINE_BUDGET, at most PIPELINE jobs and
PIPE_BYTES of waiting frames (so a write never blocks the loop).  A job of a
definition not yet measured counts as long: it is never queued behind
another.  What cannot be placed waits in the backlog (leased, its lease
extended) for the first child with room.

Bounds: at most concurrency * PIPELINE jobs are leased at a time; the pending outcomes
are flushed FLUSH_DELAY after the first of them (a batch per flush, so a
no-op job costs a fraction of a transaction; where the store writes
remotely the loop goes on while one batch is in flight, and settles its
messages once it has landed); a cancelled running job is
killed within HEARTBEAT seconds (or visibility_timeout / 3, if shorter: the
heartbeat also extends the leases).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import selectors
import signal
import socket
import threading
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any, Optional

import msgspec

from pyqueue.errors import Closed, ConfigError, LeaseLost, PyQueueError
from pyqueue.jobs import protocol as P
from pyqueue.jobs.definition import JobDefinition
from pyqueue.jobs.pool import BUSY, DEAD, IDLE, STARTING, Slot, child_env
from pyqueue.jobs.status import DEAD as DEAD_STATE, FAILED, FINAL_STATES, OOM as OOM_STATE
from pyqueue.jobs.status import QUEUED, SUCCEEDED, TIMEOUT as TIMEOUT_STATE
from pyqueue.jobs.store_api import StoreAPI

if TYPE_CHECKING:
    from pyqueue.jobs.api import Jobs

__all__ = ["Worker", "GROUP", "HEARTBEAT", "FLUSH_DELAY"]

log = logging.getLogger("pyqueue.jobs")

GROUP = "workers"            # the queue-mode consumer group of every worker of a queue
HEARTBEAT = 1.0              # seconds between lease extensions, row stamps and cancel checks
FLUSH_DELAY = 0.002          # seconds an outcome may wait for others to share its transaction
PIPELINE = 8                 # jobs a child may hold (one running, the rest waiting in its pipe)
PIPELINE_BUDGET = 0.005      # seconds of expected work a child may hold in its pipe
PIPE_BYTES = 48 << 10        # bytes of waiting frames a pipe may hold (below Linux's 64 KiB), so a
                             # write never blocks the loop behind a running job
_EWMA = 0.2                  # weight of the newest run time in a definition's estimate
PURGE_PERIOD = 60.0          # seconds between retention passes
RESPAWN_DELAY = 1.0          # seconds before replacing a child that died before it was ready
DEFINITIONS_CHECK = 1.0      # seconds between looks at the definitions' version
_POLL = 0.25

# outcome kinds beyond the child's (protocol.OK, FAILED, OOM, INVALID)
TIMEOUT, LOST, SKIP, RELEASE, CANCEL = 10, 11, 12, 13, 14
_FINAL_STATE = {P.FAILED: FAILED, P.OOM: OOM_STATE, P.INVALID: FAILED, TIMEOUT: TIMEOUT_STATE, LOST: FAILED}


class Run:
    """A job leased for a child: waiting, sent, or running (once start() is called)."""

    __slots__ = ("jid", "msg", "defn", "attempt", "started_ns", "started", "deadline", "written", "extended")

    def __init__(self, jid: int, msg: Any, defn: JobDefinition, attempt: int) -> None:
        self.jid = jid
        self.msg = msg
        self.defn = defn
        self.attempt = attempt
        self.started_ns: Optional[int] = None
        self.started = 0.0
        self.deadline: Optional[float] = None
        self.written = False
        self.extended = time.monotonic()

    def start(self, now: float) -> None:
        """The child began it (it is first in its slot): its timeout runs from now."""
        self.started_ns = time.time_ns()
        self.started = now
        self.deadline = None if self.defn.timeout is None else now + self.defn.timeout


class Outcome:
    __slots__ = ("jid", "msg", "defn", "attempt", "kind", "data", "exit_code", "started_ns", "finished_ns")

    def __init__(self, jid: int, msg: Any, defn: Optional[JobDefinition], attempt: int, kind: int,
                 data: bytes = b"", exit_code: Optional[int] = None, started_ns: Optional[int] = None) -> None:
        self.jid = jid
        self.msg = msg
        self.defn = defn
        self.attempt = attempt
        self.kind = kind
        self.data = data
        self.exit_code = exit_code
        self.started_ns = started_ns
        self.finished_ns = time.time_ns()

    @classmethod
    def of(cls, run: Run, kind: int, data: bytes = b"", exit_code: Optional[int] = None) -> "Outcome":
        return cls(run.jid, run.msg, run.defn, run.attempt, kind, data, exit_code, run.started_ns)


class Worker:
    """Runs jobs of one queue until stop(), SIGTERM or SIGINT (a second one
    kills the running jobs and returns them to the queue)."""

    def __init__(self, jobs: "Jobs", *, concurrency: int = 1, queue: str = "jobs",
                 visibility_timeout: float = 30.0, scheduler: bool = True, grace: Optional[float] = 30.0,
                 install_signal_handlers: bool = True) -> None:
        if type(concurrency) is not int or not 1 <= concurrency <= 256:
            raise ConfigError(f"concurrency={concurrency!r} must be an int in 1..256")
        if grace is not None and (not isinstance(grace, (int, float)) or grace < 0):
            raise ConfigError(f"grace={grace!r} must be None or a number of seconds >= 0")
        self.jobs = jobs
        self.broker = jobs.broker
        self.concurrency = concurrency
        self.queue = queue
        self.visibility_timeout = float(visibility_timeout)
        self.run_scheduler = scheduler
        self.grace = grace
        self.install_signal_handlers = install_signal_handlers
        self.topic = self.broker.topic(queue)
        # the topic's wake-up word (embedded engine); None: the waiter thread polls (JetStream)
        self._notify = getattr(self.topic, "notify", None)
        # JetStream: a delivery count does not include the x-delivery-count of a message sent again
        # (the embedded engine adds it), and a retry waits out its backoff as a delayed nack
        self._jetstream = jobs.jetstream
        self._beat_period = min(HEARTBEAT, self.visibility_timeout / 3)   # leases are extended at beats
        self._result_cap = jobs._store.max_result_bytes
        self._prefetched: list[Any] = []           # messages the waiter's poll got (JetStream)
        self._prefetched_rows: dict[int, Optional[tuple[str, int]]] = {}   # and their jobs' states
        self.done = 0                      # outcomes recorded (jobs finished, retried or skipped)
        self._pending: list[Outcome] = []
        self._flush_due: Optional[float] = None
        self._writing: Optional[_Batch] = None    # the flush whose store write is in flight (one at a time)
        self._stopping = threading.Event()
        self._hard = False
        self._stop_at: Optional[float] = None
        self._wake_r = self._wake_w = -1
        self._slots: list[Slot] = []
        self._respawn_at: dict[int, float] = {}
        self._defs: dict[str, JobDefinition] = {}
        self._defs_version = -1
        self._defs_checked = 0.0
        self._purged = 0.0
        self._purging: Optional[threading.Thread] = None   # a retention pass in progress (JetStream)
        self._backlog: list[Run] = []              # leased and admitted, not yet sent to a child
        self._runtime: dict[str, float] = {}       # a definition's typical run time (EWMA), once seen
        self._typical: Optional[float] = None      # the typical run time of any job here (EWMA), once seen
        self._waiter_cv = threading.Condition()
        self._waiter_seq: Optional[int] = None     # handed to the waiter thread (an armed sequence,
                                                   # or without a wake-up word: how many jobs to lease)
        self._waiting = False                      # the waiter holds it
        self.consumer: Any = None

    # -- control --

    def stop(self, hard: bool = False) -> None:
        """Stop taking jobs; let running ones finish (up to grace seconds), or
        kill them at once (hard) and return them to the queue."""
        if self._stopping.is_set():
            hard = True                    # a second request does not wait
        self._hard = self._hard or hard
        self._stopping.set()
        self._wake()

    def _on_signal(self, *_: object) -> None:
        self.stop()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            try:
                os.write(self._wake_w, b"x")
            except OSError:
                pass                        # full: the loop wakes anyway

    # -- running --

    def run(self) -> int:
        """Work until stopped; returns how many job outcomes were recorded."""
        self._store: StoreAPI = self.jobs._store.for_worker()
        self.consumer = self.topic.consumer(GROUP, mode="queue", visibility_timeout=self.visibility_timeout,
                                            dead_letter=f"{self.queue}.dlq")
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        previous = {}
        if self.install_signal_handlers and threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self._on_signal)
        scheduler = None
        env = child_env()
        self._slots = [Slot(i, env) for i in range(self.concurrency)]
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._wake_r, selectors.EVENT_READ, None)
        self._host = socket.gethostname()
        self._started_ns = time.time_ns()
        waiter = threading.Thread(target=self._wait_for_messages, name="pyqueue-jobs-waiter", daemon=True)
        try:
            now = time.monotonic()
            for slot in self._slots:
                self._spawn(slot, now)
            if self.run_scheduler:
                scheduler = _start_scheduler(self.broker)
            self._beat_store()
            waiter.start()
            self._loop()
        finally:
            self._stopping.set()
            with self._waiter_cv:
                self._waiter_cv.notify()
            if waiter.is_alive():
                waiter.join()
            if self._waiter_seq is not None and self._notify is not None:   # armed but never slept on
                self._notify.disarm()
            self._waiter_seq = None
            if self._prefetched:                   # taken by the waiter's last poll: given back below
                msgs, self._prefetched = self._prefetched, []
                rows, self._prefetched_rows = self._prefetched_rows, {}
                try:
                    self._admit(msgs, rows)
                except Exception:
                    log.exception("could not give back %d jobs; their leases will expire", len(msgs))
            for slot in self._slots:
                if slot.runs:                  # left by an error in the loop: stop them, requeue them
                    slot.kill("shutdown")
                    self._end_slot_job(slot, RELEASE)
            for run in self._backlog:
                self._add(Outcome.of(run, RELEASE))
            self._backlog = []
            self._settle_batch(wait=True)
            self._flush_safely()
            self._settle_batch(wait=True)
            for slot in self._slots:
                slot.close()
            if scheduler is not None:
                scheduler.stop()
            if self._purging is not None:
                self._purging.join()
            try:
                self._store.worker_gone(self._host, os.getpid())
            except Exception:
                pass
            self.consumer.close()
            self._sel.close()
            for fd in (self._wake_r, self._wake_w):
                os.close(fd)
            self._wake_r = self._wake_w = -1
            if self._store is not self.jobs._store:
                self._store.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return self.done

    def _spawn(self, slot: Slot, now: float) -> None:
        slot.spawn(now)
        self._sel.register(slot.rfd, selectors.EVENT_READ, slot)

    def _loop(self) -> None:
        next_beat = time.monotonic() + self._beat_period
        while True:
            now = time.monotonic()
            timeout = min(_POLL, next_beat - now)
            for slot in self._slots:
                run = slot.job
                if run is not None and run.deadline is not None:
                    timeout = min(timeout, run.deadline - now)
            if self._flush_due is not None and self._writing is None:   # else its end wakes the loop
                timeout = min(timeout, self._flush_due - now)
            for at in self._respawn_at.values():
                timeout = min(timeout, at - now)
            for key, _ in self._sel.select(max(0.0, timeout)):
                if key.data is None:
                    try:
                        while os.read(self._wake_r, 4096):
                            pass
                    except BlockingIOError:
                        pass
                else:
                    self._on_readable(key.data)
            now = time.monotonic()
            writing = self._writing
            if writing is not None and (writing.future is None or writing.future.done()):
                self._settle_batch()
            for slot in self._slots:
                run = slot.job
                if run is not None and run.deadline is not None and now >= run.deadline:
                    slot.kill("timeout", run.jid)
            for index, at in list(self._respawn_at.items()):
                if now >= at and not self._stopping.is_set():
                    del self._respawn_at[index]
                    self._spawn(self._slots[index], now)
            if not self._stopping.is_set():
                try:
                    self._lease()
                except Closed:
                    self._stopping.set()
                except Exception:           # a bad message or a busy disk must not end the worker
                    log.exception("could not take jobs from queue %r; going on", self.queue)
            if self._backlog and not self._stopping.is_set():
                self._place_backlog()
            if self._flush_due is None and any(s.job is not None and not s.job.written for s in self._slots):
                self._flush_due = now + FLUSH_DELAY
            if self._flush_due is not None and now >= self._flush_due and self._writing is None:
                self._flush_safely()
            if now >= next_beat:
                self._beat()
                next_beat = now + self._beat_period
            if self._stopping.is_set():
                if self._stop_at is None:
                    self._stop_at = now
                for run in self._backlog:
                    self._add(Outcome.of(run, RELEASE))
                self._backlog = []
                busy = [s for s in self._slots if s.runs]
                if busy and (self._hard or (self.grace is not None and now - self._stop_at >= self.grace)):
                    for s in busy:
                        s.kill("shutdown")
                if not busy and not self._pending and self._writing is None:
                    return

    def _add(self, outcome: Outcome) -> None:
        self._pending.append(outcome)
        if self._flush_due is None:
            self._flush_due = time.monotonic() + FLUSH_DELAY

    # -- children --

    def _on_readable(self, slot: Slot) -> None:
        frames, eof = slot.read()
        for jid, kind, code, data in frames:
            if kind == P.READY:
                if slot.state == STARTING:
                    slot.state = IDLE
                continue
            run = slot.job
            if run is None or run.jid != jid:
                log.warning("child %d reported job %016x, which it was not running", slot.pid, jid)
                continue
            slot.runs.popleft()
            now = time.monotonic()
            name = run.defn.name
            took = now - run.started
            est = self._runtime.get(name)
            self._runtime[name] = took if est is None else est + _EWMA * (took - est)
            typ = self._typical
            self._typical = took if typ is None else typ + _EWMA * (took - typ)
            self._add(Outcome.of(run, kind, data, code))
            if kind == P.OOM:
                slot.state = DEAD               # after an OOM the child exits; EOF follows
                self._backlog.extend(slot.runs)
                slot.runs.clear()
            elif slot.runs:
                slot.runs[0].start(now)         # the child went on with the next one
            else:
                slot.state = IDLE
        if eof:
            self._sel.unregister(slot.rfd)
            was = slot.state
            rc = slot.reap()
            self._end_slot_job(slot, None, rc)
            if self._stopping.is_set():
                return
            if was == STARTING:
                log.error("a job process exited with code %s before it was ready; starting another in %.0f s",
                          rc, RESPAWN_DELAY)
                self._respawn_at[slot.index] = time.monotonic() + RESPAWN_DELAY
            else:
                self._spawn(slot, time.monotonic())

    def _end_slot_job(self, slot: Slot, kind: Optional[int], rc: int = 0) -> None:
        """Record the job of a slot whose child is gone (or is being given up);
        the jobs queued behind it go back to the backlog."""
        if not slot.runs:
            return
        run = slot.runs.popleft()
        self._backlog.extend(slot.runs)
        slot.runs.clear()
        if run.started_ns is None:
            run.start(time.monotonic())
        if kind is None:
            reason = slot.kill_reason
            if reason in ("timeout", "cancel") and slot.kill_target != run.jid:
                reason = "shutdown"             # it started as its predecessor was killed: not its fault
            if reason == "timeout":
                t = run.defn.timeout
                self._add(Outcome.of(run, TIMEOUT, f"Timeout: killed after {t:g} s (timeout={t:g})".encode(), rc))
                return
            if reason == "cancel":
                kind = CANCEL
            elif reason in ("shutdown", "close"):
                kind = RELEASE
            else:
                how = f"was killed by {_signame(-rc)}" if rc < 0 else f"exited with code {rc}"
                what = run.defn.target or (run.defn.command or ("?",))[0]
                self._add(Outcome.of(run, P.FAILED, f"WorkerCrashed: the process running {what} {how}".encode(), rc))
                return
        self._add(Outcome.of(run, kind))

    # -- taking jobs --

    def _lease(self) -> None:
        """Fill the idle slots from the queue; when it is empty, leave the
        waiter thread an armed sequence of the topic's wake-up word."""
        notify = self._notify
        if notify is None:
            self._lease_polling()
            return
        for _ in range(4):                     # again when skipped messages left room
            if self._backlog:
                return
            room = sum(self._room(s) for s in self._slots)
            if not room:
                return
            seq = None
            if not self._waiting:
                seq = notify.arm()             # before the look: an append after it wakes the waiter
            try:
                msgs = self.consumer.poll_batch(room, timeout=0)
            except BaseException:
                if seq is not None:
                    notify.disarm()
                raise
            if not msgs:
                if seq is not None:
                    with self._waiter_cv:
                        self._waiting = True
                        self._waiter_seq = seq
                        self._waiter_cv.notify()
                return
            if seq is not None:
                notify.disarm()
            self._admit(msgs)
            self._place_backlog()

    def _lease_polling(self) -> None:
        """_lease() for a topic without a wake-up word (JetStream), where a
        poll and a read of the jobs' states each cost a round trip: the
        waiter thread makes them, so that the loop goes on with the running
        jobs meanwhile.  Take what it got; ask it for the room left."""
        with self._waiter_cv:
            if self._waiting:
                return                         # the waiter is polling (the consumer takes one poll at a time)
            got, self._prefetched = self._prefetched, []
            rows, self._prefetched_rows = self._prefetched_rows, {}
        if got:
            self._admit(got, rows)             # to the backlog, whose leases the heartbeat extends
            self._place_backlog()
        if self._backlog:
            return
        room = sum(self._room(s) for s in self._slots)
        if room:
            with self._waiter_cv:
                self._waiting = True
                self._waiter_seq = room
                self._waiter_cv.notify()

    def _estimate(self, d: JobDefinition) -> float:
        """Expected run time of a job of d: its EWMA; unknown ones count as long."""
        return self._runtime.get(d.name, PIPELINE_BUDGET)

    def _room(self, slot: Slot) -> int:
        """How many more jobs to lease for a slot: 1 when idle; for a busy one,
        as many as its head's typical run time fits in PIPELINE_BUDGET.  A job
        waiting in a pipe waits for the ones before it (head-of-line), so only
        jobs known to be short are queued there."""
        if slot.state == IDLE:
            if self._jetstream and self._typical is not None:
                # a lease costs a round trip to the cluster: where the jobs seen so far were short,
                # take what the slot would pipeline of them (a job of a definition not known to be
                # short still waits in the backlog for an idle slot, see _place_backlog)
                return max(1, min(PIPELINE, int(PIPELINE_BUDGET / max(self._typical, 1e-6))))
            return 1
        if slot.state != BUSY:
            return 0
        queued = sum(self._estimate(r.defn) for r in slot.runs)
        each = self._estimate(slot.runs[0].defn)
        if each <= 0:
            each = 1e-6
        return max(0, min(PIPELINE - len(slot.runs), int((PIPELINE_BUDGET - queued) / each)))

    def _place_backlog(self) -> None:
        """Send backlog jobs to idle slots, or behind short jobs when they are
        short too; one write per child for all the jobs it gets."""
        keep = []
        plan: dict[int, list[Run]] = {}
        load = {}
        for slot in self._slots:
            if slot.state == IDLE:
                load[slot.index] = 0.0
            elif slot.state == BUSY and len(slot.runs) < PIPELINE:
                load[slot.index] = sum(self._estimate(r.defn) for r in slot.runs)
        waiting = {i: sum(len(r.msg.value) for r in list(self._slots[i].runs)[1:]) for i in load}
        for run in self._backlog:
            est = self._estimate(run.defn)
            size = len(run.msg.value) + 256
            best = None
            for index, queued in load.items():
                slot, planned = self._slots[index], plan.get(index, ())
                fresh = slot.state == IDLE and not planned
                if fresh or (queued + est <= PIPELINE_BUDGET and len(slot.runs) + len(planned) < PIPELINE
                             and waiting[index] + size <= PIPE_BYTES):
                    if best is None or queued < load[best]:
                        best = index
            if best is None:
                keep.append(run)
                continue
            if plan.get(best) or self._slots[best].state == BUSY:
                waiting[best] += size
            plan.setdefault(best, []).append(run)
            load[best] += est
        for index, runs in plan.items():
            if not self._send(runs, self._slots[index]):
                keep.extend(runs)
        self._backlog = keep

    def _wait_for_messages(self) -> None:
        """The waiter thread: sleep on the sequence the loop armed, then wake
        the loop; or, with no wake-up word, lease the jobs the loop asked for
        (a poll that waits up to _POLL for the first) and read their states."""
        notify = self._notify
        while True:
            with self._waiter_cv:
                while self._waiter_seq is None and not self._stopping.is_set():
                    self._waiter_cv.wait()
                if self._stopping.is_set():
                    return
                seq, self._waiter_seq = self._waiter_seq, None
            assert seq is not None
            msgs: list[Any] = []
            rows: dict[int, Optional[tuple[str, int]]] = {}
            if notify is not None:
                notify.sleep(seq, _POLL)       # disarms; returns at once if the word moved since the arm
            else:
                try:
                    msgs = self.consumer.poll_batch(max(1, seq), timeout=_POLL)
                except Closed:
                    self._stopping.set()
                except Exception:
                    log.exception("could not poll queue %r; trying again", self.queue)
                    self._stopping.wait(_POLL)
                if msgs:
                    rows = self._read_rows(msgs)
            with self._waiter_cv:
                self._prefetched.extend(msgs)
                self._prefetched_rows.update(rows)
                self._waiting = False
            self._wake()

    def _read_rows(self, msgs: list) -> dict[int, Optional[tuple[str, int]]]:
        """The states of the jobs these messages name by id ({} if the store
        cannot say now: the loop reads them then)."""
        ids = []
        for m in msgs:
            jid_b = m.headers.get("x-job-id")
            if jid_b is not None:
                try:
                    ids.append(int(jid_b, 16))
                except ValueError:
                    pass
        if not ids:
            return {}
        try:
            found = self._store.states(ids)
        except Exception:
            log.exception("could not read the states of %d jobs; the loop tries again", len(ids))
            return {}
        return {jid: found.get(jid) for jid in ids}

    def _definition(self, name: str) -> Optional[JobDefinition]:
        now = time.monotonic()
        if name not in self._defs or now - self._defs_checked >= DEFINITIONS_CHECK:   # a look costs one row
            self._defs_checked = now
            version = self._store.definitions_version()
            if version != self._defs_version:
                self._defs = self._store.definitions()
                self._defs_version = version
        return self._defs.get(name)

    def _admit(self, msgs: list, rows: Optional[dict[int, Optional[tuple[str, int]]]] = None) -> None:
        """Decide for each leased message: run it (to the backlog), skip it, or
        record why not.  rows: the states of some of their jobs, read already
        (None: no row); the others are read here."""
        store = self._store
        items = []
        for m in msgs:
            h = m.headers
            name_b = h.get("x-job")
            if name_b is None:
                log.warning("message %s/%d@%d has no x-job header; dropped", m.topic, m.partition, m.offset)
                self._add(Outcome(0, m, None, m.delivery_count, SKIP))
                continue
            name = name_b.decode("utf-8", "replace")
            jid_b = h.get("x-job-id")
            try:
                if jid_b is not None:
                    jid = int(jid_b, 16)
                else:
                    sid = h["x-schedule-id"].decode()
                    when = datetime.fromisoformat(h["x-scheduled-for"].decode())
                    jid = store.insert_fire(name, sid, round(when.timestamp() * 1e6) * 1000, time.time_ns())[0]
            except (KeyError, ValueError) as e:
                log.warning("message %s/%d@%d names no job (%s); dropped", m.topic, m.partition, m.offset, e)
                self._add(Outcome(0, m, None, m.delivery_count, SKIP))
                continue
            items.append((m, name, jid))
        known = rows or {}
        need = [jid for _, _, jid in items if jid not in known]
        found = store.states(need) if need else {}
        rows = {**{jid: row for jid, row in known.items() if row is not None}, **found}
        for m, name, jid in items:
            n = m.delivery_count
            if self._jetstream:
                prior = m.headers.get("x-delivery-count")      # deliveries before it was sent again
                if prior is not None and prior.isdigit():
                    n += int(prior)
            d = self._definition(name)
            row = rows.get(jid)
            if row is None:
                log.warning("job %016x (%s) has no row in the store (removed by retention?); dropped", jid, name)
                self._add(Outcome(jid, m, d, n, SKIP))
            elif row[0] in FINAL_STATES or row[1] >= n:
                self._add(Outcome(jid, m, d, n, SKIP))     # done, cancelled, or a duplicate delivery
            elif d is None:
                self._add(Outcome(jid, m, None, n, P.INVALID,
                                  f"UnknownJob: no definition of job {name!r} in {self.jobs.where}".encode()))
            elif n > d.max_retries + 1:
                self._add(Outcome(jid, m, d, n, LOST, (
                    f"WorkerLost: attempt {n - 1} ended with its worker (its lease came back without an outcome); "
                    f"max_retries={d.max_retries}").encode()))
            else:
                self._backlog.append(Run(jid, m, d, n))

    def _send(self, runs: list[Run], slot: Slot) -> bool:
        """Send runs to slot's child in one write; False if the child is gone
        (its EOF is on the way)."""
        frames = []
        for run in runs:
            d = run.defn
            if d.command is not None:
                kind, target = P.COMMAND, msgspec.json.encode(list(d.command))
            else:
                kind, target = P.CALLABLE, d.target.encode()     # type: ignore[union-attr]
            cap = d.max_result_bytes if self._result_cap is None else min(d.max_result_bytes, self._result_cap)
            frames.append(P.encode_job(run.jid, run.attempt, d.memory_limit or 0, cap, kind, target, run.msg.value))
        try:
            slot.send(b"".join(frames))
        except OSError:
            slot.state = DEAD
            return False
        if not slot.runs:
            runs[0].start(time.monotonic())
            slot.state = BUSY
        slot.runs.extend(runs)
        return True

    # -- recording outcomes --

    def _flush_safely(self) -> None:
        try:
            self._flush()
        except Exception:
            log.exception("could not record %d job outcomes; retrying in 1 s", len(self._pending))
            self._flush_due = time.monotonic() + 1.0

    def _flush(self) -> None:
        """Write the running and final states of the pending outcomes (one
        store batch), then settle their messages.  Where the store writes
        remotely, the loop goes on while the batch is in flight and settles it
        when it lands (_settle_batch); the next flush waits for that."""
        now_ns = time.time_ns()
        pid = os.getpid()
        outs = self._pending
        running = []
        started = [s.job for s in self._slots if s.job is not None and not s.job.written]
        for run in started:
            running.append((run.attempt, run.started_ns, pid, now_ns, run.jid))
        finals = []
        actions = []
        for o in outs:
            row, action = self._settle(o, pid)
            if row is not None:
                finals.append(row)
            actions.append((action, o))
        future = self._store.write_async(running, finals) if running or finals else None
        self._pending = []
        self._flush_due = None
        self._writing = _Batch(future, started, actions, bool(finals))
        if future is None or future.done():
            self._settle_batch()
        else:
            future.add_done_callback(lambda _: self._wake())

    def _settle_batch(self, wait: bool = False) -> None:
        """Once the batch in flight is written: mark its runs written and
        settle its messages (ack, retry, dead letter).  Its write failed: its
        outcomes go back to the pending ones, tried again in 1 s.  wait: wait
        for the write first (at most the broker's timeout)."""
        batch = self._writing
        if batch is None:
            return
        future = batch.future
        if future is not None:
            if not future.done():
                if not wait:
                    return
                try:
                    future.result(getattr(self.broker, "timeout", None))
                except BaseException:
                    pass                       # reported below
            error: Optional[BaseException] = None
            if not future.done():
                future.cancel()
                error = TimeoutError("the job store did not answer in time")
            elif future.cancelled():
                error = Closed("the job store's write was cancelled")
            else:
                error = future.exception()
            if error is not None:
                self._writing = None
                log.error("could not record %d job outcomes; retrying in 1 s", len(batch.actions),
                          exc_info=error)
                self._pending = [o for _, o in batch.actions] + self._pending
                self._flush_due = time.monotonic() + 1.0
                return
        self._writing = None
        for run in batch.started:
            run.written = True
        for action, o in batch.actions:
            try:
                action(o)
            except (LeaseLost, Closed):
                pass                            # it went to another worker, which settles it
            except PyQueueError:
                log.exception("job %016x: could not settle its message", o.jid)
        self.done += len(batch.actions)
        if batch.finals:
            self._store.wake()

    def _settle(self, o: Outcome, pid: int) -> tuple[Optional[tuple], Any]:
        """The row to write for an outcome, and what to do with its message."""
        d, n = o.defn, o.attempt
        if o.kind == P.OK:
            return (SUCCEEDED, n, o.started_ns, o.finished_ns, o.data, None, o.exit_code, pid, o.jid), _ack
        if o.kind in (SKIP, CANCEL):
            return None, _ack
        if o.kind == RELEASE:
            return (QUEUED, n - 1, None, None, None, None, None, None, o.jid), self._release
        error = o.data.decode("utf-8", "replace")
        if o.kind != P.INVALID and d is not None and n <= d.max_retries:
            return (QUEUED, n, o.started_ns, o.finished_ns, None, error, o.exit_code, pid, o.jid), self._retry
        state = DEAD_STATE if d is not None and d.max_retries > 0 and o.kind != P.INVALID else _FINAL_STATE[o.kind]
        return (state, n, o.started_ns, o.finished_ns, None, error, o.exit_code, pid, o.jid), self._dead_letter

    def _retry(self, o: Outcome) -> None:
        delay = o.defn.backoff.delay(o.attempt)    # type: ignore[union-attr]
        if self._jetstream:
            o.msg.nack(delay)      # redelivered in place after the delay, its delivery counted
        else:
            self._resend(o, o.attempt, delay)

    def _release(self, o: Outcome) -> None:
        self._resend(o, o.attempt - 1, None)

    def _resend(self, o: Outcome, count: int, delay: Optional[float]) -> None:
        """Send the job's message again (its attempt count kept), then ack the delivery."""
        m = o.msg
        headers = dict(m.headers)
        headers.pop("x-delivery-count", None)
        if count > 0:
            headers["x-delivery-count"] = str(count).encode()
        if self._jetstream:        # no delay here; the dedup id makes the send safe to retry
            self.topic.send(m.value, key=m.key, headers=headers,
                            dedup_id=f"pq-job-again:{m.topic}:{m.partition}:{m.offset}:{m.delivery_count}")
        else:
            self.topic.send(m.value, key=m.key, headers=headers, delay=delay or None)
        m.ack()

    def _dead_letter(self, o: Outcome) -> None:
        self.consumer._dead_letter(o.msg, o.data.decode("utf-8", "replace").split("\n", 1)[0])

    # -- heartbeat --

    def _beat(self) -> None:
        now = time.monotonic()
        now_ns = time.time_ns()
        busy = [(s, s.job) for s in self._slots if s.job is not None]
        try:
            cancelled = self._store.heartbeat([r.jid for _, r in busy], now_ns)
        except Exception:
            log.exception("heartbeat: could not reach the job store")
            cancelled = set()
        held = [r for s in self._slots for r in s.runs] + self._backlog
        for slot, run in busy:
            if run.jid in cancelled:
                slot.kill("cancel", run.jid)
        for run in held:
            if now - run.extended >= self.visibility_timeout / 3:
                try:
                    run.msg.extend(self.visibility_timeout)
                    run.extended = now
                except LeaseLost:
                    log.warning("job %016x: its lease expired while it ran; another worker may run it too", run.jid)
                    run.extended = now
        self._beat_store(len(busy))
        if now - self._purged >= PURGE_PERIOD and (self._purging is None or not self._purging.is_alive()):
            self._purged = now
            if self._jetstream:
                # a retention pass reads every job record there: on a thread of its own, not the loop's
                self._purging = threading.Thread(target=self._purge, args=(now_ns,), name="pyqueue-jobs-purge",
                                                 daemon=True)
                self._purging.start()
            else:
                self._purge(now_ns)

    def _purge(self, now_ns: int) -> None:
        try:
            self._store.purge(self.jobs.keep, now_ns)
        except Closed:
            pass
        except Exception:
            log.exception("could not remove old jobs")

    def _beat_store(self, running: int = 0) -> None:
        try:
            self._store.worker_beat(self._host, os.getpid(), self.queue, self.concurrency, self._started_ns,
                                    time.time_ns(), running, self.done)
        except Exception:
            log.exception("heartbeat: could not reach the job store")


class _Batch:
    """A flush: its store write (None: nothing to write), the runs whose
    running state it writes, and what to do with each outcome's message once
    it is written."""

    __slots__ = ("future", "started", "actions", "finals")

    def __init__(self, future: "Optional[concurrent.futures.Future[None]]", started: list[Run],
                 actions: list[tuple[Any, Outcome]], finals: bool) -> None:
        self.future = future
        self.started = started
        self.actions = actions
        self.finals = finals


def _ack(o: Outcome) -> None:
    o.msg.ack()


def _start_scheduler(broker: Any) -> Any:
    """Start the broker's scheduler in this worker; None if the application
    runs it already, or the backend has none (Unsupported)."""
    try:
        scheduler = broker.scheduler()
    except NotImplementedError as e:      # pyqueue.jetstream.Unsupported
        log.info("the worker runs no scheduler: %s", e)
        return None
    thread = getattr(scheduler, "_thread", None)
    if thread is not None and thread.is_alive():
        return None                # the application runs it already
    scheduler.start()
    return scheduler


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"
