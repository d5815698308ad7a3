"""A throwaway JetStream cluster of nats-server processes on 127.0.0.1.

For tests, benchmarks and trying the backend out: LocalCluster(size=3)
starts `size` nats-server processes with JetStream, each with its own store
directory and cluster routes to the others, on free loopback ports, and
waits until the JetStream meta group has a leader.  stop() ends the
processes it started, by pid; kill(i) sends one of them SIGKILL and
restart(i) starts it again on the same ports and store, to rejoin.  Each
node also serves the monitoring endpoints on 127.0.0.1 (meta_leader()).

nats-server 2.9 has no `sync_interval` option (2.10 added it): a stored
message is written to the file store and replicated to a quorum before the
publish is acknowledged, and fsynced at the server's own pace.  A SIGKILL
keeps what reached the page cache; an OS crash of a quorum of nodes may lose
the last writes.  On a server that knows the option, pass
`sync_interval="always"` to fsync every write.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional

__all__ = ["LocalCluster", "find_server", "server_version"]

_READY_TIMEOUT = 30.0


def find_server() -> Optional[str]:
    """Path of the nats-server executable on PATH, or None."""
    return shutil.which("nats-server")


def server_version(binary: str) -> tuple[int, int, int]:
    """(major, minor, patch) of a nats-server executable."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    v = out.strip().rsplit("v", 1)[-1]
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in v.split(".")[:3]]
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalCluster:
    """`size` nats-server processes forming one JetStream cluster (size 1: a
    lone server).  Use as a context manager, or call start() and stop()."""

    def __init__(self, size: int = 3, *, root: Optional[str] = None, jetstream: bool = True,
                 binary: Optional[str] = None, sync_interval: Optional[str] = None,
                 max_file_store: str = "1G", max_memory_store: str = "64M") -> None:
        self.size = size
        found = binary or find_server()
        if found is None:
            raise FileNotFoundError("nats-server is not on PATH")
        self.binary: str = found
        self._own_root = root is None
        self.root = root or tempfile.mkdtemp(prefix="pyqueue-nats-")
        self.jetstream = jetstream
        self.sync_interval = sync_interval
        self.max_file_store = max_file_store
        self.max_memory_store = max_memory_store
        ports = _free_ports(3 * size)
        self.client_ports, self.route_ports = ports[:size], ports[size:2 * size]
        self.monitor_ports = ports[2 * size:]
        self.procs: list[Optional[subprocess.Popen]] = [None] * size

    @property
    def url(self) -> str:
        """Every node's client URL, comma separated (what pyqueue.connect takes)."""
        return ",".join(f"nats://127.0.0.1:{p}" for p in self.client_ports)

    def node_url(self, i: int) -> str:
        return f"nats://127.0.0.1:{self.client_ports[i]}"

    def name(self, i: int) -> str:
        return f"n{i}"

    def _config(self, i: int) -> str:
        lines = [f"server_name: {self.name(i)}", f"listen: 127.0.0.1:{self.client_ports[i]}",
                 f"http: 127.0.0.1:{self.monitor_ports[i]}"]
        if self.jetstream:
            sync = f"  sync_interval: {self.sync_interval}\n" if self.sync_interval else ""
            lines.append("jetstream {\n"
                         f"  store_dir: \"{os.path.join(self.root, self.name(i))}\"\n"
                         f"  max_file_store: {self.max_file_store}\n"
                         f"  max_memory_store: {self.max_memory_store}\n" + sync + "}")
        if self.size > 1:
            routes = ", ".join(f"nats-route://127.0.0.1:{p}" for j, p in enumerate(self.route_ports) if j != i)
            lines.append("cluster {\n  name: pyqueue\n"
                         f"  listen: 127.0.0.1:{self.route_ports[i]}\n  routes: [{routes}]\n}}")
        return "\n".join(lines) + "\n"

    def _spawn(self, i: int) -> None:
        conf = os.path.join(self.root, f"{self.name(i)}.conf")
        with open(conf, "w", encoding="utf-8") as f:
            f.write(self._config(i))
        log = open(os.path.join(self.root, f"{self.name(i)}.log"), "ab")
        try:
            self.procs[i] = subprocess.Popen([self.binary, "-c", conf], stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def start(self) -> "LocalCluster":
        """Start every node; return once JetStream answers (or the cluster
        is up, without JetStream).  RuntimeError naming the log on failure."""
        try:
            for i in range(self.size):
                self._spawn(i)
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = _READY_TIMEOUT, nodes: Optional[list[int]] = None) -> None:
        """Wait until the nodes listen and, with JetStream, the meta group has
        a leader and every node knows it."""
        from pyqueue.jetstream._probe import jetstream_ready
        deadline = time.monotonic() + timeout
        for i in (range(self.size) if nodes is None else nodes):
            while True:
                proc = self.procs[i]
                if proc is None or proc.poll() is not None:
                    raise RuntimeError(f"nats-server {self.name(i)} exited; see {self.log_path(i)}")
                if jetstream_ready(self.client_ports[i], self.jetstream, min(1.0, deadline - time.monotonic())):
                    break
                if time.monotonic() >= deadline:
                    raise RuntimeError(f"nats-server {self.name(i)} not ready within {timeout} s; "
                                       f"see {self.log_path(i)}")
                time.sleep(0.05)   # bounded readiness loop: the server has no event to wait on
        if self.jetstream and self.size > 1 and nodes is None:
            self._wait_placement(deadline, timeout)

    def _wait_placement(self, deadline: float, timeout: float) -> None:
        """Wait until the meta leader can place a stream on every node: just
        after its election it may not know the others' JetStream yet, and
        creating a replicated stream fails with "no suitable peers for
        placement".  Probed by creating (and deleting) a stream of `size`
        replicas in memory."""
        from pyqueue.jetstream._probe import jetstream_request
        name = "pyqueue_ready_probe"
        config = json.dumps({"name": name, "subjects": ["_pq_ready_probe"], "storage": "memory",
                             "num_replicas": self.size}).encode()
        last: object = None
        while True:
            left = deadline - time.monotonic()
            reply = jetstream_request(self.client_ports[0], f"$JS.API.STREAM.CREATE.{name}", config,
                                      max(0.05, min(2.0, left)))
            if reply is not None and ("error" not in reply or reply["error"].get("err_code") == 10058):
                jetstream_request(self.client_ports[0], f"$JS.API.STREAM.DELETE.{name}", b"",
                                  max(0.05, min(2.0, deadline - time.monotonic())))
                return
            last = reply
            if time.monotonic() >= deadline:
                raise RuntimeError(f"the JetStream cluster cannot place a stream of {self.size} replicas "
                                   f"within {timeout} s (last answer: {last}); see {self.log_path(0)}")
            time.sleep(0.1)    # bounded readiness loop, as above

    def meta_leader(self) -> Optional[int]:
        """The node leading the JetStream meta group (which creates and
        deletes streams and consumers), from the first live node's
        monitoring endpoint; None if no node knows one."""
        import json
        import urllib.request
        for i, proc in enumerate(self.procs):
            if proc is None or proc.poll() is not None:
                continue
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_ports[i]}/jsz", timeout=2) as r:
                    leader = (json.load(r).get("meta_cluster") or {}).get("leader")
            except (OSError, ValueError):
                continue
            if leader:
                return [self.name(j) for j in range(self.size)].index(leader)
        return None

    def log_path(self, i: int) -> str:
        return os.path.join(self.root, f"{self.name(i)}.log")

    def pid(self, i: int) -> Optional[int]:
        proc = self.procs[i]
        return None if proc is None else proc.pid

    def kill(self, i: int) -> None:
        """SIGKILL node i and reap it."""
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()

    def restart(self, i: int) -> None:
        """Start node i again with its store and ports (it rejoins the cluster)."""
        self.kill(i)
        self._spawn(i)
        self.wait_ready(nodes=[i])

    def stop(self) -> None:
        """Terminate every node this object started (by pid), then remove the
        store directories it created."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
