"""groups.py - consumer groups: pyqueue against Redis Streams, persist-queue and multiprocessing.

Questions, with 100 B values and, for (a)-(c), a topic filled before the clock starts:
  (a) stream mode, one process: poll_batch(1000), ack() each message, commit()
      once per batch.  How many messages per second?
  (b) queue mode, one process: poll_batch(1000) and ack() each message (each
      delivery is a lease in the group's shared state).  Also one message per
      call, poll() + ack(), to compare with peers that have no batch API.
  (c) queue mode, two worker processes against one: the speed-up.  The topic
      has one partition and the group the default max_in_flight (1024); two
      variants show what the in-flight window does (2 partitions;
      max_in_flight=4096).  A control splits a pure-Python loop between the
      same number of processes, with no queue: its speed-up is what the
      machine allows at that moment.  CPU time per message and the share of
      the wall time the workers were on a core are reported beside.
  (d) wake-up latency across processes: process A sends on topic "ping" and
      waits for the reply on "pong" in a consumer poll(); process B polls
      "ping" and sends on "pong".  Percentiles of the round trip and of the
      one-way latency (round trip / 2), after a warm-up.
  (e) end to end: a producer process sends, a consumer process (queue mode)
      polls and acks; the clock runs from the first send to the last ack.

Peers, in the same run, on the workloads that apply to them:
  - Redis Streams through redis-py (hiredis parser when installed), on a
    redis-server this script starts on 127.0.0.1 (free port, no persistence,
    temporary directory) and stops at the end: XREADGROUP COUNT 1000 + one
    XACK of the batch's ids; the same with one XACK per message (pipelined);
    XREADGROUP COUNT 1 + XACK per message; two consumer processes; a ping-pong
    with XREADGROUP BLOCK; pipelined XADD -> XREADGROUP BLOCK end to end.
    Skipped with a message when redis-server or redis-py is missing.
  - persist-queue SQLiteAckQueue: get() + ack() per message (SQLite WAL, a
    commit per call; not safe for several processes, so (b) only).
  - multiprocessing.Queue and Pipe: producer -> consumer (e), ping-pong (d).

Like is compared with like (the `versus` column names the pyqueue row each
ratio divides by): batched against batched, one message per call against one
message per call.  pyqueue runs with fsync="interval" (the default: acks and
commits are stores into shared memory, flushed in the background); Redis runs
without persistence.  The machine is shared and noisy: every figure is the
median of --repeats runs, each in a fresh temporary directory with seeded
values; only the consuming loop is timed (opening, filling, forking are not).

    python bench/groups.py                      # n = 200,000, 3 runs, 20,000 round trips
    python bench/groups.py --quick              # n = 20,000, one run, 10,000 round trips
    python bench/groups.py --no-redis --repeats 5
    python bench/groups.py --json groups.json --only latency workers
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import platform
import queue as queue_module
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")   # no idle BLAS threads beside the timed loops
# The checkout this script lives in comes first, so that an in-place build
# (python setup.py build_ext --inplace) is what gets measured.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import pyqueue  # noqa: E402

SEED = 20261130
BATCH = 1000
VALUE_BYTES = 100
DISTINCT_VALUES = 1024     # values cycle through a seeded pool of this many
WARMUP_ROUNDS = 1000       # ping-pong round trips before the measured ones
SPIN_PER_MESSAGE = 20      # control loop iterations per message: about as long as a lease + ack
CHILD_TIMEOUT = 300.0      # seconds a child process may take before the run is abandoned
CTX = multiprocessing.get_context("fork")   # children open their broker after the fork


# ---- seeded data ----

def make_values(n: int) -> list[bytes]:
    """n values of VALUE_BYTES: references into a seeded pool of distinct values."""
    rng = random.Random(SEED + VALUE_BYTES)
    pool = [rng.randbytes(VALUE_BYTES) for _ in range(DISTINCT_VALUES)]
    return [pool[i % DISTINCT_VALUES] for i in range(n)]


def batches(values: list[bytes]) -> list[list[bytes]]:
    return [values[i:i + BATCH] for i in range(0, len(values), BATCH)]


# ---- child processes ----

def _child(index, function, args, results):
    """Run function(*args) in a child; report (index, "ok", value) or (index, "error", text)."""
    try:
        results.put((index, "ok", function(*args)))
    except BaseException:
        results.put((index, "error", traceback.format_exc()))


def run_processes(jobs: list[tuple]) -> list:
    """Run each (function, args) in its own forked process; their return values, in order.

    Raises RuntimeError with the child's traceback if one fails, TimeoutError
    if one takes longer than CHILD_TIMEOUT."""
    results = CTX.Queue()
    procs = [CTX.Process(target=_child, args=(i, f, a, results), daemon=True) for i, (f, a) in enumerate(jobs)]
    for p in procs:
        p.start()
    out: dict[int, object] = {}
    try:
        deadline = time.monotonic() + CHILD_TIMEOUT
        while len(out) < len(jobs):
            try:
                i, status, value = results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue_module.Empty:
                raise TimeoutError(f"child processes took more than {CHILD_TIMEOUT:.0f} s") from None
            if status != "ok":
                raise RuntimeError(f"child process {i} ({jobs[i][0].__name__}) failed:\n{value}")
            out[i] = value
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
                p.join()
    return [out[i] for i in range(len(jobs))]


class Usage:
    """CPU time and context switches of this process from now on (getrusage)."""

    def __init__(self) -> None:
        self.cpu = time.process_time()
        r = resource.getrusage(resource.RUSAGE_SELF)
        self.nvcsw, self.nivcsw = r.ru_nvcsw, r.ru_nivcsw

    def since(self, **extra: int) -> dict:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return {"cpu_s": time.process_time() - self.cpu, "voluntary_switches": r.ru_nvcsw - self.nvcsw,
                "involuntary_switches": r.ru_nivcsw - self.nivcsw, **extra}


def workers_result(out: list[tuple]) -> tuple[float, dict]:
    """Wall seconds from the first worker's start to the last one's last message, and the
    workers' summed usage: CPU seconds, switches (involuntary: preempted, by other load
    on a shared machine), polls."""
    seconds = max(last for _, last, _, _ in out) - min(start for start, _, _, _ in out)
    usage = {k: sum(u[k] for *_, u in out) for k in out[0][3]}
    usage["busy"] = usage["cpu_s"] / (seconds * len(out))   # 1.0: every worker on a core all along
    return seconds, usage


# ---- pyqueue ----

def pyqueue_fill(path: str, values: list[bytes], partitions: int = 1, topic: str = "bench") -> None:
    """Batches of 1000, round robin over the partitions; closed before the clock starts."""
    with pyqueue.open(path, fsync="never") as broker:
        t = broker.topic(topic, partitions=partitions)
        for i, chunk in enumerate(batches(values)):
            t.send_batch(chunk, partition=i % partitions)


def pyqueue_stream(path, values, env):
    """(a) stream mode: poll_batch(1000), ack each, commit per batch."""
    pyqueue_fill(path, values)
    n = len(values)
    with pyqueue.open(path) as broker:
        consumer = broker.topic("bench").consumer("bench", mode="stream", auto_commit_interval=0)
        got = nbytes = 0
        usage = Usage()
        t0 = time.perf_counter()
        while got < n:
            msgs = consumer.poll_batch(BATCH, timeout=5.0)
            if not msgs:
                raise TimeoutError(f"stream consumer stalled at {got} of {n}")
            for m in msgs:
                nbytes += len(m.value)
                m.ack()
            consumer.commit()
            got += len(msgs)
        elapsed = time.perf_counter() - t0
        spent = usage.since()
        consumer.close()
    assert got == n and nbytes == n * VALUE_BYTES
    return elapsed, spent


def pyqueue_queue(path, values, env):
    """(b) queue mode: poll_batch(1000), ack each."""
    pyqueue_fill(path, values)
    n = len(values)
    with pyqueue.open(path) as broker:
        consumer = broker.topic("bench").consumer("bench", mode="queue")
        got = nbytes = 0
        usage = Usage()
        t0 = time.perf_counter()
        while got < n:
            msgs = consumer.poll_batch(BATCH, timeout=5.0)
            if not msgs:
                raise TimeoutError(f"queue consumer stalled at {got} of {n}")
            for m in msgs:
                nbytes += len(m.value)
                m.ack()
            got += len(msgs)
        elapsed = time.perf_counter() - t0
        spent = usage.since()
        consumer.close()
    assert got == n and nbytes == n * VALUE_BYTES
    return elapsed, spent


def pyqueue_queue_each(path, values, env):
    """(b) queue mode, one message per call: poll() + ack()."""
    pyqueue_fill(path, values)
    n = len(values)
    with pyqueue.open(path) as broker:
        consumer = broker.topic("bench").consumer("bench", mode="queue")
        poll = consumer.poll
        nbytes = 0
        usage = Usage()
        t0 = time.perf_counter()
        for _ in range(n):
            m = poll(timeout=5.0)
            nbytes += len(m.value)
            m.ack()
        elapsed = time.perf_counter() - t0
        spent = usage.since()
        consumer.close()
    assert nbytes == n * VALUE_BYTES
    return elapsed, spent


def _pyqueue_worker(path, max_in_flight, barrier):
    """(c) one worker: lease and ack until the group has nothing left unacked.

    An empty poll is not the end (the other worker may hold the whole
    in-flight window); the group's lag, which counts every unacked message, is."""
    with pyqueue.open(path) as broker:
        consumer = broker.topic("bench").consumer("workers", mode="queue", max_in_flight=max_in_flight)
        got = nbytes = polls = 0
        barrier.wait(timeout=60)
        usage = Usage()
        start = last = time.perf_counter()
        while True:
            polls += 1
            msgs = consumer.poll_batch(BATCH, timeout=0.002)
            if msgs:
                for m in msgs:
                    nbytes += len(m.value)
                    m.ack()
                got += len(msgs)
                last = time.perf_counter()
            elif not any(consumer.lag().values()):
                break
        spent = usage.since(polls=polls)
        consumer.close()
    assert nbytes == got * VALUE_BYTES
    return start, last, got, spent


def pyqueue_workers(path, values, env, workers, partitions=1, max_in_flight=1024):
    """(c) `workers` processes of one queue-mode group share a filled topic."""
    pyqueue_fill(path, values, partitions)
    with pyqueue.open(path) as broker:   # the group exists before the workers race to create it
        broker.topic("bench").consumer("workers", mode="queue", max_in_flight=max_in_flight).close()
    barrier = CTX.Barrier(workers)
    out = run_processes([(_pyqueue_worker, (path, max_in_flight, barrier))] * workers)
    delivered = sum(got for _, _, got, _ in out)
    assert delivered == len(values), f"{delivered} deliveries of {len(values)} messages"
    return workers_result(out)


def _pyqueue_producer(path, values, per_batch, barrier):
    with pyqueue.open(path) as broker:
        topic = broker.topic("bench")
        barrier.wait(timeout=60)
        start = time.perf_counter()
        if per_batch:
            for chunk in batches(values):
                topic.send_batch(chunk, partition=0)
        else:
            send = topic.send
            for v in values:
                send(v, partition=0)
        return start


def _pyqueue_consumer(path, n, barrier):
    with pyqueue.open(path) as broker:
        consumer = broker.topic("bench").consumer("bench", mode="queue")
        barrier.wait(timeout=60)
        got = 0
        while got < n:
            msgs = consumer.poll_batch(BATCH, timeout=30.0)
            if not msgs:
                raise TimeoutError(f"consumer stalled at {got} of {n}")
            for m in msgs:
                m.value
                m.ack()
            got += len(msgs)
        end = time.perf_counter()
        consumer.close()
        return end


def pyqueue_pipe(path, values, env, per_batch):
    """(e) producer process send() (or send_batch(1000)) -> consumer process poll_batch(1000) + ack."""
    with pyqueue.open(path) as broker:
        broker.topic("bench").consumer("bench", mode="queue").close()
    barrier = CTX.Barrier(2)
    start, end = run_processes([(_pyqueue_producer, (path, values, per_batch, barrier)),
                                (_pyqueue_consumer, (path, len(values), barrier))])
    return end - start


def _pyqueue_echo(path, mode, rounds, value, barrier):
    """(d) process B: poll "ping", send the value on "pong", ack."""
    with pyqueue.open(path) as broker:
        pong = broker.topic("pong")
        consumer = broker.topic("ping").consumer("echo", mode=mode)
        barrier.wait(timeout=60)
        for _ in range(rounds):
            m = consumer.poll(timeout=30.0)
            if m is None:
                raise TimeoutError("no ping within 30 s")
            pong.send(m.value, partition=0)
            m.ack()
        consumer.close()


def _pyqueue_ping(path, mode, rounds, value, barrier):
    """(d) process A: send on "ping", poll the reply on "pong"; round trips in ns."""
    with pyqueue.open(path) as broker:
        ping = broker.topic("ping")
        consumer = broker.topic("pong").consumer("ping", mode=mode)
        send, poll, clock = ping.send, consumer.poll, time.perf_counter_ns
        barrier.wait(timeout=60)
        out = []
        for _ in range(rounds):
            t0 = clock()
            send(value, partition=0)
            m = poll(timeout=30.0)
            t1 = clock()
            if m is None:
                raise TimeoutError("no pong within 30 s")
            m.ack()
            out.append(t1 - t0)
        consumer.close()
        return out


def pyqueue_pingpong(path, rounds, env, mode):
    with pyqueue.open(path) as broker:   # topics and groups exist before the fork
        broker.topic("ping").consumer("echo", mode=mode).close()
        broker.topic("pong").consumer("ping", mode=mode).close()
    value = make_values(1)[0]
    barrier = CTX.Barrier(2)
    total = rounds + WARMUP_ROUNDS
    out, _ = run_processes([(_pyqueue_ping, (path, mode, total, value, barrier)),
                            (_pyqueue_echo, (path, mode, total, value, barrier))])
    return out[WARMUP_ROUNDS:]


# ---- Redis Streams ----

class RedisServer:
    """A throw-away redis-server on 127.0.0.1: free port, no persistence, temporary directory."""

    def __init__(self, binary: str, parent: str | None) -> None:
        self.binary = binary
        self.dir = tempfile.mkdtemp(prefix="pyqueue-bench-redis-", dir=parent)
        self.proc: subprocess.Popen | None = None
        self.port = 0

    def start(self) -> "RedisServer":
        import redis
        for _ in range(5):   # a port found free may be taken before the server binds it
            self.port = free_port()
            self.proc = subprocess.Popen(
                [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
                 "--appendonly", "no", "--dir", self.dir, "--protected-mode", "yes", "--daemonize", "no",
                 "--loglevel", "warning"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.dir)
            deadline = time.monotonic() + 10
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if redis.Redis(host="127.0.0.1", port=self.port).ping():
                        return self
                except redis.ConnectionError:
                    time.sleep(0.02)
            self.stop_process()
        raise RuntimeError(f"{self.binary} did not start")

    def client(self):
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port)

    def version(self) -> str:
        return self.client().info("server")["redis_version"]

    def stop_process(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def stop(self) -> None:
        self.stop_process()
        shutil.rmtree(self.dir, ignore_errors=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_fill(r, key: str, values: list[bytes], group: str = "g") -> None:
    """XADD pipelined 1000 at a time, then a group reading from the start."""
    r.flushall()
    pipe = r.pipeline(transaction=False)
    for chunk in batches(values):
        for v in chunk:
            pipe.xadd(key, {"v": v})
        pipe.execute()
    r.xgroup_create(key, group, id="0", mkstream=True)


def redis_readgroup(path, values, env, ack="batch"):
    """(a)/(b) XREADGROUP COUNT 1000, then XACK: one call with the batch's ids
    (ack="batch") or one XACK per message in one pipeline (ack="pipelined")."""
    r = env["redis"].client()
    redis_fill(r, "s", values)
    n = len(values)
    got = nbytes = 0
    t0 = time.perf_counter()
    while got < n:
        reply = r.xreadgroup("g", "c", {"s": ">"}, count=BATCH)
        entries = reply[0][1]
        ids = []
        for mid, fields in entries:
            nbytes += len(fields[b"v"])
            ids.append(mid)
        if ack == "batch":
            r.xack("s", "g", *ids)
        else:
            pipe = r.pipeline(transaction=False)
            for mid in ids:
                pipe.xack("s", "g", mid)
            pipe.execute()
        got += len(entries)
    elapsed = time.perf_counter() - t0
    assert got == n and nbytes == n * VALUE_BYTES and r.xpending("s", "g")["pending"] == 0
    r.close()
    return elapsed


def redis_readgroup_each(path, values, env):
    """(b) one message per call: XREADGROUP COUNT 1 + XACK, two round trips per message."""
    r = env["redis"].client()
    redis_fill(r, "s", values)
    nbytes = 0
    t0 = time.perf_counter()
    for _ in range(len(values)):
        mid, fields = r.xreadgroup("g", "c", {"s": ">"}, count=1)[0][1][0]
        nbytes += len(fields[b"v"])
        r.xack("s", "g", mid)
    elapsed = time.perf_counter() - t0
    assert nbytes == len(values) * VALUE_BYTES
    r.close()
    return elapsed


def _redis_worker(server, name, barrier):
    """(c) one consumer: XREADGROUP COUNT 1000 + XACK until nothing new is left."""
    r = server.client()
    got = nbytes = polls = 0
    barrier.wait(timeout=60)
    usage = Usage()
    start = last = time.perf_counter()
    while True:
        polls += 1
        reply = r.xreadgroup("g", name, {"s": ">"}, count=BATCH)
        if not reply or not reply[0][1]:
            break
        entries = reply[0][1]
        for _, fields in entries:
            nbytes += len(fields[b"v"])
        r.xack("s", "g", *[mid for mid, _ in entries])
        got += len(entries)
        last = time.perf_counter()
    assert nbytes == got * VALUE_BYTES
    return start, last, got, usage.since(polls=polls)


def redis_workers(path, values, env, workers):
    server = env["redis"]
    redis_fill(server.client(), "s", values)
    barrier = CTX.Barrier(workers)
    out = run_processes([(_redis_worker, (server, f"c{i}", barrier)) for i in range(workers)])
    assert sum(got for _, _, got, _ in out) == len(values)
    return workers_result(out)


def _redis_producer(server, values, barrier):
    r = server.client()
    pipe = r.pipeline(transaction=False)
    barrier.wait(timeout=60)
    start = time.perf_counter()
    for chunk in batches(values):
        for v in chunk:
            pipe.xadd("s", {"v": v})
        pipe.execute()
    return start


def _redis_consumer(server, n, barrier):
    r = server.client()
    barrier.wait(timeout=60)
    got = 0
    while got < n:
        reply = r.xreadgroup("g", "c", {"s": ">"}, count=BATCH, block=30_000)
        if not reply:
            raise TimeoutError(f"consumer stalled at {got} of {n}")
        entries = reply[0][1]
        for _, fields in entries:
            fields[b"v"]
        r.xack("s", "g", *[mid for mid, _ in entries])
        got += len(entries)
    return time.perf_counter()


def redis_pipe(path, values, env):
    """(e) producer process XADD pipelined x1000 -> consumer process XREADGROUP BLOCK COUNT 1000 + XACK."""
    server = env["redis"]
    r = server.client()
    r.flushall()
    r.xgroup_create("s", "g", id="0", mkstream=True)
    barrier = CTX.Barrier(2)
    start, end = run_processes([(_redis_producer, (server, values, barrier)),
                                (_redis_consumer, (server, len(values), barrier))])
    return end - start


def _redis_echo(server, rounds, barrier):
    r = server.client()
    pipe = r.pipeline(transaction=False)
    barrier.wait(timeout=60)
    for _ in range(rounds):
        mid, fields = r.xreadgroup("g", "echo", {"ping": ">"}, count=1, block=30_000)[0][1][0]
        pipe.xadd("pong", {"v": fields[b"v"]})
        pipe.xack("ping", "g", mid)
        pipe.execute()


def _redis_ping(server, rounds, value, barrier):
    r = server.client()
    clock = time.perf_counter_ns
    barrier.wait(timeout=60)
    out = []
    for _ in range(rounds):
        t0 = clock()
        r.xadd("ping", {"v": value})
        mid, _ = r.xreadgroup("g", "ping", {"pong": ">"}, count=1, block=30_000)[0][1][0]
        t1 = clock()
        r.xack("pong", "g", mid)
        out.append(t1 - t0)
    return out


def redis_pingpong(path, rounds, env):
    """(d) XADD ping -> XREADGROUP BLOCK on pong; the echo pipelines XADD pong + XACK ping."""
    server = env["redis"]
    r = server.client()
    r.flushall()
    for key in ("ping", "pong"):
        r.xgroup_create(key, "g", id="0", mkstream=True)
    barrier = CTX.Barrier(2)
    total = rounds + WARMUP_ROUNDS
    out, _ = run_processes([(_redis_ping, (server, total, make_values(1)[0], barrier)),
                            (_redis_echo, (server, total, barrier))])
    return out[WARMUP_ROUNDS:]


# ---- persist-queue SQLiteAckQueue (SQLite WAL, a commit per call) ----

def persistqueue_ack(path, values, env):
    """(b) get() + ack() per message; the raw form names the row to ack by id."""
    import persistqueue
    q = persistqueue.SQLiteAckQueue(os.path.join(path, "q"))
    for v in values:
        q.put(v)
    nbytes = 0
    usage = Usage()
    t0 = time.perf_counter()
    for _ in range(len(values)):
        item = q.get(block=False, raw=True)
        nbytes += len(item["data"])
        q.ack(id=item["pqid"])
    elapsed = time.perf_counter() - t0
    spent = usage.since()
    assert q.acked_count() == len(values) and nbytes == len(values) * VALUE_BYTES
    q.close()
    return elapsed, spent


# ---- multiprocessing ----

def _mp_producer(q, values, barrier):
    barrier.wait(timeout=60)
    start = time.perf_counter()
    for v in values:
        q.put(v)
    return start


def _mp_consumer(q, n, barrier):
    barrier.wait(timeout=60)
    for _ in range(n):
        q.get(timeout=30)
    return time.perf_counter()


def mp_queue_pipe(path, values, env):
    """(e) multiprocessing.Queue put -> get, in memory."""
    q = CTX.Queue()
    barrier = CTX.Barrier(2)
    start, end = run_processes([(_mp_producer, (q, values, barrier)), (_mp_consumer, (q, len(values), barrier))])
    return end - start


def _mp_echo(recv, send, rounds, barrier):
    barrier.wait(timeout=60)
    for _ in range(rounds):
        send(recv())


def _mp_ping(recv, send, rounds, value, barrier):
    clock = time.perf_counter_ns
    barrier.wait(timeout=60)
    out = []
    for _ in range(rounds):
        t0 = clock()
        send(value)
        recv()
        out.append(clock() - t0)
    return out


def mp_pingpong(path, rounds, env, kind):
    """(d) through two multiprocessing.Queue (kind="queue") or one duplex Pipe (kind="pipe")."""
    total = rounds + WARMUP_ROUNDS
    if kind == "queue":
        ping, pong = CTX.Queue(), CTX.Queue()
        a = (pong.get, ping.put)
        b = (ping.get, pong.put)
    else:
        end_a, end_b = CTX.Pipe()
        a = (end_a.recv, end_a.send)
        b = (end_b.recv, end_b.send)
    barrier = CTX.Barrier(2)
    out, _ = run_processes([(_mp_ping, a + (total, make_values(1)[0], barrier)),
                            (_mp_echo, b + (total, barrier))])
    return out[WARMUP_ROUNDS:]


# ---- the control: what two processes get on this machine, now ----

def _spin(iterations: int, barrier):
    """The control: a pure-Python loop, no queue, no shared state."""
    barrier.wait(timeout=60)
    usage = Usage()
    start = time.perf_counter()
    x = 0
    for i in range(iterations):
        x += i
    return start, time.perf_counter(), iterations, usage.since()


def control_workers(path, values, env, workers):
    """(c) the machine's own ceiling: SPIN_PER_MESSAGE loop iterations per message, split
    between `workers` processes.  Its speed-up is what two processes can get here and now."""
    barrier = CTX.Barrier(workers)
    share = len(values) * SPIN_PER_MESSAGE // workers
    return workers_result(run_processes([(_spin, (share, barrier))] * workers))


# ---- the cases ----

GROUPS = {
    "stream": "(a) one consumer, batches of 1000, ack each, commit per batch (pre-filled)",
    "queue": "(b) one consumer, per-message acks (pre-filled)",
    "workers": "(c) queue mode, worker processes sharing one group (pre-filled)",
    "pipe": "(e) end to end, producer process -> consumer process",
    "latency": "(d) cross-process wake-up latency, ping-pong between two processes",
}

PQ_STREAM = "pyqueue stream: poll_batch(1000) + ack each + commit"
PQ_QUEUE = "pyqueue queue: poll_batch(1000) + ack each"
PQ_QUEUE_EACH = "pyqueue queue: poll() + ack(), one per call"
PQ_WORKERS = "pyqueue queue: poll_batch(1000) + ack each, 1 partition"
PQ_PIPE_EACH = "pyqueue send() -> queue poll_batch(1000) + ack"
PQ_PIPE_BATCH = "pyqueue send_batch(1000) -> queue poll_batch(1000) + ack"
PQ_PING_STREAM = "pyqueue stream: send() -> poll()"
WORKERS_SCALE = 5
CONTROL = f"control: a pure-Python loop of {SPIN_PER_MESSAGE} iterations per message, no queue"

# (group, label, note, function, keyword arguments, scale of n, versus: the pyqueue row of the ratio)
# Slow peers run fewer messages; workers run more, so that each run lasts long enough
# (about a second) for two processes to overlap.
CASES = [
    ("stream", PQ_STREAM, "fsync=interval", pyqueue_stream, {}, 1, None),
    ("stream", "Redis Streams: XREADGROUP COUNT 1000 + XACK of the batch", "no persistence",
     redis_readgroup, {"ack": "batch"}, 1, PQ_STREAM),

    ("queue", PQ_QUEUE, "fsync=interval", pyqueue_queue, {}, 1, None),
    ("queue", "Redis Streams: XREADGROUP COUNT 1000 + XACK of the batch", "no persistence",
     redis_readgroup, {"ack": "batch"}, 1, PQ_QUEUE),
    ("queue", "Redis Streams: XREADGROUP COUNT 1000 + one XACK per message, pipelined", "no persistence",
     redis_readgroup, {"ack": "pipelined"}, 1, PQ_QUEUE),
    ("queue", PQ_QUEUE_EACH, "fsync=interval", pyqueue_queue_each, {}, 1, None),
    ("queue", "Redis Streams: XREADGROUP COUNT 1 + XACK, one per call", "no persistence",
     redis_readgroup_each, {}, 1 / 20, PQ_QUEUE_EACH),
    ("queue", "persist-queue SQLiteAckQueue: get() + ack()", "SQLite WAL, commit per call",
     persistqueue_ack, {}, 1 / 50, PQ_QUEUE_EACH),

    ("workers", PQ_WORKERS, "1 worker", pyqueue_workers, {"workers": 1}, WORKERS_SCALE, None),
    ("workers", PQ_WORKERS, "2 workers", pyqueue_workers, {"workers": 2}, WORKERS_SCALE, None),
    ("workers", "pyqueue queue: poll_batch(1000) + ack each, 2 partitions", "1 worker",
     pyqueue_workers, {"workers": 1, "partitions": 2}, WORKERS_SCALE, None),
    ("workers", "pyqueue queue: poll_batch(1000) + ack each, 2 partitions", "2 workers",
     pyqueue_workers, {"workers": 2, "partitions": 2}, WORKERS_SCALE, None),
    ("workers", "pyqueue queue: poll_batch(1000) + ack each, 1 partition, max_in_flight=4096", "1 worker",
     pyqueue_workers, {"workers": 1, "max_in_flight": 4096}, WORKERS_SCALE, None),
    ("workers", "pyqueue queue: poll_batch(1000) + ack each, 1 partition, max_in_flight=4096", "2 workers",
     pyqueue_workers, {"workers": 2, "max_in_flight": 4096}, WORKERS_SCALE, None),
    ("workers", "Redis Streams: XREADGROUP COUNT 1000 + XACK of the batch", "1 worker",
     redis_workers, {"workers": 1}, WORKERS_SCALE, PQ_WORKERS),
    ("workers", "Redis Streams: XREADGROUP COUNT 1000 + XACK of the batch", "2 workers",
     redis_workers, {"workers": 2}, WORKERS_SCALE, PQ_WORKERS),
    ("workers", CONTROL, "1 worker", control_workers, {"workers": 1}, WORKERS_SCALE, None),
    ("workers", CONTROL, "2 workers", control_workers, {"workers": 2}, WORKERS_SCALE, None),

    ("pipe", PQ_PIPE_EACH, "fsync=interval", pyqueue_pipe, {"per_batch": False}, 1, None),
    ("pipe", "multiprocessing.Queue: put() -> get()", "in memory", mp_queue_pipe, {}, 1, PQ_PIPE_EACH),
    ("pipe", PQ_PIPE_BATCH, "fsync=interval", pyqueue_pipe, {"per_batch": True}, 1, None),
    ("pipe", "Redis Streams: XADD pipelined x1000 -> XREADGROUP BLOCK COUNT 1000 + XACK", "no persistence",
     redis_pipe, {}, 1, PQ_PIPE_BATCH),

    ("latency", PQ_PING_STREAM, "fsync=interval", pyqueue_pingpong, {"mode": "stream"}, 1, None),
    ("latency", "pyqueue queue: send() -> poll()", "fsync=interval", pyqueue_pingpong, {"mode": "queue"}, 1, None),
    ("latency", "Redis Streams: XADD -> XREADGROUP BLOCK", "no persistence", redis_pingpong, {}, 1, PQ_PING_STREAM),
    ("latency", "multiprocessing.Queue: put() -> get()", "in memory", mp_pingpong, {"kind": "queue"}, 1,
     PQ_PING_STREAM),
    ("latency", "multiprocessing.Pipe: send() -> recv()", "in memory", mp_pingpong, {"kind": "pipe"}, 1,
     PQ_PING_STREAM),
]

NEEDS_REDIS = {redis_readgroup, redis_readgroup_each, redis_workers, redis_pipe, redis_pingpong}
NEEDS_PERSISTQUEUE = {persistqueue_ack}
PERCENTILES = (50, 90, 99, 99.9)


def percentile(sorted_values: list[int], p: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    k = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * p // 100) - 1))
    return sorted_values[int(k)]


def latency_summary(round_trips_ns: list[int]) -> dict[str, float]:
    """Microseconds: round trip and one-way (round trip / 2) at each percentile."""
    rt = sorted(round_trips_ns)
    out = {}
    for p in PERCENTILES:
        out[f"rt_p{p:g}_us"] = percentile(rt, p) / 1000
        out[f"oneway_p{p:g}_us"] = percentile(rt, p) / 2000
    out["rt_mean_us"] = statistics.fmean(rt) / 1000
    return out


def start_redis(args):
    """A started RedisServer, or None (with the reason printed) when Redis is not available."""
    if args.no_redis:
        return None
    try:
        import redis  # noqa: F401
    except ImportError:
        print("  skipping Redis Streams: redis-py is not installed (pip install redis hiredis)", file=sys.stderr)
        return None
    binary = shutil.which(args.redis_server) if args.redis_server else shutil.which("redis-server")
    if not binary:
        print(f"  skipping Redis Streams: no {args.redis_server or 'redis-server'} binary on PATH", file=sys.stderr)
        return None
    return RedisServer(binary, args.dir).start()


def selected(args, group: str, label: str, note: str) -> bool:
    return not args.only or any(s in f"{group} {label} {note}" for s in args.only)


def measure_once(group, function, kwargs, n, args, env):
    """One run in a fresh directory: latency summary, or (seconds, usage or None)."""
    path = tempfile.mkdtemp(prefix="pyqueue-bench-", dir=args.dir)
    try:
        if group == "latency":
            return latency_summary(function(path, args.rounds, env, **kwargs))
        out = function(path, make_values(n), env, **kwargs)
        return out if isinstance(out, tuple) else (out, None)
    finally:
        shutil.rmtree(path, ignore_errors=True)


def run(args, env) -> list[dict]:
    """Every selected case once per repetition, repetitions in turn (so that a busy spell of
    the machine hits every case, not all the runs of one), then medians."""
    have_persistqueue = True
    try:
        import persistqueue  # noqa: F401
    except ImportError:
        have_persistqueue = False
        print("  skipping persist-queue: not installed (pip install persist-queue)", file=sys.stderr)
    cases = []
    for group, label, note, function, kwargs, scale, versus in CASES:
        if not selected(args, group, label, note):
            continue
        if (function in NEEDS_REDIS and env["redis"] is None) or (function in NEEDS_PERSISTQUEUE
                                                                   and not have_persistqueue):
            continue
        n = max(int(args.n * scale), BATCH)
        cases.append((group, label, note, function, kwargs, n - n % BATCH, versus))
    runs: list[list] = [[] for _ in cases]
    for rep in range(args.repeats):
        for i, (group, label, note, function, kwargs, n, _) in enumerate(cases):
            out = measure_once(group, function, kwargs, n, args, env)
            runs[i].append(out)
            if group == "latency":
                line = (f"one-way p50 {out['oneway_p50_us']:8.1f} us  p99 {out['oneway_p99_us']:8.1f} us  "
                        f"({args.rounds:,} round trips)")
            else:
                line = f"{n / out[0]:>12,.0f} msgs/s  (n={n:,})"
                if out[1]:
                    line += f"  CPU {out[1]['cpu_s'] / n * 1e9:,.0f} ns/msg"
                    if "busy" in out[1]:
                        line += f", busy {out[1]['busy']:.2f}"
            print(f"  [{rep + 1}/{args.repeats}] {group:<8} {label + ', ' + note:<75} {line}",
                  file=sys.stderr, flush=True)

    results = []
    for (group, label, note, function, kwargs, n, versus), outs in zip(cases, runs):
        row = {"group": group, "label": label, "note": note, "versus": versus,
               "workers": kwargs.get("workers", 1)}
        if group == "latency":
            row.update({"rounds": args.rounds, "runs": outs})
            row.update({k: statistics.median(r[k] for r in outs) for k in outs[0]})
        else:
            seconds = [sec for sec, _ in outs]
            row.update({"n": n, "seconds": seconds, "msgs_per_s": n / statistics.median(seconds)})
            usages = [u for _, u in outs if u]
            if usages:
                row["usage"] = usages
                row["cpu_ns_per_msg"] = statistics.median(u["cpu_s"] for u in usages) / n * 1e9
                row["msgs_per_cpu_s"] = 1e9 / row["cpu_ns_per_msg"]
                for key in ("busy", "involuntary_switches", "polls"):
                    if key in usages[0]:
                        row[key] = statistics.median(u[key] for u in usages)
        results.append(row)
    return results


def add_ratios(results: list[dict]) -> None:
    """ratio: the `versus` pyqueue row over this row (throughput: msgs/s; latency: this row's
    p50 over pyqueue's); speed_up (workers): this row over the same label's 1-worker row."""
    for r in results:
        r["ratio"] = None
        base = [b for b in results if b["group"] == r["group"] and b["label"] == r["versus"]
                and b["workers"] == r["workers"]]
        if base and r["versus"]:
            if r["group"] == "latency":
                r["ratio"] = r["oneway_p50_us"] / base[0]["oneway_p50_us"]
            else:
                r["ratio"] = base[0]["msgs_per_s"] / r["msgs_per_s"]
        if r["group"] == "workers":
            one = [b for b in results if b["group"] == "workers" and b["label"] == r["label"] and b["workers"] == 1]
            r["speed_up"] = r["msgs_per_s"] / one[0]["msgs_per_s"] if one else None
            # The speed-up with a free core per worker, from CPU time alone: an upper bound
            # (time spent waiting for the other worker is not counted), immune to other load.
            r["cpu_bound_speed_up"] = (r["workers"] * one[0]["cpu_ns_per_msg"] / r["cpu_ns_per_msg"]
                                       if one and r.get("cpu_ns_per_msg") else None)


def targets(results: list[dict]) -> list[dict]:
    """The stated goals against this run's figures."""
    def rate(group, label, workers=1):
        rows = [r for r in results if r["group"] == group and r["label"] == label and r["workers"] == workers]
        return rows[0] if rows else None

    out = []

    def add(goal, row, key, limit, better="higher", fmt="{:,.0f}"):
        if row is None or row.get(key) is None:
            return
        value = row[key]
        met = value >= limit if better == "higher" else value <= limit
        out.append({"goal": goal, "measured": fmt.format(value), "met": met})

    add("stream poll_batch + ack + commit >= 1,000,000 msgs/s", rate("stream", PQ_STREAM), "msgs_per_s", 1e6)
    add("the same, per CPU-second", rate("stream", PQ_STREAM), "msgs_per_cpu_s", 1e6)
    add("queue poll_batch + per-message ack >= 300,000 msgs/s", rate("queue", PQ_QUEUE), "msgs_per_s", 3e5)
    add("the same, per CPU-second", rate("queue", PQ_QUEUE), "msgs_per_cpu_s", 3e5)
    for r in results:
        if r["group"] == "workers" and r["workers"] == 2 and r["label"].startswith("pyqueue"):
            add(f"two workers >= 1.6x one ({r['label'].split(', ', 1)[1]})", r, "speed_up", 1.6, fmt="{:.2f}x")
            add(f"two workers >= 1.6x one, CPU-bound upper bound ({r['label'].split(', ', 1)[1]})", r,
                "cpu_bound_speed_up", 1.6, fmt="{:.2f}x")
    control = rate("workers", CONTROL, 2)
    if control is not None and control.get("speed_up") is not None:
        out.append({"goal": "(the machine's ceiling for two processes, this run: the control loop)",
                    "measured": f"{control['speed_up']:.2f}x", "met": None})
    add("wake-up latency p50 <= 20 us (one-way)", rate("latency", PQ_PING_STREAM), "oneway_p50_us", 20,
        "lower", "{:.1f} us")
    add("wake-up latency p99 <= 200 us (one-way)", rate("latency", PQ_PING_STREAM), "oneway_p99_us", 200,
        "lower", "{:.1f} us")
    for r in results:
        if r["ratio"] is not None and r["group"] in ("stream", "queue") and not r["label"].startswith("pyqueue"):
            add(f">= 10x {r['label']} ({r['group']}; versus {r['versus']})", r, "ratio", 10, fmt="{:,.1f}x")
    return out


def markdown(results: list[dict], goals: list[dict]) -> str:
    lines = []
    for group, title in GROUPS.items():
        rows = [r for r in results if r["group"] == group]
        if not rows:
            continue
        lines += [f"### {title}", ""]
        if group == "latency":
            lines.append("µs; one-way = round trip / 2; median over runs of each run's percentile; "
                         "ratio = this row's one-way p50 / the pyqueue row's")
            lines.append("")
            cols = " | ".join(f"one-way p{p:g}" for p in PERCENTILES) + " | " + \
                " | ".join(f"round trip p{p:g}" for p in PERCENTILES)
            lines.append(f"| implementation | durability | round trips | {cols} | ratio |")
            lines.append("|---|---|---:|" + "---:|" * (2 * len(PERCENTILES) + 1))
            for r in rows:
                vals = " | ".join(f"{r[f'oneway_p{p:g}_us']:,.1f}" for p in PERCENTILES) + " | " + \
                    " | ".join(f"{r[f'rt_p{p:g}_us']:,.1f}" for p in PERCENTILES)
                ratio = "" if r["ratio"] is None else f"{r['ratio']:,.1f}x"
                lines.append(f"| {r['label']} | {r['note']} | {r['rounds']:,} | {vals} | {ratio} |")
        elif group == "workers":
            lines.append("speed-up = this row / the same implementation with 1 worker; "
                         "ratio = the pyqueue 1-partition row with as many workers / this row; "
                         "CPU = the workers' CPU time (user + system) per message; busy = CPU time / "
                         "(wall time x workers), 1.00 when every worker had a core all along; "
                         "preempted = involuntary context switches; polls = poll_batch or XREADGROUP calls; "
                         "CPU-bound speed-up = workers x (CPU ns/msg with 1 worker) / (CPU ns/msg here), the "
                         "speed-up with a free core per worker and no waiting (an upper bound that other load "
                         "on the machine does not move)")
            lines.append("")
            lines.append("| implementation | workers | n | msgs/s (median) | speed-up | ratio | CPU ns/msg | busy "
                         "| preempted | polls | CPU-bound speed-up |")
            lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
            for r in rows:
                ratio = "" if r["ratio"] is None else f"{r['ratio']:,.1f}x"
                speed = "" if r.get("speed_up") is None or r["workers"] == 1 else f"{r['speed_up']:.2f}x"
                polls = f"{r['polls']:,.0f}" if r.get("polls") else ""
                ceiling = ("" if r.get("cpu_bound_speed_up") is None or r["workers"] == 1
                           else f"{r['cpu_bound_speed_up']:.2f}x")
                lines.append(f"| {r['label']} | {r['workers']} | {r['n']:,} | {r['msgs_per_s']:,.0f} | "
                             f"{speed} | {ratio} | {r.get('cpu_ns_per_msg', 0):,.0f} | {r.get('busy', 0):.2f} | "
                             f"{r.get('involuntary_switches', 0):,.0f} | {polls} | {ceiling} |")
        else:
            lines.append("ratio = the pyqueue row named in `versus` / this row; msgs per CPU-second = the "
                         "rate if the process had a core to itself (its CPU time, all threads), given where "
                         "all the work is in the measuring process (not for Redis: the server's CPU is elsewhere)")
            lines.append("")
            lines.append("| implementation | durability | n | msgs/s (median) | versus | ratio | msgs per CPU-second |")
            lines.append("|---|---|---:|---:|---|---:|---:|")
            for r in rows:
                ratio = "" if r["ratio"] is None else f"{r['ratio']:,.1f}x"
                per_cpu = f"{r['msgs_per_cpu_s']:,.0f}" if r.get("msgs_per_cpu_s") else ""
                lines.append(f"| {r['label']} | {r['note']} | {r['n']:,} | {r['msgs_per_s']:,.0f} | "
                             f"{r['versus'] or ''} | {ratio} | {per_cpu} |")
        lines.append("")
    if goals:
        lines += ["### targets", "", "| goal | this run | met |", "|---|---:|---|"]
        lines += [f"| {g['goal']} | {g['measured']} | {'' if g['met'] is None else 'yes' if g['met'] else 'no'} |"
                  for g in goals]
        lines.append("")
    return "\n".join(lines)


def machine(env) -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    out = {"cpus": os.cpu_count(), "cpu": cpu, "python": platform.python_version(),
           "platform": platform.platform(), "load_average_after": os.getloadavg()}
    if env["redis"] is not None:
        import redis
        import redis.utils
        out["redis_server"] = env["redis"].version()
        out["redis_py"] = redis.__version__
        out["hiredis"] = bool(redis.utils.HIREDIS_AVAILABLE)
    try:
        import persistqueue
        out["persist_queue"] = persistqueue.__version__
    except ImportError:
        pass
    return out


def command_line(argv: list[str]) -> str:
    """The command, with the file and directory arguments reduced to their base names."""
    words = ["groups.py"]
    for i, a in enumerate(argv):
        named = i > 0 and argv[i - 1] in ("--json", "--dir", "--redis-server")
        words.append(os.path.basename(a) if named else a)
    return " ".join(words)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000, help="messages per measurement (default 200,000)")
    parser.add_argument("--rounds", type=int, default=20_000,
                        help=f"ping-pong round trips measured after {WARMUP_ROUNDS:,} of warm-up (default 20,000)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per measurement; the median is quoted")
    parser.add_argument("--quick", action="store_true", help="20,000 messages, 10,000 round trips, one run each (overrides --n, --rounds, --repeats)")
    parser.add_argument("--only", nargs="+", help="run the cases whose group, label or note contains one of these")
    parser.add_argument("--no-redis", action="store_true", help="skip Redis Streams")
    parser.add_argument("--redis-server", default=None, help="redis-server binary (default: redis-server on PATH)")
    parser.add_argument("--dir", default=None, help="parent of the temporary directories (default: the system's)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.rounds, args.repeats = 20_000, 10_000, 1
    if args.n < BATCH:
        parser.error(f"--n must be at least {BATCH}")

    started = datetime.datetime.now(datetime.timezone.utc)
    load_before = os.getloadavg()
    env = {"redis": start_redis(args)}
    try:
        results = run(args, env)
        add_ratios(results)
        goals = targets(results)
        info = machine(env)
        info["load_average_before"] = load_before
    finally:
        if env["redis"] is not None:
            env["redis"].stop()
    print(f"pyqueue {pyqueue.__version__}; {VALUE_BYTES} B values, n={args.n:,}, median of {args.repeats}; "
          f"{started:%Y-%m-%d %H:%M} UTC; {info}")
    print()
    print(markdown(results, goals))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": command_line(argv if argv is not None else sys.argv[1:]),
                       "date": started.isoformat(), "machine": info, "n": args.n, "rounds": args.rounds,
                       "repeats": args.repeats, "results": results, "targets": goals}, f, indent=2)


if __name__ == "__main__":
    main()
