"""The conformance suite: the same tests against every backend.

`backend` is parametrized over "embedded" (a broker directory) and
"jetstream" (a real 3-node nats-server cluster on loopback ports, started
once per test run and stopped by pid at its end).  `broker` is an open
broker of that backend; `reopen()` opens another handle on the same data
(the same directory, or the same cluster and namespace), as a restarted
process would.  Each test gets its own namespace on the cluster, so tests
never see each other's topics.

A feature a backend does not provide is skipped by `requires(feature)`
with the reason from UNSUPPORTED (the README's table of backend
differences lists the same); a test of its own checks that using it raises
Unsupported, so no difference is silent.  Without nats-server on PATH (or
without nats-py), the jetstream half is skipped, saying so.
"""

from __future__ import annotations

import itertools
import os
from typing import Any, Callable, Optional

import pytest

import pyqueue

from conformance.support import nats_missing

BACKENDS = ("embedded", "jetstream")

# feature -> reason, per backend.  Kept in step with the README's table.
UNSUPPORTED: dict[str, dict[str, str]] = {
    "embedded": {},
    "jetstream": {
        "ordered": "ordered=True needs a per-key ordered work queue, which JetStream lacks",
        "offset_window": "max_in_flight is a count of unacked messages (MaxAckPending), not a window of offsets",
        "instant_lease_return": "a dead member's leases come back after AckWait: pull consumers have no liveness",
        "cross_process_lease_lost": "an ack of a delivery redelivered to another process is accepted (the work "
                                    "was done); LeaseLost is raised only for redeliveries this process saw",
    },
}

_counter = itertools.count()


@pytest.fixture(scope="session")
def nats_cluster():
    """A 3-node JetStream cluster on 127.0.0.1 for the whole test run."""
    why = nats_missing()
    if why:
        pytest.skip(f"jetstream backend: {why}")
    from pyqueue.jetstream.localcluster import LocalCluster, find_server, server_version
    # fsync every write where the server knows how (2.10+); 2.9 has no such option.
    sync = "always" if server_version(find_server()) >= (2, 10, 0) else None
    cluster = LocalCluster(3, sync_interval=sync).start()
    try:
        yield cluster
    finally:
        cluster.stop()


class Backend:
    """Opens brokers of one backend on one store, and knows what it lacks."""

    def __init__(self, name: str, tmp_path: Any, cluster: Any) -> None:
        self.name = name
        self.path = str(tmp_path / "broker")
        self.cluster = cluster
        self.namespace = f"t{os.getpid() % 10000}x{next(_counter)}"
        self.opened: list[Any] = []

    def open(self, **options: Any) -> Any:
        if self.name == "embedded":
            b = pyqueue.open(self.path, fsync="never", **options)
        else:
            b = pyqueue.connect(self.cluster.url, namespace=self.namespace, timeout=20.0,
                                request_timeout=1.0, **options)
        self.opened.append(b)
        return b

    def child_open_code(self) -> str:
        """Python source that binds `broker` in a child process to the same store."""
        if self.name == "embedded":
            return f"import pyqueue\nbroker = pyqueue.open({self.path!r}, fsync='never')\n"
        return (f"import pyqueue\nbroker = pyqueue.connect({self.cluster.url!r}, namespace={self.namespace!r}, "
                f"timeout=20.0, request_timeout=1.0)\n")

    def lacks(self, feature: str) -> Optional[str]:
        return UNSUPPORTED[self.name].get(feature)

    def close_all(self) -> None:
        for b in self.opened:
            try:
                b.close()
            except Exception:
                pass
        if self.name == "jetstream":
            self._drop_namespace()

    def _drop_namespace(self) -> None:
        """Delete the test's streams and buckets, so the cluster stays small."""
        try:
            b = pyqueue.connect(self.cluster.url, namespace=self.namespace, timeout=10.0)
        except Exception:
            return
        try:
            b._run(_drop(b))
        except Exception:
            pass
        finally:
            b.close()


async def _drop(b: Any) -> None:
    prefix = f"{b.names.ns}_"
    resp = await b.client.api("STREAM.NAMES", {"offset": 0})
    for name in resp.get("streams") or []:
        if name.startswith(prefix):
            try:
                await b.client.api(f"STREAM.DELETE.{name}")
            except Exception:
                pass
    for bucket in (b.names.topics_bucket, b.names.groups_bucket, b.names.schedules_bucket,
                   b.names.jobs_bucket):
        try:
            await b.client.api(f"STREAM.PURGE.KV_{bucket}", {"filter": f"$KV.{bucket}.{b.names.ns}.>"})
        except Exception:
            pass                    # no such bucket: nothing of this test's in it


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    if request.param == "jetstream":
        cluster = request.getfixturevalue("nats_cluster")
    else:
        cluster = None
    be = Backend(request.param, tmp_path, cluster)
    try:
        yield be
    finally:
        be.close_all()


@pytest.fixture
def broker(backend):
    return backend.open()


@pytest.fixture
def reopen(backend) -> Callable[[], Any]:
    """Open another broker handle on the same store (as a restarted process would)."""
    return backend.open


@pytest.fixture
def requires(backend) -> Callable[[str], None]:
    """requires(feature): skip, with the reason, where the backend lacks it."""
    def check(feature: str) -> None:
        why = backend.lacks(feature)
        if why:
            pytest.skip(f"{backend.name} backend: {why}")
    return check
