/* notify.c - the per-topic wake-up word (see notify.h). */
#include "notify.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pq_error.h"
#include "wake.h"

#define NOTIFY_SIZE 4096

int pq_notify_open(const char *path, pq_notify_t **out)
{
    pq_notify_t *n = calloc(1, sizeof *n);
    if (!n)
        return pq_error_set(-ENOMEM, "out of memory");
    int rc = pq_shmfile_open(path, NOTIFY_SIZE, 0, &n->file);
    if (rc) {
        free(n);
        return rc;
    }
    n->seq = (uint32_t *)n->file.map;
    n->waiters = (uint32_t *)n->file.map + 1;
    if (n->file.sole)
        *n->waiters = 0;   /* sleepers of dead processes */
    pq_shmfile_share(&n->file);
    *out = n;
    return 0;
}

void pq_notify_close(pq_notify_t *n)
{
    if (!n)
        return;
    pq_shmfile_close(&n->file);
    free(n);
}

uint32_t pq_notify_arm(pq_notify_t *n)
{
    /* seq_cst pairs with the waker's seq_cst publish-then-load-waiters: either
     * the waker sees us counted and bumps, or our check sees its change. */
    __atomic_add_fetch(n->waiters, 1, __ATOMIC_SEQ_CST);
    return __atomic_load_n(n->seq, __ATOMIC_SEQ_CST);
}

int pq_notify_sleep(pq_notify_t *n, uint32_t seq, int64_t timeout_ns)
{
    pq_wake_wait(n->seq, seq, timeout_ns);
    pq_notify_disarm(n);
    return 0;
}

void pq_notify_disarm(pq_notify_t *n)
{
    __atomic_sub_fetch(n->waiters, 1, __ATOMIC_SEQ_CST);
}

void pq_notify_wake(pq_notify_t *n)
{
    if (__atomic_load_n(n->waiters, __ATOMIC_SEQ_CST) > 0) {
        __atomic_add_fetch(n->seq, 1, __ATOMIC_SEQ_CST);
        pq_wake_all(n->seq);
    }
}
