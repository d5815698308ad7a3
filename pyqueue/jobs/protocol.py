"""The frames between a worker's supervisor and its child processes.

Each frame is a 4-byte little-endian length, then the body.  No pickle: the
bodies are fixed headers (struct) followed by UTF-8 text or JSON bytes, so a
job's payload is only ever parsed as JSON.

    supervisor -> child, a job:
      OFFSET SIZE DESCRIPTION
      0      8    job id (u64)
      8      4    attempt (u32)
      12     8    memory limit in bytes (i64, 0: none)
      20     8    max result bytes (u64)
      28     1    kind: 0 Python callable, 1 command
      29     2    length T of the target (u16)
      31     T    target "module:function", or the command's argv as JSON
      31+T   ..   the payload: JSON [args, kwargs]

    child -> supervisor, an outcome (or READY once the child can take jobs):
      0      8    job id (u64; the child's pid for READY)
      8      1    outcome kind (OK, FAILED, OOM, INVALID, READY)
      9      1    1 if an exit code follows, else 0
      10     4    exit code (i32)
      14     ..   OK: the result as JSON; otherwise the error text (UTF-8)

A child that reports OOM exits right after (its heap is suspect); the
supervisor starts a fresh one.
"""

from __future__ import annotations

import struct

__all__ = ["JOB", "OUTCOME", "LEN", "CALLABLE", "COMMAND", "OK", "FAILED", "OOM", "INVALID", "READY",
           "encode_job", "encode_outcome"]

LEN = struct.Struct("<I")
JOB = struct.Struct("<QIqQBH")
OUTCOME = struct.Struct("<QBBi")
CALLABLE, COMMAND = 0, 1
OK, FAILED, OOM, INVALID, READY = 0, 1, 2, 3, 4
MAX_FRAME = 1 << 30


def encode_job(job_id: int, attempt: int, memory_limit: int, max_result: int, kind: int, target: bytes,
               payload: bytes) -> bytes:
    body_len = JOB.size + len(target) + len(payload)
    return b"".join((LEN.pack(body_len), JOB.pack(job_id, attempt, memory_limit, max_result, kind, len(target)),
                     target, payload))


def encode_outcome(job_id: int, kind: int, exit_code: "int | None", data: bytes) -> bytes:
    head = OUTCOME.pack(job_id, kind, exit_code is not None, 0 if exit_code is None else exit_code)
    return LEN.pack(len(head) + len(data)) + head + data
