"""Jobs on every backend: define, submit, a worker runs it, result; retries
then dead; cancel; status, list and counts; a worker SIGKILLed mid-job;
result() with a timeout; schedules (where the backend has a scheduler); the
command line (`pyqueue worker` and `pyqueue jobs` with --path or --url).

Workers are real processes (`broker.jobs().work()` in a child opened with
backend.child_open_code()); the job targets live in tests/jobs_targets.py.
Every worker of a test uses the same visibility timeout (on JetStream it is
the worker group's, stored with it)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import pyqueue

from conftest import CHILD_CWD, child_env
from conformance.support import until

VIS = 1.0
FAST = pyqueue.Backoff(initial=0.05, maximum=0.2, jitter=0.0)
WORKER = """
print("working", flush=True)
n = broker.jobs().work(concurrency={concurrency}, visibility_timeout={vis})
print("stopped", n, flush=True)
broker.close()
"""


def start_worker(backend, children, concurrency=1):
    w = children.spawn(backend.child_open_code() + WORKER.format(concurrency=concurrency, vis=VIS))
    assert w.line() == "working"
    return w


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                         # a zombie of ours is dead too
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def pause():
    time.sleep(0.02)


def poll_status(jobs, jid, predicate, timeout=30.0):
    """A bounded wait on another process's progress, as status() shows it
    (no event tells this process that a job started)."""
    def look():
        st = jobs.status(jid)
        return st if predicate(st) else None
    return until(look, timeout, step=pause)


def test_a_worker_runs_a_job_and_result_returns_it(backend, broker, children):
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    jobs.define("echo", target="jobs_targets:echo")
    start_worker(backend, children, concurrency=2)
    jid = jobs.submit("add", 2, 3)
    assert jobs.result(jid, timeout=30) == 5
    st = jobs.status(jid)
    assert (st.state, st.attempts, st.error, st.exit_code, st.name, st.id) == ("succeeded", 1, None, None, "add", jid)
    assert st.queued_at <= st.started_at <= st.finished_at and st.done
    e = jobs.submit("echo", [1, "two"], {"k": None}, flag=True)
    assert jobs.result(e, timeout=30) == {"args": [[1, "two"], {"k": None}], "kwargs": {"flag": True}}
    many = [jobs.submit("add", i, i) for i in range(20)]
    assert [jobs.result(j, timeout=30) for j in many] == [2 * i for i in range(20)]
    assert jobs.counts() == {"succeeded": 22}
    assert [w["concurrency"] for w in jobs.workers()] == [2]


def test_a_failing_job_is_retried_then_dead(backend, broker, children):
    jobs = broker.jobs()
    jobs.define("fail", target="jobs_targets:fail", max_retries=2, backoff=FAST)
    jobs.define("fail_once", target="jobs_targets:fail")                       # max_retries=0
    start_worker(backend, children)
    jid = jobs.submit("fail", "cannot decode JPEG")
    with pytest.raises(pyqueue.JobFailed, match="ended dead after 3 attempt") as info:
        jobs.result(jid, timeout=30)
    st = info.value.status
    assert (st.state, st.attempts) == ("dead", 3)
    assert st.error.startswith("ValueError: cannot decode JPEG\n") and "jobs_targets.py" in st.error
    dlq = broker.topic("jobs.dlq")
    assert dlq.wait(0, 0, timeout=30)
    [m] = dlq.read(0, 0)
    assert m.headers["x-job-id"] == jid.encode()
    assert m.headers["x-error"] == b"ValueError: cannot decode JPEG"
    assert m.headers["x-delivery-count"] == b"3"
    once = jobs.submit("fail_once", "no")
    with pytest.raises(pyqueue.JobFailed, match="ended failed after 1 attempt"):
        jobs.result(once, timeout=30)
    assert jobs.status(once).state == "failed"


def test_cancel_a_queued_job_and_a_running_one(backend, broker, children):
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    jobs.define("sleep", target="jobs_targets:sleep")
    queued = jobs.submit("add", 1, 1)
    assert jobs.cancel(queued) is True
    assert jobs.cancel(queued) is False                                # ended already
    st = jobs.status(queued)
    assert st.state == "cancelled" and st.error == "Cancelled: cancelled by cancel()"
    w = start_worker(backend, children)
    running = jobs.submit("sleep", 60)
    poll_status(jobs, running, lambda s: s.state == "running")
    assert jobs.cancel(running) is True
    with pytest.raises(pyqueue.JobFailed, match="ended cancelled"):
        jobs.result(running, timeout=30)                               # killed at the worker's next heartbeat
    assert jobs.status(running).error == "Cancelled: cancelled by cancel() while running"
    assert jobs.result(jobs.submit("add", 2, 2), timeout=30) == 4      # the worker goes on; the queued one never ran
    assert jobs.status(queued).attempts == 0
    assert w.returncode is None


def test_status_list_and_counts(broker):
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    jobs.define("echo", target="jobs_targets:echo")
    adds = [jobs.submit("add", i, i) for i in range(5)]
    echo = jobs.submit("echo", "x")
    jobs.cancel(adds[0])
    assert [s.id for s in jobs.list()] == [echo] + adds[::-1]          # newest first
    assert [s.id for s in jobs.list(name="add", state="queued", limit=2)] == [adds[4], adds[3]]
    assert [s.id for s in jobs.list(state="cancelled")] == [adds[0]]
    assert jobs.list(state="failed") == []
    assert jobs.counts() == {"queued": 5, "cancelled": 1}
    st = jobs.status(adds[1])
    assert (st.state, st.attempts, st.name, st.started_at, st.result) == ("queued", 0, "add", None, None)
    with pytest.raises(pyqueue.UnknownJob):
        jobs.status("0" * 16)
    with pytest.raises(pyqueue.UnknownJob):
        jobs.status("not-an-id")
    with pytest.raises(pyqueue.UnknownJob):
        jobs.submit("nothing")
    with pytest.raises(pyqueue.ConfigError):
        jobs.list(state="sleeping")
    with pytest.raises(TypeError):
        jobs.submit("add", object())
    assert [d.name for d in jobs.definitions()] == ["add", "echo"]
    assert jobs.undefine("echo") is True and jobs.undefine("echo") is False


def test_definitions_and_states_are_seen_by_another_handle(broker, reopen):
    jobs = broker.jobs()
    jobs.define("resize", target="app.images:resize", timeout=60, max_retries=3, queue="images")
    jid = jobs.submit("resize", "photo-456", width=640)
    other = reopen().jobs()
    d = other.definition("resize")
    assert (d.target, d.timeout, d.max_retries, d.queue) == ("app.images:resize", 60.0, 3, "images")
    assert other.status(jid).state == "queued"
    assert other.cancel(jid) is True
    assert jobs.status(jid).state == "cancelled"


def test_a_cancel_racing_a_workers_writes_resolves_one_way(broker, reopen):
    """At the store: a worker has read its jobs (on JetStream it remembers
    their revisions and writes over them without a read); a cancel from
    another handle lands before its writes, or after them."""
    from pyqueue.jobs.status import format_id, parse_id
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    store = jobs._store.for_worker()
    other = reopen().jobs()
    first, second, third = (parse_id(jobs.submit("add", i, i)) for i in range(3))
    assert store.states([first, second, third]) == {j: ("queued", 0) for j in (first, second, third)}
    now = time.time_ns()
    store.write([(1, now, os.getpid(), now, first), (1, now, os.getpid(), now, second)], [])
    assert other.cancel(format_id(first)) is True                      # lands before the final write
    assert store.heartbeat([first, second], time.time_ns()) == {first}
    done = [("succeeded", 1, now, time.time_ns(), b"2", None, None, os.getpid(), j) for j in (first, second)]
    store.write([], done)
    st = jobs.status(format_id(first))
    assert (st.state, st.error, st.result) == ("cancelled", "Cancelled: cancelled by cancel() while running", None)
    assert jobs.status(format_id(second)).state == "succeeded"
    assert other.cancel(format_id(second)) is False                    # lands after it: ended already
    assert jobs.result(format_id(second), timeout=5) == 2
    assert other.cancel(format_id(third)) is True                      # a queued job, read by the worker before
    store.write([(1, now, os.getpid(), now, third)], [])
    assert jobs.status(format_id(third)).state == "cancelled"
    assert jobs.counts() == {"cancelled": 2, "succeeded": 1}


def test_a_worker_sigkilled_mid_job_the_job_comes_back_and_completes(backend, broker, children, tmp_path):
    marker = str(tmp_path / "marker")
    jobs = broker.jobs()
    jobs.define("once_slow", target="jobs_targets:slow_first_time", max_retries=1)
    a = start_worker(backend, children)
    jid = jobs.submit("once_slow", marker, 60)
    st = poll_status(jobs, jid, lambda s: s.state == "running")
    assert st.worker == a.pid and st.attempts == 1
    job_pid = int(until(lambda: os.path.exists(marker) and open(marker).read(), 30,
                        step=pause))
    a.kill()                                                   # SIGKILL the supervisor mid-job
    until(lambda: not _alive(job_pid), 30, step=pause)
    b = start_worker(backend, children)
    assert jobs.result(jid, timeout=30) == "second"            # its lease came back (at once, or after VIS)
    st = jobs.status(jid)
    assert (st.state, st.attempts, st.worker) == ("succeeded", 2, b.pid)


def test_result_waits_and_times_out(broker):
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    jid = jobs.submit("add", 1, 2)
    t = time.monotonic()
    with pytest.raises(pyqueue.ResultTimeout, match="still queued"):
        jobs.result(jid, timeout=0.3)
    assert time.monotonic() - t >= 0.3
    with pytest.raises(pyqueue.ResultTimeout):
        jobs.result(jid, timeout=0)
    with pytest.raises(pyqueue.ConfigError):
        jobs.result(jid, timeout=-1)
    assert jobs.status(jid).state == "queued"


def test_result_wakes_when_the_job_ends_in_another_process(broker, children, backend):
    jobs = broker.jobs()
    jobs.define("sleep", target="jobs_targets:sleep")
    start_worker(backend, children)
    jid = jobs.submit("sleep", 0.5)
    assert jobs.result(jid, timeout=30) == 0.5
    st = jobs.status(jid)
    assert st.finished_at - st.started_at >= 0.5


def test_a_scheduled_job_runs(backend, broker, children, requires):
    requires("scheduler")
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    sid = jobs.schedule("add", every=0.2, args=[1, 2])
    assert sid == "job.add"
    start_worker(backend, children)
    done = until(lambda: [s for s in jobs.list(name="add", state="succeeded")], 30,
                 step=pause)
    assert done[0].schedule_id == "job.add" and done[0].result == 3 and done[0].scheduled_for is not None
    assert jobs.unschedule(sid) is True


def test_the_worker_signal_stops_it_and_gives_back_its_jobs(backend, broker, children):
    jobs = broker.jobs()
    jobs.define("sleep", target="jobs_targets:sleep", max_retries=0)
    w = children.spawn(backend.child_open_code() + """
print("working", flush=True)
n = broker.jobs().work(concurrency=1, visibility_timeout=%r, grace=0)
print("stopped", n, flush=True)
broker.close()
""" % VIS)
    assert w.line() == "working"
    jid = jobs.submit("sleep", 60)
    poll_status(jobs, jid, lambda s: s.state == "running")
    w.proc.send_signal(signal.SIGTERM)
    assert w.line(timeout=30).startswith("stopped")
    assert w.wait() == 0
    st = jobs.status(jid)
    assert (st.state, st.attempts) == ("queued", 0)         # given back: the attempt does not count
    start_worker(backend, children)
    poll_status(jobs, jid, lambda s: s.state == "running" and s.attempts == 1)
    assert jobs.cancel(jid) is True


def test_the_command_line_worker_and_jobs_commands(backend, broker, children):
    where = (["--path", backend.path] if backend.name == "embedded"
             else ["--url", backend.cluster.url, "--namespace", backend.namespace])
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "pyqueue.cli", *args], capture_output=True, text=True,
                             env=child_env(), cwd=CHILD_CWD, timeout=60)
        return out.returncode, out.stdout, out.stderr

    queued = jobs.submit("add", 0, 0)
    assert cli("jobs", "cancel", *where, queued)[:2] == (0, f"{queued}\tcancelled\n")
    worker = children.spawn("""
        import sys
        from pyqueue.cli import main
        sys.argv = ["pyqueue", "worker", *sys.argv[1:]]
        main()
    """, *where)
    jid = jobs.submit("add", 3, 4)
    assert jobs.result(jid, timeout=30) == 7
    rc, out, err = cli("jobs", "status", *where, jid)
    assert rc == 0 and json.loads(out)["state"] == "succeeded" and json.loads(out)["result"] == 7, err
    rc, out, _ = cli("jobs", "list", *where, "--state", "cancelled")
    assert rc == 0 and out.split("\t")[0] == queued and len(out.splitlines()) == 1
    rc, out, _ = cli("jobs", "workers", *where)
    assert rc == 0 and str(worker.proc.pid) in out
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def test_a_result_larger_than_the_store_holds_fails_the_attempt(backend, broker, children):
    jobs = broker.jobs()
    jobs.define("big", target="jobs_targets:big_result")           # max_result_bytes: 1 MiB
    start_worker(backend, children)
    jid = jobs.submit("big", 1_000_000)
    if backend.name == "embedded":
        assert len(jobs.result(jid, timeout=30)) == 1_000_000
    else:                                  # a KV value holds the server's max_payload (1 MiB) less 64 KiB
        with pytest.raises(pyqueue.JobFailed, match="ResultTooLarge"):
            jobs.result(jid, timeout=30)
    assert jobs.result(jobs.submit("big", 1000), timeout=30) == "x" * 1000


def test_jetstream_list_and_counts_stop_at_their_scan_limit(backend, broker, monkeypatch):
    if backend.name != "jetstream":
        pytest.skip("embedded backend: list() and counts() are indexed SQLite queries, without a scan limit")
    from pyqueue.jetstream import Unsupported, job_store
    jobs = broker.jobs()
    jobs.define("add", target="jobs_targets:add")
    for i in range(4):
        jobs.submit("add", i, i)
    monkeypatch.setattr(job_store, "MAX_SCAN", 3)
    with pytest.raises(Unsupported, match=r"list\(\) reads every job record.*stops at 3"):
        jobs.list()
    with pytest.raises(Unsupported, match=r"counts\(\)"):
        jobs.counts()
    monkeypatch.setattr(job_store, "MAX_SCAN", 4)
    assert jobs.counts() == {"queued": 4}
