/* log.h - a partition: an append-only log over a ring of segment files.
 *
 * A partition directory holds segment files named by base offset and one
 * `state` file, mapped by every process that opens the partition, with the
 * process-shared robust append lock, the published end offset, the tail
 * position and the wake-up word (docs/FORMAT.md, "Partition state").  The
 * state is derived data: the sole opener of a partition (no other process has
 * it open, known from an flock) validates it against the segments and
 * rebuilds it when it is stale or damaged.
 *
 * Crash rule: a record is visible only once next_offset has been published
 * past it with release ordering, after its frame and index entry are written;
 * anything beyond next_offset is garbage that the next writer overwrites.
 *
 * Thread safety: every function may be called from several threads of
 * several processes at once on the same partition, except pq_log_close().
 */
#ifndef PQ_LOG_H
#define PQ_LOG_H

#include <stddef.h>
#include <stdint.h>

#include "segment.h"

typedef struct pq_log_config {
    uint64_t segment_bytes;      /* PQ_SEGMENT_MIN_BYTES .. PQ_SEGMENT_MAX_BYTES */
    uint64_t max_message_bytes;  /* bound on key + headers + value of one record */
    uint64_t retention_bytes;    /* 0: unlimited; else drop oldest segments past it */
    int64_t retention_ns;        /* 0: unlimited; else drop segments older than it */
} pq_log_config_t;

typedef struct pq_log pq_log_t;

/* How the last open found the partition (for tests and stats). */
typedef struct pq_log_recovery {
    int sole_opener;             /* 1 if this open validated the state */
    int trusted;                 /* 1 if the state was trusted (same boot, consistent) */
    int lock_repaired;           /* times a dead lock owner was repaired by this handle */
    uint64_t scanned_bytes;      /* bytes validated by the recovery scan */
    uint64_t truncated_bytes;    /* garbage bytes cut off at the tail (approximate) */
} pq_log_recovery_t;

/* Open the partition in directory `dir` (created if `create`), recovering it
 * if no other process has it open.  Fails with -PQ_ECONFIG if the stored
 * segment size differs, -PQ_ECORRUPT naming a file that cannot be repaired,
 * -errno for OS failures. */
int pq_log_open(const char *dir, const pq_log_config_t *cfg, int create, pq_log_t **out);

/* Unmap everything and release the partition.  Outstanding segment
 * references (pq_log_read_many) stay valid until released. */
void pq_log_close(pq_log_t *log);

/* Append n records under one acquisition of the append lock.  The caller
 * fills key/headers/value/deliver_at/attributes; offsets and timestamps
 * (wall clock, never decreasing within the partition) are assigned here and
 * written back into recs.  All or nothing: a record over max_message_bytes
 * fails the whole call with -PQ_ETOOLARGE before anything is written.
 * On success *first_offset is recs[0].offset; offsets are dense. */
int pq_log_append(pq_log_t *log, pq_record_t *recs, size_t n, uint64_t *first_offset);

/* Read up to `max` records starting at `offset` from one segment (a read stops
 * at a segment boundary and at the published end).  Returns the count (0 at
 * the end), -PQ_ERANGE if offset is below the log start or above the end, or
 * -PQ_ECORRUPT if record `offset` itself is damaged (a damaged record after
 * it ends the count there: the intact ones come first).  With a count > 0,
 * *seg holds a reference that the caller
 * releases with pq_segment_decref(); the records point into it. */
int pq_log_read_many(pq_log_t *log, uint64_t offset, pq_record_t *recs, size_t max,
                     pq_segment_t **seg);

/* First retained offset and next offset to be written. */
void pq_log_bounds(pq_log_t *log, uint64_t *start, uint64_t *end);

/* First offset whose timestamp is >= ts_ns (the end offset if none).
 * O(log segments + log records). */
int pq_log_offset_for_time(pq_log_t *log, int64_t ts_ns, uint64_t *out);

/* Make every record below `upto` (clamped to the end) durable.  Concurrent
 * callers share flushes: a caller whose records were covered by another's
 * flush returns without a syscall (group commit).  0 or -errno. */
int pq_log_sync(pq_log_t *log, uint64_t upto);

/* Offset below which everything is known to be on disk. */
uint64_t pq_log_synced(pq_log_t *log);

/* Wait until the end passes `offset` (i.e. record `offset` exists), at most
 * timeout_ns (negative: no limit).  Returns 1 if it has, 0 on timeout or on
 * a wake-up by pq_log_wake_all() without it; -errno on failure.  No syscall
 * is made by writers unless someone waits. */
int pq_log_wait(pq_log_t *log, uint64_t offset, int64_t timeout_ns);

/* Also wake sleepers of `notify` (the topic's word) on every append.  The
 * notify object must outlive the log.  NULL detaches. */
struct pq_notify;
void pq_log_set_notify(pq_log_t *log, struct pq_notify *notify);

/* Wake every waiter of the partition (used to interrupt waits on close). */
void pq_log_wake_all(pq_log_t *log);

/* Drop whole oldest segments past retention_bytes / retention_ns (never the
 * tail segment).  Returns the number of segments removed, or -errno. */
int pq_log_enforce_retention(pq_log_t *log, int64_t now_ns);

/* Information about the last open, for tests and stats. */
void pq_log_recovery_info(pq_log_t *log, pq_log_recovery_t *out);

/* Number of segment files and the bytes they occupy. */
void pq_log_disk_usage(pq_log_t *log, uint64_t *segments, uint64_t *bytes);

#endif
