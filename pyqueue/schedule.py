"""Schedule: one durable schedule and its fire times (cron, every, at).

Cron expressions and time zones are croniter's and zoneinfo's, not ours: in a
time zone with daylight saving, a cron time inside the skipped hour fires at
the end of the gap (02:30 on a spring-forward night fires at 03:00), and one
inside the repeated hour fires once per occurrence (twice), as croniter
computes them.  `every` schedules fire at start, start + every, ... when
`start` is given, else at created + every, created + 2 * every, ...,
whatever the time zone.
"""

from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone as dt_timezone
from typing import Any, Optional
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from pyqueue.config import validate_name
from pyqueue.errors import ConfigError

__all__ = ["Schedule", "MISFIRE", "MIN_EVERY", "MAX_CATCH_UP"]

MISFIRE = ("coalesce", "skip", "all")
MIN_EVERY = 0.001            # seconds
MAX_CATCH_UP = 1000          # misfire="all": fires published per catch-up, the rest coalesced
NS = 1_000_000_000


def _to_ns(value: Any, name: str) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ConfigError(f"{name}={value!r} needs a time zone (e.g. tzinfo=datetime.timezone.utc)")
        return int(value.timestamp() * NS)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return int(value * NS)
    raise TypeError(f"{name} must be an aware datetime or epoch seconds, not {type(value).__name__}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A schedule as stored: what to publish, and when."""

    id: str
    topic: str
    value: bytes
    key: Optional[bytes] = None
    headers: dict[str, bytes] = dataclasses.field(default_factory=dict)
    cron: Optional[str] = None
    every: Optional[float] = None
    at_ns: Optional[int] = None
    timezone: str = "UTC"
    start_ns: Optional[int] = None
    end_ns: Optional[int] = None
    misfire: str = "coalesce"
    created_ns: int = 0

    @classmethod
    def create(cls, id: str, *, topic: str, value: bytes, key: Optional[bytes] = None,
               headers: Optional[dict[str, bytes]] = None, cron: Optional[str] = None,
               every: Optional[float] = None, at: Any = None, timezone: Optional[str] = None,
               start: Any = None, end: Any = None, misfire: str = "coalesce",
               created_ns: int = 0) -> "Schedule":
        validate_name(id, "schedule")
        validate_name(topic)
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        if key is not None and not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"key must be bytes or None, not {type(key).__name__}")
        headers = dict(headers or {})
        for h, v in headers.items():
            if not isinstance(h, str) or not isinstance(v, (bytes, bytearray)):
                raise TypeError("headers must be a dict of str -> bytes")
            if h.startswith("x-schedule"):
                raise ConfigError(f"header {h!r} is set by the scheduler")
        kinds = [k for k, v in (("cron", cron), ("every", every), ("at", at)) if v is not None]
        if len(kinds) != 1:
            raise ConfigError(f"schedule {id!r} needs exactly one of cron=, every=, at= (got "
                              f"{', '.join(kinds) or 'none'})")
        tz = timezone or "UTC"
        if not isinstance(tz, str):
            raise TypeError("timezone must be an IANA name such as 'Europe/Paris'")
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"unknown time zone {tz!r}") from e
        if cron is not None:
            if not isinstance(cron, str) or not croniter.is_valid(cron):
                raise ConfigError(f"invalid cron expression {cron!r}")
        if every is not None:
            if not isinstance(every, (int, float)) or isinstance(every, bool):
                raise TypeError("every must be a number of seconds")
            if not math.isfinite(every) or every < MIN_EVERY:
                raise ConfigError(f"every={every!r} must be at least {MIN_EVERY} seconds")
        if misfire not in MISFIRE:
            raise ConfigError(f"misfire={misfire!r} must be one of {', '.join(MISFIRE)}")
        start_ns, end_ns = _to_ns(start, "start"), _to_ns(end, "end")
        if start_ns is not None and end_ns is not None and end_ns <= start_ns:
            raise ConfigError("end must be after start")
        return cls(id=id, topic=topic, value=bytes(value), key=None if key is None else bytes(key),
                   headers={h: bytes(v) for h, v in headers.items()}, cron=cron,
                   every=None if every is None else float(every), at_ns=_to_ns(at, "at"),
                   timezone=tz, start_ns=start_ns, end_ns=end_ns, misfire=misfire,
                   created_ns=created_ns)

    # -- fire times --

    def next_after(self, t_ns: int) -> Optional[int]:
        """The first fire time strictly after t_ns, or None if there is none."""
        floor = t_ns
        if self.start_ns is not None and self.start_ns - 1 > floor:
            floor = self.start_ns - 1
        if self.at_ns is not None:
            nxt = self.at_ns if self.at_ns > floor else None
        elif self.every is not None:
            step = int(self.every * NS)
            if self.start_ns is not None and floor < self.start_ns:
                nxt = self.start_ns               # with start=, the first fire is at start
            else:
                anchor = self.start_ns if self.start_ns is not None else self.created_ns
                nxt = anchor + step * ((max(floor, anchor) - anchor) // step + 1)
        else:
            tz = ZoneInfo(self.timezone)
            base = datetime.fromtimestamp(floor / NS, tz)
            nxt = int(croniter(self.cron, base).get_next(datetime).timestamp() * NS)
        if nxt is not None and self.end_ns is not None and nxt > self.end_ns:
            return None
        return nxt

    def fire_times(self, after_ns: int, count: int) -> list[int]:
        out, t = [], after_ns
        while len(out) < count:
            nxt = self.next_after(t)
            if nxt is None:
                break
            out.append(nxt)
            t = nxt
        return out

    # -- storage --

    def to_row(self) -> tuple:
        spec = {"cron": self.cron, "every": self.every, "at_ns": self.at_ns, "timezone": self.timezone,
                "start_ns": self.start_ns, "end_ns": self.end_ns, "misfire": self.misfire,
                "headers": {h: v.hex() for h, v in self.headers.items()}}
        return (self.id, self.topic, self.value, self.key, json.dumps(spec), self.created_ns)

    @classmethod
    def from_row(cls, row: tuple) -> "Schedule":
        id, topic, value, key, spec_json, created_ns = row
        spec = json.loads(spec_json)
        headers = {h: bytes.fromhex(v) for h, v in spec.pop("headers").items()}
        return cls(id=id, topic=topic, value=bytes(value), key=None if key is None else bytes(key),
                   headers=headers, created_ns=created_ns, **spec)

    def describe(self) -> str:
        if self.cron is not None:
            return f"cron {self.cron!r} ({self.timezone})"
        if self.every is not None:
            return f"every {self.every:g}s"
        return f"at {datetime.fromtimestamp(self.at_ns / NS, dt_timezone.utc).isoformat()}"
