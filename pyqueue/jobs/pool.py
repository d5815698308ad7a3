"""Slot: the supervisor's handle on one child process (one unit of concurrency).

A slot is STARTING (spawned, not yet READY), IDLE, BUSY (jobs sent: the
child runs the first and reads the next ones from its pipe when it is done)
or DEAD (its pipe hit EOF; the supervisor reaps it and spawns a fresh one).  The
child runs in its own session: kill() signals the whole process group, so a
timed-out job's own subprocesses die with it.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
from typing import Any, Optional

from pyqueue.jobs import protocol as P

__all__ = ["Slot", "STARTING", "IDLE", "BUSY", "DEAD", "child_env"]

STARTING, IDLE, BUSY, DEAD = "starting", "idle", "busy", "dead"


def child_env() -> dict[str, str]:
    """Our environment, with our sys.path as PYTHONPATH: a child imports what
    the worker can import (the targets' modules included)."""
    env = dict(os.environ)
    paths = [os.path.abspath(p) if p else os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    return env


class Slot:
    def __init__(self, index: int, env: dict[str, str]) -> None:
        self.index = index
        self.env = env
        self.state = DEAD
        self.proc: Optional[subprocess.Popen] = None
        self.rfd = -1
        self.wfd = -1
        self.buf = bytearray()
        self.runs: "collections.deque[Any]" = collections.deque()   # sent jobs; the first one runs
        self.kill_reason: Optional[str] = None
        self.kill_target: Optional[int] = None     # the job id a timeout or cancel kill was for
        self.spawned_at = 0.0

    @property
    def job(self) -> Any:
        """The job the child is running (the first one sent), or None."""
        return self.runs[0] if self.runs else None

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    def spawn(self, now: float) -> None:
        to_child_r, to_child_w = os.pipe()
        from_child_r, from_child_w = os.pipe()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "pyqueue.jobs.child", str(to_child_r), str(from_child_w), str(os.getpid())],
                pass_fds=(to_child_r, from_child_w), start_new_session=True, env=self.env,
                stdin=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            for fd in (to_child_r, to_child_w, from_child_r, from_child_w):
                os.close(fd)
            raise
        os.close(to_child_r)
        os.close(from_child_w)
        os.set_blocking(from_child_r, False)
        self.rfd, self.wfd = from_child_r, to_child_w
        self.buf = bytearray()
        self.state = STARTING
        self.runs = collections.deque()
        self.kill_reason = None
        self.kill_target = None
        self.spawned_at = now

    def send(self, frame: bytes) -> None:
        """Write a whole job frame.  The pipe holds what the child has not read
        yet; a frame larger than the pipe waits for the child to finish its
        current job.  BrokenPipeError if the child is gone."""
        view = memoryview(frame)
        while view:
            view = view[os.write(self.wfd, view):]

    def read(self) -> tuple[list[tuple[int, int, Optional[int], bytes]], bool]:
        """Outcome frames available now, (id, kind, exit_code, data) each, and
        whether the pipe hit EOF (the child is gone)."""
        eof = False
        while True:
            try:
                chunk = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                break
            if not chunk:
                eof = True
                break
            self.buf += chunk
            if len(chunk) < 1 << 16:
                break
        out = []
        buf = self.buf
        pos = 0
        while len(buf) - pos >= 4:
            (n,) = P.LEN.unpack_from(buf, pos)
            if len(buf) - pos - 4 < n:
                break
            jid, kind, has_code, code = P.OUTCOME.unpack_from(buf, pos + 4)
            out.append((jid, kind, code if has_code else None, bytes(buf[pos + 4 + P.OUTCOME.size:pos + 4 + n])))
            pos += 4 + n
        if pos:
            del buf[:pos]
        return out, eof

    def kill(self, reason: str, target: Optional[int] = None) -> None:
        """SIGKILL the child's process group; the EOF that follows reports it.
        target: the job it is for (another job found running at EOF had just
        started and is not to blame)."""
        if self.kill_reason is None:
            self.kill_reason = reason
            self.kill_target = target
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def reap(self) -> int:
        """Close the pipes and wait for the child; its return code."""
        for fd in (self.rfd, self.wfd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.rfd = self.wfd = -1
        self.state = DEAD
        rc = self.proc.wait() if self.proc is not None else 0
        return rc

    def close(self, timeout: float = 5.0) -> None:
        """Ask the child to exit (EOF on its pipe), then kill it if it lingers."""
        if self.proc is None:
            return
        if self.wfd >= 0:
            os.close(self.wfd)
            self.wfd = -1
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill("close")
        self.reap()
