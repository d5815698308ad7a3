"""Topic configuration: defaults, limits, validation and the stored form.

A topic's configuration is fixed when the topic is created and stored beside
it as topic.json; opening the topic again with a different value for any option
raises ConfigError.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, Optional

from pyqueue import _native
from pyqueue.errors import ConfigError, CorruptionError, InvalidName

__all__ = ["TopicConfig", "validate_name", "MAX_PARTITIONS", "NAME_RULE"]

MiB = 1 << 20
MAX_PARTITIONS = 1024
NAME_RULE = "1 to 249 characters of [A-Za-z0-9._-], not '.' or '..'"
_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}\Z")
CONFIG_FORMAT = 1

# Per-message overhead that must fit in a segment besides the value.
_FRAME_OVERHEAD = _native.SEGMENT_HEADER_SIZE + _native.FRAME_HEADER_SIZE + 8 + 4


def validate_name(name: object, what: str = "topic") -> str:
    """Return `name` if it is a valid topic or group name, else raise InvalidName."""
    if not isinstance(name, str):
        raise TypeError(f"{what} name must be str, not {type(name).__name__}")
    if not _NAME.match(name) or name in (".", ".."):
        raise InvalidName(f"invalid {what} name {name!r}: use {NAME_RULE}")
    return name


@dataclasses.dataclass(frozen=True)
class TopicConfig:
    """Create-time options of a topic (DESIGN.md §2)."""

    partitions: int = 1
    segment_bytes: int = 64 * MiB
    retention_bytes: Optional[int] = None
    retention_seconds: Optional[float] = None
    max_message_bytes: int = 1 * MiB
    max_depth: Optional[int] = None
    dedup_window: float = 300.0
    dedup_capacity: int = 1 << 17

    def __post_init__(self) -> None:
        _int_in("partitions", self.partitions, 1, MAX_PARTITIONS)
        _int_in("segment_bytes", self.segment_bytes, _native.SEGMENT_MIN_BYTES, _native.SEGMENT_MAX_BYTES)
        if self.segment_bytes % 4096:
            raise ConfigError(f"segment_bytes={self.segment_bytes} must be a multiple of 4096")
        _int_in("max_message_bytes", self.max_message_bytes, 1, self.segment_bytes - _FRAME_OVERHEAD)
        if self.retention_bytes is not None:
            _int_in("retention_bytes", self.retention_bytes, 1, 1 << 62)
        if self.retention_seconds is not None:
            if (not isinstance(self.retention_seconds, (int, float)) or isinstance(self.retention_seconds, bool)
                    or not math.isfinite(self.retention_seconds) or self.retention_seconds <= 0):
                raise ConfigError(f"retention_seconds={self.retention_seconds!r} must be a positive number")
        if self.max_depth is not None:
            _int_in("max_depth", self.max_depth, 1, 1 << 62)
        if (not isinstance(self.dedup_window, (int, float)) or isinstance(self.dedup_window, bool)
                or not math.isfinite(self.dedup_window) or not 0 < self.dedup_window <= 30 * 86400):
            raise ConfigError(f"dedup_window={self.dedup_window!r} must be between 0 and 30 days (seconds)")
        _int_in("dedup_capacity", self.dedup_capacity, 16, 1 << 26)

    @classmethod
    def for_create(cls, options: dict[str, Any]) -> "TopicConfig":
        """The config of a new topic from the options given (None = default).
        max_message_bytes defaults to 1 MiB, or what a smaller segment holds."""
        given = {k: v for k, v in options.items() if v is not None}
        if "max_message_bytes" not in given and isinstance(given.get("segment_bytes"), int):
            given["max_message_bytes"] = max(1, min(cls.max_message_bytes,
                                                    given["segment_bytes"] - _FRAME_OVERHEAD))
        return cls(**given)

    def to_json(self, name: str) -> str:
        return json.dumps({"format": CONFIG_FORMAT, "name": name, **dataclasses.asdict(self)},
                          indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str) -> "TopicConfig":
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("format") != CONFIG_FORMAT:
                raise ValueError(f"unknown format {data.get('format') if isinstance(data, dict) else data!r}")
            fields = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in fields})
        except (ValueError, TypeError, ConfigError) as e:
            raise CorruptionError(f"{path}: unreadable topic configuration ({e})") from e

    def merged(self, name: str, requested: dict[str, Any]) -> "TopicConfig":
        """Check explicitly requested options against this stored config."""
        for key, value in requested.items():
            if value is not None and getattr(self, key) != value:
                raise ConfigError(f"topic {name!r} exists with {key}={getattr(self, key)!r}; "
                                  f"asked for {key}={value!r}")
        return self


def _int_in(name: str, value: object, lo: int, hi: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} must be an integer")
    if not lo <= value <= hi:
        raise ConfigError(f"{name}={value} is outside {lo}..{hi}")
