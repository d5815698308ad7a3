"""`pyqueue demo`: a photo-upload pipeline, end to end.

Processes (all started with "spawn", each opening the broker itself):

- a producer sends uploads to topic "photos", paced, with a burst in the middle;
- a pool of workers, members of the queue-mode group "resize", validate and
  resize each photo and record the result in "photos.done";
- one upload is corrupt: it fails, is retried with backoff, and after
  MAX_DELIVERIES deliveries ends in the dead-letter topic "photos.dlq";
- one worker is killed with SIGKILL while it holds an upload: its lease comes
  back to the group and another worker processes the upload (delivery 2);
  a replacement worker is started;
- a scheduler process fires the schedule "report" every second into
  "reports"; the parent consumes those and prints a progress line for each.

The parent shows live progress, stops everything once every upload is
accounted for, then reopens the broker and computes the summary from what
the broker holds: processed + dead-lettered must equal sent, each upload id
once (an upload processed twice, possible under at-least-once delivery, is
counted once and reported).
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import signal
import tempfile
import threading
import time
from collections import Counter
from datetime import datetime
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional

import pyqueue
from pyqueue import demo_procs as procs
from pyqueue.demo_procs import DEAD, DONE, GROUP, REPORTS, UPLOADS, upload_id
from pyqueue.demo_view import View

DEFAULT_UPLOADS = 2500
QUICK_UPLOADS = 300
RATE = 200.0                  # uploads per second outside the burst
QUICK_RATE = 400.0
REPORT_EVERY = 1.0            # seconds between two fires of the "report" schedule
_TICK = 0.1                   # seconds between two redraws of the progress


class _Tail:
    """Reads what was appended to a topic since the last call, all partitions."""

    def __init__(self, topic: pyqueue.Topic) -> None:
        self.topic = topic
        self.pos = [topic.offsets(p)[0] for p in range(topic.partitions)]

    def new(self) -> list[pyqueue.Message]:
        out: list[pyqueue.Message] = []
        for p in range(self.topic.partitions):
            while True:
                msgs = self.topic.read(p, self.pos[p], 1000)
                if not msgs:
                    break
                out.extend(msgs)
                self.pos[p] = msgs[-1].offset + 1
        return out


class _Pipeline:
    """The parent's side of one run: starts, watches and stops the processes."""

    def __init__(self, path: str, uploads: int, workers: int, rate: float, view: View) -> None:
        self.path = path
        self.uploads = uploads
        self.rate = rate
        self.view = view
        self.ctx = mp.get_context("spawn")
        self.victim = upload_id(uploads // 4)                 # the upload its worker dies holding
        self.corrupt = (uploads * 7) // 10                    # the damaged photo
        self.workers: dict[int, tuple[Any, Connection]] = {}  # index -> (process, parent's end of its pipe)
        self.n_workers = workers
        self.producer: Any = None
        self.producer_conn: Optional[Connection] = None
        self.producer_sent: Optional[int] = None
        self.life_r, self.life_w = self.ctx.Pipe(duplex=False)   # closed by the parent: stop
        self.scheduler: Any = None
        self.killed: Optional[dict[str, Any]] = None
        self.lost_workers = 0                                 # exits other than the kill
        # live counts, from tailing the broker's topics
        self.sent = 0
        self.processed: set[str] = set()
        self.dead: set[str] = set()
        self.redelivered: set[str] = set()
        self.reports = 0
        self.started = 0.0

    # -- processes --

    def start_worker(self, index: int) -> None:
        parent, child = self.ctx.Pipe()
        stall = self.victim if self.killed is None else None
        p = self.ctx.Process(target=procs.worker, args=(self.path, index, stall, child, self.life_r),
                             name=f"pyqueue-demo-worker-{index}", daemon=True)
        p.start()
        child.close()
        self.workers[index] = (p, parent)

    def start(self) -> None:
        self.scheduler = self.ctx.Process(target=procs.scheduler, args=(self.path, self.life_r),
                                          name="pyqueue-demo-scheduler", daemon=True)
        self.scheduler.start()
        for i in range(self.n_workers):
            self.start_worker(i)
        for i, (p, conn) in self.workers.items():          # every worker has joined the group
            try:
                if not conn.poll(60):
                    raise EOFError
                conn.recv()
            except EOFError:
                raise RuntimeError(f"worker {i} did not join the group (exit code {p.exitcode})") from None
        self.view.event(f"{self.n_workers} workers joined queue-mode group '{GROUP}' "
                        f"(visibility timeout {procs.VISIBILITY_TIMEOUT:g} s, "
                        f"max_deliveries {procs.MAX_DELIVERIES}, dead letters to '{DEAD}')")
        parent, child = self.ctx.Pipe()
        self.producer = self.ctx.Process(
            target=procs.producer, args=(self.path, self.uploads, self.rate, self.corrupt, 7, child),
            name="pyqueue-demo-producer", daemon=True)
        self.producer.start()
        child.close()
        self.producer_conn = parent
        self.started = time.time()
        self.view.event(f"producer: {self.uploads:,} uploads at {self.rate:g}/s with a burst in the middle")

    def _on_worker_message(self, index: int, msg: tuple) -> None:
        if msg[0] == "ready":
            self.view.event(f"worker {index} (pid {msg[1]}) joined in place of the killed one")
        elif msg[0] == "holding" and self.killed is None:
            proc = self.workers[index][0]
            os.kill(proc.pid, signal.SIGKILL)
            proc.join()
            self.killed = {"worker": index, "pid": proc.pid, "upload": msg[1], "at": time.time(),
                           "partition": msg[2], "offset": msg[3]}
            self.view.event(f"worker {index} (pid {proc.pid}) killed with SIGKILL while holding "
                            f"{msg[1]} (partition {msg[2]}, offset {msg[3]}): its lease goes back "
                            f"to the group", style="bold red")
            self.start_worker(max(self.workers) + 1)

    def _on_worker_exit(self, index: int) -> None:
        if self.killed is not None and self.killed["worker"] == index:
            return
        proc = self.workers[index][0]
        proc.join()
        self.view.event(f"worker {index} (pid {proc.pid}) exited unexpectedly (exit code {proc.exitcode})",
                        style="bold red")
        self.lost_workers += 1

    def _on_producer_message(self, msg: tuple) -> None:
        if msg[0] == "burst":
            self.view.event(f"producer: burst of {msg[1]:,} uploads at full speed", style="yellow")
        elif msg[0] == "burst-end":
            self.view.event(f"producer: burst over after {msg[1]:,} uploads; back to {self.rate:g}/s",
                            style="yellow")
        elif msg[0] == "sent":
            self.producer_sent = msg[1]
            self.view.event(f"producer: done, {msg[1]:,} sends returned")

    def watch(self, broker: pyqueue.Broker, deadline: float) -> bool:
        """Show progress until every upload is accounted for, the killed
        worker's upload was redelivered and a report fired; False if
        `deadline` (time.time()) came first or no worker is left."""
        tails = {t: _Tail(broker.topic(t)) for t in (UPLOADS, DONE, DEAD)}
        photos = broker.topic(UPLOADS)
        reporter = broker.topic(REPORTS).consumer("reporter", mode="queue")
        self._last_report = (time.time(), 0)
        try:
            while True:
                self._read_pipes()                # waits up to _TICK for a word from a child
                self._read_topics(tails)
                for m in reporter.poll_batch(10, timeout=0):
                    self._report(m)
                    m.ack()
                in_flight = photos.stats()["groups"][GROUP]["in_flight"]
                finished = len(self.processed | self.dead)
                self.view.update({
                    "sent": self.sent, "processed": len(self.processed), "dead": len(self.dead),
                    "in_flight": in_flight, "queued": max(0, self.sent - finished - in_flight),
                    "redelivered": len(self.redelivered), "reports": self.reports,
                    "workers": sum(p.is_alive() for p, _c in self.workers.values())})
                if (self.producer_sent is not None and finished >= self.producer_sent
                        and self.killed is not None and self.killed["upload"] in self.processed
                        and self.reports >= 1):
                    return True
                if time.time() > deadline:
                    self.view.event("timed out waiting for every upload to be accounted for", style="bold red")
                    return False
                if not any(p.is_alive() for p, _c in self.workers.values()):
                    self.view.event("no worker is left to process the uploads", style="bold red")
                    return False
        finally:
            reporter.close()

    def _read_pipes(self) -> None:
        conns = {conn: i for i, (_p, conn) in self.workers.items() if not conn.closed}
        if self.producer_conn is not None and not self.producer_conn.closed:
            conns[self.producer_conn] = -1
        for ready in wait(list(conns), timeout=_TICK):
            conn: Any = ready                     # one of our Connections
            try:
                msg = conn.recv()
            except EOFError:
                conn.close()
                if conns[conn] != -1:
                    self._on_worker_exit(conns[conn])
                continue
            if conns[conn] == -1:
                self._on_producer_message(msg)
            else:
                self._on_worker_message(conns[conn], msg)

    def _read_topics(self, tails: dict[str, _Tail]) -> None:
        for m in tails[UPLOADS].new():
            if "x-original-offset" not in m.headers:
                self.sent += 1
            else:                                 # a failed delivery, appended again to wait out its backoff
                self.view.event(f"{m.headers['upload-id'].decode()} failed on delivery "
                                f"{int(m.headers['x-delivery-count'])}: retry after backoff", style="yellow")
        for m in tails[DONE].new():
            r = json.loads(m.value)
            if r["delivery"] > 1 and r["id"] not in self.redelivered:
                self.redelivered.add(r["id"])
                after = ""
                if self.killed and r["id"] == self.killed["upload"]:
                    after = f", {m.timestamp - self.killed['at']:.2f} s after the kill"
                self.view.event(f"{r['id']} redelivered: processed by worker {r['worker']} "
                                f"on delivery {r['delivery']}{after}", style="green")
            self.processed.add(r["id"])
        for m in tails[DEAD].new():
            uid = m.headers["upload-id"].decode()
            self.dead.add(uid)
            self.view.event(f"{uid} dead-lettered to '{DEAD}' after {m.headers['x-delivery-count'].decode()} "
                            f"deliveries: {m.headers['x-error'].decode()}", style="red")

    def _report(self, m: pyqueue.Message) -> None:
        """The report job: a progress line for each fire of the schedule."""
        self.reports += 1
        now, n = time.time(), len(self.processed)
        rate = (n - self._last_report[1]) / max(1e-9, now - self._last_report[0])
        self._last_report = (now, n)
        due = datetime.fromisoformat(m.headers["x-scheduled-for"].decode()).astimezone()
        self.view.event(f"report {self.reports} (due {due:%H:%M:%S}): {self.sent:,} sent, {n:,} processed, "
                        f"{len(self.dead)} dead-lettered, {rate:,.0f} uploads/s since the last report",
                        style="cyan")

    def stop(self) -> None:
        """Close the lifeline (workers finish the upload in hand, ack it and
        leave; the scheduler stops) and SIGTERM a producer still sending;
        whatever is still alive 30 s later is killed."""
        if self.producer is not None and self.producer.is_alive():
            self.producer.terminate()
        self.life_w.close()
        for _p, conn in self.workers.values():
            conn.close()                          # wakes a worker stalled on the victim upload
        if self.producer_conn is not None:
            self.producer_conn.close()
        for p in [w for w, _c in self.workers.values()] + [self.scheduler, self.producer]:
            if p is None or p.pid is None:
                continue
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join()
        self.life_r.close()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 if empty)."""
    if not sorted_values:
        return 0.0
    return sorted_values[max(0, math.ceil(q / 100 * len(sorted_values)) - 1)]


def _read_all(topic: pyqueue.Topic) -> list[pyqueue.Message]:
    return _Tail(topic).new()


def summarize(path: str, *, corrupt: str, producer_sent: Optional[int],
              killed: Optional[dict[str, Any]], finished_in_time: bool,
              lost_workers: int = 0) -> dict[str, Any]:
    """The run's account, from the broker directory alone (opened afresh)."""
    with pyqueue.open(path) as broker:
        photos = broker.topic(UPLOADS)
        originals: Counter[str] = Counter()
        retries = 0
        sent_at: dict[str, float] = {}
        for m in _read_all(photos):
            uid = m.headers["upload-id"].decode()
            if "x-original-offset" in m.headers:
                retries += 1
            else:
                originals[uid] += 1
                sent_at[uid] = int(m.headers["sent-ns"]) / 1e9
        results: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for m in _read_all(broker.topic(DONE)):
            r = json.loads(m.value)
            results.setdefault(r["id"], []).append((r, m.timestamp))
        dead = [{"id": m.headers["upload-id"].decode(),
                 "deliveries": int(m.headers["x-delivery-count"]),
                 "error": m.headers["x-error"].decode()} for m in _read_all(broker.topic(DEAD))]
        reports = len(_read_all(broker.topic(REPORTS)))
        left = photos.stats()["groups"].get(GROUP, {}).get("lag", 0)

    sent_ids, done_ids, dead_ids = set(originals), set(results), {d["id"] for d in dead}
    first = {uid: rs[0] for uid, rs in results.items()}            # in offset order: the first record
    latencies = sorted((ts - sent_at[uid]) * 1000 for uid, (r, ts) in first.items() if uid in sent_at)
    latest = {uid: max((r for r, _ts in rs), key=lambda r: r["delivery"]) for uid, rs in results.items()}
    redeliveries = sorted(({"id": uid, "delivery": r["delivery"], "worker": r["worker"]}
                           for uid, r in latest.items() if r["delivery"] > 1), key=lambda d: d["id"])
    by_worker = Counter(str(r["worker"]) for r, _ts in first.values())
    done_at = sorted(ts for _r, ts in first.values())
    span = done_at[-1] - min(sent_at.values()) if done_at and sent_at else 0.0
    peak, lo = 0, 0                                  # most results in any one-second window
    for hi, ts in enumerate(done_at):
        while ts - done_at[lo] >= 1.0:
            lo += 1
        peak = max(peak, hi - lo + 1)
    if killed is not None and killed["upload"] in first:
        killed = dict(killed, redelivered_after_s=first[killed["upload"]][1] - killed["at"])

    problems = []
    if not finished_in_time:
        problems.append("the run did not finish")
    if lost_workers:
        problems.append(f"{lost_workers} worker(s) exited unexpectedly")
    if producer_sent is not None and len(sent_ids) != producer_sent:
        problems.append(f"the producer's {producer_sent} returned sends are {len(sent_ids)} uploads in the topic")
    if any(n > 1 for n in originals.values()):
        problems.append("an upload id was sent twice")
    if done_ids & dead_ids:
        problems.append(f"processed and dead-lettered: {sorted(done_ids & dead_ids)[:5]}")
    if sent_ids - done_ids - dead_ids:
        problems.append(f"{len(sent_ids - done_ids - dead_ids)} uploads neither processed nor dead-lettered")
    if (done_ids | dead_ids) - sent_ids:
        problems.append(f"{len((done_ids | dead_ids) - sent_ids)} results for uploads never sent")
    if dead_ids != {corrupt} or len(dead) != 1:
        problems.append(f"expected exactly {corrupt} dead-lettered, got {[d['id'] for d in dead]}")
    if killed is None:
        problems.append("no worker was killed")
    elif killed["upload"] not in latest or latest[killed["upload"]]["delivery"] < 2:
        problems.append(f"{killed['upload']}, held by the killed worker, was not redelivered")
    if reports < 1:
        problems.append("no report fired")
    if left:
        problems.append(f"{left} uploads left unacknowledged in the queue")

    return {
        "ok": not problems, "problems": problems,
        "sent": len(sent_ids), "producer_sent": producer_sent,
        "processed": len(done_ids), "duplicates": sum(len(rs) - 1 for rs in results.values()),
        "dead_lettered": len(dead_ids), "dead_letters": dead,
        "redelivered": len(redeliveries), "redeliveries": redeliveries,
        "retries": retries, "killed": killed, "reports_fired": reports, "report_every": REPORT_EVERY,
        "seconds": span, "throughput": len(done_ids) / span if span > 0 else 0.0, "peak_per_second": peak,
        "latency_ms": {"p50": _percentile(latencies, 50), "p95": _percentile(latencies, 95),
                       "p99": _percentile(latencies, 99), "max": latencies[-1] if latencies else 0.0},
        "by_worker": dict(by_worker), "left_in_queue": left,
    }


def run(path: Optional[str] = None, *, uploads: Optional[int] = None, workers: int = 3,
        quick: bool = False, live: Optional[bool] = None,
        echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the pipeline in broker directory `path` (a temporary one, removed
    afterwards, if None; else a new or empty directory, kept).  live: rich
    progress (None: when stdout is a terminal).  Returns the summary; its
    "ok" is False if the account does not add up."""
    if uploads is None:
        uploads = QUICK_UPLOADS if quick else DEFAULT_UPLOADS
    if uploads < 20:
        raise ValueError(f"uploads={uploads}: the demo needs at least 20")
    if workers < 2:
        raise ValueError(f"workers={workers}: the demo kills one, so it needs at least 2")
    tmp = None
    if path is None:
        tmp = tempfile.TemporaryDirectory(prefix="pyqueue-demo-")
        path = tmp.name
    elif os.path.exists(path) and (not os.path.isdir(path) or os.listdir(path)):
        raise ValueError(f"{path} is not an empty directory; the demo needs a new broker")
    previous: Any = _NOT_SET
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _interrupt)   # clean up as on Ctrl-C
    view = View(uploads, live=live, echo=echo)
    pipeline = _Pipeline(path, uploads, workers, QUICK_RATE if quick else RATE, view)
    try:
        with pyqueue.open(path) as broker:
            broker.topic(UPLOADS, partitions=4, segment_bytes=8 << 20)
            broker.topic(DONE, segment_bytes=1 << 20)
            broker.topic(DEAD, segment_bytes=1 << 20)
            broker.topic(REPORTS, segment_bytes=1 << 20)
            broker.scheduler().add("report", topic=REPORTS, value=b"progress report", every=REPORT_EVERY)
            view.event(f"broker: {path}")
            view.event(f"topics: {UPLOADS} (4 partitions), {DONE}, {DEAD}, {REPORTS}; "
                       f"schedule 'report' every {REPORT_EVERY:g} s")
            view.start()
            try:
                pipeline.start()
                finished = pipeline.watch(broker, deadline=time.time() + 60 + uploads / 20)
            finally:
                pipeline.stop()
                view.stop()
        summary = summarize(path, corrupt=upload_id(pipeline.corrupt).decode(),
                            producer_sent=pipeline.producer_sent, killed=pipeline.killed,
                            finished_in_time=finished, lost_workers=pipeline.lost_workers)
        if pipeline.killed is not None:
            summary["killed"] = {k: v for k, v in summary["killed"].items() if k != "at"}
        view.summary(summary)
        if tmp is None:
            view.event(f"the broker is kept in {path}: try `pyqueue topics --path {path}`")
        return summary
    finally:
        if previous is not _NOT_SET and previous is not None:
            signal.signal(signal.SIGTERM, previous)
        if tmp is not None:
            tmp.cleanup()


_NOT_SET = object()


def _interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
