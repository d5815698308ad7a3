"""JobDefinition: what a job name runs and under which limits.

A definition is stored in the broker (jobs/jobs.db) so that a worker, a
different process, knows it; submit() and the worker look it up by name.  A
job runs either a Python callable named "package.module:function" (imported
by the worker's child processes, never sent in the message) or a command
line.  Arguments travel as JSON: a queue never unpickles, so a payload cannot
make a worker run code that was not defined.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Optional, Sequence

import msgspec

from pyqueue.config import validate_name
from pyqueue.errors import ConfigError
from pyqueue.policy import Backoff

__all__ = ["JobDefinition", "MAX_TIMEOUT", "MAX_RETRIES", "DEFAULT_MAX_RESULT_BYTES", "MAX_RESULT_BYTES",
           "MIN_MEMORY_LIMIT"]

MAX_TIMEOUT = 30 * 86400.0            # seconds
MAX_RETRIES = 1000
MIN_MEMORY_LIMIT = 16 << 20           # an interpreter needs about this much address space to start a job
MAX_MEMORY_LIMIT = 1 << 48
DEFAULT_MAX_RESULT_BYTES = 1 << 20    # JSON bytes of a result
MAX_RESULT_BYTES = 64 << 20
_TARGET = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_encode = msgspec.json.encode
_JSON_TYPES = "str, int, float, bool, None, lists and dicts of them"


@dataclasses.dataclass(frozen=True)
class JobDefinition:
    """A named job: target or command, and its limits and retry policy.

    timeout: wall-clock seconds an attempt may run before it is killed (None:
    no limit).  memory_limit: bytes of address space of the process running
    the attempt (RLIMIT_AS, the interpreter included; None: no limit).
    max_retries: failed attempts retried (0: one attempt only).  backoff: the
    wait before each retry.  queue: the topic the job's messages go through.
    max_result_bytes: the largest JSON result an attempt may return."""

    name: str
    target: Optional[str] = None
    command: Optional[tuple[str, ...]] = None
    timeout: Optional[float] = None
    memory_limit: Optional[int] = None
    max_retries: int = 0
    backoff: Backoff = dataclasses.field(default_factory=Backoff)
    queue: str = "jobs"
    max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES

    @classmethod
    def create(cls, name: str, target: Optional[str] = None, *, command: Optional[Sequence[str]] = None,
               timeout: Optional[float] = None, memory_limit: Optional[int] = None, max_retries: int = 0,
               backoff: Optional[Backoff] = None, queue: str = "jobs",
               max_result_bytes: int = DEFAULT_MAX_RESULT_BYTES) -> "JobDefinition":
        """Validate the options of jobs.define(); ConfigError or TypeError names the bad one."""
        validate_name(name, "job")
        if (target is None) == (command is None):
            raise ConfigError(f"job {name!r}: give exactly one of target='module:function' or command=[...]")
        cmd: Optional[tuple[str, ...]] = None
        if target is not None:
            if not isinstance(target, str):
                raise TypeError(f"job {name!r}: target must be a str 'module:function', not {type(target).__name__}")
            if not _TARGET.match(target):
                raise ConfigError(f"job {name!r}: target={target!r} must be 'package.module:function'")
        else:
            if isinstance(command, (str, bytes)) or not isinstance(command, (list, tuple)):
                raise TypeError(f"job {name!r}: command must be a list of str (argv), not {type(command).__name__}")
            if not command or not all(isinstance(a, str) for a in command):
                raise ConfigError(f"job {name!r}: command must be a non-empty list of str")
            cmd = tuple(command)
        if timeout is not None:
            _number(name, "timeout", timeout)
            if not 0 < timeout <= MAX_TIMEOUT:
                raise ConfigError(f"job {name!r}: timeout={timeout!r} must be > 0 and at most {MAX_TIMEOUT:.0f} s")
            timeout = float(timeout)
        if memory_limit is not None:
            if type(memory_limit) is not int:
                raise TypeError(f"job {name!r}: memory_limit must be an int of bytes, not {type(memory_limit).__name__}")
            if not MIN_MEMORY_LIMIT <= memory_limit <= MAX_MEMORY_LIMIT:
                raise ConfigError(f"job {name!r}: memory_limit={memory_limit} must be between "
                                  f"{MIN_MEMORY_LIMIT} (16 MiB) and 2**48 bytes")
        if type(max_retries) is not int:
            raise TypeError(f"job {name!r}: max_retries must be int, not {type(max_retries).__name__}")
        if not 0 <= max_retries <= MAX_RETRIES:
            raise ConfigError(f"job {name!r}: max_retries={max_retries} must be in 0..{MAX_RETRIES}")
        if backoff is None:
            backoff = Backoff()
        elif not isinstance(backoff, Backoff):
            raise TypeError(f"job {name!r}: backoff must be a pyqueue.Backoff")
        validate_name(queue, "queue")
        if type(max_result_bytes) is not int:
            raise TypeError(f"job {name!r}: max_result_bytes must be int")
        if not 0 < max_result_bytes <= MAX_RESULT_BYTES:
            raise ConfigError(f"job {name!r}: max_result_bytes={max_result_bytes} must be in 1..{MAX_RESULT_BYTES}")
        return cls(name, target, cmd, timeout, memory_limit, max_retries, backoff, queue, max_result_bytes)

    # -- stored form --

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["command"] = list(self.command) if self.command is not None else None
        return _encode(d).decode()

    @classmethod
    def from_json(cls, text: "str | bytes") -> "JobDefinition":
        d = msgspec.json.decode(text)
        d["backoff"] = Backoff(**d["backoff"])
        if d.get("command") is not None:
            d["command"] = tuple(d["command"])
        return cls(**d)

    # -- arguments --

    def encode_args(self, args: tuple, kwargs: dict[str, Any]) -> bytes:
        """The JSON payload of a job message: [args, kwargs].  TypeError when
        JSON cannot carry an argument, or a command job gets keyword
        arguments or non-scalar arguments."""
        if self.command is not None:
            if kwargs:
                raise TypeError(f"job {self.name!r} runs a command: it takes positional arguments "
                                f"(appended to its argv), not keyword arguments {sorted(kwargs)}")
            argv = []
            for a in args:
                if isinstance(a, bool) or not isinstance(a, (str, int, float)):
                    raise TypeError(f"job {self.name!r} runs a command: its arguments must be str, int "
                                    f"or float, not {type(a).__name__}")
                argv.append(a if isinstance(a, str) else repr(a))
            return _encode([argv, {}])
        try:
            return _encode([args, kwargs])
        except (TypeError, ValueError, OverflowError) as e:
            raise TypeError(f"arguments of job {self.name!r} must be JSON ({_JSON_TYPES}): {e}") from None

    def describe(self) -> str:
        what = f"target={self.target}" if self.target else f"command={list(self.command or ())}"
        limits = [f"queue={self.queue}", f"max_retries={self.max_retries}"]
        if self.timeout is not None:
            limits.append(f"timeout={self.timeout:g}s")
        if self.memory_limit is not None:
            limits.append(f"memory_limit={self.memory_limit}")
        return f"{self.name}\t{what}\t{' '.join(limits)}"


def _number(name: str, option: str, value: Any) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise TypeError(f"job {name!r}: {option} must be a finite number, not {value!r}")
