"""Jobs: definitions, submit, status and result, retries, timeouts, memory
limits, crashes, a SIGKILLed worker, commands, schedules across a worker
restart, cancel, bad input and the command line.  Workers are real processes
(`jobs.work()` in a child); the job targets live in tests/jobs_targets.py."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest

import pyqueue
from pyqueue.jobs.worker import GROUP

from conftest import CHILD_CWD, child_env

# Under AddressSanitizer (.ci/sanitize preloads it) a process reserves terabytes
# of address space, so an RLIMIT_AS makes it fail at start, and ASan turns a
# segfault into an exit with code 1: those two behaviours are not testable there.
UNDER_ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")
asan_skip = pytest.mark.skipif(UNDER_ASAN, reason="AddressSanitizer changes address-space limits and SIGSEGV")

WORKER = """
import sys, pyqueue
b = pyqueue.open(sys.argv[1], fsync="never")
print("working", flush=True)
n = b.jobs().work(concurrency=int(sys.argv[2]))
print("stopped", n, flush=True)
b.close()
"""
FAST = pyqueue.Backoff(initial=0.05, maximum=0.2, jitter=0.0)


@pytest.fixture
def broker(broker_path):
    b = pyqueue.open(broker_path, fsync="never")
    yield b
    b.close()


@pytest.fixture
def jobs(broker):
    return broker.jobs()


def start_worker(children, broker, concurrency=2):
    w = children.spawn(WORKER, broker.path, concurrency)
    assert w.line() == "working"
    return w


def wait_for(predicate, timeout=30.0, what="a condition"):
    """A bounded poll on the status API (no event to wait for across processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def test_job_succeeds_and_returns_its_result(children, broker, jobs):
    jobs.define("add", target="jobs_targets:add")
    jobs.define("echo", target="jobs_targets:echo")
    start_worker(children, broker)
    jid = jobs.submit("add", 2, 3)
    assert jobs.result(jid, timeout=30) == 5
    st = jobs.status(jid)
    assert (st.state, st.attempts, st.error, st.exit_code, st.name, st.id) == ("succeeded", 1, None, None, "add", jid)
    assert st.queued_at <= st.started_at <= st.finished_at
    assert st.done
    e = jobs.submit("echo", [1, "two"], {"k": None}, flag=True)
    assert jobs.result(e, timeout=30) == {"args": [[1, "two"], {"k": None}], "kwargs": {"flag": True}}
    assert [s.id for s in jobs.list(name="add")] == [jid]
    assert {s.id for s in jobs.list(state="succeeded")} == {jid, e}


def test_raising_job_is_retried_then_dead_with_its_error(children, broker, jobs):
    jobs.define("fail", target="jobs_targets:fail", max_retries=2, backoff=FAST)
    start_worker(children, broker)
    jid = jobs.submit("fail", "cannot decode JPEG")
    with pytest.raises(pyqueue.JobFailed, match="ended dead after 3 attempt"):
        jobs.result(jid, timeout=30)
    st = jobs.status(jid)
    assert (st.state, st.attempts) == ("dead", 3)
    assert st.error.startswith("ValueError: cannot decode JPEG\n")
    assert "jobs_targets.py" in st.error                      # the traceback follows
    dlq = broker.topic("jobs.dlq")
    assert dlq.wait(0, 0, timeout=30)
    [m] = dlq.read(0, 0)
    assert m.headers["x-job-id"] == jid.encode()
    assert m.headers["x-error"] == b"ValueError: cannot decode JPEG"
    assert m.headers["x-delivery-count"] == b"3"


def test_job_past_its_timeout_is_killed(children, broker, jobs):
    jobs.define("sleep", target="jobs_targets:sleep", timeout=0.5)
    jobs.define("add", target="jobs_targets:add")
    start_worker(children, broker, concurrency=1)
    jid = jobs.submit("sleep", 60)
    with pytest.raises(pyqueue.JobFailed, match="ended timeout"):
        jobs.result(jid, timeout=30)
    st = jobs.status(jid)
    assert (st.state, st.attempts, st.exit_code) == ("timeout", 1, -signal.SIGKILL)
    assert st.error.startswith("Timeout: killed after 0.5 s")
    assert st.finished_at - st.started_at < 30                 # killed, not waited for
    assert jobs.result(jobs.submit("add", 1, 1), timeout=30) == 2   # a fresh child took the slot


@asan_skip
def test_job_past_its_memory_limit_fails_as_oom(children, broker, jobs):
    jobs.define("allocate", target="jobs_targets:allocate", memory_limit=256 << 20)
    start_worker(children, broker, concurrency=1)
    jid = jobs.submit("allocate", 1 << 30)
    with pytest.raises(pyqueue.JobFailed, match="ended oom"):
        jobs.result(jid, timeout=30)
    st = jobs.status(jid)
    assert st.state == "oom" and st.error.startswith("MemoryError")
    assert jobs.result(jobs.submit("allocate", 1 << 20), timeout=30) == 1 << 20   # under the limit: fine


@asan_skip
def test_crashing_child_fails_its_job_and_is_replaced(children, broker, jobs):
    jobs.define("crash", target="jobs_targets:crash")
    jobs.define("add", target="jobs_targets:add")
    worker = start_worker(children, broker, concurrency=1)
    jid = jobs.submit("crash")
    with pytest.raises(pyqueue.JobFailed):
        jobs.result(jid, timeout=30)
    st = jobs.status(jid)
    assert (st.state, st.exit_code) == ("failed", -signal.SIGSEGV)
    assert "SIGSEGV" in st.error
    assert jobs.result(jobs.submit("add", 2, 2), timeout=30) == 4
    assert worker.returncode is None


def test_worker_killed_mid_job_the_job_comes_back_elsewhere(children, broker, jobs, tmp_path):
    marker = str(tmp_path / "marker")
    jobs.define("once_slow", target="jobs_targets:slow_first_time", max_retries=1)
    a = start_worker(children, broker, concurrency=1)
    jid = jobs.submit("once_slow", marker, 60)
    st = wait_for(lambda: (s := jobs.status(jid)).state == "running" and s, what="the job to run")
    assert st.worker == a.pid and st.attempts == 1
    job_pid = int(wait_for(lambda: os.path.exists(marker) and open(marker).read()))
    a.kill()                                                     # SIGKILL the supervisor mid-job
    wait_for(lambda: not _alive(job_pid), what="the job's process to die with its worker")
    b = start_worker(children, broker, concurrency=1)
    assert jobs.result(jid, timeout=30) == "second"
    st = jobs.status(jid)
    assert (st.state, st.attempts, st.worker) == ("succeeded", 2, b.pid)


def test_worker_lost_without_retries_left_fails_the_job(children, broker, jobs, tmp_path):
    marker = str(tmp_path / "marker")
    jobs.define("once_slow", target="jobs_targets:slow_first_time")       # max_retries=0: at most once
    a = start_worker(children, broker, concurrency=1)
    jid = jobs.submit("once_slow", marker, 60)
    wait_for(lambda: jobs.status(jid).state == "running", what="the job to run")
    a.kill()
    start_worker(children, broker, concurrency=1)
    with pytest.raises(pyqueue.JobFailed, match="WorkerLost"):
        jobs.result(jid, timeout=30)
    assert jobs.status(jid).state == "failed"


def test_command_job_records_its_exit_code(children, broker, jobs):
    script = "import sys; print('out'); sys.stderr.write('bad thing\\n'); sys.exit(int(sys.argv[1]))"
    jobs.define("exit", command=[sys.executable, "-c", script])
    jobs.define("missing", command=["/nonexistent/program"])
    start_worker(children, broker)
    ok, bad, missing = jobs.submit("exit", 0), jobs.submit("exit", "3"), jobs.submit("missing")
    assert jobs.result(ok, timeout=30) is None
    assert jobs.status(ok).exit_code == 0
    with pytest.raises(pyqueue.JobFailed):
        jobs.result(bad, timeout=30)
    st = jobs.status(bad)
    assert (st.state, st.exit_code) == ("failed", 3)
    assert "exited with code 3" in st.error and "bad thing" in st.error
    with pytest.raises(pyqueue.JobFailed, match="CommandNotFound"):
        jobs.result(missing, timeout=30)


def test_command_timeout_kills_the_command_too(children, broker, jobs, tmp_path):
    pidfile = str(tmp_path / "pid")
    jobs.define("hang", command=[sys.executable, "-c",
                                 f"import os, time; open({pidfile!r}, 'w').write(str(os.getpid())); time.sleep(60)"],
                timeout=1.0)
    start_worker(children, broker, concurrency=1)
    jid = jobs.submit("hang")
    with pytest.raises(pyqueue.JobFailed, match="ended timeout"):
        jobs.result(jid, timeout=30)
    pid = int(open(pidfile).read())
    wait_for(lambda: not _alive(pid), what="the command to be killed")


def test_schedule_every_runs_on_time_once_per_fire_across_a_worker_restart(children, broker, jobs):
    jobs.define("stamp", target="jobs_targets:stamp")
    assert jobs.schedule("stamp", every=0.2) == "job.stamp"

    def fired():
        return [s for s in jobs.list(name="stamp", limit=1000) if s.state == "succeeded"]

    a = start_worker(children, broker)
    wait_for(lambda: len(fired()) >= 5, what="five fires")
    a.proc.send_signal(signal.SIGTERM)                      # a clean restart
    assert a.wait() == 0 and a.lines[-1].startswith("stopped")
    before = len(fired())
    start_worker(children, broker)
    wait_for(lambda: len(fired()) >= before + 5, what="five more fires after the restart")
    jobs.unschedule("job.stamp")
    runs = sorted(fired(), key=lambda s: s.scheduled_for)
    times = [s.scheduled_for for s in runs]
    assert len(times) == len(set(times)), "a fire ran twice"
    assert all(s.schedule_id == "job.stamp" and s.attempts == 1 for s in runs)
    for a_t, b_t in zip(times, times[1:]):
        steps = (b_t - a_t) / 0.2
        assert steps >= 0.999 and abs(steps - round(steps)) < 0.01      # on the 0.2 s grid
    for s in runs:
        assert 0 <= s.result - s.scheduled_for < 1.0, "a fire started late"    # generous bound


def test_status_and_result_from_another_process(children, broker, jobs):
    jobs.define("add", target="jobs_targets:add")
    jid = jobs.submit("add", 20, 22)
    reader = children.spawn("""
        import json, sys, pyqueue
        jobs = pyqueue.open(sys.argv[1], fsync="never").jobs()
        print(json.dumps(jobs.status(sys.argv[2]).to_dict()), flush=True)
        print(json.dumps(jobs.result(sys.argv[2], timeout=60)), flush=True)
        print(json.dumps(jobs.status(sys.argv[2]).to_dict()), flush=True)
    """, broker.path, jid)
    assert json.loads(reader.line())["state"] == "queued"
    start_worker(children, broker)
    assert json.loads(reader.line()) == 42
    other = json.loads(reader.line())
    assert other == jobs.status(jid).to_dict() and other["state"] == "succeeded"
    assert reader.wait() == 0


def test_cancel_of_a_queued_job(children, broker, jobs, tmp_path):
    path = str(tmp_path / "touched")
    jobs.define("touch", target="jobs_targets:touch")
    jobs.define("add", target="jobs_targets:add")
    jid = jobs.submit("touch", path)
    assert jobs.cancel(jid) is True
    assert jobs.status(jid).state == "cancelled"
    start_worker(children, broker)
    assert jobs.result(jobs.submit("add", 1, 2), timeout=30) == 3     # the cancelled one came first
    with pytest.raises(pyqueue.JobFailed, match="cancelled"):
        jobs.result(jid, timeout=0)
    assert not os.path.exists(path), "a cancelled job ran"
    assert jobs.cancel(jid) is False
    assert broker.topic("jobs").stats()["groups"][GROUP]["lag"] == 0        # its message was acked


def test_cancel_of_a_running_job_kills_it(children, broker, jobs):
    jobs.define("sleep", target="jobs_targets:sleep")
    start_worker(children, broker, concurrency=1)
    jid = jobs.submit("sleep", 60)
    wait_for(lambda: jobs.status(jid).state == "running", what="the job to run")
    assert jobs.cancel(jid) is True
    jobs.define("add", target="jobs_targets:add")
    assert jobs.result(jobs.submit("add", 1, 1), timeout=30) == 2     # the slot was freed by the kill
    assert jobs.status(jid).state == "cancelled"


def test_unknown_names_and_bad_arguments(children, broker, jobs):
    jobs.define("add", target="jobs_targets:add", max_retries=3)
    jobs.define("cmd", command=["true"])
    with pytest.raises(pyqueue.UnknownJob, match="no job named 'nope'.*defined: add, cmd"):
        jobs.submit("nope")
    with pytest.raises(pyqueue.UnknownJob, match="not a job id"):
        jobs.status("xyz")
    with pytest.raises(pyqueue.UnknownJob, match="no job 0000000000000001"):
        jobs.status("0000000000000001")
    with pytest.raises(TypeError, match="must be JSON"):
        jobs.submit("add", object(), 1)
    with pytest.raises(TypeError, match="positional arguments"):
        jobs.submit("cmd", flag=1)
    with pytest.raises(TypeError, match="str, int or float"):
        jobs.submit("cmd", [1])
    with pytest.raises(pyqueue.MessageTooLarge, match="arguments of job 'add'"):
        jobs.submit("add", "x" * (2 << 20), 1)
    with pytest.raises(pyqueue.ConfigError, match="exactly one of"):
        jobs.define("both", target="a:b", command=["x"])
    with pytest.raises(pyqueue.ConfigError, match="module:function"):
        jobs.define("bad", target="no_colon")
    with pytest.raises(pyqueue.ConfigError, match="memory_limit"):
        jobs.define("bad", target="a:b", memory_limit=1000)
    with pytest.raises(pyqueue.ConfigError, match="timeout"):
        jobs.define("bad", target="a:b", timeout=-1)
    with pytest.raises(pyqueue.InvalidName):
        jobs.define("bad name", target="a:b")
    with pytest.raises(pyqueue.ConfigError, match="state="):
        jobs.list(state="exploded")
    assert jobs.list(state="queued") == []                  # nothing was queued by the refused calls
    start_worker(children, broker)
    jid = jobs.submit("add", 1)                               # JSON, but not what add() takes
    with pytest.raises(pyqueue.JobFailed, match="BadArguments: jobs_targets:add: missing a required argument"):
        jobs.result(jid, timeout=30)
    assert (jobs.status(jid).state, jobs.status(jid).attempts) == ("failed", 1)   # not retried
    jobs.define("ghost", target="jobs_targets_missing:f", max_retries=3)
    with pytest.raises(pyqueue.JobFailed, match="ImportError: cannot load target jobs_targets_missing:f"):
        jobs.result(jobs.submit("ghost"), timeout=30)


def test_results_must_be_json_and_small(children, broker, jobs):
    jobs.define("big", target="jobs_targets:big_result", max_result_bytes=1000)
    jobs.define("odd", target="jobs_targets:not_json")
    start_worker(children, broker)
    assert jobs.result(jobs.submit("big", 100), timeout=30) == "x" * 100
    with pytest.raises(pyqueue.JobFailed, match="ResultTooLarge: jobs_targets:big_result returned 5002 bytes"):
        jobs.result(jobs.submit("big", 5000), timeout=30)
    with pytest.raises(pyqueue.JobFailed, match="ResultNotJSON"):
        jobs.result(jobs.submit("odd"), timeout=30)


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_pickled_payload_is_never_unpickled(children, broker, jobs, tmp_path):
    path = str(tmp_path / "pwned")
    jobs.define("echo", target="jobs_targets:echo")
    jid = "%016x" % jobs._store.insert("echo", time.time_ns())      # a row, as submit() makes
    broker.topic("jobs").send(pickle.dumps(_Evil(path)), headers={"x-job": b"echo", "x-job-id": jid.encode()})
    start_worker(children, broker)
    with pytest.raises(pyqueue.JobFailed, match="BadArguments: the payload is not JSON"):
        jobs.result(jid, timeout=30)
    assert not os.path.exists(path)


def test_result_waits_and_times_out(jobs):
    jobs.define("add", target="jobs_targets:add")
    jid = jobs.submit("add", 1, 2)
    with pytest.raises(pyqueue.ResultTimeout, match="still queued"):
        jobs.result(jid, timeout=0.05)
    assert jobs.status(jid).state == "queued"


def test_definitions_are_stored_in_the_broker(broker_path):
    with pyqueue.open(broker_path) as b:
        b.jobs().define("resize", target="app.images:resize", timeout=60, memory_limit=1 << 30, max_retries=3,
                        queue="images")
    with pyqueue.open(broker_path) as b:
        d = b.jobs().definition("resize")
        assert (d.target, d.timeout, d.memory_limit, d.max_retries, d.queue) == (
            "app.images:resize", 60.0, 1 << 30, 3, "images")
        assert "images" in b.topics()


def test_cli_worker_and_jobs_commands(children, broker, jobs):
    jobs.define("add", target="jobs_targets:add")
    jobs.define("sleep", target="jobs_targets:sleep")
    queued = jobs.submit("sleep", 1)

    def cli(*args):
        out = subprocess.run([sys.executable, "-m", "pyqueue.cli", *args], capture_output=True, text=True,
                             env=child_env(), cwd=CHILD_CWD, timeout=60)
        return out.returncode, out.stdout, out.stderr

    assert cli("jobs", "cancel", "--path", broker.path, queued)[:2] == (0, f"{queued}\tcancelled\n")
    worker = children.spawn("""
        import sys
        from pyqueue.cli import main
        sys.argv = ["pyqueue", "worker", "--path", sys.argv[1], "--concurrency", "2"]
        main()
    """, broker.path)
    jid = jobs.submit("add", 3, 4)
    assert jobs.result(jid, timeout=30) == 7
    rc, out, _ = cli("jobs", "status", "--path", broker.path, jid)
    assert rc == 0 and json.loads(out)["state"] == "succeeded" and json.loads(out)["result"] == 7
    rc, out, _ = cli("jobs", "list", "--path", broker.path, "--state", "cancelled")
    assert rc == 0 and out.split("\t")[0] == queued and len(out.splitlines()) == 1
    rc, out, err = cli("jobs", "status", "--path", broker.path, "0000000000000001")
    assert rc == 1 and "no job 0000000000000001" in err
    rc, out, _ = cli("jobs", "workers", "--path", broker.path)
    assert rc == 0 and str(worker.proc.pid) in out
    worker.proc.send_signal(signal.SIGTERM)
    assert worker.wait() == 0


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:                                   # a zombie of ours counts as dead
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
