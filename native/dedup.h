/* dedup.h - a topic's table of recent message ids, shared and durable.
 *
 * An open-addressing hash table in a mapped file: 16-byte keys (a hash of the
 * producer's dedup id), each with the partition and offset of the first send
 * and an expiry time.  Expired entries are reused; a lookup walks its probe
 * chain up to PQ_DEDUP_PROBES slots.  Layout: docs/FORMAT.md, "Dedup table".
 *
 * Check-and-append is atomic across processes: pq_dedup_begin() returns with
 * the table lock held when the key is new, the caller appends the message and
 * then records it with pq_dedup_insert() (or gives up with pq_dedup_unlock()).
 * Lock order: the dedup lock before a partition's append lock, never after.
 */
#ifndef PQ_DEDUP_H
#define PQ_DEDUP_H

#include <stdint.h>

#include "log.h"

#define PQ_DEDUP_PROBES       256
#define PQ_DEDUP_MAX_CAPACITY (1u << 26)

typedef struct pq_dedup pq_dedup_t;

int pq_dedup_open(const char *path, uint32_t capacity, pq_dedup_t **out);
void pq_dedup_close(pq_dedup_t *d);

/* 1: the key was sent within its window; *partition and *offset name that
 * send and no lock is held.  0: new key; the lock is held and *slot is where
 * pq_dedup_insert() will record it.  -PQ_EFULL: no free or expired slot on the
 * key's probe chain (the table is too small for the window); no lock held. */
int pq_dedup_begin(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, uint32_t *partition,
                   uint64_t *offset, uint32_t *slot);

/* Record the key at `slot` (with `aux`, a caller-defined word) and release the lock. */
void pq_dedup_insert(pq_dedup_t *d, uint32_t slot, const uint8_t key[16], uint32_t partition,
                     uint64_t offset, uint64_t aux, int64_t expires_ns);

/* The table as a small durable map (the scheduler's fired records): read the
 * unexpired entry of `key` (1 found, 0 not), or write it, replacing any
 * (0, or -PQ_EFULL).  Each takes and releases the lock. */
int pq_dedup_get(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, uint32_t *partition,
                 uint64_t *offset, uint64_t *aux);
int pq_dedup_put(pq_dedup_t *d, const uint8_t key[16], int64_t now_ns, uint32_t partition,
                 uint64_t offset, uint64_t aux, int64_t expires_ns);

/* Release the lock without recording anything (the append failed). */
void pq_dedup_unlock(pq_dedup_t *d);

/* Crash rule: a send between pq_dedup_begin() (returning 0) and
 * pq_dedup_insert() is first recorded as pending: the key, its slot, the
 * target partition and that partition's end before the append.  The record
 * is appended carrying the returned token (non-zero) as its attributes;
 * insert() and unlock() clear the pending send.  A live holder always clears
 * it before unlocking, so a locker that finds one knows its holder died: it
 * looks for the token in the partition from that end on and, if the record
 * is there, records the key as insert() would have (else the append never
 * happened).  The lock must be held (begin returned 0).  Returns the token. */
uint32_t pq_dedup_pend(pq_dedup_t *d, uint32_t slot, const uint8_t key[16], pq_log_t *log,
                       uint32_t partition, int64_t expires_ns);

/* The topic's partition logs, index = partition, for settling a pending send
 * (not owned: they must outlive d).  Without them a pending send left by a
 * dead holder is dropped, and a retry of its key writes the message twice. */
void pq_dedup_attach_logs(pq_dedup_t *d, pq_log_t *const *logs, uint32_t n);

/* Unexpired entries at now_ns (a scan: for stats). */
uint64_t pq_dedup_count(pq_dedup_t *d, int64_t now_ns);

int pq_dedup_sync(pq_dedup_t *d);

#endif
