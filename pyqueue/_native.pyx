# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The thin binding over native/: no policy here, only calls, conversions and
the one place where negative C return codes become pyqueue exceptions."""

from cpython.buffer cimport (PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release,
                             PyBuffer_FillInfo, PyBUF_SIMPLE, PyBUF_ND, PyBUF_FORMAT,
                             PyBUF_C_CONTIGUOUS)
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython cimport array
cimport cython
from libc.stdint cimport uint32_t, uint64_t, int64_t, UINT64_MAX, INT64_MAX
from libc.stdlib cimport malloc, calloc, free
from libc.string cimport memcpy

import array as _array
import os as _os
import time as _time

from pyqueue.errors import (Closed, ConfigError, CorruptionError, LeaseLost, MemberFenced,
                            MessageTooLarge, OffsetOutOfRange, PyQueueError, StorageError, TableFull)

FORMAT_VERSION = PQ_FORMAT_VERSION
FRAME_HEADER_SIZE = PQ_FRAME_HEADER_SIZE
SEGMENT_HEADER_SIZE = PQ_SEGMENT_HEADER_SIZE
SEGMENT_MIN_BYTES = PQ_SEGMENT_MIN_BYTES
SEGMENT_MAX_BYTES = PQ_SEGMENT_MAX_BYTES

DEF READ_CHUNK = 1024


# ---- errors ----

cdef object _error(int rc):
    cdef int code = -rc
    msg = pq_error_message().decode("utf-8", "replace")
    if code == PQ_ECORRUPT or code == PQ_EFORMAT:
        return CorruptionError(msg)
    if code == PQ_ETOOLARGE:
        return MessageTooLarge(msg)
    if code == PQ_ERANGE:
        return OffsetOutOfRange(msg)
    if code == PQ_ECONFIG:
        return ConfigError(msg)
    if code == PQ_ECLOSED:
        return Closed(msg)
    if code == PQ_ELEASE:
        return LeaseLost(msg)
    if code == PQ_EFENCED:
        return MemberFenced(msg)
    if code == PQ_EFULL:
        return TableFull(msg)
    return StorageError(code, msg or _os.strerror(code))


cdef inline int _check(int rc) except -1:
    if rc < 0:
        raise _error(rc)
    return rc


# ---- bytes-like arguments ----

cdef inline bint _get_buffer(object obj, Py_buffer *view, const char **ptr, Py_ssize_t *n,
                             str what) except -1:
    """Point ptr/n at obj's bytes.  Returns True if `view` must be released."""
    if type(obj) is bytes:
        ptr[0] = PyBytes_AS_STRING(obj)
        n[0] = PyBytes_GET_SIZE(obj)
        return False
    if isinstance(obj, str) or not PyObject_CheckBuffer(obj):
        raise TypeError(f"{what} must be bytes-like (bytes, bytearray, memoryview), "
                        f"not {type(obj).__name__}")
    PyObject_GetBuffer(obj, view, PyBUF_SIMPLE)
    ptr[0] = <const char *>view.buf
    n[0] = view.len
    return True


cdef inline int _check_len(Py_ssize_t n, str what) except -1:
    if n >= 0xFFFFFFFF:
        raise MessageTooLarge(f"{what} of {n} bytes exceeds the 4 GiB frame limit")
    return 0


# ---- headers ----

def encode_headers(headers):
    """dict[str, bytes] -> the frame's header blob (docs/FORMAT.md, "Headers")."""
    if headers is None:
        return None
    if not isinstance(headers, dict):
        raise TypeError(f"headers must be a dict of str -> bytes, not {type(headers).__name__}")
    if not headers:
        return None
    parts = []
    cdef Py_ssize_t total = 0
    for name, value in headers.items():
        if not isinstance(name, str):
            raise TypeError(f"header names must be str, not {type(name).__name__}")
        if isinstance(value, str) or not PyObject_CheckBuffer(value):
            raise TypeError(f"header {name!r} must be bytes-like, not {type(value).__name__}")
        bname = name.encode("utf-8")
        bvalue = bytes(value)
        if len(bname) > 0xFFFF:
            raise MessageTooLarge(f"header name of {len(bname)} bytes exceeds 65535")
        _check_len(len(bvalue), f"header {name!r}")
        parts.append(len(bname).to_bytes(2, "little") + len(bvalue).to_bytes(4, "little"))
        parts.append(bname)
        parts.append(bvalue)
    return b"".join(parts)


def decode_headers(bytes blob):
    cdef dict out = {}
    if blob is None:
        return out
    cdef const unsigned char *p = <const unsigned char *>PyBytes_AS_STRING(blob)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(blob), i = 0
    cdef uint32_t nl, vl
    while i < n:
        if i + 6 > n:
            raise CorruptionError(f"malformed headers: {n - i} trailing bytes")
        nl = p[i] | (p[i + 1] << 8)
        vl = p[i + 2] | (p[i + 3] << 8) | (p[i + 4] << 16) | (<uint32_t>p[i + 5] << 24)
        i += 6
        if i + nl + vl > n:
            raise CorruptionError("malformed headers: a length runs past the end")
        name = blob[i:i + nl].decode("utf-8", "replace")
        out[name] = blob[i + nl:i + nl + vl]
        i += nl + vl
    return out


# ---- values handed to users ----

@cython.no_gc
cdef class Receipt:
    """Where a sent message landed: (topic, partition, offset)."""

    def __init__(self, str topic, int partition, offset):
        self.topic = topic
        self.partition = partition
        self.offset = offset

    def __iter__(self):
        return iter((self.topic, self.partition, self.offset))

    def __eq__(self, other):
        if isinstance(other, Receipt):
            return (self.topic, self.partition, self.offset) == tuple(other)
        if isinstance(other, tuple):
            return (self.topic, self.partition, self.offset) == other
        return NotImplemented

    def __hash__(self):
        return hash((self.topic, self.partition, self.offset))

    def __repr__(self):
        return f"Receipt(topic={self.topic!r}, partition={self.partition}, offset={self.offset})"

    def __reduce__(self):
        return (Receipt, (self.topic, self.partition, self.offset))


@cython.no_gc   # millions are made; untracked, they never trigger a collection
cdef class Message:
    """One record: offset, timestamp, key, value, headers; ack/nack/extend when
    it was delivered by a consumer.  Not tracked by the cycle collector: a
    Message referring to itself (through its headers) would be leaked, not
    crash."""

    @property
    def timestamp(self):
        """Seconds since the epoch (float)."""
        return self.timestamp_ns / 1e9

    @property
    def headers(self):
        if self._headers is None:
            self._headers = decode_headers(self._raw_headers)
        return self._headers

    def ack(self):
        if self._owner is None:
            raise PyQueueError("this message was read without a consumer: there is nothing to ack")
        self._owner._ack(self)

    def nack(self, delay=None):
        if self._owner is None:
            raise PyQueueError("this message was read without a consumer: there is nothing to nack")
        self._owner._nack(self, delay)

    def extend(self, seconds):
        if self._owner is None:
            raise PyQueueError("this message was read without a consumer: there is no lease to extend")
        self._owner._extend(self, seconds)

    def _set_delivery(self, int count, owner):
        self.delivery_count = count
        self._owner = owner

    def __repr__(self):
        v = self.value if len(self.value) <= 32 else self.value[:32] + b"..."
        return (f"Message(topic={self.topic!r}, partition={self.partition}, offset={self.offset}, "
                f"key={self.key!r}, value={v!r})")


cdef inline Message _make_message(str topic, int partition, pq_record_t *r):
    cdef Message m = Message.__new__(Message)
    m.topic = topic
    m.partition = partition
    m.offset = r.offset
    m.timestamp_ns = r.timestamp
    m.key = None if r.key == NULL else PyBytes_FromStringAndSize(<const char *>r.key, r.key_len)
    m.value = PyBytes_FromStringAndSize(<const char *>r.value, r.value_len)
    if r.headers_len:
        m._raw_headers = PyBytes_FromStringAndSize(<const char *>r.headers, r.headers_len)
    m.delivery_count = 0
    return m


cdef class SegmentView:
    """A read-only buffer over part of a mapped segment.  It holds a reference
    to the mapping, so its bytes stay valid after the segment is closed or
    removed by retention (the file lives on while mapped)."""
    cdef pq_segment_t *_seg
    cdef Py_ssize_t _start, _length

    def __getbuffer__(self, Py_buffer *buf, int flags):
        PyBuffer_FillInfo(buf, self, self._seg.map + self._start, self._length, 1, flags)

    def __releasebuffer__(self, Py_buffer *buf):
        pass

    def __len__(self):
        return self._length

    def __dealloc__(self):
        if self._seg != NULL:
            pq_segment_decref(self._seg)


# ---- one partition ----

cdef class Log:
    """A partition log (native/log.h).  Safe to share between threads; the GIL
    is released around every call that may wait."""

    def __cinit__(self):
        self._log = NULL

    def __init__(self, str path, str topic, int partition, *, uint64_t segment_bytes,
                 uint64_t max_message_bytes, uint64_t retention_bytes=0,
                 double retention_seconds=0.0, bint create=True):
        cdef pq_log_config_t cfg
        cfg.segment_bytes = segment_bytes
        cfg.max_message_bytes = max_message_bytes
        cfg.retention_bytes = retention_bytes
        cfg.retention_ns = <int64_t>(retention_seconds * 1e9)
        bpath = _os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int rc
        pq_error_clear()
        with nogil:
            rc = pq_log_open(cpath, &cfg, create, &self._log)
        _check(rc)
        self.path = path
        self.topic = topic
        self.partition = partition
        self._max_message_bytes = max_message_bytes

    cdef int _enter(self) except -1:
        if self._closed:
            raise Closed(f"partition {self.topic}[{self.partition}] is closed")
        self._busy += 1
        return 0

    cdef void _leave(self):
        self._busy -= 1

    def close(self):
        """Release the partition.  Waits for calls in flight in other threads."""
        if self._closed:
            return
        self._closed = True
        if self._log != NULL:
            pq_log_wake_all(self._log)
        while self._busy > 0:       # the GIL orders this with _enter/_leave
            _time.sleep(0.0005)
        if self._log != NULL:
            pq_log_close(self._log)
            self._log = NULL

    def __dealloc__(self):
        if self._log != NULL:
            pq_log_close(self._log)

    @property
    def closed(self):
        return self._closed

    # -- writes --

    def append(self, value, key=None, bytes headers=None, int64_t deliver_at=0,
               uint32_t attributes=0):
        """Append one record; returns its Receipt."""
        cdef pq_record_t rec
        cdef Py_buffer vb, kb
        cdef bint vrel = False, krel = False
        cdef const char *p
        cdef Py_ssize_t n
        cdef uint64_t first = 0
        cdef int rc
        self._enter()
        try:
            vrel = _get_buffer(value, &vb, &p, &n, "value")
            _check_len(n, "value")
            rec.value = p
            rec.value_len = <uint32_t>n
            if key is None:
                rec.key = NULL
                rec.key_len = PQ_NO_KEY
            else:
                krel = _get_buffer(key, &kb, &p, &n, "key")
                _check_len(n, "key")
                rec.key = p
                rec.key_len = <uint32_t>n
            if headers is None:
                rec.headers = NULL
                rec.headers_len = 0
            else:
                rec.headers = PyBytes_AS_STRING(headers)
                rec.headers_len = <uint32_t>PyBytes_GET_SIZE(headers)
            rec.deliver_at = deliver_at
            rec.attributes = attributes
            with nogil:
                rc = pq_log_append(self._log, &rec, 1, &first)
            _check(rc)
        finally:
            if vrel:
                PyBuffer_Release(&vb)
            if krel:
                PyBuffer_Release(&kb)
            self._leave()
        cdef Receipt r = Receipt.__new__(Receipt)
        r.topic = self.topic
        r.partition = self.partition
        r.offset = first
        return r

    def append_batch(self, values, key=None, bytes headers=None):
        """Append many records under one lock; returns (first_offset, count).
        `values` is a sequence of bytes-like objects or a 2-D C-contiguous
        array of bytes (one row per message)."""
        cdef Py_buffer kb, rows
        cdef bint krel = False, rrel = False
        cdef const char *kp = NULL
        cdef Py_ssize_t kn = 0, n = 0, i, row_len = 0, ln
        cdef const char *p
        cdef pq_record_t *recs = NULL
        cdef Py_buffer *views = NULL
        cdef unsigned char *held = NULL
        cdef uint64_t first = 0
        cdef int rc
        cdef list seq = None
        self._enter()
        try:
            if key is not None:
                krel = _get_buffer(key, &kb, &kp, &kn, "key")
                _check_len(kn, "key")
            if PyObject_CheckBuffer(values) and not isinstance(values, (bytes, bytearray, str)):
                PyObject_GetBuffer(values, &rows, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_ND)
                rrel = True
                if rows.ndim != 2 or rows.itemsize != 1:
                    raise TypeError("send_batch takes a sequence of bytes-like values or a 2-D "
                                    f"array of single bytes, not a {rows.ndim}-D array of "
                                    f"{rows.itemsize}-byte items")
                n = rows.shape[0]
                row_len = rows.shape[1]
                _check_len(row_len, "row")
            else:
                if isinstance(values, (bytes, bytearray, str)):
                    raise TypeError("send_batch takes a sequence of values, not a single "
                                    f"{type(values).__name__}")
                seq = values if type(values) is list else list(values)
                n = len(seq)
            if n == 0:
                return (0, 0)
            recs = <pq_record_t *>malloc(n * sizeof(pq_record_t))
            if recs == NULL:
                raise MemoryError()
            for i in range(n):
                recs[i].key = kp if key is not None else NULL
                recs[i].key_len = <uint32_t>kn if key is not None else PQ_NO_KEY
                recs[i].headers = PyBytes_AS_STRING(headers) if headers is not None else NULL
                recs[i].headers_len = <uint32_t>PyBytes_GET_SIZE(headers) if headers is not None else 0
                recs[i].deliver_at = 0
                recs[i].attributes = 0
                if rrel:
                    recs[i].value = <const char *>rows.buf + i * row_len
                    recs[i].value_len = <uint32_t>row_len
                else:
                    v = seq[i]
                    if type(v) is bytes:
                        recs[i].value = PyBytes_AS_STRING(v)
                        recs[i].value_len = <uint32_t>PyBytes_GET_SIZE(v)
                        _check_len(PyBytes_GET_SIZE(v), "value")
                    else:
                        if views == NULL:
                            views = <Py_buffer *>calloc(n, sizeof(Py_buffer))
                            held = <unsigned char *>calloc(n, 1)
                            if views == NULL or held == NULL:
                                raise MemoryError()
                        held[i] = _get_buffer(v, &views[i], &p, &ln, "value")
                        _check_len(ln, "value")
                        recs[i].value = p
                        recs[i].value_len = <uint32_t>ln
            # `seq` keeps every value alive while the GIL is released.
            with nogil:
                rc = pq_log_append(self._log, recs, n, &first)
            _check(rc)
            return (first, n)
        finally:
            if held != NULL:
                for i in range(n):
                    if held[i]:
                        PyBuffer_Release(&views[i])
            free(held)
            free(views)
            free(recs)
            if krel:
                PyBuffer_Release(&kb)
            if rrel:
                PyBuffer_Release(&rows)
            self._leave()

    def sync(self, upto=None):
        """Make records below `upto` (default: all) durable; shared flushes."""
        cdef uint64_t u = UINT64_MAX if upto is None else upto
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = pq_log_sync(self._log, u)
            _check(rc)
        finally:
            self._leave()

    @property
    def synced(self):
        self._enter()
        try:
            return pq_log_synced(self._log)
        finally:
            self._leave()

    def enforce_retention(self):
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = pq_log_enforce_retention(self._log, pq_now_ns())
            return _check(rc)
        finally:
            self._leave()

    # -- reads --

    def bounds(self):
        """(first retained offset, next offset)."""
        cdef uint64_t s, e
        self._enter()
        pq_log_bounds(self._log, &s, &e)
        self._leave()
        return (s, e)

    def read(self, uint64_t offset, Py_ssize_t max_messages):
        """Up to max_messages Messages from `offset`; fewer at the end."""
        cdef pq_record_t *recs
        cdef pq_segment_t *seg = NULL
        cdef list out = []
        cdef int n, k
        cdef size_t want
        if max_messages <= 0:
            return out
        want = <size_t>(max_messages if max_messages < READ_CHUNK else READ_CHUNK)
        recs = <pq_record_t *>malloc(want * sizeof(pq_record_t))
        if recs == NULL:
            raise MemoryError()
        self._enter()
        try:
            while len(out) < max_messages:
                if <size_t>(max_messages - len(out)) < want:
                    want = <size_t>(max_messages - len(out))
                pq_error_clear()
                with nogil:
                    n = pq_log_read_many(self._log, offset, recs, want, &seg)
                if n < 0:
                    if out:
                        break       # return what was good; the next read raises
                    _check(n)
                if n == 0:
                    break
                try:
                    for k in range(n):
                        out.append(_make_message(self.topic, self.partition, &recs[k]))
                finally:
                    pq_segment_decref(seg)
                    seg = NULL
                offset += <uint64_t>n
            return out
        finally:
            free(recs)
            self._leave()

    def read_batch(self, uint64_t offset, Py_ssize_t n):
        """Zero-copy read of up to n records from one segment: returns
        (buffer, offsets, value_positions, value_lengths, timestamps_ns) where
        the buffer is a read-only view of the mapped frames and positions are
        relative to it; the arrays are array.array ('Q', 'I', 'I', 'q')."""
        cdef pq_record_t *recs
        cdef pq_segment_t *seg = NULL
        cdef int got, k
        cdef array.array offs, poss, lens, tss
        cdef uint64_t start_pos, end_pos
        cdef SegmentView view
        if n <= 0:
            n = 0
        recs = <pq_record_t *>malloc((n if n > 0 else 1) * sizeof(pq_record_t))
        if recs == NULL:
            raise MemoryError()
        self._enter()
        try:
            pq_error_clear()
            with nogil:
                got = pq_log_read_many(self._log, offset, recs, <size_t>n, &seg)
            _check(got)
            offs = array.clone(_array.array("Q"), got, False)
            poss = array.clone(_array.array("I"), got, False)
            lens = array.clone(_array.array("I"), got, False)
            tss = array.clone(_array.array("q"), got, False)
            if got == 0:
                return (memoryview(b""), offs, poss, lens, tss)
            start_pos = recs[0].position
            end_pos = recs[got - 1].position + recs[got - 1].frame_len
            for k in range(got):
                offs.data.as_ulonglongs[k] = recs[k].offset
                poss.data.as_uints[k] = <uint32_t>(<const unsigned char *>recs[k].value - seg.map - start_pos)
                lens.data.as_uints[k] = recs[k].value_len
                tss.data.as_longlongs[k] = recs[k].timestamp
            view = SegmentView.__new__(SegmentView)
            view._seg = seg          # the view now owns the reference
            seg = NULL
            view._start = start_pos
            view._length = end_pos - start_pos
            return (memoryview(view), offs, poss, lens, tss)
        finally:
            if seg != NULL:
                pq_segment_decref(seg)
            free(recs)
            self._leave()

    def offset_for_time_ns(self, int64_t t):
        """First offset with timestamp >= t (ns since the epoch); the end if none."""
        cdef uint64_t out = 0
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = pq_log_offset_for_time(self._log, t, &out)
            _check(rc)
            return out
        finally:
            self._leave()

    def wait(self, uint64_t offset, timeout=None):
        """Block until record `offset` exists (True), or the timeout passes or
        close() interrupts (False).  A timeout of None waits without limit."""
        cdef int64_t t = -1 if timeout is None else <int64_t>(max(0.0, float(timeout)) * 1e9)
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = pq_log_wait(self._log, offset, t)
            return _check(rc) == 1
        finally:
            self._leave()

    def wake_all(self):
        self._enter()
        pq_log_wake_all(self._log)
        self._leave()

    def set_notify(self, Notify notify):
        """Wake `notify`'s sleepers on every append (None detaches)."""
        self._enter()
        pq_log_set_notify(self._log, notify._n if notify is not None else NULL)
        self._leave()

    def read_offsets(self, offsets):
        """Messages at the given offsets (sorted ascending), read in runs."""
        cdef pq_record_t recs[256]
        cdef pq_segment_t *seg = NULL
        cdef list out = []
        cdef Py_ssize_t i = 0, n = len(offsets), run
        cdef uint64_t first
        cdef int got, k
        self._enter()
        try:
            while i < n:
                first = offsets[i]
                run = 1
                while i + run < n and run < 256 and offsets[i + run] == first + run:
                    run += 1
                pq_error_clear()
                with nogil:
                    got = pq_log_read_many(self._log, first, recs, <size_t>run, &seg)
                _check(got)
                if got == 0:
                    raise OffsetOutOfRange(f"offset {first} is past the end of {self.topic}[{self.partition}]")
                try:
                    for k in range(got):
                        out.append(_make_message(self.topic, self.partition, &recs[k]))
                finally:
                    pq_segment_decref(seg)
                    seg = NULL
                i += got
            return out
        finally:
            self._leave()

    def recovery_info(self):
        cdef pq_log_recovery_t info
        self._enter()
        pq_log_recovery_info(self._log, &info)
        self._leave()
        return {"sole_opener": bool(info.sole_opener), "trusted": bool(info.trusted),
                "lock_repaired": info.lock_repaired, "scanned_bytes": info.scanned_bytes,
                "truncated_bytes": info.truncated_bytes}

    def disk_usage(self):
        """(segment files, bytes they occupy)."""
        cdef uint64_t segs, nbytes
        self._enter()
        pq_log_disk_usage(self._log, &segs, &nbytes)
        self._leave()
        return (segs, nbytes)


# ---- wake-ups per topic ----

cdef class Notify:
    """The topic's shared wake-up word (native/notify.h)."""

    def __init__(self, str path):
        bpath = _os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int rc
        pq_error_clear()
        with nogil:
            rc = pq_notify_open(cpath, &self._n)
        _check(rc)
        self.path = path

    def arm(self):
        """Count this thread as a sleeper and return the sequence to sleep on."""
        if self._n == NULL:
            raise Closed("closed")
        return pq_notify_arm(self._n)

    def sleep(self, uint32_t seq, timeout=None):
        """Sleep until woken (or the timeout), then disarm."""
        cdef int64_t t = -1 if timeout is None else <int64_t>(max(0.0, float(timeout)) * 1e9)
        if self._n == NULL:
            raise Closed("closed")
        with nogil:
            pq_notify_sleep(self._n, seq, t)

    def disarm(self):
        if self._n != NULL:
            pq_notify_disarm(self._n)

    def wake(self):
        if self._n != NULL:
            pq_notify_wake(self._n)

    def close(self):
        # Logs and groups that point at it are closed first (Topic.close).
        if self._n != NULL:
            pq_notify_close(self._n)
            self._n = NULL

    def __dealloc__(self):
        if self._n != NULL:
            pq_notify_close(self._n)


# ---- consumer groups ----

def probe_group(str path):
    """(mode, partitions, window) stored in a group file."""
    cdef pq_group_config_t cfg
    bpath = _os.fsencode(path)
    _check(pq_group_probe(bpath, &cfg))
    return (cfg.mode, cfg.partitions, cfg.window)


GROUP_STREAM = PQ_GROUP_STREAM
GROUP_QUEUE = PQ_GROUP_QUEUE
GROUP_MAX_MEMBERS = PQ_GROUP_MAX_MEMBERS
GROUP_MAX_WINDOW = PQ_GROUP_MAX_WINDOW
OFFSET_UNSET = PQ_OFFSET_UNSET


cdef class Group:
    """A consumer group's shared state (native/group.h)."""

    def __cinit__(self):
        self._g = NULL

    def __init__(self, str path, int mode, int partitions, int window, Notify notify=None):
        cdef pq_group_config_t cfg
        cfg.mode = mode
        cfg.partitions = partitions
        cfg.window = window
        bpath = _os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int rc
        pq_error_clear()
        with nogil:
            rc = pq_group_open(cpath, &cfg, &self._g)
        _check(rc)
        self.path = path
        self.partitions = partitions
        self.mode = mode
        self.window = window
        self._notify = notify
        if notify is not None:
            pq_group_set_notify(self._g, notify._n)

    cdef int _enter(self) except -1:
        if self._closed:
            raise Closed(f"group {self.path} is closed")
        self._busy += 1
        return 0

    def close(self):
        if self._closed:
            return
        self._closed = True
        while self._busy > 0:
            _time.sleep(0.0005)
        if self._g != NULL:
            pq_group_close(self._g)
            self._g = NULL

    def __dealloc__(self):
        if self._g != NULL:
            pq_group_close(self._g)

    def join(self, int pid):
        cdef uint32_t slot
        cdef uint64_t mid
        cdef int rc
        self._enter()
        try:
            rc = pq_group_join(self._g, pid, pq_monotonic_ns(), &slot, &mid)
            _check(rc)
            return (slot, mid)
        finally:
            self._busy -= 1

    def leave(self, uint64_t member_id):
        cdef int rc
        self._enter()
        try:
            with nogil:
                rc = pq_group_leave(self._g, member_id)
            _check(rc)
        finally:
            self._busy -= 1

    def heartbeat(self, uint32_t slot, uint64_t member_id):
        self._enter()
        try:
            _check(pq_group_heartbeat(self._g, slot, member_id, pq_monotonic_ns()))
        finally:
            self._busy -= 1

    def reap(self, double session_timeout):
        cdef int rc
        cdef int64_t s = <int64_t>(session_timeout * 1e9)
        self._enter()
        try:
            with nogil:
                rc = pq_group_reap(self._g, pq_monotonic_ns(), s)
            return _check(rc)
        finally:
            self._busy -= 1

    @property
    def generation(self):
        self._enter()
        try:
            return pq_group_generation(self._g)
        finally:
            self._busy -= 1

    def members(self):
        """Live members sorted by id: list of (member_id, pid, slot, heartbeat_age_s)."""
        cdef pq_member_info_t infos[64]
        cdef int n, i
        self._enter()
        try:
            n = _check(pq_group_members(self._g, infos, 64))
            now = pq_monotonic_ns()
            return [(infos[i].member_id, infos[i].pid, infos[i].slot,
                     (now - infos[i].heartbeat_ns) / 1e9) for i in range(n)]
        finally:
            self._busy -= 1

    def partition_info(self, uint32_t p):
        cdef pq_partition_info_t info
        self._enter()
        try:
            _check(pq_group_partition_info(self._g, p, &info))
        finally:
            self._busy -= 1
        return {"committed": None if info.committed == PQ_OFFSET_UNSET else info.committed,
                "next": None if info.next == PQ_OFFSET_UNSET else info.next,
                "owner": info.owner, "leased": info.leased, "ready": info.ready,
                "delayed": info.delayed, "done": info.done, "dead_letters": info.dead_letters}

    def init_offset(self, uint32_t p, uint64_t offset):
        cdef uint64_t committed
        self._enter()
        try:
            _check(pq_group_init_offset(self._g, p, offset, &committed))
            return committed
        finally:
            self._busy -= 1

    def claim(self, uint32_t p, uint64_t member_id):
        """Stream mode: committed offset if the partition was taken, else None."""
        cdef uint64_t committed = 0
        cdef int rc
        self._enter()
        try:
            rc = _check(pq_group_claim(self._g, p, member_id, &committed))
        finally:
            self._busy -= 1
        if rc == 0:
            return None
        return committed

    def commit(self, uint32_t p, uint64_t member_id, offset, bint release=False):
        cdef uint64_t off = PQ_OFFSET_UNSET if offset is None else offset
        self._enter()
        try:
            _check(pq_group_commit(self._g, p, member_id, off, release))
        finally:
            self._busy -= 1

    def seek(self, uint32_t p, uint64_t member_id, uint64_t offset):
        self._enter()
        try:
            _check(pq_group_seek(self._g, p, member_id, offset))
        finally:
            self._busy -= 1

    def lease(self, uint32_t p, Log log, uint32_t slot, double visibility, bint ordered,
              Py_ssize_t max_messages, owner):
        """Queue mode: lease up to max_messages of partition p and read them.
        Returns (messages, next_due_seconds or None)."""
        cdef pq_lease_t stack_leases[64]
        cdef pq_lease_t *leases = stack_leases
        cdef int64_t due = 0
        cdef int64_t vis = <int64_t>(visibility * 1e9)
        cdef int n, k
        cdef Message m
        if max_messages <= 0:
            return ([], None)
        if max_messages > 64:
            leases = <pq_lease_t *>malloc(max_messages * sizeof(pq_lease_t))
            if leases == NULL:
                raise MemoryError()
        self._enter()
        log._enter()
        try:
            pq_error_clear()
            with nogil:
                n = pq_group_lease(self._g, p, log._log, slot, pq_now_ns(), vis, ordered,
                                   leases, <size_t>max_messages, &due)
            _check(n)
            msgs = log.read_offsets([leases[k].offset for k in range(n)]) if n else []
            for k in range(n):
                m = msgs[k]
                m.delivery_count = leases[k].deliveries
                if m._raw_headers is not None and b"x-delivery-count" in m._raw_headers:
                    # a retry appended again carries its earlier deliveries (the
                    # substring test spares decoding the headers of every message)
                    prior = m.headers.get("x-delivery-count")
                    if prior is not None and prior.isdigit():
                        m.delivery_count += int(prior)
                m._lease_id = leases[k].lease_id
                m._owner = owner
            return (msgs, None if due == INT64_MAX else due / 1e9)
        finally:
            log._leave()
            self._busy -= 1
            if leases != stack_leases:
                free(leases)

    def ack(self, uint32_t p, uint64_t offset, uint64_t lease_id):
        cdef int rc
        self._enter()
        with nogil:
            rc = pq_group_ack(self._g, p, offset, lease_id)
        self._busy -= 1
        _check(rc)

    def nack(self, uint32_t p, uint64_t offset, uint64_t lease_id, double delay):
        cdef int rc
        self._enter()
        with nogil:
            rc = pq_group_nack(self._g, p, offset, lease_id, pq_now_ns(), <int64_t>(delay * 1e9))
        self._busy -= 1
        _check(rc)

    def release(self, uint32_t p, uint64_t offset, uint64_t lease_id):
        """Give back a delivery never handed to a handler: not counted."""
        cdef int rc
        self._enter()
        with nogil:
            rc = pq_group_release(self._g, p, offset, lease_id)
        self._busy -= 1
        _check(rc)

    def extend(self, uint32_t p, uint64_t offset, uint64_t lease_id, double seconds):
        cdef int rc
        self._enter()
        with nogil:
            rc = pq_group_extend(self._g, p, offset, lease_id, pq_now_ns(), <int64_t>(seconds * 1e9))
        self._busy -= 1
        _check(rc)

    def count_dead_letter(self, uint32_t p):
        self._enter()
        pq_group_count_dead_letter(self._g, p)
        self._busy -= 1

    def sync(self):
        cdef int rc
        self._enter()
        with nogil:
            rc = pq_group_sync(self._g)
        self._busy -= 1
        _check(rc)


# ---- dedup ----

cdef class Dedup:
    """A topic's shared table of recent dedup ids (native/dedup.h)."""

    def __cinit__(self):
        self._d = NULL

    def __init__(self, str path, uint32_t capacity, list logs=None):
        """logs: the topic's partition Logs (index = partition), to settle a
        send whose process died between its append and its insert."""
        bpath = _os.fsencode(path)
        cdef const char *cpath = bpath
        cdef int rc
        cdef pq_log_t **ptrs
        cdef Py_ssize_t i
        pq_error_clear()
        with nogil:
            rc = pq_dedup_open(cpath, capacity, &self._d)
        _check(rc)
        self.path = path
        self._logs = list(logs or [])
        if self._logs:
            ptrs = <pq_log_t **>malloc(len(self._logs) * sizeof(pq_log_t *))
            if ptrs == NULL:
                raise MemoryError()
            for i in range(len(self._logs)):
                ptrs[i] = (<Log>self._logs[i])._log
            pq_dedup_attach_logs(self._d, ptrs, <uint32_t>len(self._logs))
            free(ptrs)

    def __dealloc__(self):
        if self._d != NULL:
            pq_dedup_close(self._d)

    def close(self):
        if self._d != NULL:
            pq_dedup_close(self._d)
            self._d = NULL

    def send(self, bytes key16, Log log, value, key, bytes headers, int64_t deliver_at,
             double window):
        """Append unless key16 was sent within the window: returns
        (Receipt, True if this send was a duplicate and wrote nothing)."""
        cdef uint32_t partition = 0, slot = 0
        cdef uint64_t offset = 0
        cdef int64_t now = pq_now_ns()
        cdef const unsigned char *k = <const unsigned char *>PyBytes_AS_STRING(key16)
        cdef int rc
        cdef Receipt r
        if self._d == NULL:
            raise Closed("dedup table is closed")
        if len(key16) != 16:
            raise ValueError("dedup key must be 16 bytes")
        pq_error_clear()
        with nogil:
            rc = pq_dedup_begin(self._d, k, now, &partition, &offset, &slot)
        _check(rc)
        if rc == 1:
            r = Receipt.__new__(Receipt)
            r.topic = log.topic
            r.partition = partition
            r.offset = offset
            return (r, True)
        cdef int64_t expires = now + <int64_t>(window * 1e9)
        cdef uint32_t token = pq_dedup_pend(self._d, slot, k, log._log, log.partition, expires)
        try:
            receipt = log.append(value, key, headers, deliver_at, token)
        except BaseException:
            pq_dedup_unlock(self._d)
            raise
        pq_dedup_insert(self._d, slot, k, log.partition, receipt.offset, 0, expires)
        return (receipt, False)

    def get(self, bytes key16):
        """The entry of key16 as (partition, offset, aux), or None."""
        cdef uint32_t partition = 0
        cdef uint64_t offset = 0, aux = 0
        if self._d == NULL:
            raise Closed("dedup table is closed")
        if len(key16) != 16:
            raise ValueError("dedup key must be 16 bytes")
        if _check(pq_dedup_get(self._d, <const unsigned char *>PyBytes_AS_STRING(key16), pq_now_ns(),
                               &partition, &offset, &aux)) == 0:
            return None
        return (partition, offset, aux)

    def put(self, bytes key16, uint32_t partition, uint64_t offset, uint64_t aux,
            int64_t expires_ns=INT64_MAX):
        """Write the entry of key16 (replacing any); by default it never expires."""
        if self._d == NULL:
            raise Closed("dedup table is closed")
        if len(key16) != 16:
            raise ValueError("dedup key must be 16 bytes")
        _check(pq_dedup_put(self._d, <const unsigned char *>PyBytes_AS_STRING(key16), pq_now_ns(),
                            partition, offset, aux, expires_ns))

    def count(self):
        return pq_dedup_count(self._d, pq_now_ns())

    def sync(self):
        if self._d != NULL:
            _check(pq_dedup_sync(self._d))


# ---- timer wheel ----

cdef class TimerWheel:
    """A hierarchical timing wheel (native/wheel.c): O(1) add and cancel,
    expiry in batches, millions of timers in 24 bytes each plus the items.

    Times are seconds on `clock` (time.monotonic by default), rounded up to
    whole ticks; an item is never returned before its time."""

    def __cinit__(self):
        self._w = NULL

    def __init__(self, double tick=0.001, clock=None):
        if not (tick >= 1e-6 and tick <= 3600.0):
            raise ConfigError(f"tick={tick!r} must be between 1e-06 and 3600 seconds")
        self.tick = tick
        self._clock = _time.monotonic if clock is None else clock
        self._items = []
        cdef uint64_t start = self._to_tick(self._clock(), False)
        if pq_wheel_new(start, &self._w) != 0:
            raise MemoryError()

    def __dealloc__(self):
        if self._w != NULL:
            pq_wheel_free(self._w)

    cdef uint64_t _to_tick(self, double t, bint up) except? 0:
        if t != t or t < 0:
            raise ValueError(f"time {t!r} must be a non-negative number of seconds")
        # A millionth of a tick of slack absorbs float noise (0.016 / 0.001
        # is 15.999999999999998): times are rounded to the nearest such tick.
        cdef double ticks = t / self.tick
        if ticks > 1.8e19:
            raise OverflowError(f"time {t!r} is beyond the wheel's range")
        cdef uint64_t whole
        if up:
            whole = <uint64_t>(ticks - 1e-6)
            if <double>whole < ticks - 1e-6:
                whole += 1
        else:
            whole = <uint64_t>(ticks + 1e-6)
        return whole

    def add(self, double delay, item=None):
        """Schedule `item` for `delay` seconds from now; returns a handle."""
        if delay != delay or delay < 0:
            raise ValueError(f"delay={delay!r} must be a non-negative number of seconds")
        return self.add_at(self._clock() + delay, item)

    def add_at(self, double when, item=None):
        """Schedule `item` for absolute time `when` (on the wheel's clock)."""
        cdef uint64_t handle
        cdef uint32_t index
        cdef int rc = pq_wheel_add(self._w, self._to_tick(when, True), &handle, &index)
        if rc == -12:
            raise MemoryError()
        if rc != 0:
            raise PyQueueError("the timer wheel holds 2^31 timers: no room for more")
        if index < len(self._items):
            self._items[index] = item
        else:
            self._items.append(item)
        return handle

    def cancel(self, uint64_t handle):
        """Cancel a pending timer; False if it already expired or was cancelled."""
        cdef uint32_t index
        if pq_wheel_cancel(self._w, handle, &index):
            self._items[index] = None
            return True
        return False

    def expire(self, now=None):
        """Items whose time has come (earliest first by bucket)."""
        cdef uint32_t buf[1024]
        cdef size_t n, k
        cdef uint64_t t = self._to_tick(self._clock() if now is None else now, False)
        out = []
        items = self._items
        while True:
            n = pq_wheel_expire(self._w, t, buf, 1024)
            for k in range(n):
                out.append(items[buf[k]])
                items[buf[k]] = None
            if n < 1024:
                return out

    def next_deadline(self):
        """Earliest time (clock seconds) at which expire() may return something,
        or None if the wheel is empty.  A lower bound for far timers."""
        cdef uint64_t t = pq_wheel_next_deadline(self._w)
        return None if t == UINT64_MAX else t * self.tick

    def __len__(self):
        return pq_wheel_count(self._w)


# ---- small helpers ----

def crc32c(data, uint32_t crc=0, str impl="auto"):
    """CRC-32C of a bytes-like object; impl is "auto", "hw" or "sw"."""
    cdef Py_buffer b
    cdef const char *p
    cdef Py_ssize_t n
    cdef bint rel = _get_buffer(data, &b, &p, &n, "data")
    try:
        if impl == "sw":
            return pq_crc32c_sw(crc, p, n)
        if impl == "hw":
            return pq_crc32c_hw(crc, p, n)
        if impl == "auto":
            return pq_crc32c(crc, p, n)
        raise ValueError(f"impl must be 'auto', 'hw' or 'sw', not {impl!r}")
    finally:
        if rel:
            PyBuffer_Release(&b)


def crc32c_hw_available():
    return bool(pq_crc32c_hw_available())


def murmur2(key):
    """Kafka's murmur2 of a bytes-like key (signed 32-bit)."""
    cdef Py_buffer b
    cdef const char *p
    cdef Py_ssize_t n
    cdef bint rel = _get_buffer(key, &b, &p, &n, "key")
    try:
        return pq_murmur2(p, n)
    finally:
        if rel:
            PyBuffer_Release(&b)


def partition_for_key(key, unsigned int partitions):
    """The partition Kafka's default partitioner picks for `key`."""
    cdef Py_buffer b
    cdef const char *p
    cdef Py_ssize_t n
    if partitions == 0:
        raise ValueError("partitions must be positive")
    cdef bint rel = _get_buffer(key, &b, &p, &n, "key")
    try:
        return pq_murmur2_partition(p, n, partitions)
    finally:
        if rel:
            PyBuffer_Release(&b)


def now_ns():
    return pq_now_ns()
