"""Shared functions of the conformance tests (imported by the test modules)."""

from __future__ import annotations

import importlib.util
import shutil
import time
from typing import Any, Callable, Optional


def nats_missing() -> Optional[str]:
    """Why the jetstream backend cannot be tested here, or None."""
    if shutil.which("nats-server") is None:
        return "nats-server is not on PATH (Debian: apt-get install nats-server)"
    if importlib.util.find_spec("nats") is None:
        return "nats-py is not installed (pip install 'pyqueue[jetstream]')"
    return None


def drain(consumer: Any, timeout: float = 0.3, ack: bool = True) -> list:
    """Every message the consumer gives until it has none for `timeout` s."""
    out = []
    while True:
        msgs = consumer.poll_batch(1000, timeout=timeout)
        if not msgs:
            return out
        for m in msgs:
            if ack:
                m.ack()
        out.extend(msgs)


def until(condition: Callable[[], Any], timeout: float = 10.0, step: Callable[[], Any] = lambda: None) -> Any:
    """Call step() until condition() is true (its value) or `timeout` passes
    (AssertionError).  step() should block on something (a poll), so that
    this loop waits on events, not on the clock."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        step()


def busy_wait(seconds: float) -> None:
    """Let `seconds` pass on the monotonic clock (a lease or window expiring
    is the event under test: there is nothing else to wait on)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(min(0.01, max(0.0, end - time.monotonic())))
