"""Prometheus metrics: PyQueueCollector in a registry of the user's, and
`pyqueue metrics` serving /metrics from a child process, scraped over HTTP
while this process holds leases and has dead-lettered a message."""

from __future__ import annotations

import os
import re
import signal
import socket
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import pyqueue
from pyqueue.cli import main
from pyqueue.metrics import METRICS, PyQueueCollector

CLI = "from pyqueue.cli import main; main(prog_name='pyqueue')"


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of a /metrics page."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def key(name: str, **labels: object) -> tuple[str, frozenset]:
    return (name, frozenset((k, str(v)) for k, v in labels.items()))


@pytest.fixture
def busy_broker(broker_path):
    """orders (2 partitions: 3 + 1 messages), a queue group "work" holding one
    lease, a group "resize" that dead-lettered one message to orders.dlq.
    Yields (path, the leased message's partition)."""
    with pyqueue.open(broker_path) as b:
        b.topic("orders.dlq")
        t = b.topic("orders", partitions=2, max_depth=1000)
        t.send_batch([b"a", b"b", b"c"], partition=0)
        t.send(b"d", partition=1)
        resize = t.consumer("resize", mode="queue", max_deliveries=1, dead_letter="orders.dlq")

        def fail(m: pyqueue.Message) -> None:
            resize.stop()
            raise ValueError("bad")

        resize.run(fail, install_signal_handlers=False)              # one message, dead-lettered
        resize.close()
        work = t.consumer("work", mode="queue")
        leased = work.poll(timeout=10)
        assert leased is not None
        yield broker_path, leased.partition
        work.close()


def check(values: dict, leased_partition: int) -> None:
    assert values[key("pyqueue_topic_up", topic="orders")] == 1
    assert values[key("pyqueue_topic_partitions", topic="orders")] == 2
    assert values[key("pyqueue_topic_max_depth", topic="orders")] == 1000
    assert values[key("pyqueue_topic_end_offset", topic="orders", partition=0)] == 3
    assert values[key("pyqueue_topic_end_offset", topic="orders", partition=1)] == 1
    assert values[key("pyqueue_topic_start_offset", topic="orders", partition=0)] == 0
    assert values[key("pyqueue_partition_messages", topic="orders", partition=0)] == 3
    assert values[key("pyqueue_partition_segments", topic="orders", partition=0)] == 1
    assert values[key("pyqueue_partition_bytes", topic="orders", partition=0)] > 0
    assert values[key("pyqueue_topic_end_offset", topic="orders.dlq", partition=0)] == 1
    assert values[key("pyqueue_group_members", topic="orders", group="work", mode="queue")] == 1
    assert values[key("pyqueue_group_members", topic="orders", group="resize", mode="queue")] == 0
    for p in (0, 1):
        leased = p == leased_partition
        assert values[key("pyqueue_group_in_flight", topic="orders", group="work", partition=p)] == int(leased)
        assert values[key("pyqueue_group_lag", topic="orders", group="work", partition=p)] == (3, 1)[p]
        assert values[key("pyqueue_group_committed_offset", topic="orders", group="work", partition=p)] == 0
        age = values[key("pyqueue_group_oldest_unacked_age_seconds", topic="orders", group="work", partition=p)]
        assert age >= 0
    dead = sum(values[key("pyqueue_group_dead_letters_total", topic="orders", group="resize", partition=p)]
               for p in (0, 1))
    assert dead == 1
    # The lag of "work" is 4 and "resize" acked its dead letter: depth follows the slowest group.
    assert values[key("pyqueue_topic_depth", topic="orders")] == 4


def test_collector_in_a_registry_of_ones_own(busy_broker):
    path, leased_partition = busy_broker
    with pyqueue.open(path) as b:
        registry = CollectorRegistry()
        registry.register(PyQueueCollector(b))
        text = generate_latest(registry).decode()
        check(samples(text), leased_partition)
        for name, (kind, _doc, _labels) in METRICS.items():
            assert f"# TYPE {name} {kind}" in text
        only = CollectorRegistry()
        only.register(PyQueueCollector(b, topics=["orders.dlq"]))
        assert 'topic="orders"' not in generate_latest(only).decode()


def test_a_damaged_topic_is_reported_down_and_the_others_still_are(broker_path):
    with pyqueue.open(broker_path) as b:
        b.topic("good").send(b"x")
        b.topic("bad")
    with open(os.path.join(broker_path, "topics", "bad", "topic.json"), "w") as f:
        f.write("{not json")
    with pyqueue.open(broker_path) as b:
        registry = CollectorRegistry()
        registry.register(PyQueueCollector(b))
        values = samples(generate_latest(registry).decode())
    assert values[key("pyqueue_topic_up", topic="bad")] == 0
    assert values[key("pyqueue_topic_up", topic="good")] == 1
    assert values[key("pyqueue_topic_end_offset", topic="good", partition=0)] == 1
    assert not any(("topic", "bad") in labels for name, labels in values if name != "pyqueue_topic_up")


def test_metrics_command_serves_the_endpoint(busy_broker, children):
    path, leased_partition = busy_broker
    server = children.spawn(CLI, "metrics", "--path", path, "--port", 0, "--host", "127.0.0.1")
    line = server.line()
    m = re.fullmatch(r"serving metrics of (.+) on (http://127\.0\.0\.1:(\d+)/metrics)", line)
    assert m and m.group(1) == os.path.abspath(path), line
    with urllib.request.urlopen(m.group(2), timeout=30) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = resp.read().decode()
    check(samples(text), leased_partition)
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0, server.describe()
    assert "Traceback" not in server.stderr


def test_metrics_command_reports_a_port_in_use(broker_path):
    with pyqueue.open(broker_path) as b:
        b.topic("t")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        r = CliRunner().invoke(main, ["metrics", "--path", broker_path, "--port", str(port)])
    assert r.exit_code == 1 and f"cannot listen on 127.0.0.1:{port}" in r.output
    r = CliRunner().invoke(main, ["metrics", "--path", broker_path, "--port", "70000"])
    assert r.exit_code == 2 and "--port" in r.output
