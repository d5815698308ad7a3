"""`pyqueue demo`: the photo-upload pipeline runs end to end in real
processes (a worker really SIGKILLed) and its account adds up, checked from
the demo's JSON summary and again from the broker directory it leaves."""

import json
import os
import select
import signal
import subprocess
import sys

import pyqueue
from click.testing import CliRunner
from conftest import CHILD_CWD, child_env
from pyqueue import demo
from pyqueue.cli import main


def _run_demo(*args, env=None):
    return subprocess.run([sys.executable, "-m", "pyqueue.cli", "demo", "--quick", "--json", *args],
                          env=child_env(env), cwd=CHILD_CWD, capture_output=True, text=True, timeout=300)


def _messages(topic):
    out = []
    for p in range(topic.partitions):
        offset, end = topic.offsets(p)
        while offset < end:
            msgs = topic.read(p, offset, 1000)
            out += msgs
            offset = msgs[-1].offset + 1
    return out


def test_quick_demo_adds_up(tmp_path):
    path = str(tmp_path / "broker")
    out = _run_demo("--path", path)
    assert out.returncode == 0, out.stdout + out.stderr
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["ok"], s["problems"]
    assert s["sent"] == s["producer_sent"] == demo.QUICK_UPLOADS
    assert s["processed"] + s["dead_lettered"] == s["sent"]
    assert s["dead_lettered"] == 1 and s["dead_letters"][0]["deliveries"] == 3
    assert "CorruptPhoto" in s["dead_letters"][0]["error"]
    assert s["redelivered"] >= 1
    assert s["killed"]["upload"] in {r["id"] for r in s["redeliveries"]}
    assert s["reports_fired"] >= 1
    assert s["left_in_queue"] == 0
    assert "ok: every upload processed or dead-lettered" in out.stdout

    # The same account from the broker the demo left behind, without its code.
    with pyqueue.open(path) as broker:
        sent = {m.headers["upload-id"] for m in _messages(broker.topic("photos"))
                if "x-original-offset" not in m.headers}
        done = {m.key for m in _messages(broker.topic("photos.done"))}
        dead = _messages(broker.topic("photos.dlq"))
        reports = _messages(broker.topic("reports"))
    assert len(sent) == demo.QUICK_UPLOADS
    assert len(dead) == 1 and dead[0].headers["x-original-topic"] == b"photos"
    assert done | {dead[0].headers["upload-id"]} == sent
    assert dead[0].headers["upload-id"] not in done
    assert len(reports) == s["reports_fired"] and all("x-schedule-id" in m.headers for m in reports)


def test_demo_without_path_cleans_up_and_prints_lines(tmp_path):
    out = _run_demo("--workers", "2", env={"TMPDIR": str(tmp_path)})
    assert out.returncode == 0, out.stdout + out.stderr
    s = json.loads(out.stdout.strip().splitlines()[-1])
    assert s["ok"], s["problems"]
    # Two workers and the replacement; which of them got work depends on timing.
    assert set(s["by_worker"]) <= {"0", "1", "2"} and sum(s["by_worker"].values()) == s["processed"]
    for line in ("killed with SIGKILL while holding", "worker 2 (pid ", "joined in place of the killed one", "dead-lettered to 'photos.dlq' after 3 deliveries",
                 "redelivered: processed by worker", "report 1 (due "):
        assert line in out.stdout
    assert "\x1b[" not in out.stdout                        # plain lines when not on a terminal
    assert os.listdir(tmp_path) == []                       # the temporary broker is gone


def _session(sid):
    """Pids of the processes in session `sid` (from /proc)."""
    pids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue                      # exited meanwhile
            if int(fields[3]) == sid and fields[0] != "Z":
                pids.append(int(name))
    return pids


def _start_demo(tmp_path, *args):
    """The demo in a session of its own; returns once its producer started."""
    proc = subprocess.Popen([sys.executable, "-m", "pyqueue.cli", "demo", *args],
                            env=child_env({"TMPDIR": str(tmp_path)}), cwd=CHILD_CWD,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("producer:"):
            return proc, lines
    proc.wait()
    raise AssertionError("the demo ended before its producer started:\n" + "".join(lines))


def _wait_exited(pids, timeout=60):
    """Wait until every process in `pids` has exited (a pidfd becomes
    readable when its process exits); AssertionError after `timeout` s."""
    fds = {}
    for pid in pids:
        try:
            fds[os.pidfd_open(pid)] = pid
        except ProcessLookupError:
            pass                              # gone already
    try:
        while fds:
            ready, _, _ = select.select(list(fds), [], [], timeout)
            assert ready, f"still running {timeout} s later: {sorted(fds.values())}"
            for fd in ready:
                os.close(fd)
                del fds[fd]
    finally:
        for fd in fds:
            os.close(fd)


def test_sigterm_stops_the_demo_and_its_processes(tmp_path):
    proc, _ = _start_demo(tmp_path)
    children = [p for p in _session(proc.pid) if p != proc.pid]
    assert len(children) >= 5                 # producer, scheduler, 3 workers (and multiprocessing's tracker)
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    assert proc.wait(timeout=60) != 0, out
    assert "Aborted" in out
    assert os.listdir(tmp_path) == []         # the temporary broker is gone
    _wait_exited(children)


def test_children_end_when_the_demo_is_killed(tmp_path):
    """SIGKILL the demo itself: its workers and scheduler see their lifeline
    close and leave, its producer stops at its next word to the parent."""
    proc, _ = _start_demo(tmp_path, "--quick")
    children = [p for p in _session(proc.pid) if p != proc.pid]
    assert len(children) >= 5
    proc.kill()
    proc.wait()
    _wait_exited(children)


def test_summary_that_does_not_add_up_fails(tmp_path):
    """summarize() on a broker where an upload has no result and the
    corrupt one was never dead-lettered reports both, and ok is False."""
    path = str(tmp_path / "b")
    with pyqueue.open(path) as broker:
        for name in ("photos", "photos.done", "photos.dlq", "reports"):
            broker.topic(name)
        for i in range(3):
            broker.topic("photos").send(b"x", headers={"upload-id": b"up-%06d" % i, "sent-ns": b"1"})
        broker.topic("photos.done").send(json.dumps({"id": "up-000000", "worker": 0, "delivery": 1}).encode())
    s = demo.summarize(path, corrupt="up-000002", producer_sent=3, killed=None, finished_in_time=True)
    assert not s["ok"]
    assert "2 uploads neither processed nor dead-lettered" in s["problems"]
    assert any("expected exactly up-000002 dead-lettered" in p for p in s["problems"])
    assert "no worker was killed" in s["problems"] and "no report fired" in s["problems"]


def test_bad_demo_arguments(tmp_path):
    runner = CliRunner()
    full = tmp_path / "full"
    full.mkdir()
    (full / "something").write_text("x")
    r = runner.invoke(main, ["demo", "--path", str(full)])
    assert r.exit_code != 0 and "not an empty directory" in r.output
    r = runner.invoke(main, ["demo", "--workers", "1"])
    assert r.exit_code != 0
    r = runner.invoke(main, ["demo", "--uploads", "5"])
    assert r.exit_code != 0
