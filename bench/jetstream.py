"""The JetStream backend beside nats-py used directly and beside the embedded
engine, on the same workloads, in one run:

    produce-1      one message per call: pyqueue send() (JetStream; also
                   on a topic with max_depth: far from full (2^40), and
                   filling (max_depth = n + 2: the run takes it from
                   empty to nearly full, the view is read about log2(n)
                   times) /
                   `await js.publish()` (nats-py) / the same publish from
                   synchronous code through run_coroutine_threadsafe
                   (nats-py-from-sync) / pyqueue send() through the broker's
                   loop thread (pyqueue-jetstream-bridged: connect(direct_sends=
                   False)) / send() (embedded, fsync=interval)
    produce-batch  batches of --batch: send_batch() / publish_async + gather
                   per batch / send_batch()
    consume-ack    queue mode, poll_batch(--batch) then ack each message:
                   pyqueue queue consumer / pull_subscribe + fetch(--batch) and
                   `await msg.ack()` each / the embedded queue consumer
    bridge         one sync call through pyqueue's event-loop thread (what the
                   sync API adds to every request), against awaiting the same
                   coroutine on the loop itself

The JetStream rows use one 3-node cluster (started here on loopback ports
unless --url is given), streams of 3 replicas on file storage, the same
stream configuration for pyqueue and for nats-py, a fresh stream per
measurement.  Repetitions are interleaved round robin over the rows, so a
noisy moment hits all of them, and each round compares its rows with the
nats-py row of the same round: the ratio reported is the median of these
paired ratios, with their quartiles (robust to the load of a shared
machine drifting during the run), beside the median msgs/s.  The cost of the pyqueue layer is
pyqueue's time over nats-py's on the same workload, less 1.

    python bench/jetstream.py --json jetstream.json   (--quick, --n, --batch, --size, --repeats, --only, --url)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Optional

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pyqueue  # noqa: E402
from _common import machine  # noqa: E402
from pyqueue.jetstream.bridge import Bridge  # noqa: E402
from pyqueue.jetstream.localcluster import LocalCluster  # noqa: E402

_serial = iter(range(1, 1 << 30))


def values(n: int, size: int) -> list[bytes]:
    rnd = __import__("random").Random(42)
    return [rnd.randbytes(size) for _ in range(n)]


# -- pyqueue on JetStream --

REFRESHES: dict[int, list[int]] = {}


def pq_produce_one(broker: Any, vals: list[bytes], max_depth: Optional[int] = None) -> float:
    """max_depth: the topic's (None: none).  The warm-up send makes the
    first depth refresh; the refreshes made while timed are recorded."""
    t = broker.topic(f"p1x{next(_serial)}", max_depth=max_depth)
    t.send(b"warm-up")                   # connects this thread's sender the first time
    before = t._backpressure.refreshes if max_depth else 0
    start = time.perf_counter()
    for v in vals:
        t.send(v)
    elapsed = time.perf_counter() - start
    if max_depth:
        REFRESHES.setdefault(max_depth, []).append(t._backpressure.refreshes - before)
    return elapsed


def pq_produce_batch(broker: Any, vals: list[bytes], batch: int) -> float:
    t = broker.topic(f"pbx{next(_serial)}")
    t.send(b"warm-up")
    start = time.perf_counter()
    for i in range(0, len(vals), batch):
        t.send_batch(vals[i:i + batch], partition=0)
    return time.perf_counter() - start


def pq_consume(broker: Any, vals: list[bytes], batch: int) -> float:
    t = broker.topic(f"pcx{next(_serial)}")
    for i in range(0, len(vals), 1000):
        t.send_batch(vals[i:i + 1000], partition=0)
    c = t.consumer("w", mode="queue")
    got = 0
    start = time.perf_counter()
    while got < len(vals):
        msgs = c.poll_batch(batch, timeout=10)
        for m in msgs:
            m.ack()
        got += len(msgs)
    elapsed = time.perf_counter() - start
    c.close()
    return elapsed


# -- nats-py used directly (on the same kind of stream) --

class Raw:
    """nats-py on its own event loop (run_until_complete: no thread handoff)."""

    def __init__(self, url: str) -> None:
        import nats
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(nats.connect(url.split(",")))
        self.js = self.nc.jetstream(publish_async_max_pending=65536)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def stream(self, replicas: int) -> str:
        name = f"rawx{next(_serial)}"
        await self.js.add_stream(name=name, subjects=[f"raw.{name}"], num_replicas=replicas, storage="file",
                                 duplicate_window=300)
        return name

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.close()


def raw_produce_one(raw: Raw, vals: list[bytes], replicas: int) -> float:
    async def go() -> float:
        name = await raw.stream(replicas)
        subject = f"raw.{name}"
        await raw.js.publish(subject, b"warm-up")
        start = time.perf_counter()
        for v in vals:
            await raw.js.publish(subject, v)
        return time.perf_counter() - start
    return raw.run(go())


def raw_sync_produce_one(raw: Raw, vals: list[bytes], replicas: int) -> float:
    """nats-py called from synchronous code: its loop on a thread, each
    publish handed over with run_coroutine_threadsafe (what any sync
    application of nats-py pays; pyqueue's bridge is the same idea)."""
    name = raw.run(raw.stream(replicas))
    subject = f"raw.{name}"
    raw.run(raw.js.publish(subject, b"warm-up"))
    import threading
    thread = threading.Thread(target=raw.loop.run_forever, daemon=True)
    thread.start()
    try:
        start = time.perf_counter()
        for v in vals:
            asyncio.run_coroutine_threadsafe(raw.js.publish(subject, v), raw.loop).result()
        return time.perf_counter() - start
    finally:
        raw.loop.call_soon_threadsafe(raw.loop.stop)
        thread.join()


def raw_produce_batch(raw: Raw, vals: list[bytes], batch: int, replicas: int) -> float:
    async def go() -> float:
        name = await raw.stream(replicas)
        subject = f"raw.{name}"
        await raw.js.publish(subject, b"warm-up")
        start = time.perf_counter()
        for i in range(0, len(vals), batch):
            futs = [await raw.js.publish_async(subject, v) for v in vals[i:i + batch]]
            await asyncio.gather(*futs)
        return time.perf_counter() - start
    return raw.run(go())


def raw_consume(raw: Raw, vals: list[bytes], batch: int, replicas: int) -> float:
    async def go() -> float:
        name = await raw.stream(replicas)
        subject = f"raw.{name}"
        for i in range(0, len(vals), 1000):
            await asyncio.gather(*[await raw.js.publish_async(subject, v) for v in vals[i:i + 1000]])
        sub = await raw.js.pull_subscribe(subject, durable="w", stream=name)
        got = 0
        start = time.perf_counter()
        while got < len(vals):
            msgs = await sub.fetch(batch, timeout=10)
            for m in msgs:
                await m.ack()
            got += len(msgs)
        elapsed = time.perf_counter() - start
        await sub.unsubscribe()
        return elapsed
    return raw.run(go())


# -- the embedded engine --

def emb_produce_one(root: str, vals: list[bytes]) -> float:
    with pyqueue.open(os.path.join(root, f"e{next(_serial)}")) as b:
        t = b.topic("t")
        start = time.perf_counter()
        for v in vals:
            t.send(v)
        return time.perf_counter() - start


def emb_produce_batch(root: str, vals: list[bytes], batch: int) -> float:
    with pyqueue.open(os.path.join(root, f"e{next(_serial)}")) as b:
        t = b.topic("t")
        start = time.perf_counter()
        for i in range(0, len(vals), batch):
            t.send_batch(vals[i:i + batch], partition=0)
        return time.perf_counter() - start


def emb_consume(root: str, vals: list[bytes], batch: int) -> float:
    with pyqueue.open(os.path.join(root, f"e{next(_serial)}")) as b:
        t = b.topic("t")
        t.send_batch(vals)
        c = t.consumer("w", mode="queue")
        got = 0
        start = time.perf_counter()
        while got < len(vals):
            msgs = c.poll_batch(batch, timeout=10)
            for m in msgs:
                m.ack()
            got += len(msgs)
        elapsed = time.perf_counter() - start
        c.close()
        return elapsed


# -- the bridge alone --

def bridge_call(n: int) -> tuple[float, float]:
    """Seconds per sync call through the Bridge, and per await on the loop."""
    bridge = Bridge()

    async def noop() -> None:
        return None

    try:
        start = time.perf_counter()
        for _ in range(n):
            bridge.run(noop())
        through = (time.perf_counter() - start) / n

        async def direct() -> float:
            s = time.perf_counter()
            for _ in range(n):
                await noop()
            return (time.perf_counter() - s) / n
        on_loop = bridge.run(direct())
    finally:
        bridge.close()
    return through, on_loop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", help="an existing JetStream cluster (default: start 3 nodes on loopback)")
    ap.add_argument("--n", type=int, default=5000, help="messages per measurement (default 5000)")
    ap.add_argument("--batch", type=int, default=500, help="batch size (default 500)")
    ap.add_argument("--size", type=int, default=100, help="value bytes (default 100)")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--quick", action="store_true", help="n=1000, 2 repeats: a smoke run")
    ap.add_argument("--only", nargs="*", default=[], help="workloads to run (produce-1, produce-batch, consume-ack)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.quick:
        args.n, args.repeats = 1000, 3

    cluster = None
    url = args.url
    if url is None:
        cluster = LocalCluster(3).start()
        url = cluster.url
    root = tempfile.mkdtemp(prefix="pyqueue-bench-")
    broker = pyqueue.connect(url, namespace=f"bench{os.getpid()}")
    bridged = pyqueue.connect(url, namespace=f"bench{os.getpid()}", direct_sends=False)
    replicas = broker.replicas
    raw = Raw(url)
    vals = values(args.n, args.size)
    n_one = max(100, args.n // 20)       # a round trip per message: fewer of them, more rounds
    rows: dict[str, tuple[str, int, Callable[[], float]]] = {
        "produce-1/pyqueue-jetstream": ("produce-1", n_one, lambda: pq_produce_one(broker, vals[:n_one])),
        "produce-1/pyqueue-jetstream-max-depth": ("produce-1", n_one,
                                                  lambda: pq_produce_one(broker, vals[:n_one], 1 << 40)),
        "produce-1/pyqueue-jetstream-max-depth-filling": (
            "produce-1", n_one, lambda: pq_produce_one(broker, vals[:n_one], n_one + 2)),
        "produce-1/pyqueue-jetstream-bridged": ("produce-1", n_one,
                                                lambda: pq_produce_one(bridged, vals[:n_one])),
        "produce-1/nats-py": ("produce-1", n_one, lambda: raw_produce_one(raw, vals[:n_one], replicas)),
        "produce-1/nats-py-from-sync": ("produce-1", n_one,
                                        lambda: raw_sync_produce_one(raw, vals[:n_one], replicas)),
        "produce-1/pyqueue-embedded": ("produce-1", n_one, lambda: emb_produce_one(root, vals[:n_one])),
        "produce-batch/pyqueue-jetstream": ("produce-batch", args.n,
                                            lambda: pq_produce_batch(broker, vals, args.batch)),
        "produce-batch/nats-py": ("produce-batch", args.n,
                                  lambda: raw_produce_batch(raw, vals, args.batch, replicas)),
        "produce-batch/pyqueue-embedded": ("produce-batch", args.n, lambda: emb_produce_batch(root, vals, args.batch)),
        "consume-ack/pyqueue-jetstream": ("consume-ack", args.n, lambda: pq_consume(broker, vals, args.batch)),
        "consume-ack/nats-py": ("consume-ack", args.n, lambda: raw_consume(raw, vals, args.batch, replicas)),
        "consume-ack/pyqueue-embedded": ("consume-ack", args.n, lambda: emb_consume(root, vals, args.batch)),
    }
    if args.only:
        rows = {k: v for k, v in rows.items() if v[0] in args.only}
    times: dict[str, list[float]] = {k: [] for k in rows}
    try:
        for rep in range(args.repeats):
            for key, (_, _, fn) in rows.items():
                times[key].append(fn())
            print(f"repeat {rep + 1}/{args.repeats} done", file=sys.stderr)
        bridge = [bridge_call(20000) for _ in range(args.repeats)]
    finally:
        broker.close()
        bridged.close()
        raw.close()
        shutil.rmtree(root, ignore_errors=True)
        if cluster is not None:
            cluster.stop()

    results: dict[str, Any] = {"machine": machine(nats_server=".".join(map(str, broker.client.version)),
                                                  replicas=replicas), "args": vars(args), "rows": {}}
    print(f"\n{'workload':<15}{'implementation':<30}{'n':>7}{'msgs/s':>12}{'time vs nats-py (quartiles)':>29}")
    for key, (work, n, _) in rows.items():
        med = statistics.median(times[key])
        impl = key.split("/", 1)[1]
        paired = sorted(a / b for a, b in zip(times[key], times[f"{work}/nats-py"]))
        ratio = statistics.median(paired)
        q1, q3 = (statistics.quantiles(paired, n=4)[0::2] if len(paired) > 1 else (ratio, ratio))
        results["rows"][key] = {"workload": work, "n": n, "seconds": times[key], "median_s": med,
                                "msgs_per_s": n / med, "time_vs_nats_py": ratio,
                                "time_vs_nats_py_quartiles": [q1, q3]}
        note = "" if impl == "nats-py" else f"{ratio:>9.2f}x ({q1:.2f}-{q3:.2f})"
        print(f"{work:<15}{impl:<30}{n:>7}{n / med:>12,.0f}{note}")
    plain = times.get("produce-1/pyqueue-jetstream")
    for key in rows:
        if "max-depth" in key and plain:
            paired = sorted(a / b for a, b in zip(times[key], plain))
            ratio = statistics.median(paired)
            q1, q3 = (statistics.quantiles(paired, n=4)[0::2] if len(paired) > 1 else (ratio, ratio))
            results["rows"][key]["time_vs_pyqueue_without_max_depth"] = ratio
            results["rows"][key]["time_vs_pyqueue_without_max_depth_quartiles"] = [q1, q3]
            print(f"{key.split('/', 1)[1]}: time vs pyqueue-jetstream without max_depth, paired per round: "
                  f"{ratio:.3f}x ({q1:.3f}-{q3:.3f})")
    for depth, counts in sorted(REFRESHES.items()):
        results.setdefault("max_depth_refreshes", {})[str(depth)] = counts
        print(f"max_depth={depth}: depth refreshes while timed, per round: {counts}")
    through = statistics.median(b[0] for b in bridge)
    on_loop = statistics.median(b[1] for b in bridge)
    results["bridge"] = {"sync_call_s": through, "await_on_loop_s": on_loop}
    print(f"\nbridge: a sync call through the loop thread {through * 1e6:.1f} us; "
          f"the same await on the loop {on_loop * 1e6:.2f} us")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
