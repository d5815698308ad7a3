"""The command line and the Prometheus collector on a JetStream cluster:
`--path nats://...` (or $PYQUEUE_PATH) with `--namespace` (or
$PYQUEUE_NAMESPACE).  Each test has a namespace of its own on the suite's
3-node cluster; the followers (`tail -f`, `metrics`) run in child processes
stopped by SIGINT.  Skipped, saying why, without nats-server."""

from __future__ import annotations

import json
import re
import signal
import time
import urllib.request

import pytest
from click.testing import CliRunner
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

import pyqueue
from pyqueue.cli import main
from pyqueue.jetstream import Unsupported
from pyqueue.metrics import PyQueueCollector

from conformance.conftest import Backend
from conformance.support import until

CLI = "from pyqueue.cli import main; main(prog_name='pyqueue')"


@pytest.fixture
def js(nats_cluster, tmp_path):
    """A namespace of its own on the cluster (dropped at the end)."""
    be = Backend("jetstream", tmp_path, nats_cluster)
    try:
        yield be
    finally:
        be.close_all()


def run(*args: object, input: "str | bytes | None" = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


def on(js: Backend, *args: object, input: "str | None" = None):
    """A command with the cluster's URL and the test's namespace given to the command."""
    words = 2 if args[0] in ("dlq", "schedules") else 1
    return run(*args[:words], "--path", js.cluster.url, "--namespace", js.namespace, *args[words:], input=input)


def error_line(r) -> str:
    """The one-line error of a failed command."""
    assert r.exit_code == 1, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    assert "Traceback" not in r.output
    return lines[0]


def test_produce_consume_stats_and_groups_on_a_url(js):
    r = on(js, "create", "orders", "--partitions", 2)
    assert r.exit_code == 0 and "created: orders partitions=2" in r.output, r.output
    r = on(js, "create", "orders")
    assert r.exit_code == 0 and "topic exists: orders partitions=2" in r.output, r.output
    r = on(js, "produce", "orders", "--partition", 0, input="a\nb\nc\n")
    assert r.exit_code == 0 and "sent 3 messages to orders" in r.output, r.output
    r = on(js, "topics", "--json")
    assert [(t["name"], t["partitions"], t["messages"]) for t in json.loads(r.stdout)] == [("orders", 2, 3)]
    r = on(js, "consume", "orders", "-g", "billing", "--mode", "queue", "-n", 2, "--format", "json")
    assert r.exit_code == 0, r.output
    assert [json.loads(x)["value"] for x in r.stdout.splitlines()] == ["a", "b"]
    # The acks reach the server's consumer state a moment after the command returns.
    until(lambda: json.loads(on(js, "groups", "--json").stdout)["orders"]["billing"]["in_flight"] == 0,
          timeout=10, step=lambda: time.sleep(0.05))
    r = on(js, "stats", "--json")
    data = json.loads(r.stdout)
    assert (data["url"], data["namespace"]) == (js.cluster.url, js.namespace)
    st = data["topics"]["orders"]
    assert st["partitions"]["0"]["end"] == 3 and st["partitions"]["0"]["segments"] is None
    assert st["depth"] == 1
    r = on(js, "groups", "--json")
    g = json.loads(r.stdout)["orders"]["billing"]
    assert (g["mode"], g["lag"], g["in_flight"], g["members"]) == ("queue", 1, 0, None)
    assert g["partitions"]["0"]["committed"] == 2 and g["oldest_unacked_age"] > 0
    r = on(js, "stats")                                      # the tables: "-" for what the server cannot tell
    assert r.exit_code == 0, r.output
    assert "orders: 2 partitions, 3 messages" in r.stdout and "depth 1" in r.stdout
    row = next(x for x in r.stdout.splitlines() if x.split()[:1] == ["0"])
    assert row.split()[:6] == ["0", "0", "3", "3", "1", "-"]
    r = on(js, "groups", "--partitions")
    row = next(x for x in r.stdout.splitlines() if x.split()[:2] == ["orders", "billing"])
    assert row.split()[2:7] == ["queue", "-", "1", "0", "-"]
    r = on(js, "tail", "orders", "--partition", 0, "-n", 2)
    assert r.stdout.splitlines() == ["b", "c"]
    r = on(js, "top", "--once")
    assert r.exit_code == 0 and "pyqueue top" in r.stdout and js.namespace in r.stdout, r.output


def test_path_and_namespace_from_the_environment(js, monkeypatch):
    monkeypatch.setenv("PYQUEUE_PATH", js.cluster.url)
    monkeypatch.setenv("PYQUEUE_NAMESPACE", js.namespace)
    r = run("create", "events")
    assert r.exit_code == 0, r.output
    r = run("topics")
    assert r.exit_code == 0 and r.stdout.split()[5:6] == ["events"], r.output
    r = run("--namespace", js.namespace + "other", "topics")      # the group's option wins over the variable
    assert r.exit_code == 0 and "no topics in" in r.stdout and f"namespace {js.namespace}other" in r.stdout
    r = run("topics", "--namespace", js.namespace + "other", "--json")
    assert json.loads(r.stdout) == []
    r = run("consume", "nope", "-g", "g")
    assert f"no topic 'nope' in {js.cluster.url} (namespace {js.namespace}); its topics are: events" in error_line(r)


def test_dead_letters_list_and_redrive_on_a_url(js):
    b = js.open()
    t = b.topic("orders")
    b.topic("orders.dlq")
    t.send(b"poison", key=b"k")
    w = t.consumer("resize", mode="queue", max_deliveries=1, dead_letter="orders.dlq")
    m = w.poll(timeout=10)
    m.nack()                                                 # the last allowed delivery: dead-lettered
    w.close()
    r = on(js, "groups", "orders", "--json")
    assert json.loads(r.stdout)["orders"]["resize"]["dead_letters"] == 1
    r = on(js, "dlq", "list", "orders.dlq", "--json")
    [letter] = json.loads(r.stdout)
    assert letter["value"] == "poison" and letter["headers"]["x-original-topic"] == "orders"
    assert letter["headers"]["x-error"].startswith("Nacked")
    r = on(js, "dlq", "list", "orders.dlq")
    assert "orders.dlq: 1 dead letters pending redrive" in r.stdout
    r = on(js, "dlq", "redrive", "orders.dlq", "--to", "orders")
    assert r.exit_code == 0 and "moved 1 dead letter from orders.dlq to orders" in r.stdout, r.output
    r = on(js, "dlq", "list", "orders.dlq")
    assert "orders.dlq: no dead letters pending redrive" in r.stdout
    assert t.offsets(0) == (0, 2) and t.read(0, 1)[0].value == b"poison"


def test_embedded_only_commands_refuse_a_url(js, monkeypatch):
    url = js.cluster.url
    line = error_line(on(js, "verify"))
    assert line == (f"Error: verify is for the embedded engine only (it checks the CRC of the segment files "
                    f"on disk); {url} is a JetStream cluster")
    line = error_line(run("--path", url, "bench", "--seconds", 0.01))
    assert line.startswith("Error: bench is for the embedded engine only") and url in line
    monkeypatch.setenv("PYQUEUE_PATH", url)
    assert error_line(run("verify")).startswith("Error: verify is for the embedded engine only")


def test_schedules_and_jobs_report_what_the_backend_lacks_in_one_line(js):
    b = js.open()
    b.topic("reports")
    try:
        b.scheduler()
    except Unsupported as e:
        for args in (["schedules", "list"], ["schedules", "add", "s", "--topic", "reports", "--every", 5],
                     ["schedules", "remove", "s"]):
            assert error_line(on(js, *args)) == f"Error: {e}"
    try:
        b.jobs()
    except Unsupported as e:
        for args in (["jobs", "list"], ["jobs", "status", "j1"], ["jobs", "workers"]):   # the group's --namespace
            r = run("--namespace", js.namespace, *args, "--path", js.cluster.url)
            assert error_line(r) == f"Error: {e}"


def test_tail_follow_on_a_url_prints_what_another_process_sends(js, children):
    on(js, "create", "orders", "--partitions", 2)
    on(js, "produce", "orders", "--partition", 1, input="before\n")
    env = {"PYQUEUE_PATH": js.cluster.url, "PYQUEUE_NAMESPACE": js.namespace}
    tail = children.spawn(CLI, "tail", "orders", "-f", "--format", "detail", env=env)
    assert tail.line().endswith("| before")
    b = js.open()
    b.topic("orders").send(b"from another process", partition=0)
    assert tail.line().startswith("0:0 ") and tail.lines[-1].endswith("| from another process")
    b.topic("orders").send(b"again", partition=1)
    assert tail.line().startswith("1:1 ")
    tail.proc.send_signal(signal.SIGINT)
    assert tail.wait() == 0, tail.describe()
    assert tail.stderr == ""


# ---------------------------------------------------------------- metrics

def samples(text: str) -> dict:
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def key(name: str, **labels: object) -> tuple:
    return (name, frozenset((k, str(v)) for k, v in labels.items()))


@pytest.fixture
def busy(js):
    """orders (2 partitions: 3 + 1 messages); queue group "work" holding a
    lease on partition 0 after acking one message there; queue group
    "resize" that dead-lettered partition 1's message; stream group "audit" with a
    live member that committed partition 1."""
    b = js.open()
    b.topic("orders.dlq")
    t = b.topic("orders", partitions=2)
    t.send_batch([b"a", b"b", b"c"], partition=0)
    t.send(b"d", partition=1)
    resize = t.consumer("resize", mode="queue", max_deliveries=1, dead_letter="orders.dlq")
    resize.seek(0, 3)                                 # only partition 1's message is left for "resize"
    resize.poll(timeout=10).nack()
    resize.close()
    work = t.consumer("work", mode="queue")
    work.seek(1, 1)                                   # partition 1 is done for "work"
    first = work.poll(timeout=10)
    first.ack()
    held = work.poll(timeout=10)
    assert (first.partition, first.offset, held.partition, held.offset) == (0, 0, 0, 1)
    until(lambda: t.stats()["groups"]["work"]["partitions"][0]["committed"] == 1, timeout=10,
          step=lambda: time.sleep(0.02))
    audit = t.consumer("audit", mode="stream")
    got = []
    while not any(m.partition == 1 for m in got):
        got += audit.poll_batch(10, timeout=10)
    for m in got:
        if m.partition == 1:
            m.ack()
    audit.commit()
    yield b
    work.close()
    audit.close()


def check(values: dict) -> None:
    assert values[key("pyqueue_topic_up", topic="orders")] == 1
    assert values[key("pyqueue_topic_partitions", topic="orders")] == 2
    assert values[key("pyqueue_topic_end_offset", topic="orders", partition=0)] == 3
    assert values[key("pyqueue_topic_end_offset", topic="orders", partition=1)] == 1
    assert values[key("pyqueue_topic_start_offset", topic="orders", partition=0)] == 0
    assert values[key("pyqueue_partition_messages", topic="orders", partition=0)] == 3
    assert values[key("pyqueue_partition_bytes", topic="orders", partition=0)] > 0
    assert values[key("pyqueue_topic_end_offset", topic="orders.dlq", partition=0)] == 1
    assert values[key("pyqueue_group_in_flight", topic="orders", group="work", partition=0)] == 1
    assert values[key("pyqueue_group_lag", topic="orders", group="work", partition=0)] == 2
    assert values[key("pyqueue_group_committed_offset", topic="orders", group="work", partition=0)] == 1
    assert values[key("pyqueue_group_lag", topic="orders", group="work", partition=1)] == 0
    assert values[key("pyqueue_group_oldest_unacked_age_seconds", topic="orders", group="work", partition=0)] > 0
    assert values[key("pyqueue_group_oldest_unacked_age_seconds", topic="orders", group="work", partition=1)] == 0
    assert sum(values[key("pyqueue_group_dead_letters_total", topic="orders", group="resize", partition=p)]
               for p in (0, 1)) == 1
    assert values[key("pyqueue_group_members", topic="orders", group="audit", mode="stream")] == 1
    assert values[key("pyqueue_group_committed_offset", topic="orders", group="audit", partition=1)] == 1
    # "audit" has all of partition 0 to read: depth follows the slowest group.
    assert values[key("pyqueue_topic_depth", topic="orders")] == 3
    # What the server cannot tell has no series.
    names = {name for name, _labels in values}
    assert "pyqueue_partition_segments" not in names and "pyqueue_group_delayed" not in {
        n for n, labels in values if ("group", "work") in labels}
    assert key("pyqueue_group_members", topic="orders", group="work", mode="queue") not in values


def test_collector_on_a_jetstream_broker(busy):
    registry = CollectorRegistry()
    registry.register(PyQueueCollector(busy))
    check(samples(generate_latest(registry).decode()))


def test_metrics_command_on_a_url(js, busy, children):
    server = children.spawn(CLI, "metrics", "--path", js.cluster.url, "--namespace", js.namespace, "--port", 0)
    line = server.line()
    m = re.fullmatch(r"serving metrics of (.+) on (http://127\.0\.0\.1:(\d+)/metrics)", line)
    assert m and m.group(1) == f"{js.cluster.url} (namespace {js.namespace})", line
    with urllib.request.urlopen(m.group(2), timeout=30) as resp:
        check(samples(resp.read().decode()))
    server.proc.send_signal(signal.SIGINT)
    assert server.wait() == 0, server.describe()
    assert "Traceback" not in server.stderr
