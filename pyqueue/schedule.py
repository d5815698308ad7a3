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

__all__ = ["Schedule", "COLUMNS", "check_row", "next_after", "first_after", "fire_plan", "MISFIRE", "MIN_EVERY",
           "MAX_CATCH_UP", "SLACK_NS", "scheduled_for"]

MISFIRE = ("coalesce", "skip", "all")
MIN_EVERY = 0.001            # seconds
MAX_CATCH_UP = 1000          # misfire="all": fires published per catch-up, the rest coalesced
NS = 1_000_000_000
SLACK_NS = 10_000             # a timer may pop this early: a float's rounding of an epoch time in ns
# A schedule's columns in the scheduler's table, in Schedule.to_row() order.
COLUMNS = ("id", "topic", "value", "key", "headers", "cron", "every", "at_ns", "timezone",
           "start_ns", "end_ns", "misfire", "created_ns")


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


_ZONES: set[str] = set()      # time zone names known to be valid


def check_row(id: str, *, topic: str, value: bytes, key: Optional[bytes] = None,
              headers: Optional[dict[str, bytes]] = None, cron: Optional[str] = None,
              every: Optional[float] = None, at: Any = None, timezone: Optional[str] = None,
              start: Any = None, end: Any = None, misfire: str = "coalesce", created_ns: int = 0) -> tuple:
    """Check the arguments of a schedule and return it as a row of COLUMNS:
    the scheduler stores rows, and builds a Schedule only to fire one."""
    validate_name(id, "schedule")
    validate_name(topic)
    if type(value) is not bytes:
        if not isinstance(value, (bytes, bytearray)):
            raise TypeError(f"value must be bytes, not {type(value).__name__}")
        value = bytes(value)
    if key is not None and type(key) is not bytes:
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError(f"key must be bytes or None, not {type(key).__name__}")
        key = bytes(key)
    headers_json = None
    if headers:
        for h, v in headers.items():
            if not isinstance(h, str) or not isinstance(v, (bytes, bytearray)):
                raise TypeError("headers must be a dict of str -> bytes")
            if h.startswith("x-schedule"):
                raise ConfigError(f"header {h!r} is set by the scheduler")
        headers_json = json.dumps({h: bytes(v).hex() for h, v in headers.items()})
    if (cron is not None) + (every is not None) + (at is not None) != 1:
        kinds = [k for k, v in (("cron", cron), ("every", every), ("at", at)) if v is not None]
        raise ConfigError(f"schedule {id!r} needs exactly one of cron=, every=, at= (got "
                          f"{', '.join(kinds) or 'none'})")
    tz = timezone or "UTC"
    if not isinstance(tz, str):
        raise TypeError("timezone must be an IANA name such as 'Europe/Paris'")
    if tz not in _ZONES:
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"unknown time zone {tz!r}") from e
        _ZONES.add(tz)
    if cron is not None:
        if not isinstance(cron, str) or not croniter.is_valid(cron):
            raise ConfigError(f"invalid cron expression {cron!r}")
    if every is not None:
        if not isinstance(every, (int, float)) or isinstance(every, bool):
            raise TypeError("every must be a number of seconds")
        if not math.isfinite(every) or every < MIN_EVERY:
            raise ConfigError(f"every={every!r} must be at least {MIN_EVERY} seconds")
        every = float(every)
    if misfire not in MISFIRE:
        raise ConfigError(f"misfire={misfire!r} must be one of {', '.join(MISFIRE)}")
    start_ns = None if start is None else _to_ns(start, "start")
    end_ns = None if end is None else _to_ns(end, "end")
    if start_ns is not None and end_ns is not None and end_ns <= start_ns:
        raise ConfigError("end must be after start")
    at_ns = None if at is None else _to_ns(at, "at")
    return (id, topic, value, key, headers_json, cron, every, at_ns, tz, start_ns, end_ns, misfire, created_ns)


def next_after(cron: Optional[str], every: Optional[float], at_ns: Optional[int], tz: str,
               start_ns: Optional[int], end_ns: Optional[int], created_ns: int, t_ns: int) -> Optional[int]:
    """The first fire time strictly after t_ns of a schedule with these
    fields, or None if there is none."""
    floor = t_ns
    if start_ns is not None and start_ns - 1 > floor:
        floor = start_ns - 1
    if at_ns is not None:
        nxt = at_ns if at_ns > floor else None
    elif every is not None:
        step = int(every * NS)
        if start_ns is not None and floor < start_ns:
            nxt = start_ns                        # with start=, the first fire is at start
        else:
            anchor = start_ns if start_ns is not None else created_ns
            nxt = anchor + step * ((max(floor, anchor) - anchor) // step + 1)
    else:
        base = datetime.fromtimestamp(floor / NS, ZoneInfo(tz))
        nxt = int(croniter(cron, base).get_next(datetime).timestamp() * NS)
    if nxt is not None and end_ns is not None and nxt > end_ns:
        return None
    return nxt


def first_after(row: tuple, last_ns: Optional[int]) -> Optional[int]:
    """The next fire time of a schedule row (COLUMNS) whose last fire was at
    last_ns (None: it never fired)."""
    cron, every, at_ns, tz, start_ns, end_ns, created_ns = row[5:11] + (row[12],)
    if last_ns is None:                           # a one-off in the past still fires once
        last_ns = (at_ns if at_ns is not None else created_ns) - 1
    return next_after(cron, every, at_ns, tz, start_ns, end_ns, created_ns, last_ns)


def scheduled_for(t_ns: int) -> str:
    """A fire time as the x-scheduled-for header gives it (ISO 8601, UTC)."""
    return datetime.fromtimestamp(t_ns / NS, dt_timezone.utc).isoformat()


def fire_plan(spec: "Schedule", last_ns: Optional[int], now_ns: int,
              grace_ns: int) -> tuple[list[tuple[int, int]], Optional[int]]:
    """What a scheduler does at now_ns for a schedule whose last fire (or
    recorded skip) was at last_ns: (actions, next fire time after them).

    Each action is (fire time, stands_for): publish the fire time's message
    standing for that many fire times (x-coalesced when more than one), or,
    with stands_for 0, record the time as skipped.  No actions when nothing
    is due yet (then `next` is the first fire time).  Fire times less than
    grace_ns late are simply published; later ones are misfires and follow
    the schedule's policy: "all" (each, at most MAX_CATCH_UP, the rest
    coalesced into the last), "skip" or "coalesce"."""
    first = spec.next_fire(last_ns)
    if first is None or first > now_ns + SLACK_NS:
        return [], first
    due = [first]                             # every fire time now due, up to the cap
    while len(due) <= MAX_CATCH_UP:
        nxt = spec.next_after(due[-1])
        if nxt is None or nxt > now_ns:
            break
        due.append(nxt)
    extra = 0
    if len(due) > MAX_CATCH_UP:               # long downtime: find the true latest and count
        due[-1], extra = _latest_due(spec, due[-1], now_ns)
    late = [t for t in due if now_ns - t > grace_ns]
    on_time = due[len(late):]
    actions: list[tuple[int, int]] = []
    if late and spec.misfire == "all":
        actions += [(t, 1) for t in late[:-1]] + [(late[-1], 1 + extra)]
    elif late and spec.misfire == "skip":
        actions.append((late[-1], 0))
    elif late:
        actions.append((late[-1], len(late) + extra))
    actions += [(t, 1) for t in on_time]
    return actions, spec.next_after(due[-1])


def _latest_due(spec: "Schedule", from_ns: int, now: int) -> tuple[int, int]:
    """The latest fire time <= now after from_ns, and how many lie between."""
    if spec.every is not None:
        step = int(spec.every * NS)
        n = (now - from_ns) // step
        return from_ns + n * step, n
    t, n = from_ns, 0
    while True:                               # cron or at: walk (cron is minutely at most)
        nxt = spec.next_after(t)
        if nxt is None or nxt > now:
            return t, n
        t, n = nxt, n + 1


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
    def create(cls, id: str, **options: Any) -> "Schedule":
        """A checked schedule: the keyword arguments of Scheduler.add()."""
        return cls.from_row(check_row(id, **options))

    # -- fire times --

    def next_after(self, t_ns: int) -> Optional[int]:
        """The first fire time strictly after t_ns, or None if there is none."""
        return next_after(self.cron, self.every, self.at_ns, self.timezone, self.start_ns, self.end_ns,
                          self.created_ns, t_ns)

    def next_fire(self, last_ns: Optional[int]) -> Optional[int]:
        """The next fire time after a last fire at last_ns (None: it never fired)."""
        if last_ns is None:
            last_ns = (self.at_ns if self.at_ns is not None else self.created_ns) - 1
        return self.next_after(last_ns)

    def fire_times(self, after_ns: int, count: int) -> list[int]:
        out: list[int] = []
        t = after_ns
        while len(out) < count:
            nxt = self.next_after(t)
            if nxt is None:
                break
            out.append(nxt)
            t = nxt
        return out

    # -- storage --

    def to_row(self) -> tuple:
        """The schedule as a row of COLUMNS (headers as JSON, NULL when none)."""
        headers = json.dumps({h: v.hex() for h, v in self.headers.items()}) if self.headers else None
        return (self.id, self.topic, self.value, self.key, headers, self.cron, self.every, self.at_ns,
                self.timezone, self.start_ns, self.end_ns, self.misfire, self.created_ns)

    @classmethod
    def from_row(cls, row: tuple) -> "Schedule":
        (id, topic, value, key, headers, cron, every, at_ns, tz, start_ns, end_ns, misfire,
         created_ns) = row
        return cls(id=id, topic=topic, value=bytes(value), key=None if key is None else bytes(key),
                   headers={} if headers is None else {h: bytes.fromhex(v) for h, v in json.loads(headers).items()},
                   cron=cron, every=every, at_ns=at_ns, timezone=tz, start_ns=start_ns, end_ns=end_ns,
                   misfire=misfire, created_ns=created_ns)

    @classmethod
    def from_legacy_row(cls, row: tuple) -> "Schedule":
        """A row of the first layout: (id, topic, value, key, spec JSON, created_ns)."""
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
        assert self.at_ns is not None
        return f"at {datetime.fromtimestamp(self.at_ns / NS, dt_timezone.utc).isoformat()}"
