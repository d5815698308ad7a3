"""Messages of the JetStream backend: pyqueue's key and headers as NATS
headers, and the Message class handed to users.

A pyqueue header (str -> bytes) travels as a NATS header of the same name
when the name is an HTTP token and the value is non-empty printable ASCII
without leading or trailing blanks (what NATS headers carry unchanged), so
other NATS clients see it as is.  Any other header, and any whose name starts
with "Nats-" or "Pq-" (reserved), travels in one "Pq-Headers" header: the
embedded engine's header encoding, base64.  The key travels in "Pq-Key"
(printable ASCII) or "Pq-Key-B64".  NATS headers a message has besides these
(set by other NATS clients) read back as pyqueue headers, except "Nats-*".
"""

from __future__ import annotations

import base64
import re
from typing import Any, Optional

from pyqueue._native import decode_headers, encode_headers
from pyqueue.errors import PyQueueError

__all__ = ["JsMessage", "to_nats_headers", "from_nats_headers"]

KEY = "Pq-Key"
KEY_B64 = "Pq-Key-B64"
EXTRA = "Pq-Headers"
DELIVER_AT = "Pq-Deliver-At"      # send(delay=): epoch ns before which queue groups hold it back
MSG_ID = "Nats-Msg-Id"
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_PLAIN = re.compile(rb"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?\Z")


def _reserved(name: str) -> bool:
    low = name[:5].lower()
    return low == "nats-" or low[:3] == "pq-"


def to_nats_headers(key: Optional[bytes], headers: Optional[dict[str, bytes]],
                    msg_id: Optional[str] = None, deliver_at: Optional[int] = None) -> Optional[dict[str, str]]:
    """The NATS headers carrying `key`, `headers`, the dedup id and the time
    a delayed message becomes due (None if there is nothing to carry).
    TypeError on a key or value that is not bytes."""
    out: dict[str, str] = {}
    if key is not None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        key = bytes(key)
        if _PLAIN.match(key):
            out[KEY] = key.decode("ascii")
        else:
            out[KEY_B64] = base64.b64encode(key).decode("ascii") or "="
    if headers:
        extra: Optional[dict[str, bytes]] = None
        for name, value in headers.items():
            if not isinstance(name, str):
                raise TypeError(f"header names must be str, not {type(name).__name__}")
            if not isinstance(value, (bytes, bytearray)):
                raise TypeError(f"header {name!r} must be bytes, not {type(value).__name__}")
            if _TOKEN.match(name) and not _reserved(name) and _PLAIN.match(value):
                out[name] = value.decode("ascii")
            else:
                if extra is None:
                    extra = {}
                extra[name] = bytes(value)
        if extra:
            out[EXTRA] = base64.b64encode(encode_headers(extra) or b"").decode("ascii")
    if msg_id is not None:
        out[MSG_ID] = msg_id
    if deliver_at is not None:
        out[DELIVER_AT] = str(deliver_at)
    return out or None


def from_nats_headers(nh: Optional[dict[str, str]]) -> tuple[Optional[bytes], dict[str, bytes]]:
    """(key, headers) from a message's NATS headers."""
    key: Optional[bytes] = None
    headers: dict[str, bytes] = {}
    if not nh:
        return key, headers
    for name, value in nh.items():
        low = name[:5].lower()
        if low[:3] == "pq-" or low == "nats-":
            if name == KEY:
                key = value.encode("ascii", "replace")
            elif name == KEY_B64:
                key = base64.b64decode(value) if value != "=" else b""
            elif name == EXTRA:
                headers.update(decode_headers(base64.b64decode(value)))
            continue
        headers[name] = value.encode("utf-8")
    return key, headers


class JsMessage:
    """One message of a JetStream-backed topic: the same attributes as the
    embedded engine's Message (topic, partition, offset, timestamp, key,
    value, headers, delivery_count; ack/nack/extend when a consumer
    delivered it).  offset is the stream sequence minus one."""

    __slots__ = ("topic", "partition", "offset", "timestamp_ns", "key", "value", "headers",
                 "delivery_count", "_owner", "_reply", "_deadline", "_done", "_due_ns")

    def __init__(self, topic: str, partition: int, offset: int, timestamp_ns: int, key: Optional[bytes],
                 value: bytes, headers: dict[str, bytes], delivery_count: int = 0,
                 owner: Any = None, reply: Optional[str] = None) -> None:
        self.topic = topic
        self.partition = partition
        self.offset = offset
        self.timestamp_ns = timestamp_ns
        self.key = key
        self.value = value
        self.headers = headers
        self.delivery_count = delivery_count
        self._owner = owner
        self._reply = reply
        self._deadline = 0.0          # queue mode: when the lease ends here (monotonic)
        self._done = False            # acked, nacked or dead-lettered by this process
        self._due_ns = 0              # send(delay=): not for queue groups before this epoch ns

    @property
    def timestamp(self) -> float:
        """Seconds since the epoch (float): the time the stream stored it."""
        return self.timestamp_ns / 1e9

    def ack(self) -> None:
        if self._owner is None:
            raise PyQueueError("this message was read without a consumer: there is nothing to ack")
        self._owner._ack(self)

    def nack(self, delay: Optional[float] = None) -> None:
        if self._owner is None:
            raise PyQueueError("this message was read without a consumer: there is nothing to nack")
        self._owner._nack(self, delay)

    def extend(self, seconds: float) -> None:
        if self._owner is None:
            raise PyQueueError("this message was read without a consumer: there is no lease to extend")
        self._owner._extend(self, seconds)

    def __repr__(self) -> str:
        v = self.value if len(self.value) <= 32 else self.value[:32] + b"..."
        return (f"Message(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
                f"key={self.key!r}, value={v!r})")
