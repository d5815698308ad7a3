/* notify.h - one wake-up word per topic, shared by every process.
 *
 * A consumer of several partitions sleeps on its topic's word; an append to
 * any partition of the topic (and a group event such as a nack or an ack that
 * frees in-flight room) bumps it, but only when someone sleeps, so writers pay
 * one atomic load when nobody waits.  Wake-ups may be spurious: sleepers re-check
 * their condition.  Layout: docs/FORMAT.md, "Topic notify".
 */
#ifndef PQ_NOTIFY_H
#define PQ_NOTIFY_H

#include <stdint.h>

#include "shmfile.h"

typedef struct pq_notify {
    pq_shmfile_t file;
    uint32_t *seq;        /* futex word */
    uint32_t *waiters;    /* sleepers right now */
} pq_notify_t;

int pq_notify_open(const char *path, pq_notify_t **out);
void pq_notify_close(pq_notify_t *n);

/* A sleeper first arms (counts itself as a waiter and reads the sequence),
 * then checks its condition, then either sleeps or disarms.  Arming before the
 * check is what makes a wake between check and sleep impossible to lose. */
uint32_t pq_notify_arm(pq_notify_t *n);

/* Sleep until the sequence differs from `seq`, at most timeout_ns (negative:
 * no limit), and disarm.  Returns 0; spurious returns are possible. */
int pq_notify_sleep(pq_notify_t *n, uint32_t seq, int64_t timeout_ns);

void pq_notify_disarm(pq_notify_t *n);

/* Wake the sleepers, if any (one atomic load otherwise). */
void pq_notify_wake(pq_notify_t *n);

#endif
