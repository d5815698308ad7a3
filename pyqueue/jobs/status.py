"""JobStatus: what the store knows about one job, and the job states.

    queued ──> running ──> succeeded
      ^  |        |
      |  |        +──> failed | timeout | oom   (no retry left, max_retries = 0)
      |  |        +──> dead                     (no retry left after max_retries retries)
      |  |        +──> queued                   (a retry is due after the backoff)
      |  +──> cancelled  (also from running: the attempt is killed)

failed, timeout, oom, dead and cancelled are final, as is succeeded.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

__all__ = ["JobStatus", "STATES", "FINAL_STATES", "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "TIMEOUT",
           "OOM", "DEAD", "CANCELLED", "format_id", "parse_id"]

QUEUED, RUNNING, SUCCEEDED = "queued", "running", "succeeded"
FAILED, TIMEOUT, OOM, DEAD, CANCELLED = "failed", "timeout", "oom", "dead", "cancelled"
STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, TIMEOUT, OOM, DEAD, CANCELLED)
FINAL_STATES = frozenset({SUCCEEDED, FAILED, TIMEOUT, OOM, DEAD, CANCELLED})


@dataclasses.dataclass(frozen=True)
class JobStatus:
    """One job.  Times are epoch seconds (float) or None; result is the
    decoded JSON the job returned (succeeded only); error is "Type: message"
    on its first line, then the traceback or the command's last stderr
    lines; exit_code is a command's exit status, or minus the signal that
    killed the process running the attempt."""

    state: str
    attempts: int
    queued_at: float
    started_at: Optional[float]
    finished_at: Optional[float]
    result: Any
    error: Optional[str]
    exit_code: Optional[int]
    id: str = ""
    name: str = ""
    schedule_id: Optional[str] = None
    scheduled_for: Optional[float] = None
    worker: Optional[int] = None
    heartbeat_at: Optional[float] = None

    @property
    def done(self) -> bool:
        """True once the state is final."""
        return self.state in FINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def format_id(n: int) -> str:
    """A job id as the API shows it: 16 hex digits."""
    return f"{n:016x}"


def parse_id(job_id: object) -> Optional[int]:
    """The integer of a job id string, or None if it is not one."""
    if not isinstance(job_id, str):
        raise TypeError(f"job_id must be str, not {type(job_id).__name__}")
    if len(job_id) != 16:
        return None
    try:
        return int(job_id, 16)
    except ValueError:
        return None
