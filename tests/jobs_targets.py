"""Job targets for tests/test_jobs.py: workers import them as "jobs_targets:NAME"."""

import os
import signal
import time


def add(a, b):
    return a + b


def noop():
    return None


def echo(*args, **kwargs):
    return {"args": list(args), "kwargs": kwargs}


def stamp():
    """The time the job started (epoch seconds)."""
    return time.time()


def fail(message):
    raise ValueError(message)


def sleep(seconds):
    time.sleep(seconds)
    return seconds


def allocate(nbytes):
    data = bytearray(nbytes)
    return len(data)


def crash():
    os.kill(os.getpid(), signal.SIGSEGV)


def big_result(n):
    return "x" * n


def not_json():
    return object()


def touch(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    return path


def slow_first_time(marker, seconds):
    """Sleep `seconds` unless `marker` exists (create it): the first attempt
    hangs, the next one returns at once."""
    if os.path.exists(marker):
        return "second"
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return "first"
