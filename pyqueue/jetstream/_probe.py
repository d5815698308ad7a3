"""A minimal blocking NATS protocol exchange, without nats-py: is a server
up, and does its JetStream answer?  Used to wait for local test clusters."""

from __future__ import annotations

import json
import socket
import time

__all__ = ["jetstream_ready", "jetstream_request"]


def _complete(buf: bytes) -> bytes:
    """The payload of the first whole MSG in `buf`, or b"" if none yet."""
    i = buf.find(b"MSG ")
    if i < 0:
        return b""
    j = buf.find(b"\r\n", i)
    if j < 0:
        return b""
    size = int(buf[i:j].split()[-1])
    body = buf[j + 2:j + 2 + size]
    return body if len(body) == size else b""


def jetstream_ready(port: int, jetstream: bool = True, timeout: float = 1.0) -> bool:
    """True if the server on 127.0.0.1:`port` accepts a client and (with
    `jetstream`) answers $JS.API.INFO without an error: the meta group has a
    leader.  Never raises; False on any failure or after `timeout` seconds."""
    if not jetstream:
        return jetstream_request(port, None, b"", timeout) is not None
    reply = jetstream_request(port, "$JS.API.INFO", b"", timeout)
    return reply is not None and "error" not in reply


def jetstream_request(port: int, subject: "str | None", payload: bytes, timeout: float = 1.0) -> "dict | None":
    """One request to the server on 127.0.0.1:`port`: its JSON answer, or
    None on any failure (no answer, no responders, `timeout` seconds
    passed).  subject None: only a PING (the answer is {} if it PONGs).
    Never raises."""
    deadline = time.monotonic() + max(0.05, timeout)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=max(0.05, timeout)) as s:
            buf = b""

            def read_until(pred) -> bytes:
                nonlocal buf
                while not pred(buf):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise TimeoutError
                    s.settimeout(left)
                    chunk = s.recv(65536)
                    if not chunk:
                        raise ConnectionError
                    buf += chunk
                return buf

            read_until(lambda b: b"\r\n" in b)          # INFO {...}
            buf = b""
            s.sendall(b'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true}\r\n')
            if subject is None:
                s.sendall(b"PING\r\n")
                return {} if b"PONG" in read_until(lambda b: b"PONG" in b or b"-ERR" in b) else None
            s.sendall(b"SUB _PQ_PROBE.r 1\r\nPUB " + subject.encode() + b" _PQ_PROBE.r "
                      + str(len(payload)).encode() + b"\r\n" + payload + b"\r\n")
            data = read_until(lambda b: b"-ERR" in b or _complete(b))
            if b"-ERR" in data or b"HMSG " in data:   # a status reply: no responders
                return None
            reply = json.loads(_complete(data))
            return reply if isinstance(reply, dict) else None
    except (OSError, ValueError, TimeoutError):
        return None
