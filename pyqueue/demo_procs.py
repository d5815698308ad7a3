"""The processes of `pyqueue demo`: the photo format, the producer, the resize
workers and the scheduler.

Each function here is the target of a process started with the "spawn" method
(never a fork of a process holding broker maps and threads); each opens the
broker itself and talks to the parent over its own Pipe, never over a shared
multiprocessing.Queue, whose lock a SIGKILLed writer could leave held.  The
workers and the scheduler also hold the read end of a "lifeline" pipe that
only the parent can write: they stop when it closes, so that they end with
the parent even if the parent is killed.

A photo is a small binary file of our own: a fixed header, a payload that
compresses like image data, and a CRC-32 of the payload.  "Resizing" it is
real work on the bytes (a checksum, a downsample, zlib at level 9, a digest),
cheap enough that three workers keep up with the steady upload rate and fall
behind during the burst.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import struct
import threading
import time
import zlib
from multiprocessing.connection import Connection
from typing import Any, Optional

import pyqueue

UPLOADS = "photos"            # the producer's topic
DONE = "photos.done"          # one record per processed upload, written by the worker that processed it
DEAD = "photos.dlq"           # the dead-letter topic of the "resize" group
REPORTS = "reports"           # where the "report" schedule fires
GROUP = "resize"
VISIBILITY_TIMEOUT = 2.0      # seconds a worker holds an upload before it is redelivered
MAX_DELIVERIES = 3

_MAGIC = b"PQIMG1"
_HEADER = struct.Struct("<6sHHI")   # magic, width, height, payload length; then payload, then CRC-32


class CorruptPhoto(ValueError):
    """A photo whose header or checksum does not match its bytes."""


_TEXTURE: Optional[bytes] = None


def _texture() -> bytes:
    """256 KiB that compress about 3:1, like image data with flat areas: runs
    of one byte between a few noisy ones.  Photos are cut from it."""
    global _TEXTURE
    if _TEXTURE is None:
        rng = random.Random(0)
        out = bytearray()
        while len(out) < 256 << 10:
            out += bytes([rng.randrange(256)]) * rng.randrange(1, 8) + rng.randbytes(rng.randrange(1, 4))
        _TEXTURE = bytes(out)
    return _TEXTURE


def make_photo(rng: random.Random, corrupt: bool = False) -> bytes:
    """A photo of 8-40 KiB: slices of the texture and a little noise, so no
    two are alike.  corrupt=True flips a byte after the checksum is computed,
    as a damaged upload would."""
    texture = _texture()
    width, height = rng.choice(((640, 480), (800, 600), (1024, 768), (1280, 960)))
    size = rng.randrange(8 << 10, 40 << 10)
    parts = []
    while size > 0:
        n = min(size, rng.randrange(512, 4096))
        at = rng.randrange(len(texture) - n)
        parts.append(texture[at:at + n - 8] + rng.randbytes(8))
        size -= n
    payload = b"".join(parts)
    crc = zlib.crc32(payload)
    if corrupt:
        payload = payload[:100] + bytes([payload[100] ^ 0xFF]) + payload[101:]
    return _HEADER.pack(_MAGIC, width, height, len(payload)) + payload + struct.pack("<I", crc)


def resize(photo: bytes) -> dict[str, Any]:
    """Validate a photo and make its thumbnail; CorruptPhoto if it is damaged."""
    if len(photo) < _HEADER.size + 4:
        raise CorruptPhoto(f"{len(photo)} bytes is shorter than a photo header")
    magic, width, height, length = _HEADER.unpack_from(photo)
    if magic != _MAGIC or len(photo) != _HEADER.size + length + 4:
        raise CorruptPhoto(f"bad header (magic {magic!r}, length {length} in {len(photo)} bytes)")
    payload = memoryview(photo)[_HEADER.size:_HEADER.size + length]
    (want,) = struct.unpack_from("<I", photo, _HEADER.size + length)
    got = zlib.crc32(payload)
    if got != want:
        raise CorruptPhoto(f"checksum {got:08x} does not match {want:08x}")
    # Three thumbnails (the whole, every 2nd and every 4th byte: a stand-in for scaling),
    # each compressed hard; the work grows with the photo, as resizing does.
    thumbs = [zlib.compress(bytes(payload[::step]), 9) for step in (1, 2, 4)]
    return {"size": f"{width // 4}x{height // 4}", "thumb_bytes": sum(map(len, thumbs)),
            "digest": hashlib.blake2b(thumbs[-1], digest_size=8).hexdigest()}


def upload_id(i: int) -> bytes:
    return b"up-%06d" % i


def producer(path: str, uploads: int, rate: float, corrupt: int, seed: int, conn: Connection) -> None:
    """Send `uploads` photos: the first and last 40% paced at `rate` per
    second, the middle 20% as one burst at full speed.  Upload `corrupt` is
    damaged.  Tells the parent when the burst starts and ends, and how many
    sends returned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)     # Ctrl-C is the parent's to handle
    rng = random.Random(seed)
    burst = range(int(uploads * 0.4), int(uploads * 0.6))
    with pyqueue.open(path) as broker:
        topic = broker.topic(UPLOADS)
        next_at = time.monotonic()
        sent = 0
        try:
            for i in range(uploads):
                photo = make_photo(rng, corrupt=i == corrupt)
                if i == burst.start:
                    conn.send(("burst", len(burst)))
                elif i == burst.stop:
                    conn.send(("burst-end", sent))
                if i in burst:
                    next_at = time.monotonic()
                else:
                    next_at += 1.0 / rate
                    pause = next_at - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)             # pacing the uploads, not waiting for anything
                topic.send(photo, key=b"user-%d" % rng.randrange(100),
                           headers={"upload-id": upload_id(i), "sent-ns": str(time.time_ns()).encode()})
                sent += 1
            conn.send(("sent", sent))
        except BrokenPipeError:
            return                                    # the parent is gone: so is the demo


def _wait_closed(lifeline: Connection) -> None:
    """Return once the parent has closed its end of the lifeline, or died:
    it never writes to it, so end of file is the only way out."""
    try:
        while True:
            lifeline.recv()
    except EOFError:
        pass


def worker(path: str, index: int, stall_on: Optional[bytes], conn: Connection, lifeline: Connection) -> None:
    """A member of the "resize" queue-mode group: validate and resize each
    upload, record the result in photos.done, return (run() acks).  A corrupt
    photo raises: retried with backoff, dead-lettered after MAX_DELIVERIES.
    Stops, finishing the upload in hand, when the lifeline closes or on SIGTERM.

    stall_on: on its first delivery, this upload makes the worker tell the
    parent it holds the lease and then wait, so that the parent kills it
    with SIGKILL at a known moment; the upload goes to another worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)      # Ctrl-C is the parent's to handle, until run()
    with pyqueue.open(path) as broker:
        done = broker.topic(DONE)
        consumer = broker.topic(UPLOADS).consumer(
            GROUP, mode="queue", visibility_timeout=VISIBILITY_TIMEOUT, max_deliveries=MAX_DELIVERIES,
            backoff=pyqueue.Backoff(initial=0.05, maximum=1.0, multiplier=2.0, jitter=0.1),
            dead_letter=DEAD)

        def handle(msg: pyqueue.Message) -> None:
            uid = msg.headers["upload-id"]
            if uid == stall_on and msg.delivery_count == 1:
                conn.send(("holding", uid.decode(), msg.partition, msg.offset))
                conn.poll(60)          # returns when the parent closes its end; it kills us first
            result = resize(msg.value)
            result.update(id=uid.decode(), worker=index, pid=os.getpid(),
                          delivery=msg.delivery_count, sent_ns=int(msg.headers["sent-ns"]))
            done.send(json.dumps(result).encode(), key=uid)

        def stop_when_closed() -> None:
            # SIGTERM rather than consumer.stop(): a stop() that comes before
            # run() has started is not remembered, while a SIGTERM then ends
            # the process (holding nothing yet) and one during run() makes it
            # finish the upload in hand and return.
            _wait_closed(lifeline)
            os.kill(os.getpid(), signal.SIGTERM)

        threading.Thread(target=stop_when_closed, name="lifeline", daemon=True).start()
        conn.send(("ready", os.getpid()))
        try:
            consumer.run(handle)       # SIGTERM: finish the upload in hand, ack it, return
        finally:
            consumer.close()


def scheduler(path: str, lifeline: Connection) -> None:
    """Run the broker's scheduler (the active one: nobody else runs one)
    until the lifeline closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with pyqueue.open(path) as broker:
        s = broker.scheduler()
        s.start()
        _wait_closed(lifeline)
        s.stop()
