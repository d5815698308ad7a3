# _native.pxd - the C API of native/, declared once (implemented in _native.pyx).
from libc.stdint cimport uint32_t, uint64_t, int64_t, int32_t


cdef extern from "pq_error.h" nogil:
    int PQ_ECORRUPT
    int PQ_ETOOLARGE
    int PQ_ERANGE
    int PQ_ECONFIG
    int PQ_EFORMAT
    int PQ_ECLOSED
    int PQ_ELEASE
    int PQ_EFENCED
    int PQ_EFULL
    const char *pq_error_message()
    void pq_error_clear()


cdef extern from "crc32c.h" nogil:
    uint32_t pq_crc32c(uint32_t crc, const void *data, size_t len)
    uint32_t pq_crc32c_sw(uint32_t crc, const void *data, size_t len)
    uint32_t pq_crc32c_hw(uint32_t crc, const void *data, size_t len)
    int pq_crc32c_hw_available()


cdef extern from "murmur2.h" nogil:
    int32_t pq_murmur2(const void *key, size_t len)
    uint32_t pq_murmur2_partition(const void *key, size_t len, uint32_t partitions)


cdef extern from "wake.h" nogil:
    int64_t pq_now_ns()
    int64_t pq_monotonic_ns()


cdef extern from "segment.h" nogil:
    int PQ_FORMAT_VERSION
    int PQ_SEGMENT_HEADER_SIZE
    int PQ_FRAME_HEADER_SIZE
    uint32_t PQ_NO_KEY
    uint32_t PQ_SEGMENT_MIN_BYTES
    uint32_t PQ_SEGMENT_MAX_BYTES

    ctypedef struct pq_segment_t:
        uint64_t base
        uint64_t size
        unsigned char *map

    ctypedef struct pq_record_t:
        uint64_t offset
        int64_t timestamp
        int64_t deliver_at
        const void *key
        uint32_t key_len
        uint32_t headers_len
        const void *headers
        const void *value
        uint32_t value_len
        uint32_t attributes
        uint32_t position
        uint32_t frame_len

    uint64_t pq_frame_size(uint32_t key_len, uint32_t headers_len, uint32_t value_len)
    void pq_segment_incref(pq_segment_t *seg)
    void pq_segment_decref(pq_segment_t *seg)


cdef extern from "log.h" nogil:
    ctypedef struct pq_log_config_t:
        uint64_t segment_bytes
        uint64_t max_message_bytes
        uint64_t retention_bytes
        int64_t retention_ns

    ctypedef struct pq_log_t:
        pass

    ctypedef struct pq_log_recovery_t:
        int sole_opener
        int trusted
        int lock_repaired
        uint64_t scanned_bytes
        uint64_t truncated_bytes

    int pq_log_open(const char *dir, const pq_log_config_t *cfg, int create, pq_log_t **out)
    void pq_log_close(pq_log_t *log)
    int pq_log_append(pq_log_t *log, pq_record_t *recs, size_t n, uint64_t *first_offset)
    int pq_log_read_many(pq_log_t *log, uint64_t offset, pq_record_t *recs, size_t max,
                         pq_segment_t **seg)
    void pq_log_bounds(pq_log_t *log, uint64_t *start, uint64_t *end)
    int pq_log_offset_for_time(pq_log_t *log, int64_t ts_ns, uint64_t *out)
    int pq_log_sync(pq_log_t *log, uint64_t upto)
    uint64_t pq_log_synced(pq_log_t *log)
    int pq_log_wait(pq_log_t *log, uint64_t offset, int64_t timeout_ns)
    void pq_log_wake_all(pq_log_t *log)
    int pq_log_enforce_retention(pq_log_t *log, int64_t now_ns)
    void pq_log_recovery_info(pq_log_t *log, pq_log_recovery_t *out)
    void pq_log_disk_usage(pq_log_t *log, uint64_t *segments, uint64_t *bytes)
    void pq_log_set_notify(pq_log_t *log, pq_notify_t *notify)


cdef extern from "notify.h" nogil:
    ctypedef struct pq_notify_t:
        pass
    int pq_notify_open(const char *path, pq_notify_t **out)
    void pq_notify_close(pq_notify_t *n)
    uint32_t pq_notify_arm(pq_notify_t *n)
    int pq_notify_sleep(pq_notify_t *n, uint32_t seq, int64_t timeout_ns)
    void pq_notify_disarm(pq_notify_t *n)
    void pq_notify_wake(pq_notify_t *n)


cdef extern from "group.h" nogil:
    int PQ_GROUP_STREAM
    int PQ_GROUP_QUEUE
    int PQ_GROUP_MAX_MEMBERS
    int PQ_GROUP_MAX_WINDOW
    uint64_t PQ_OFFSET_UNSET

    ctypedef struct pq_group_t:
        pass
    ctypedef struct pq_group_config_t:
        uint32_t mode
        uint32_t partitions
        uint32_t window
    ctypedef struct pq_member_info_t:
        uint64_t member_id
        int32_t pid
        uint32_t slot
        int64_t heartbeat_ns
    ctypedef struct pq_partition_info_t:
        uint64_t committed
        uint64_t next
        uint64_t owner
        uint32_t leased, ready, delayed, done
        uint64_t dead_letters
    ctypedef struct pq_lease_t:
        uint64_t offset
        uint64_t lease_id
        uint32_t deliveries

    int pq_group_open(const char *path, const pq_group_config_t *cfg, pq_group_t **out)
    void pq_group_close(pq_group_t *g)
    int pq_group_probe(const char *path, pq_group_config_t *out)
    int pq_group_join(pq_group_t *g, int32_t pid, int64_t now_mono, uint32_t *slot, uint64_t *member_id)
    int pq_group_leave(pq_group_t *g, uint64_t member_id)
    int pq_group_heartbeat(pq_group_t *g, uint32_t slot, uint64_t member_id, int64_t now_mono)
    int pq_group_reap(pq_group_t *g, int64_t now_mono, int64_t session_ns)
    uint64_t pq_group_generation(pq_group_t *g)
    int pq_group_members(pq_group_t *g, pq_member_info_t *out, size_t max)
    int pq_group_partition_info(pq_group_t *g, uint32_t p, pq_partition_info_t *out)
    int pq_group_init_offset(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t *committed)
    int pq_group_claim(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t *committed)
    int pq_group_commit(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t offset, int release)
    int pq_group_seek(pq_group_t *g, uint32_t p, uint64_t member_id, uint64_t offset)
    int pq_group_lease(pq_group_t *g, uint32_t p, pq_log_t *log, uint32_t slot, int64_t now_ns,
                       int64_t visibility_ns, int ordered, pq_lease_t *out, size_t max,
                       int64_t *next_due_ns)
    int pq_group_ack(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id)
    int pq_group_release(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id)
    int pq_group_nack(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id,
                      int64_t now_ns, int64_t delay_ns)
    int pq_group_extend(pq_group_t *g, uint32_t p, uint64_t offset, uint64_t lease_id,
                        int64_t now_ns, int64_t extend_ns)
    void pq_group_count_dead_letter(pq_group_t *g, uint32_t p)
    void pq_group_set_notify(pq_group_t *g, pq_notify_t *notify)
    int pq_group_sync(pq_group_t *g)


cdef class Receipt:
    cdef readonly str topic
    cdef readonly int partition
    cdef readonly object offset


cdef class Message:
    cdef readonly str topic
    cdef readonly int partition
    cdef readonly object offset
    cdef readonly int64_t timestamp_ns
    cdef readonly object key
    cdef readonly object value
    cdef readonly int delivery_count
    cdef public uint64_t _lease_id
    cdef bytes _raw_headers
    cdef object _headers
    cdef public object _owner


cdef class Notify:
    cdef pq_notify_t *_n
    cdef readonly str path


cdef class Log:
    cdef pq_log_t *_log
    cdef readonly str path
    cdef readonly str topic
    cdef readonly int partition
    cdef uint64_t _max_message_bytes
    cdef int _busy
    cdef bint _closed
    cdef int _enter(self) except -1
    cdef void _leave(self)


cdef class Group:
    cdef pq_group_t *_g
    cdef readonly str path
    cdef readonly int partitions
    cdef readonly int mode
    cdef readonly int window
    cdef bint _closed
    cdef int _busy
    cdef object _notify
    cdef int _enter(self) except -1


cdef extern from "wheel.h" nogil:
    ctypedef struct pq_wheel_t:
        pass
    int pq_wheel_new(uint64_t start_tick, pq_wheel_t **out)
    void pq_wheel_free(pq_wheel_t *w)
    int pq_wheel_add(pq_wheel_t *w, uint64_t deadline, uint64_t *handle, uint32_t *index)
    int pq_wheel_cancel(pq_wheel_t *w, uint64_t handle, uint32_t *index)
    size_t pq_wheel_expire(pq_wheel_t *w, uint64_t now, uint32_t *out, size_t max)
    size_t pq_wheel_count(const pq_wheel_t *w)
    uint64_t pq_wheel_next_deadline(const pq_wheel_t *w)


cdef class TimerWheel:
    cdef pq_wheel_t *_w
    cdef readonly double tick
    cdef list _items
    cdef object _clock
    cdef uint64_t _to_tick(self, double t, bint up) except? 0


cdef extern from "dedup.h" nogil:
    ctypedef struct pq_dedup_t:
        pass
    int pq_dedup_open(const char *path, uint32_t capacity, pq_dedup_t **out)
    void pq_dedup_close(pq_dedup_t *d)
    int pq_dedup_begin(pq_dedup_t *d, const unsigned char *key, int64_t now_ns, uint32_t *partition,
                       uint64_t *offset, uint32_t *slot)
    void pq_dedup_insert(pq_dedup_t *d, uint32_t slot, const unsigned char *key, uint32_t partition,
                         uint64_t offset, uint64_t aux, int64_t expires_ns)
    int pq_dedup_get(pq_dedup_t *d, const unsigned char *key, int64_t now_ns, uint32_t *partition,
                     uint64_t *offset, uint64_t *aux)
    int pq_dedup_put(pq_dedup_t *d, const unsigned char *key, int64_t now_ns, uint32_t partition,
                     uint64_t offset, uint64_t aux, int64_t expires_ns)
    void pq_dedup_unlock(pq_dedup_t *d)
    uint32_t pq_dedup_pend(pq_dedup_t *d, uint32_t slot, const unsigned char *key, pq_log_t *log,
                           uint32_t partition, int64_t expires_ns)
    void pq_dedup_attach_logs(pq_dedup_t *d, pq_log_t **logs, uint32_t n)
    uint64_t pq_dedup_count(pq_dedup_t *d, int64_t now_ns)
    int pq_dedup_sync(pq_dedup_t *d)


cdef class Dedup:
    cdef pq_dedup_t *_d
    cdef readonly str path
    cdef list _logs
