"""A worker's child process: runs the jobs its supervisor sends, one at a time.

Started as `python -m pyqueue.jobs.child READ_FD WRITE_FD PARENT_PID` in a
session of its own, so that killing its process group also kills what a job
started.  It imports each target once and keeps it, so a job costs a call,
not a process start.  It dies with its supervisor (PR_SET_PDEATHSIG), so a
worker killed with SIGKILL leaves no job running behind it.

memory_limit is RLIMIT_AS, set around the call (a command gets it in its own
process): an allocation past it raises MemoryError, reported as OOM, after
which this process exits and the supervisor starts a fresh one.  Timeouts are
the supervisor's: it kills this process group.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import resource
import signal
import subprocess
import sys
from typing import Any, Callable, Optional

import msgspec

from pyqueue.jobs import protocol as P

_PR_SET_PDEATHSIG = 1
_STDERR_TAIL = 4096
_TRACEBACK_TAIL = 8192
_encode = msgspec.json.encode
_decode = msgspec.json.decode


def _die_with_parent(parent: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:          # the supervisor died before prctl took effect
        os._exit(0)


class Child:
    def __init__(self, rfd: int, wfd: int, parent: int) -> None:
        self.rf = os.fdopen(rfd, "rb", buffering=1 << 16)
        self.wfd = wfd
        self.parent = parent
        self.targets: dict[str, Callable[..., Any]] = {}
        self.hard_as = resource.getrlimit(resource.RLIMIT_AS)[1]

    def send(self, frame: bytes) -> None:
        view = memoryview(frame)
        while view:
            view = view[os.write(self.wfd, view):]

    def run(self) -> None:
        self.send(P.encode_outcome(os.getpid(), P.READY, None, b""))
        while True:
            head = self.rf.read(4)
            if len(head) < 4:
                return                      # the supervisor closed the pipe: exit
            (n,) = P.LEN.unpack(head)
            body = self.rf.read(n)
            if len(body) < n:
                return
            jid, attempt, mem, max_result, kind, tlen = P.JOB.unpack_from(body)
            target = body[P.JOB.size:P.JOB.size + tlen].decode()
            payload = body[P.JOB.size + tlen:]
            if kind == P.COMMAND:
                out_kind, code, data = self.run_command(target, payload, mem)
            else:
                out_kind, code, data = self.call(target, payload, mem, max_result)
            self.send(P.encode_outcome(jid, out_kind, code, data))
            if out_kind == P.OOM:
                return

    # -- Python callables --

    def resolve(self, target: str) -> Callable[..., Any]:
        fn = self.targets.get(target)
        if fn is None:
            module, _, attr = target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attr.split("."):
                obj = getattr(obj, part)
            if not callable(obj):
                raise TypeError(f"{target} is a {type(obj).__name__}, not a callable")
            fn = self.targets[target] = obj
        return fn

    def call(self, target: str, payload: bytes, mem: int, max_result: int) -> tuple[int, Optional[int], bytes]:
        try:
            fn = self.resolve(target)
        except BaseException as e:                  # an import may raise anything, SystemExit included
            return P.INVALID, None, _error("ImportError", f"cannot load target {target}: {_describe(e)}", e)
        try:
            args, kwargs = _decode(payload)
        except (msgspec.DecodeError, TypeError, ValueError) as e:
            return P.INVALID, None, f"BadArguments: the payload is not JSON [args, kwargs]: {e}".encode()
        oom = False
        if mem:
            resource.setrlimit(resource.RLIMIT_AS, (mem, self.hard_as))
        try:
            result = fn(*args, **kwargs)
            if hasattr(result, "__await__"):
                import asyncio
                result = asyncio.run(_await(result))
        except MemoryError:
            oom = True
            result = None
        except TypeError as e:
            if mem:
                resource.setrlimit(resource.RLIMIT_AS, (self.hard_as, self.hard_as))
                mem = 0
            bad = _bind_error(fn, args, kwargs)
            if bad is not None:
                return P.INVALID, None, f"BadArguments: {target}: {bad}".encode()
            return P.FAILED, None, _error(type(e).__name__, str(e), e)
        except BaseException as e:                  # SystemExit and KeyboardInterrupt fail the job, not the child
            if mem:
                resource.setrlimit(resource.RLIMIT_AS, (self.hard_as, self.hard_as))
                mem = 0
            return P.FAILED, None, _error(type(e).__name__, str(e), e)
        finally:
            if mem:
                resource.setrlimit(resource.RLIMIT_AS, (self.hard_as, self.hard_as))
        if oom:
            return P.OOM, None, (f"MemoryError: the job needed more than its memory_limit of {mem} bytes "
                                 f"of address space").encode()
        try:
            data = _encode(result)
        except (TypeError, ValueError, OverflowError) as e:
            return P.FAILED, None, f"ResultNotJSON: {target} returned a {type(result).__name__}: {e}".encode()
        if len(data) > max_result:
            return P.FAILED, None, (f"ResultTooLarge: {target} returned {len(data)} bytes of JSON, more than "
                                    f"max_result_bytes={max_result}").encode()
        return P.OK, None, data

    # -- commands --

    def run_command(self, target: str, payload: bytes, mem: int) -> tuple[int, Optional[int], bytes]:
        argv = list(_decode(target)) + list(_decode(payload)[0])

        def pre_exec() -> None:                     # in the command's process, before exec
            _die_with_parent(os.getppid())
            if mem:
                resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=pre_exec, close_fds=True)
        except OSError as e:
            return P.INVALID, None, f"CommandNotFound: cannot run {argv[0]!r}: {e}".encode()
        tail = b""
        err = sys.stderr.buffer
        for chunk in iter(lambda: proc.stderr.read1(1 << 16), b""):   # type: ignore[union-attr]
            try:
                err.write(chunk)                    # the command's stderr goes on to the worker's
                err.flush()
            except OSError:
                pass
            tail = (tail + chunk)[-_STDERR_TAIL:]
        rc = proc.wait()
        if rc == 0:
            return P.OK, 0, b"null"
        how = f"was killed by {_signame(-rc)}" if rc < 0 else f"exited with code {rc}"
        text = f"CommandFailed: {argv[0]} {how}"
        if tail:
            text += "\n" + tail.decode("utf-8", "replace")
        return P.FAILED, rc, text.encode()


async def _await(aw: Any) -> Any:
    return await aw


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _error(kind: str, message: str, e: BaseException) -> bytes:
    import traceback
    frames = e.__traceback__.tb_next if e.__traceback__ is not None else None   # from the job's own frame on
    tb = "".join(traceback.format_exception(type(e), e, frames))
    return (f"{kind}: {message}\n" + tb[-_TRACEBACK_TAIL:]).encode("utf-8", "replace")


def _bind_error(fn: Callable[..., Any], args: list, kwargs: dict) -> Optional[str]:
    """Why fn(*args, **kwargs) cannot bind, or None if it can (or fn has no signature)."""
    import inspect
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    try:
        sig.bind(*args, **kwargs)
    except TypeError as e:
        return str(e)
    return None


def _signame(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def main() -> None:
    rfd, wfd, parent = (int(a) for a in sys.argv[1:4])
    _die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # the supervisor decides when jobs stop
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    Child(rfd, wfd, parent).run()


if __name__ == "__main__":
    main()
