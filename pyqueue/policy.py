"""Retry policy: how long a failed message waits before its next delivery."""

from __future__ import annotations

import dataclasses
import math
import random

from typing import Any, Optional

from pyqueue.config import validate_name
from pyqueue.errors import ConfigError

__all__ = ["Backoff", "check_retry_policy", "dead_letter_headers", "redrive_dead_letters", "DEAD_LETTER_HEADERS"]


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Exponential backoff: the n-th retry waits initial * multiplier**(n-1),
    capped at maximum, then spread by +/- jitter (a fraction) so that many
    failed messages do not all come back at the same instant."""

    initial: float = 1.0
    maximum: float = 300.0
    multiplier: float = 2.0
    jitter: float = 0.1

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "multiplier", "jitter"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                raise ConfigError(f"Backoff {name}={v!r} must be a finite number")
        if self.initial < 0 or self.maximum < self.initial:
            raise ConfigError(f"Backoff needs 0 <= initial <= maximum; got {self.initial}, {self.maximum}")
        if self.multiplier < 1:
            raise ConfigError(f"Backoff multiplier={self.multiplier} must be >= 1")
        if not 0 <= self.jitter <= 1:
            raise ConfigError(f"Backoff jitter={self.jitter} must be between 0 and 1")

    def delay(self, attempt: int, rng: "random.Random | None" = None) -> float:
        """Seconds to wait after failed delivery number `attempt` (1-based)."""
        base = self.initial * self.multiplier ** max(0, min(attempt - 1, 1000))
        base = min(base, self.maximum)
        if self.jitter:
            base *= 1 + (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, min(base, self.maximum))


# What a dead letter carries besides the message's own headers.
DEAD_LETTER_HEADERS = frozenset({"x-original-topic", "x-original-partition", "x-original-offset",
                                 "x-delivery-count", "x-error"})


def check_retry_policy(topic: str, max_deliveries: Any, backoff: Any, dead_letter: Any) -> None:
    """The retry options of a queue-mode consumer of `topic`, on every backend."""
    if max_deliveries is not None and (type(max_deliveries) is not int or not 1 <= max_deliveries <= 1_000_000):
        raise ConfigError(f"max_deliveries={max_deliveries!r} must be an int in 1..1000000 or None")
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError("backoff must be a pyqueue.Backoff")
    if dead_letter is not None:
        validate_name(dead_letter)
        if dead_letter == topic:
            raise ConfigError("dead_letter must be another topic than the one consumed")


def dead_letter_headers(m: Any, error: str) -> dict[str, bytes]:
    """The headers of message m as it goes to a dead-letter topic, on every
    backend: its own, plus where it came from, how often it was delivered
    and why it failed (x-error, at most 4 KiB)."""
    headers = dict(m.headers)
    headers.update({
        "x-original-topic": m.topic.encode(),
        "x-original-partition": str(m.partition).encode(),
        "x-original-offset": headers.get("x-original-offset", str(m.offset).encode()),
        "x-delivery-count": str(m.delivery_count).encode(),
        "x-error": error.encode("utf-8", "replace")[:4096],
    })
    return headers


def redrive_dead_letters(source: Any, target: Any, limit: Optional[int]) -> int:
    """Move the messages of dead-letter topic `source` to topic `target`, with
    their key, value and own headers (DEAD_LETTER_HEADERS removed), on every
    backend.  The position is kept by source's stream-mode group "redrive", so
    a message is moved once.  Returns how many were moved."""
    if target is source:
        raise ConfigError("redrive needs another topic than the dead-letter topic itself")
    moved = 0
    consumer = source.consumer("redrive", mode="stream", auto_commit_interval=0)
    try:
        while limit is None or moved < limit:
            want = 1000 if limit is None else min(1000, limit - moved)
            msgs = consumer.poll_batch(want, timeout=0)
            if not msgs:
                break
            for m in msgs:
                headers = {k: v for k, v in m.headers.items() if k not in DEAD_LETTER_HEADERS}
                target.send(m.value, key=m.key, headers=headers)
                m.ack()
            moved += len(msgs)
            consumer.commit()
    finally:
        consumer.close()
    return moved
