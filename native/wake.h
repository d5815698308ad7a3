/* wake.h - cross-process wait/wake on a 32-bit word in shared memory.
 *
 * A thin wrapper over the Linux futex (non-private, so it works on a
 * MAP_SHARED file mapping between processes).  The caller provides the
 * protocol: read the word, check its condition, then wait for the word to
 * change; a waker changes the word and wakes.  Waits can return spuriously.
 */
#ifndef PQ_WAKE_H
#define PQ_WAKE_H

#include <stdint.h>

/* Sleep while *word == expected, at most timeout_ns (negative: no limit).
 * Returns 0 when woken or the word already differs, -ETIMEDOUT, or -EINTR. */
int pq_wake_wait(uint32_t *word, uint32_t expected, int64_t timeout_ns);

/* Wake every thread sleeping on `word`.  Returns the number woken (>= 0). */
int pq_wake_all(uint32_t *word);

/* CLOCK_REALTIME and CLOCK_MONOTONIC in nanoseconds. */
int64_t pq_now_ns(void);
int64_t pq_monotonic_ns(void);

#endif
