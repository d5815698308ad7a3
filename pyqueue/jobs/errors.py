"""The exceptions of the jobs API (all are pyqueue.PyQueueError).

    PyQueueError
     +-- UnknownJob         a job name that has no definition, or a job id the store does not hold
     +-- JobFailed          result() of a job that ended other than succeeded (its status attached)
     +-- ResultTimeout      result(timeout=) ran out before the job ended (also a TimeoutError)
     +-- ResultTooLarge     a job's JSON result is larger than max_result_bytes (the attempt fails)

Arguments that JSON cannot carry raise TypeError at submit(); arguments too
large for the queue raise pyqueue.MessageTooLarge; bad definitions raise
pyqueue.ConfigError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pyqueue.errors import PyQueueError

if TYPE_CHECKING:
    from pyqueue.jobs.status import JobStatus

__all__ = ["UnknownJob", "JobFailed", "ResultTimeout", "ResultTooLarge"]


class UnknownJob(PyQueueError, KeyError):
    """No definition of that name, or no job with that id (never submitted, or
    removed by retention)."""

    def __str__(self) -> str:   # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class JobFailed(PyQueueError):
    """The job ended failed, timeout, oom, dead or cancelled; .status says how."""

    def __init__(self, message: str, status: "JobStatus") -> None:
        super().__init__(message)
        self.status = status


class ResultTimeout(PyQueueError, TimeoutError):
    """result(timeout=) returned before the job reached a final state."""


class ResultTooLarge(PyQueueError, ValueError):
    """A job returned a result whose JSON exceeds max_result_bytes."""
