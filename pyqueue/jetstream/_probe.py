"""A minimal blocking NATS protocol exchange, without nats-py: is a server
up, and does its JetStream answer?  Used to wait for local test clusters."""

from __future__ import annotations

import json
import socket
import time

__all__ = ["jetstream_ready"]


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
            if not jetstream:
                s.sendall(b"PING\r\n")
                return b"PONG" in read_until(lambda b: b"PONG" in b or b"-ERR" in b)
            s.sendall(b"SUB _PQ_PROBE.r 1\r\nPUB $JS.API.INFO _PQ_PROBE.r 0\r\n\r\n")
            data = read_until(lambda b: b"-ERR" in b or _complete(b))
            if b"-ERR" in data or b"HMSG " in data:   # a status reply: no responders
                return False
            reply = json.loads(_complete(data))
            return "error" not in reply
    except (OSError, ValueError, TimeoutError):
        return False
