"""Shared fixtures: fresh broker directories and Python child processes.

Children run `sys.executable -c <code>` with the parent's sys.path as
PYTHONPATH, so they start clean (no fork of the test process) and import the
same pyqueue the tests do, whether built in place or installed.  A child's
stdout is read line by line by a thread, so a child that writes a line per
message never blocks on a full pipe and a test can wait for a given line.
Every child a test starts is killed by its own pid when the test ends, if it
is still running.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from typing import Optional

import pytest


# Children run from here, so that `python -c` does not put the current
# directory (perhaps a source checkout without the built extension) ahead of
# the pyqueue the tests import; PYTHONSAFEPATH does the same on 3.11+.
CHILD_CWD = os.path.dirname(os.path.abspath(__file__))


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The environment for a child: ours, plus our sys.path as PYTHONPATH."""
    env = dict(os.environ)
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONFAULTHANDLER"] = "1"       # SIGABRT prints every thread's stack (see Child.wait)
    if extra:
        env.update(extra)
    return env


class Child:
    """One child process running a Python snippet.

    stdout is consumed by a thread: `line()` waits for the next complete line,
    `lines` holds every complete line read so far.  A line cut short by a kill
    is dropped, never returned."""

    def __init__(self, code: str, args: tuple, env: Optional[dict[str, str]]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=child_env(env), cwd=CHILD_CWD,
        )
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        self._err = bytearray()
        self._out_thread = threading.Thread(target=self._read_out, daemon=True)
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._out_thread.start()
        self._err_thread.start()

    def _read_out(self) -> None:
        for raw in self.proc.stdout:
            if not raw.endswith(b"\n"):
                break                       # cut short by a kill
            text = raw[:-1].decode("utf-8", "replace")
            self.lines.append(text)
            self._queue.put(text)
        self._queue.put(None)

    def _read_err(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read1(65536), b""):
            self._err += chunk

    def line(self, timeout: float = 60.0) -> str:
        """The next complete stdout line; AssertionError on EOF or timeout."""
        try:
            text = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no line from child {self.pid} within {timeout} s\n"
                                 f"{self.describe()}") from None
        if text is None:
            self._queue.put(None)           # EOF stays EOF for later calls
            self.proc.wait()
            raise AssertionError(f"child {self.pid} closed its stdout\n{self.describe()}")
        return text

    def send(self, text: str) -> None:
        """Write `text` to the child's stdin and flush it."""
        self.proc.stdin.write(text.encode())
        self.proc.stdin.flush()

    def wait(self, timeout: float = 60.0) -> int:
        """Close stdin, wait for the exit and for all output; the return code."""
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)   # faulthandler: where is it stuck?
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self._join()
            raise AssertionError(f"child {self.pid} still running after {timeout} s\n"
                                 f"{self.describe()}") from None
        self._join()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the child and collect everything it wrote before dying."""
        self.proc.send_signal(signal.SIGKILL)
        self.wait()
        assert self.proc.returncode == -signal.SIGKILL, self.describe()

    def _join(self) -> None:
        self._out_thread.join(30)
        self._err_thread.join(30)

    @property
    def returncode(self) -> Optional[int]:
        return self.proc.returncode

    @property
    def stderr(self) -> str:
        return self._err.decode("utf-8", "replace")

    def describe(self) -> str:
        """A readable account of the child, for assertion messages."""
        rc = self.proc.poll()
        if rc is None:
            how = "is still running"
        elif rc < 0:
            how = f"died of signal {signal.Signals(-rc).name}"
        else:
            how = f"exited with code {rc}"
        out = "\n".join(self.lines[-30:])
        return (f"child {self.pid} {how}\n--- last stdout lines ---\n{out}\n"
                f"--- stderr ---\n{self.stderr[-4000:]}")


class Children:
    """Starts children for one test and reaps them at its end."""

    def __init__(self) -> None:
        self._all: list[Child] = []

    def spawn(self, code: str, *args: object, env: Optional[dict[str, str]] = None) -> Child:
        """Start `code` (dedented) with `args` as sys.argv[1:]."""
        child = Child(code, args, env)
        self._all.append(child)
        return child

    def run(self, code: str, *args: object, timeout: float = 60.0,
            env: Optional[dict[str, str]] = None) -> Child:
        """Run `code` to completion and return the finished Child."""
        child = self.spawn(code, *args, env=env)
        child.wait(timeout)
        return child

    def reap(self) -> None:
        for child in self._all:
            if child.proc.poll() is None:
                child.proc.kill()
            try:
                child.wait(10)
            except AssertionError:
                pass
        self._all.clear()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    if call.when == "call":
        item._passed = outcome.get_result().passed


@pytest.fixture(autouse=True)
def _free_disk_of_passed_tests(request):
    """Remove a passed test's tmp_path as soon as it ends: segments are
    preallocated (64 MiB each by default), and a whole run would otherwise
    keep tens of GB until the session ends.  A failed test's stays."""
    yield
    path = request.node.funcargs.get("tmp_path")
    if path is not None and getattr(request.node, "_passed", False):
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def broker_path(tmp_path) -> str:
    """Path of a broker directory that does not exist yet."""
    return str(tmp_path / "broker")


@pytest.fixture
def children():
    """A Children helper; whatever is still running at teardown is killed."""
    helper = Children()
    try:
        yield helper
    finally:
        helper.reap()


def remove_state_files(root: str) -> int:
    """Delete every partition `state` file under broker `root`.  The state is
    derived data; losing it is what a reboot looks like to recovery, which then
    validates the tail segment frame by frame.  Returns how many were removed."""
    n = 0
    for dirpath, _dirs, files in os.walk(os.path.join(root, "topics")):
        if "state" in files:
            os.unlink(os.path.join(dirpath, "state"))
            n += 1
    return n


@pytest.fixture
def drop_state():
    """remove_state_files(root), for tests that simulate a reboot."""
    return remove_state_files
