/* wheel.h - a hierarchical timing wheel: O(1) add and cancel, batched expiry.
 *
 * Timers live in one growable array of 24-byte nodes linked into buckets, so
 * a million timers cost 24 MB (up to twice that while the array grows by
 * doubling) and no allocation per timer.  The caller keeps
 * its payloads in a parallel array indexed by the node index the wheel hands
 * out (pq_wheel_add's *index), which stays valid until the timer expires or is
 * cancelled.  Handles carry a generation so a stale cancel is harmless.
 *
 * Not thread-safe: one owner (the binding serialises calls with the GIL).
 */
#ifndef PQ_WHEEL_H
#define PQ_WHEEL_H

#include <stddef.h>
#include <stdint.h>

#define PQ_WHEEL_LEVELS   4
#define PQ_WHEEL_SLOTS    256          /* per level: 8 bits of the tick number */
#define PQ_WHEEL_NONE     UINT32_MAX

typedef struct pq_wheel pq_wheel_t;

/* A wheel whose tick 0 is `start_tick` (ticks are the caller's unit, e.g. ms). */
int pq_wheel_new(uint64_t start_tick, pq_wheel_t **out);
void pq_wheel_free(pq_wheel_t *w);

/* Schedule a timer for `deadline` (in ticks; a deadline at or before the
 * current tick expires at the next pq_wheel_expire).  Returns 0 and the handle
 * and node index, or -ENOMEM (or -E2BIG past 2^31 timers). */
int pq_wheel_add(pq_wheel_t *w, uint64_t deadline, uint64_t *handle, uint32_t *index);

/* Cancel a timer.  Returns 1 and its node index if it was pending, 0 if the
 * handle is unknown, expired or already cancelled. */
int pq_wheel_cancel(pq_wheel_t *w, uint64_t handle, uint32_t *index);

/* Advance to tick `now` and write the node indexes of up to `max` expired
 * timers to `out`, earliest bucket first.  Returns the count; call again
 * while it returns `max`.  An index written here is free for reuse after the
 * next call to pq_wheel_add, so the caller must take its payload first. */
size_t pq_wheel_expire(pq_wheel_t *w, uint64_t now, uint32_t *out, size_t max);

/* Pending timers. */
size_t pq_wheel_count(const pq_wheel_t *w);

/* The earliest tick at which something may expire (a lower bound: the start
 * of the earliest non-empty bucket), or UINT64_MAX if the wheel is empty. */
uint64_t pq_wheel_next_deadline(const pq_wheel_t *w);

#endif
