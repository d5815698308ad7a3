"""The command line against real broker directories (the demo has its own
tests in test_demo.py): every broker command with good and bad arguments, `verify` on a segment
damaged on disk, and the followers (`tail -f`, `consume -f`) in child
processes woken by a message another process sends, stopped by SIGINT."""

from __future__ import annotations

import json
import os
import re
import signal

import pytest
from click.testing import CliRunner

import pyqueue

from pyqueue.cli import main

# A child running the command line with its arguments (sys.argv[1:]).
CLI = "from pyqueue.cli import main; main(prog_name='pyqueue')"


def run(*args: object, input: "str | bytes | None" = None):
    """Invoke the command line in this process; the click Result."""
    return CliRunner().invoke(main, [str(a) for a in args], input=input, catch_exceptions=False)


@pytest.fixture
def broker(broker_path):
    """A broker with topic "orders" (2 partitions); yields its path."""
    r = run("create", "--path", broker_path, "orders", "--partitions", 2)
    assert r.exit_code == 0, r.output
    return broker_path


# ---------------------------------------------------------------- topics, create

def test_create_and_list_topics(broker_path):
    r = run("create", "--path", broker_path, "orders", "--partitions", 3, "--segment-bytes", "64KiB",
            "--max-depth", 1000)
    assert r.exit_code == 0, r.output
    assert "created: orders partitions=3 segment_bytes=65536" in r.output and "max_depth=1000" in r.output
    r = run("create", "--path", broker_path, "orders")
    assert r.exit_code == 0 and "topic exists: orders partitions=3" in r.output
    with pyqueue.open(broker_path) as b:
        b.topic("orders").send(b"x", partition=1)
        b.topic("orders").consumer("billing").close()
    r = run("--path", broker_path, "topics")                   # the group's --path works too
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if x.startswith("orders"))
    assert line.split()[:3] == ["orders", "3", "1"] and "billing" in line
    r = run("topics", "--path", broker_path, "--json")
    assert json.loads(r.stdout) == [{"name": "orders", "partitions": 3, "messages": 1,
                                     "bytes": json.loads(r.stdout)[0]["bytes"], "groups": ["billing"]}]


def test_path_from_the_environment(broker, monkeypatch):
    monkeypatch.setenv("PYQUEUE_PATH", broker)
    r = run("topics")
    assert r.exit_code == 0 and "orders" in r.stdout
    monkeypatch.delenv("PYQUEUE_PATH")
    r = run("topics")
    assert r.exit_code == 2 and "no broker directory: give --path DIR (or set PYQUEUE_PATH)" in r.output


# Every command that reads a broker, with the arguments it needs.
READERS = [
    ["topics"], ["stats"], ["groups"], ["produce", "orders"], ["consume", "orders", "-g", "g"],
    ["tail", "orders"], ["dlq", "list", "orders"], ["dlq", "redrive", "orders", "--to", "x"],
    ["schedules", "list"], ["schedules", "add", "s", "--topic", "orders", "--every", "1"],
    ["schedules", "remove", "s"], ["verify"], ["top", "--once"], ["metrics", "--port", "0"],
]


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_a_missing_broker_is_reported_and_not_created(tmp_path, args):
    missing = tmp_path / "missing"
    words = 2 if args[0] in ("dlq", "schedules") else 1             # the command's own --path
    r = run(*args[:words], "--path", missing, *args[words:])
    assert r.exit_code == 1, r.output
    assert f"no broker at {missing}" in r.output and "pyqueue create" in r.output
    assert not missing.exists()


@pytest.mark.parametrize("args", READERS, ids=lambda a: " ".join(a[:2]))
def test_a_directory_that_is_not_a_broker_is_refused_and_left_alone(tmp_path, args):
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"meow")
    r = run("--path", other, *args)
    assert r.exit_code == 1, r.output
    assert "is not a pyqueue broker (it has no broker.json)" in r.output
    assert sorted(os.listdir(other)) == ["cat.jpg"]
    r = run("create", "--path", other, "t")
    assert r.exit_code == 1 and "not a pyqueue broker" in r.output
    assert sorted(os.listdir(other)) == ["cat.jpg"]


@pytest.mark.parametrize("args", [
    ["produce", "nope"], ["consume", "nope", "-g", "g"], ["tail", "nope"], ["stats", "nope"], ["groups", "nope"],
    ["dlq", "list", "nope"], ["dlq", "redrive", "nope", "--to", "orders"], ["dlq", "redrive", "orders", "--to", "nope"],
    ["verify", "nope"], ["top", "--once", "nope"], ["metrics", "--port", "0", "nope"],
    ["schedules", "add", "s", "--topic", "nope", "--every", "1"],
], ids=lambda a: " ".join(a))
def test_an_unknown_topic_is_reported_with_the_topics_there_are(broker, args):
    r = run("--path", broker, *args)
    assert r.exit_code == 1, r.output
    assert f"no topic 'nope' in {broker}; its topics are: orders" in r.output


def test_bad_arguments_fail_clearly(broker_path, broker):
    r = run("create", "--path", broker_path + "-2", "../evil")
    assert r.exit_code == 1 and "invalid topic name" in r.output.lower()
    assert not os.path.exists(broker_path + "-2")               # checked before anything is created
    r = run("create", "--path", broker, "orders", "--partitions", 4)
    assert r.exit_code == 1 and "partitions=2" in r.output
    r = run("create", "--path", broker, "t", "--segment-bytes", "lots")
    assert r.exit_code == 2 and "'lots' is not a size such as 4096, 64KiB or 1GiB" in r.output
    r = run("create", "--path", broker, "t", "--partitions", 0)
    assert r.exit_code == 2 and "--partitions" in r.output
    r = run("produce", "--path", broker, "orders", "--partition", 2, input="x\n")
    assert r.exit_code == 2 and "topic 'orders' has partitions 0..1" in r.output
    r = run("produce", "--path", broker, "orders", "--header", "novalue", input="x\n")
    assert r.exit_code == 2 and "expected NAME=VALUE, got 'novalue'" in r.output
    r = run("produce", "--path", broker, "orders", "--key", "k", "--key-separator", ":", input="x\n")
    assert r.exit_code == 2 and "give --key or --key-separator, not both" in r.output
    r = run("produce", "--path", broker, "orders", "--key-separator", ":", input="a:1\nno separator\n")
    assert r.exit_code == 1 and "<stdin>:2: no key separator ':' (1 messages sent before it)" in r.output
    r = run("produce", "--path", broker, "orders", "no-such-file.txt")
    assert r.exit_code == 2 and "no-such-file.txt" in r.output
    r = run("consume", "--path", broker, "orders")
    assert r.exit_code == 2 and "--group" in r.output
    r = run("consume", "--path", broker, "orders", "-g", "g", "--mode", "fanout")
    assert r.exit_code == 2 and "'fanout' is not one of 'stream', 'queue'" in r.output
    r = run("consume", "--path", broker, "orders", "-g", "../g")
    assert r.exit_code == 1 and "group name" in r.output.lower()
    r = run("tail", "--path", broker, "orders", "--offset", 5)
    assert r.exit_code == 2 and "partition 0 of 'orders' holds offsets 0..0; got 5" in r.output
    r = run("tail", "--path", broker, "orders", "--partition", 1, "--offset", 5)
    assert r.exit_code == 2 and "partition 1 of 'orders' is empty; its next offset is 0" in r.output
    r = run("tail", "--path", broker, "orders", "--offset", 0, "--from-beginning")
    assert r.exit_code == 2 and "give --offset or --from-beginning, not both" in r.output
    r = run("tail", "--path", broker, "orders", "--partition", 7)
    assert r.exit_code == 2 and "topic 'orders' has partitions 0..1" in r.output
    r = run("top", "--path", broker, "--interval", 0)
    assert r.exit_code == 2
    r = run("demo", "--uploads", "0")
    assert r.exit_code == 2
    r = run("nonsense")
    assert r.exit_code == 2 and "No such command 'nonsense'" in r.output


# ---------------------------------------------------------------- produce, tail, consume

def test_produce_lines_and_tail_them(broker, tmp_path):
    r = run("produce", "--path", broker, "orders", "--key", "user-1", "--header", "trace=abc",
            "--header", "v=2", input="first\nsecond\n\nthird\n")
    assert r.exit_code == 0, r.output
    assert "sent 4 messages to orders" in r.stderr
    with pyqueue.open(broker) as b:
        t = b.topic("orders")
        p = t.partition_for(b"user-1")
        msgs = t.read(p, 0, 10)
    assert [m.value for m in msgs] == [b"first", b"second", b"", b"third"]
    assert all(m.key == b"user-1" and m.headers == {"trace": b"abc", "v": b"2"} for m in msgs)

    r = run("tail", "--path", broker, "orders", "--partition", p, "--format", "json", "--from-beginning")
    assert r.exit_code == 0, r.output
    rows = [json.loads(x) for x in r.stdout.splitlines()]
    assert [(x["partition"], x["offset"], x["value"], x["key"], x["headers"]) for x in rows] == [
        (p, i, v, "user-1", {"trace": "abc", "v": "2"}) for i, v in enumerate(["first", "second", "", "third"])]
    r = run("tail", "--path", broker, "orders", "-n", 1)
    assert r.stdout == "third\n"
    r = run("tail", "--path", broker, "orders", "--partition", p, "--offset", 1, "-n", 1)   # --offset wins
    assert r.stdout == "second\n\nthird\n"
    r = run("tail", "--path", broker, "orders", "--partition", p, "--format", "detail", "-n", 1)
    assert r.stdout.startswith(f"{p}:3 ") and "key=user-1 trace=abc v=2 | third" in r.stdout

    # From files, key from each line, empty lines skipped; binary bytes kept as they are.
    f1, f2 = tmp_path / "a.txt", tmp_path / "b.txt"
    f1.write_bytes(b"k1:one\n\nk2:two\n")
    f2.write_bytes(b"k1:\xff\xfe")                                   # no newline at the end
    r = run("produce", "--path", broker, "orders", f1, f2, "--key-separator", ":", "--skip-empty")
    assert r.exit_code == 0 and "sent 3 messages" in r.stderr
    with pyqueue.open(broker) as b:
        t = b.topic("orders")
        got = sorted((m.key, m.value) for q in range(2) for m in t.read(q, 0, 100) if m.key != b"user-1")
    assert got == [(b"k1", b"one"), (b"k1", b"\xff\xfe"), (b"k2", b"two")]
    r = run("tail", "--path", broker, "orders", "--partition", t.partition_for(b"k1"), "-n", 1, "--format", "json")
    assert json.loads(r.stdout)["value"] == {"base64": "//4="}


def test_consume_acks_what_it_prints(broker):
    run("produce", "--path", broker, "orders", "--partition", 0, input="".join(f"m{i}\n" for i in range(5)))
    r = run("consume", "--path", broker, "orders", "-g", "billing", "--timeout", 0)
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [f"m{i}" for i in range(5)]
    assert "consumed 5 messages from orders as group billing" in r.stderr
    r = run("consume", "--path", broker, "orders", "-g", "billing", "--timeout", 0)
    assert r.stdout == ""                                          # committed: nothing comes again

    # Queue mode, two at a time; --no-ack leaves them to come again.
    r = run("consume", "--path", broker, "orders", "-g", "work", "--mode", "queue", "-n", 2, "--format", "json")
    assert [json.loads(x)["value"] for x in r.stdout.splitlines()] == ["m0", "m1"]
    r = run("consume", "--path", broker, "orders", "-g", "peek", "--mode", "queue", "-n", 1, "--no-ack",
            "--visibility-timeout", 0.001)
    assert r.stdout == "m0\n" and "(not acked)" in r.stderr
    r = run("groups", "--path", broker, "--json")
    groups = json.loads(r.stdout)["orders"]
    assert groups["billing"]["lag"] == 0 and groups["billing"]["mode"] == "stream"
    assert groups["work"]["lag"] == 3 and groups["work"]["mode"] == "queue"
    assert groups["peek"]["lag"] == 5
    r = run("consume", "--path", broker, "orders", "-g", "work", "--mode", "queue", "--timeout", 0)
    assert r.stdout.splitlines() == ["m2", "m3", "m4"]
    r = run("consume", "--path", broker, "orders", "-g", "late", "--from", "latest", "--timeout", 0)
    assert r.stdout == ""


# ---------------------------------------------------------------- stats, groups, dlq

def test_stats_and_groups_show_lag_in_flight_and_age(broker):
    with pyqueue.open(broker) as b:
        t = b.topic("orders")
        t.send_batch([b"a", b"b", b"c"], partition=0)
        t.send(b"d", partition=1)
        w = t.consumer("work", mode="queue")
        leased = w.poll(timeout=10)                                 # leased, not acked
        assert leased is not None
        r = run("stats", "--path", broker, "--json")
        st = json.loads(r.stdout)["topics"]["orders"]
        assert {p: (v["start"], v["end"]) for p, v in st["partitions"].items()} == {"0": (0, 3), "1": (0, 1)}
        assert st["depth"] == 4
        g = st["groups"]["work"]
        assert (g["mode"], g["members"], g["lag"], g["in_flight"]) == ("queue", 1, 4, 1)
        assert g["oldest_unacked_age"] >= 0
        r = run("stats", "--path", broker)
        assert r.exit_code == 0, r.output
        assert "orders: 2 partitions, 4 messages" in r.stdout and "depth 4" in r.stdout
        row = next(x for x in r.stdout.splitlines() if x.split()[:2] == ["orders", "work"])
        assert row.split()[2:6] == ["queue", "1", "4", "1"]
        r = run("groups", "--path", broker, "orders", "--partitions")
        assert r.exit_code == 0, r.output
        assert any("committed" in x for x in r.stdout.splitlines())
        leased.ack()
        w.close()
    r = run("groups", "--path", broker, "--json")
    g = json.loads(r.stdout)["orders"]["work"]
    assert (g["members"], g["lag"], g["in_flight"]) == (0, 3, 0)


def make_dead_letters(path: str, n: int) -> None:
    with pyqueue.open(path) as b:
        b.topic("orders.dlq")
        t = b.topic("orders")
        for i in range(n):
            t.send(b"poison %d" % i, key=b"k%d" % i, headers={"trace": b"t%d" % i})
        c = t.consumer("resize", mode="queue", max_deliveries=1, dead_letter="orders.dlq")
        failed = []

        def handler(m: pyqueue.Message) -> None:
            failed.append(m)
            if len(failed) == n:
                c.stop()
            raise ValueError("bad input")                          # first delivery is the last: dead letter

        c.run(handler, install_signal_handlers=False)
        c.close()


def test_dlq_list_and_redrive(broker):
    make_dead_letters(broker, 5)
    r = run("dlq", "list", "--path", broker, "orders.dlq")
    assert r.exit_code == 0, r.output
    assert "orders.dlq: 5 dead letters pending redrive" in r.stdout
    assert sum("poison" in x and "orders[" in x and "ValueError: bad input" in x for x in r.stdout.splitlines()) == 5
    r = run("dlq", "list", "--path", broker, "orders.dlq", "--json", "-n", 2)
    rows = json.loads(r.stdout)
    assert len(rows) == 2 and all(x["headers"]["x-original-topic"] == "orders" for x in rows)
    r = run("groups", "--path", broker, "orders", "--json")
    assert json.loads(r.stdout)["orders"]["resize"]["dead_letters"] == 5

    r = run("dlq", "redrive", "--path", broker, "orders.dlq", "--to", "orders.dlq")
    assert r.exit_code == 2 and "another topic" in r.output
    r = run("dlq", "redrive", "--path", broker, "orders.dlq", "--to", "orders", "-n", 2)
    assert r.exit_code == 0 and "moved 2 dead letters from orders.dlq to orders" in r.stdout
    r = run("dlq", "list", "--path", broker, "orders.dlq")
    assert "3 dead letters pending redrive" in r.stdout
    r = run("dlq", "redrive", "--path", broker, "orders.dlq", "--to", "orders")
    assert "moved 3 dead letters" in r.stdout
    r = run("dlq", "list", "--path", broker, "orders.dlq")
    assert r.stdout == "orders.dlq: no dead letters pending redrive\n"
    r = run("dlq", "list", "--path", broker, "orders.dlq", "--all")
    assert "5 dead letters" in r.stdout
    with pyqueue.open(broker) as b:
        t = b.topic("orders")
        back = sorted((m for p in range(2) for m in t.read(p, 0, 100)), key=lambda m: m.timestamp)[5:]
    assert sorted(m.value for m in back) == [b"poison %d" % i for i in range(5)]
    assert all(m.headers == {"trace": b"t" + m.value[-1:]} for m in back)   # x-* headers dropped


# ---------------------------------------------------------------- schedules

def test_schedules_add_list_remove(broker):
    r = run("schedules", "list", "--path", broker)
    assert r.stdout == "no schedules\n"
    assert not os.path.exists(os.path.join(broker, "scheduler"))    # listing created nothing
    r = run("schedules", "add", "--path", broker, "beat", "--topic", "orders", "--value", "ping", "--every", "10m")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("schedule beat: every 600s -> orders; next fire 20")
    r = run("schedules", "add", "--path", broker, "nightly", "--topic", "orders", "--cron", "0 2 * * *",
            "--timezone", "Europe/Paris", "--header", "kind=report")
    assert r.exit_code == 0, r.output
    r = run("schedules", "add", "--path", broker, "newyear", "--topic", "orders", "--at", "2027-01-01T00:00",
            "--timezone", "Europe/Paris")
    assert "at 2026-12-31T23:00:00+00:00" in r.stdout
    r = run("schedules", "list", "--path", broker, "--json")
    rows = {x["id"]: x for x in json.loads(r.stdout)}
    assert sorted(rows) == ["beat", "newyear", "nightly"]
    assert rows["beat"]["every"] == 600.0 and rows["beat"]["value"] == "ping"
    assert rows["nightly"]["cron"] == "0 2 * * *" and rows["nightly"]["timezone"] == "Europe/Paris"
    assert rows["newyear"]["next_fire"] == "2026-12-31T23:00:00+00:00"
    r = run("schedules", "list", "--path", broker)
    assert "cron '0 2 * * *' (Europe/Paris)" in r.stdout and "every 600s" in r.stdout
    r = run("schedules", "remove", "--path", broker, "beat")
    assert r.exit_code == 0 and "removed schedule beat" in r.stdout
    r = run("schedules", "remove", "--path", broker, "beat")
    assert r.exit_code == 1 and f"no schedule 'beat' in {broker}" in r.output

    for args, code, text in [
        (["--every", "1", "--cron", "* * * * *"], 2, "give exactly one of --cron, --every, --at (got --cron, --every)"),
        ([], 2, "(got none)"),
        (["--cron", "99 * * * *"], 1, "invalid cron expression '99 * * * *'"),
        (["--every", "soon"], 2, "'soon' is not a duration"),
        (["--every", "0"], 1, "every=0.0 must be at least 0.001 seconds"),
        (["--at", "tomorrow"], 2, "'tomorrow' is not an ISO 8601 time"),
        (["--cron", "0 * * * *", "--timezone", "Mars/Olympus"], 1, "unknown time zone 'Mars/Olympus'"),
    ]:
        r = run("schedules", "add", "--path", broker, "bad", "--topic", "orders", *args)
        assert r.exit_code == code and text in r.output, (args, r.output)
    r = run("schedules", "add", "--path", broker, "../bad", "--topic", "orders", "--every", "1")
    assert r.exit_code == 1 and "schedule name" in r.output.lower()


def test_schedules_run_fires_and_stops_on_sigint(broker, children):
    run("create", "--path", broker, "beats")
    r = run("schedules", "add", "--path", broker, "once", "--topic", "beats", "--value", "fired",
            "--at", "2020-01-01T00:00:00Z")                            # past: a one-off fires once at start
    assert r.exit_code == 0, r.output
    runner = children.spawn(CLI, "schedules", "run", "--path", broker)
    with pyqueue.open(broker) as b:
        t = b.topic("beats")
        assert t.wait(0, 0, timeout=60), runner.describe()             # woken by the scheduler's append
        m = t.read(0, 0, 1)[0]
    assert m.value == b"fired" and m.headers["x-schedule-id"] == b"once"
    runner.proc.send_signal(signal.SIGINT)
    assert runner.wait() == 0, runner.describe()
    assert "1 message published" in runner.stderr and "Traceback" not in runner.stderr


# ---------------------------------------------------------------- verify

def test_verify_reports_a_record_damaged_on_disk(broker_path):
    r = run("create", "--path", broker_path, "t", "--partitions", 2, "--segment-bytes", "64KiB")
    assert r.exit_code == 0, r.output
    lines = "".join(f"payload-{i:05d}-{'x' * 40}\n" for i in range(3000))
    r = run("produce", "--path", broker_path, "t", "--partition", 0, input=lines)
    assert r.exit_code == 0, r.output
    run("produce", "--path", broker_path, "t", "--partition", 1, input="a\nb\n")
    r = run("verify", "--path", broker_path)
    assert r.exit_code == 0, r.output
    assert "3,002 records in 2 partitions checked: OK" in r.stdout

    # Flip bytes inside the value of offset 100, in the first (sealed) segment.
    pdir = os.path.join(broker_path, "topics", "t", "0")
    segments = sorted(n for n in os.listdir(pdir) if n.endswith(".seg"))
    assert len(segments) > 1, "the partition should span several segments"
    victim = os.path.join(pdir, segments[0])
    with open(victim, "r+b") as f:
        data = f.read()
        at = data.index(b"payload-00100-")
        assert data.count(b"payload-00100-") == 1
        f.seek(at + 3)
        f.write(bytes(b ^ 0xFF for b in data[at + 3:at + 6]))

    r = run("verify", "--path", broker_path)
    assert r.exit_code == 1, r.output
    assert "3,001 records in 2 partitions checked: CORRUPT: 1 damaged record" in r.stdout
    damaged = [x for x in r.stdout.splitlines() if x.startswith("damaged")]
    assert len(damaged) == 1
    assert damaged[0].startswith("damaged t[0] offset 100: ")
    assert victim in damaged[0] and "CRC mismatch" in damaged[0] and "byte " in damaged[0]

    r = run("verify", "--path", broker_path, "t", "--json")
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert (report["ok"], report["records"], report["corrupt"]) == (False, 3001, 1)
    p0 = report["partitions"][0]
    assert (p0["start"], p0["end"], p0["checked"], p0["corrupt"]) == (0, 3000, 2999, 1)
    assert p0["errors"] == [{"offset": 100, "last": 100, "error": p0["errors"][0]["error"]}]
    assert victim in p0["errors"][0]["error"]


def test_stats_still_answer_when_the_oldest_unacked_record_is_damaged(broker_path):
    with pyqueue.open(broker_path, create=True) as b:
        t = b.topic("t")
        t.consumer("g", mode="queue").close()
        for i in range(3):
            t.send(b"payload-%05d" % i)
    seg = os.path.join(broker_path, "topics", "t", "0", "0".zfill(20) + ".seg")
    with open(seg, "r+b") as f:
        data = f.read()
        f.seek(data.index(b"payload-00000") + 3)
        f.write(b"XYZ")
    with pyqueue.open(broker_path) as b:
        g = b.stats()["topics"]["t"]["groups"]["g"]
    assert g["lag"] == 3 and g["oldest_unacked_age"] is None
    assert "CRC" in g["partitions"][0]["damaged"] or "corrupt" in g["partitions"][0]["damaged"].lower()
    r = run("groups", "--path", broker_path)
    assert r.exit_code == 0, r.output


def test_verify_reports_a_damaged_segment_header_as_one_range(broker_path):
    run("create", "--path", broker_path, "t", "--segment-bytes", "64KiB")
    run("produce", "--path", broker_path, "t", input="".join(f"record {i}\n" for i in range(5000)))
    pdir = os.path.join(broker_path, "topics", "t", "0")
    segments = sorted(n for n in os.listdir(pdir) if n.endswith(".seg"))
    assert len(segments) >= 3, "the partition should span several segments"
    first, after = int(segments[1][:-4]), int(segments[2][:-4])     # files are named by base offset
    with open(os.path.join(pdir, segments[1]), "r+b") as f:       # a sealed segment's magic
        f.write(b"XXXXXXXX")
    r = run("verify", "--path", broker_path)
    assert r.exit_code == 1, r.output
    damaged = [x for x in r.stdout.splitlines() if x.startswith("damaged")]
    assert len(damaged) == 1 and damaged[0].startswith(f"damaged t[0] offsets {first}..{after - 1}: "), damaged
    assert f"CORRUPT: {after - first:,} damaged records" in r.stdout


def test_verify_reports_a_topic_that_cannot_be_opened(broker_path):
    run("create", "--path", broker_path, "good")
    run("create", "--path", broker_path, "bad")
    run("produce", "--path", broker_path, "bad", input="x\n")
    seg = os.path.join(broker_path, "topics", "bad", "0", "0" * 20 + ".seg")
    with open(seg, "r+b") as f:                      # the segment header's magic
        f.write(b"NOTASEGM")
    os.unlink(os.path.join(broker_path, "topics", "bad", "0", "state"))   # as after a reboot
    r = run("verify", "--path", broker_path)
    assert r.exit_code == 1, r.output
    assert "cannot open topic bad:" in r.stdout and seg in r.stdout
    assert "1 topic unreadable" in r.stdout


# ---------------------------------------------------------------- followers in child processes

def test_tail_follow_prints_what_another_process_sends(broker, children):
    run("produce", "--path", broker, "orders", "--partition", 1, input="before\n")
    tail = children.spawn(CLI, "tail", "--path", broker, "orders", "-f", "--format", "detail")
    assert tail.line().endswith("| before")                        # caught up: now following
    producer = children.spawn(CLI, "produce", "--path", broker, "orders", "--key", "k")
    producer.send("from another process\n")
    assert producer.wait() == 0, producer.describe()
    line = tail.line()                                              # woken by the append
    assert line.endswith("key=k | from another process"), line
    tail.proc.send_signal(signal.SIGINT)
    assert tail.wait() == 0, tail.describe()
    assert tail.stderr == ""


def test_consume_follow_acks_and_stops_cleanly_on_sigint(broker, children):
    run("produce", "--path", broker, "orders", input="one\n")
    consumer = children.spawn(CLI, "consume", "--path", broker, "orders", "-g", "live", "-f")
    assert consumer.line() == "one"
    with pyqueue.open(broker) as b:
        b.topic("orders").send(b"two")
    assert consumer.line() == "two"
    consumer.proc.send_signal(signal.SIGTERM)
    assert consumer.wait() == 0, consumer.describe()
    assert "consumed 2 messages from orders as group live" in consumer.stderr
    r = run("groups", "--path", broker, "--json")
    g = json.loads(r.stdout)["orders"]["live"]
    assert (g["lag"], g["members"]) == (0, 0)                       # acked, committed, left the group


# ---------------------------------------------------------------- top, bench

def test_top_once_and_iterations(broker):
    run("produce", "--path", broker, "orders", input="a\nb\n")
    run("consume", "--path", broker, "orders", "-g", "billing", "-n", 1)
    r = run("top", "--path", broker, "--once")
    assert r.exit_code == 0, r.output
    assert r.stdout.count("pyqueue top") == 1
    row = next(x for x in r.stdout.splitlines() if x.startswith("orders "))
    assert row.split()[:4] == ["orders", "2", "2", "-"]            # no rate from one sample
    group = next(x for x in r.stdout.splitlines() if x.split()[:2] == ["orders", "billing"])
    assert group.split()[2:6] == ["stream", "0", "1", "-"]
    r = run("top", "--path", broker, "orders", "--iterations", 2, "--interval", 0.05)
    assert r.exit_code == 0, r.output
    screens = r.stdout.split("pyqueue top")[1:]
    assert len(screens) == 2
    row = next(x for x in screens[1].splitlines() if x.startswith("orders "))
    assert row.split()[3] == "0"                                    # a rate: nothing sent in between


def test_bench_prints_a_side_by_side_table():
    r = run("bench", "--seconds", 0.05, "--messages", 2000, "--size", 64)
    assert r.exit_code == 0, r.output
    assert "pyqueue against sqlite3" in r.stdout
    for case in ("send, one per call", "send, batches of 1000", "read, 1000 per call", "take 100 and ack each"):
        row = next(x for x in r.stdout.splitlines() if case in x)
        cells = [c.strip() for c in row.strip("│ ").split("│")]
        assert re.fullmatch(r"[\d,]+", cells[1]) and re.fullmatch(r"[\d,]+", cells[2]), row
        assert re.fullmatch(r"[\d,]+\.\dx", cells[3]), row          # the ratio pyqueue / sqlite3
    r = run("bench", "--size", "2MiB")
    assert r.exit_code == 2 and "1 B .. 1 MiB" in r.output
